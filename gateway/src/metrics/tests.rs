//! Each family counted and read back from the encoded text, series removal, the label caps, the
//! eBPF collector at scrape time, and the endpoint over a real TCP socket.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use super::*;

/// The value of the sample `series` (name and labels exactly as encoded), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

fn value(metrics: &Metrics, series: &str) -> f64 {
    let text = metrics.encode();
    sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[test]
fn connections_are_counted_by_mode_and_outcome_with_bytes() {
    let metrics = Metrics::new();
    metrics.connection_opened("agent1");
    metrics.connection_opened("agent1");
    metrics.connection_opened("agent2");
    assert_eq!(
        value(&metrics, r#"gateway_connections_open{sandbox="agent1"}"#),
        2.0
    );
    metrics.connection_closed("agent1", "intercept", Outcome::Ok, 100, 2000);
    metrics.connection_closed("agent1", "bypass", Outcome::Error, 5, 7);

    let text = metrics.encode();
    let series = |s: &str| sample(&text, s);
    assert_eq!(
        series(r#"gateway_connections_total{sandbox="agent1",mode="intercept",outcome="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(r#"gateway_connections_total{sandbox="agent1",mode="bypass",outcome="error"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(r#"gateway_bytes_total{sandbox="agent1",direction="up"}"#),
        Some(105.0)
    );
    assert_eq!(
        series(r#"gateway_bytes_total{sandbox="agent1",direction="down"}"#),
        Some(2007.0)
    );
    assert_eq!(
        series(r#"gateway_connections_open{sandbox="agent1"}"#),
        Some(0.0)
    );
    assert_eq!(
        series(r#"gateway_connections_open{sandbox="agent2"}"#),
        Some(1.0)
    );
    assert!(
        text.contains("# TYPE gateway_connections counter"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn an_unknown_mode_is_counted_as_other() {
    let metrics = Metrics::new();
    metrics.connection_closed("a", "something-new", Outcome::Ok, 0, 0);
    assert_eq!(
        value(
            &metrics,
            r#"gateway_connections_total{sandbox="a",mode="other",outcome="ok"}"#
        ),
        1.0
    );
}

#[test]
fn the_open_gauge_never_goes_below_zero() {
    let metrics = Metrics::new();
    metrics.connection_opened("a");
    metrics.forget_sandbox("a");
    // A close reported after the sandbox was forgotten creates no gauge at -1.
    metrics.connection_closed("a", "intercept", Outcome::Ok, 1, 1);
    let text = metrics.encode();
    assert_eq!(
        sample(&text, r#"gateway_connections_open{sandbox="a"}"#),
        None
    );
    metrics.connection_opened("a");
    metrics.connection_closed("a", "intercept", Outcome::Ok, 1, 1);
    metrics.connection_closed("a", "intercept", Outcome::Ok, 1, 1);
    assert_eq!(
        value(&metrics, r#"gateway_connections_open{sandbox="a"}"#),
        0.0
    );
}

#[test]
fn handshake_failures_are_counted_by_reason_from_zero() {
    let metrics = Metrics::new();
    for reason in HandshakeFailure::ALL {
        let series = format!(
            r#"gateway_handshake_failures_total{{reason="{}"}}"#,
            reason.as_str()
        );
        assert_eq!(value(&metrics, &series), 0.0);
    }
    metrics.handshake_failed(HandshakeFailure::UpstreamVerify);
    metrics.handshake_failed(HandshakeFailure::UpstreamVerify);
    metrics.handshake_failed(HandshakeFailure::ClientTimeout);
    assert_eq!(
        value(
            &metrics,
            r#"gateway_handshake_failures_total{reason="upstream_verify"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &metrics,
            r#"gateway_handshake_failures_total{reason="client_timeout"}"#
        ),
        1.0
    );
}

#[test]
fn http_requests_are_counted_by_status_class() {
    let metrics = Metrics::new();
    for status in [200, 204, 301, 403, 403, 502, 101, 99, 600] {
        metrics.http_request("a", status);
    }
    let text = metrics.encode();
    let class = |c: &str| {
        sample(
            &text,
            &format!(r#"gateway_http_requests_total{{sandbox="a",code_class="{c}"}}"#),
        )
    };
    assert_eq!(class("2xx"), Some(2.0));
    assert_eq!(class("3xx"), Some(1.0));
    assert_eq!(class("4xx"), Some(2.0));
    assert_eq!(class("5xx"), Some(1.0));
    assert_eq!(class("1xx"), Some(1.0));
    assert_eq!(class("other"), Some(2.0));
}

#[test]
fn secret_violations_and_the_cert_cache_are_counted() {
    let metrics = Metrics::new();
    metrics.secret_violation("a", "OPENAI");
    metrics.secret_violation("a", "OPENAI");
    metrics.cert_cache(true);
    metrics.cert_cache(true);
    metrics.cert_cache(false);
    metrics.cert_generated();
    let text = metrics.encode();
    assert_eq!(
        sample(
            &text,
            r#"gateway_secret_violations_total{sandbox="a",secret="OPENAI"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"gateway_cert_cache_total{result="hit"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"gateway_cert_cache_total{result="miss"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "gateway_certs_generated_total"), Some(1.0));
}

#[test]
fn forgetting_a_sandbox_removes_its_series_only() {
    let metrics = Metrics::new();
    for sandbox in ["gone", "kept"] {
        metrics.connection_opened(sandbox);
        metrics.connection_closed(sandbox, "intercept", Outcome::Ok, 1, 2);
        metrics.connection_closed(sandbox, "weird", Outcome::Error, 1, 2);
        metrics.http_request(sandbox, 200);
        metrics.secret_violation(sandbox, "TOKEN");
    }
    metrics.forget_sandbox("gone");
    let text = metrics.encode();
    assert!(!text.contains(r#"sandbox="gone""#), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"gateway_connections_total{sandbox="kept",mode="intercept",outcome="ok"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"gateway_secret_violations_total{sandbox="kept",secret="TOKEN"}"#
        ),
        Some(1.0)
    );
    // The name can come back, counting from zero.
    metrics.http_request("gone", 500);
    assert_eq!(
        value(
            &metrics,
            r#"gateway_http_requests_total{sandbox="gone",code_class="5xx"}"#
        ),
        1.0
    );
}

#[test]
fn sandboxes_past_the_cap_are_counted_as_other() {
    let metrics = Metrics::with_caps(2, 1);
    for sandbox in ["s1", "s2", "s3", "s4"] {
        metrics.http_request(sandbox, 200);
    }
    let text = metrics.encode();
    let count = |s: &str| {
        sample(
            &text,
            &format!(r#"gateway_http_requests_total{{sandbox="{s}",code_class="2xx"}}"#),
        )
    };
    assert_eq!(count("s1"), Some(1.0));
    assert_eq!(count("s2"), Some(1.0));
    assert_eq!(count("s3"), None);
    assert_eq!(count("other"), Some(2.0));

    // Secrets are capped the same way.
    metrics.secret_violation("s1", "A");
    metrics.secret_violation("s1", "B");
    let text = metrics.encode();
    assert!(
        text.contains(r#"gateway_secret_violations_total{sandbox="s1",secret="other"} 1"#),
        "{text}"
    );

    // Forgetting a sandbox frees its slot for the next new name.
    metrics.forget_sandbox("s1");
    metrics.http_request("s5", 200);
    assert_eq!(
        value(
            &metrics,
            r#"gateway_http_requests_total{sandbox="s5",code_class="2xx"}"#
        ),
        1.0
    );
    // Forgetting a name counted as other leaves other alone.
    metrics.forget_sandbox("s3");
    assert_eq!(
        value(
            &metrics,
            r#"gateway_http_requests_total{sandbox="other",code_class="2xx"}"#
        ),
        2.0
    );
}

#[test]
fn the_default_cap_is_1024_sandboxes() {
    let metrics = Metrics::new();
    for n in 0..SANDBOX_LABEL_CAP + 10 {
        metrics.connection_opened(&format!("sandbox{n}"));
    }
    let text = metrics.encode();
    let open_series = text
        .lines()
        .filter(|line| line.starts_with("gateway_connections_open{"))
        .count();
    assert_eq!(open_series, SANDBOX_LABEL_CAP + 1);
    assert_eq!(
        sample(&text, r#"gateway_connections_open{sandbox="other"}"#),
        Some(10.0)
    );
}

#[test]
fn label_values_are_escaped() {
    let metrics = Metrics::new();
    metrics.http_request("we\"ird\nname", 200);
    let text = metrics.encode();
    assert!(
        text.contains(r#"gateway_http_requests_total{sandbox="we\"ird\nname",code_class="2xx"} 1"#),
        "{text}"
    );
}

/// An eBPF source whose values the test changes between scrapes.
#[derive(Default)]
struct FakeEbpf {
    established: AtomicU64,
    refusals: Mutex<Vec<(String, &'static str, u64)>>,
}

impl EbpfSource for FakeEbpf {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("redirected_v4", 3),
            ("established", self.established.load(Ordering::Relaxed)),
        ]
    }

    fn refusals(&self) -> Vec<(String, &'static str, u64)> {
        self.refusals.lock().expect("refusals lock").clone()
    }
}

#[test]
fn ebpf_counters_are_read_at_scrape_time() {
    let metrics = Metrics::with_caps(1, 1);
    let text = metrics.encode();
    assert!(!text.contains("gateway_ebpf_events"), "{text}");

    let source = Arc::new(FakeEbpf::default());
    metrics.set_ebpf_source(source.clone());
    source.established.store(7, Ordering::Relaxed);
    *source.refusals.lock().expect("lock") = vec![
        ("a".to_owned(), "address", 4),
        ("a".to_owned(), "quic", 1),
        // Past the cap of 1: summed under other.
        ("b".to_owned(), "address", 2),
        ("c".to_owned(), "address", 3),
    ];
    let text = metrics.encode();
    assert!(
        text.contains("# TYPE gateway_ebpf_events counter"),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"gateway_ebpf_events_total{event="redirected_v4"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, r#"gateway_ebpf_events_total{event="established"}"#),
        Some(7.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"gateway_refusals_total{sandbox="a",reason="address"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"gateway_refusals_total{sandbox="a",reason="quic"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"gateway_refusals_total{sandbox="other",reason="address"}"#
        ),
        Some(5.0)
    );

    // Nothing is cached: the next scrape reads the new value.
    source.established.store(9, Ordering::Relaxed);
    assert_eq!(
        value(
            &metrics,
            r#"gateway_ebpf_events_total{event="established"}"#
        ),
        9.0
    );
}

/// Sends `request` raw and returns the whole answer (the request asks the server to close).
async fn http(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .expect("read answer");
    answer
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn the_endpoint_serves_metrics_over_tcp() {
    let metrics = Arc::new(Metrics::new());
    metrics.connection_opened("agent1");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_listener(
        listener,
        Arc::clone(&metrics),
        shutdown.clone(),
    ));

    let answer = http(addr, &get("/metrics")).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("content-type: {CONTENT_TYPE}")),
        "{answer}"
    );
    let (_, body) = answer.split_once("\r\n\r\n").expect("head and body");
    assert_eq!(
        sample(body, r#"gateway_connections_open{sandbox="agent1"}"#),
        Some(1.0)
    );
    assert!(body.ends_with("# EOF\n"), "{body}");

    let answer = http(addr, &get("/")).await;
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    let answer = http(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");

    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("server stops when cancelled")
        .expect("server task");
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_does_not_delay_shutdown_much() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_listener(
        listener,
        Arc::new(Metrics::new()),
        shutdown.clone(),
    ));
    // Connected, but never sends a request.
    let _idle = TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    shutdown.cancel();
    tokio::time::timeout(SHUTDOWN_GRACE_BOUND, server)
        .await
        .expect("server stops within the grace period")
        .expect("server task");
}

/// A little above the endpoint's grace period.
const SHUTDOWN_GRACE_BOUND: std::time::Duration = std::time::Duration::from_secs(4);

#[tokio::test]
async fn binding_a_used_address_names_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = taken.local_addr().expect("local addr");
    let error = serve(addr, Arc::new(Metrics::new()), CancellationToken::new())
        .await
        .expect_err("address in use");
    let message = error.to_string();
    assert!(message.contains("bind"), "{message}");
    assert!(message.contains(&addr.to_string()), "{message}");
}

/// A source with DNS counts only.
struct FakeDns;

impl EbpfSource for FakeDns {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("bypassed_at_connect", 2)]
    }

    fn refusals(&self) -> Vec<(String, &'static str, u64)> {
        vec![("a".to_owned(), "unbound", 5)]
    }

    fn dns_queries(&self) -> Vec<(String, &'static str, u64)> {
        vec![
            ("a".to_owned(), "answered", 9),
            ("a".to_owned(), "refused", 1),
        ]
    }
}

#[test]
fn dns_queries_and_bypasses_at_connect_are_counted_by_sandbox() {
    let metrics = Metrics::new();
    metrics.set_ebpf_source(Arc::new(FakeDns));
    metrics.bypassed_at_connect("a");
    metrics.bypassed_at_connect("a");
    let text = metrics.encode();
    assert_eq!(
        sample(
            &text,
            r#"gateway_dns_queries_total{sandbox="a",result="answered"}"#
        ),
        Some(9.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"gateway_dns_queries_total{sandbox="a",result="refused"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"gateway_refusals_total{sandbox="a",reason="unbound"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"gateway_ebpf_events_total{event="bypassed_at_connect"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &metrics,
            r#"gateway_bypassed_at_connect_total{sandbox="a"}"#
        ),
        2.0
    );
    metrics.forget_sandbox("a");
    assert!(
        !metrics
            .encode()
            .contains(r#"gateway_bypassed_at_connect_total{sandbox="a"}"#)
    );
}
