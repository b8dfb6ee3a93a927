//! DNS through the gateway: every port-53 query of a sandbox (UDP or TCP, to any address) is
//! answered by its own DNS service, and the reply seems to come from the address asked; names
//! the policy denies get NXDOMAIN; with DNS binding on (an `allow_hosts` list), only addresses
//! an answer gave the sandbox may be reached, and an address bound only to bypass names is
//! reached directly, at connect. The gateway answers from a hosts file (`[dns] hosts_file`),
//! so no DNS server is involved; real clients (python sockets, glibc's `getent`, curl) in real
//! sandbox cgroups, and packet watchers proving nothing reached the resolvers named.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly, with the error, on any setup failure"
)]

use std::{net::IpAddr, process::Output, time::Duration};

use gateway_common::Counter;
use gateway_tests::{
    cmd,
    daemon::Daemon,
    dns_fixture::{DnsFixture, dns_query},
    net::UpstreamHost,
    pki::TestPki,
    py_script, require_root, run,
    sandbox::{SandboxCgroup, stdout_ok},
    upstream::Site,
    watch::Watcher,
};
use serde_json::Value;

/// What the gateway's hosts file says `up.dns.test` is.
const UP_V4: &str = "192.0.2.7";
const UP_V6: &str = "2001:db8::7";
/// A resolver address nothing answers at: only the gateway's rewrite can reach "it".
const NOWHERE: &str = "192.0.2.53";

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Runs tests/py/probe.py inside `cgroup`.
fn probe(cgroup: &SandboxCgroup, args: &[&str]) -> Value {
    let mut probe = cmd("python3", [py_script("probe.py")]);
    let output = cgroup.output(None, probe.args(args)).unwrap();
    json(&stdout_ok(&output).unwrap())
}

fn assert_answer(result: &Value, answers: &[&str], what: &str) {
    assert_eq!(result["ok"], true, "{what}: {result}");
    assert_eq!(result["rcode"], 0, "{what}: {result}");
    assert_eq!(
        result["answers"],
        serde_json::json!(answers),
        "{what}: {result}"
    );
}

/// A port nothing listens on now, for the metrics endpoint.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The value of the OpenMetrics sample `name{labels}` (labels in the order given).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let prefix = format!("{name}{{{}}} ", labels.join(","));
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

fn only_sandbox(daemon: &Daemon) -> Value {
    let ls = json(&stdout_ok(&daemon.control(["sandbox", "ls", "--json"]).unwrap()).unwrap());
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
    ls[0].clone()
}

#[test]
fn queries_are_answered_by_the_gateway_as_if_by_the_server_asked() {
    require_root().unwrap();
    // A resolver's address in a test namespace: the watcher there proves no query left.
    let resolver = UpstreamHost::new().unwrap();
    let fixture = DnsFixture::new(
        &[(ip(UP_V4), "up.dns.test"), (ip(UP_V6), "up.dns.test")],
        resolver.v4.into(),
    )
    .unwrap();
    let cgroup = SandboxCgroup::new().unwrap();
    let metrics_port = free_port();
    let mut daemon = Daemon::builder()
        .sandbox(format!(
            "{},deny-host=denied.dns.test",
            cgroup.path().display()
        ))
        .config(&fixture.config(""))
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .start()
        .unwrap();
    let (v4, v6) = (resolver.v4.to_string(), resolver.v6.to_string());
    let watcher = Watcher::start(&resolver.ns, 53).unwrap();

    // UDP, unconnected: the answer, from the address the query was sent to.
    let result = dns_query(&cgroup, &["udp", &v4, "up.dns.test", "A"]).unwrap();
    assert_answer(&result, &[UP_V4], "UDP over IPv4");
    assert_eq!(result["from"], format!("{v4}:53"), "{result}");
    let result = dns_query(&cgroup, &["udp", &v6, "up.dns.test", "AAAA"]).unwrap();
    assert_answer(&result, &[UP_V6], "UDP over IPv6");
    assert_eq!(result["from"], format!("[{v6}]:53"), "{result}");
    let result = dns_query(&cgroup, &["udp6-mapped", &v4, "up.dns.test", "A"]).unwrap();
    assert_answer(&result, &[UP_V4], "UDP over IPv4-mapped IPv6");
    assert_eq!(result["from"], format!("[::ffff:{v4}]:53"), "{result}");
    // Any address is DNS to the gateway, even one no route leads to.
    let result = dns_query(&cgroup, &["udp", NOWHERE, "up.dns.test", "A"]).unwrap();
    assert_answer(&result, &[UP_V4], "UDP to an address nothing answers at");
    assert_eq!(result["from"], format!("{NOWHERE}:53"), "{result}");

    // Connected UDP (what glibc does) and TCP: the peer is the server asked, too.
    for (server, peer, qtype, answer) in [
        (&v4, format!("{v4}:53"), "A", UP_V4),
        (&v6, format!("[{v6}]:53"), "AAAA", UP_V6),
    ] {
        let result = dns_query(&cgroup, &["udp-connect", server, "up.dns.test", qtype]).unwrap();
        assert_answer(&result, &[answer], "connected UDP");
        assert_eq!(result["from"], peer, "{result}");
        assert_eq!(result["peer"], peer, "{result}");
        let result = dns_query(&cgroup, &["tcp", server, "up.dns.test", qtype]).unwrap();
        assert_answer(&result, &[answer], "TCP");
        assert_eq!(result["peer"], peer, "{result}");
    }

    // glibc's resolver, with a resolv.conf naming the test resolver.
    let output = cgroup
        .output(
            None,
            &mut fixture.command("getent", ["ahostsv4", "up.dns.test"]),
        )
        .unwrap();
    let text = stdout_ok(&output).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with(UP_V4) && l.contains("up.dns.test")),
        "{text}"
    );
    let output = cgroup
        .output(
            None,
            &mut fixture.command("getent", ["hosts", "up.dns.test"]),
        )
        .unwrap();
    let text = stdout_ok(&output).unwrap();
    assert!(text.contains("up.dns.test"), "{text}");

    // A denied name: NXDOMAIN, for python and for glibc.
    let result = dns_query(&cgroup, &["udp", &v4, "denied.dns.test", "A"]).unwrap();
    assert_eq!(result["rcode"], 3, "NXDOMAIN: {result}");
    assert_eq!(result["answers"], serde_json::json!([]), "{result}");
    let output = cgroup
        .output(
            None,
            &mut fixture.command("getent", ["ahostsv4", "denied.dns.test"]),
        )
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "getent found it: {output:?}");

    assert_eq!(
        watcher.finish().unwrap(),
        (0, 0),
        "a query reached the resolver's address"
    );

    // What the operator sees: the DNS port and counts, the bindings with their field names.
    let sandbox = only_sandbox(&daemon);
    assert_ne!(sandbox["dns_port"], 0, "{sandbox}");
    assert!(sandbox["dns_answered"].as_u64().unwrap() >= 10, "{sandbox}");
    let refused = sandbox["dns_refused"].as_u64().unwrap();
    assert!(refused >= 2, "{sandbox}");
    let status = stdout_ok(&daemon.control(["status"]).unwrap()).unwrap();
    assert!(status.contains("dns queries: answered="), "{status}");
    let dump =
        run(cmd("bpftool", ["map", "dump", "pinned"]).arg(daemon.pin_dir().join("dns_bindings")))
            .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    for field in ["\"sandbox_id\"", "\"addr\"", "\"expires_ns\"", "\"flags\""] {
        assert!(dump.contains(field), "no {field} in {dump}");
    }
    let scrape = stdout_ok(
        &cmd(
            "curl",
            [
                "-sS",
                "--fail",
                &format!("http://127.0.0.1:{metrics_port}/metrics"),
            ],
        )
        .output()
        .unwrap(),
    )
    .unwrap();
    let name = sandbox["name"].as_str().unwrap();
    assert_eq!(
        sample(
            &scrape,
            "gateway_dns_queries_total",
            &[("sandbox", name), ("result", "refused")]
        ),
        Some(refused),
        "{scrape}"
    );

    // Stopped, the daemon leaves DNS failing (closed); restarted, it adopts the sandbox with
    // the same DNS port (connected sockets point at it) and answers again.
    assert!(daemon.stop().unwrap().success());
    let result = dns_query(&cgroup, &["tcp", &v4, "up.dns.test", "A"]).unwrap();
    assert_eq!(result["errno"], "ECONNREFUSED", "{result}");
    daemon.restart().unwrap();
    assert_eq!(only_sandbox(&daemon)["dns_port"], sandbox["dns_port"]);
    let result = dns_query(&cgroup, &["udp", &v4, "up.dns.test", "A"]).unwrap();
    assert_answer(&result, &[UP_V4], "after the restart");
}

/// Curl's output and the last line it wrote with `-w`.
fn curl_result(output: &Output) -> (Value, String) {
    let text = stdout_ok(output).unwrap();
    let (body, written) = text.trim_end().rsplit_once('\n').unwrap();
    (json(body), written.to_owned())
}

/// A site serving `bound.test` (its IPv4 address, intercepted) and `by.test` (its IPv6 address,
/// a bypass name), and the hosts file saying so.
fn bound_and_bypassed(pki: &TestPki) -> (Site, DnsFixture) {
    let site = Site::start(pki, "bound.test", &["bound.test", "by.test"]).unwrap();
    let fixture = DnsFixture::new(
        &[
            (site.host.v4.into(), "bound.test"),
            (site.host.v6.into(), "by.test"),
        ],
        ip(NOWHERE),
    )
    .unwrap();
    (site, fixture)
}

#[test]
fn with_dns_binding_only_answered_addresses_are_reached_and_bypass_names_go_direct() {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let (site, fixture) = bound_and_bypassed(&pki);
    let cgroup = SandboxCgroup::new().unwrap();
    let config = format!(
        "{}bypass = [\"by.test\"]\n{}",
        pki.trusted_config(),
        fixture.config("")
    );
    // An allow-list of names turns DNS binding on.
    let mut daemon = Daemon::builder()
        .sandbox(format!(
            "{},allow-host=bound.test,allow-host=by.test",
            cgroup.path().display()
        ))
        .config(&config)
        .start()
        .unwrap();
    let (v4, v6) = (site.host.v4.to_string(), site.host.v6.to_string());

    // The address literal, never looked up: refused at connect, as unbound.
    let refused = probe(&cgroup, &["tcp", &v4, "443"]);
    assert_eq!(refused["errno"], "EPERM", "{refused}");
    let line = daemon
        .wait_for("the unbound refusal", Duration::from_secs(10), |v| {
            v["message"] == "refused by policy" && v["destination"] == format!("{v4}:443")
        })
        .unwrap();
    assert_eq!(line["reason"], "unbound", "{line}");
    assert!(
        line["rule"].as_str().unwrap().starts_with("dns binding"),
        "{line}"
    );

    // The name, resolved through the gateway: intercepted as usual.
    let mut curl = fixture.command(
        "curl",
        ["-sS", "--max-time", "15", "-w", "\n%{local_ip}", "--cacert"],
    );
    curl.arg(daemon.ca_file()).arg("https://bound.test/");
    let (body, local_ip) = curl_result(&cgroup.output(None, &mut curl).unwrap());
    assert_eq!(body["name"], "bound.test", "{body}");
    assert_eq!(local_ip, "127.0.0.1", "redirected to the listener");
    // Now that an answer gave it, the literal is reached too.
    assert_eq!(probe(&cgroup, &["tcp", &v4, "443"])["ok"], true);

    // A bypass name: its address is bound only to it, so the connect goes direct. The
    // upstream sees the sandbox's own address and port.
    let mut curl = fixture.command(
        "curl",
        [
            "-sS",
            "--max-time",
            "15",
            "-w",
            "\n%{local_ip} %{local_port}",
            "--cacert",
        ],
    );
    curl.arg(pki.ca_file()).arg("https://by.test/");
    let (body, local) = curl_result(&cgroup.output(None, &mut curl).unwrap());
    let (local_ip, local_port) = local.split_once(' ').unwrap();
    assert_eq!(
        local_ip,
        site.host.host_v6.to_string(),
        "not a direct connection: {body}"
    );
    assert_eq!(
        body["peer"],
        format!("[{}]:{local_port}", site.host.host_v6),
        "{body}"
    );
    let line = daemon
        .wait_for("the bypass line", Duration::from_secs(10), |v| {
            v["message"] == "connection bypassed at connect"
        })
        .unwrap();
    assert_eq!(line["destination"], format!("[{v6}]:443"), "{line}");
    assert_eq!(line["names"], "by.test", "{line}");
    assert_eq!(daemon.counter(Counter::BypassedAtConnect).unwrap(), 1);
    assert!(
        daemon
            .messages("connection closed")
            .iter()
            .all(|v| v["sni"] != "by.test"),
        "the bypassed connection went through the gateway"
    );

    // Removing the sandbox removes its bindings.
    assert!(daemon.map_entries("dns_bindings").unwrap() > 0);
    let name = only_sandbox(&daemon)["name"].as_str().unwrap().to_owned();
    stdout_ok(&daemon.control(["sandbox", "rm", &name]).unwrap()).unwrap();
    assert_eq!(daemon.map_entries("dns_bindings").unwrap(), 0);
}

#[test]
fn an_expired_binding_is_unbound_again() {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let (site, fixture) = bound_and_bypassed(&pki);
    let binding = SandboxCgroup::new().unwrap();
    let open = SandboxCgroup::new().unwrap();
    let config = format!(
        "{}bypass = [\"by.test\"]\n{}",
        pki.trusted_config(),
        fixture.config("binding_ttl_min = \"1s\"\nbinding_ttl_max = \"2s\"\n")
    );
    let mut daemon = Daemon::builder()
        .sandbox(format!(
            "{},allow-host=bound.test,allow-host=by.test",
            binding.path().display()
        ))
        .sandbox(open.path().display().to_string())
        .config(&config)
        .start()
        .unwrap();
    let v6 = site.host.v6.to_string();
    // Past binding_ttl_max, with a margin for the housekeeping tick.
    let expiry = Duration::from_secs(3);

    // With binding on: reachable while the answer's binding lasts, refused as unbound after.
    let answer = dns_query(&binding, &["udp", NOWHERE, "by.test", "AAAA"]).unwrap();
    assert_answer(&answer, &[v6.as_str()], "by.test");
    assert_eq!(probe(&binding, &["tcp", &v6, "443"])["ok"], true);
    std::thread::sleep(expiry);
    let refused = probe(&binding, &["tcp", &v6, "443"]);
    assert_eq!(refused["errno"], "EPERM", "{refused}");
    let line = daemon
        .wait_for("the unbound refusal", Duration::from_secs(10), |v| {
            v["message"] == "refused by policy" && v["reason"] == "unbound"
        })
        .unwrap();
    assert_eq!(line["destination"], format!("[{v6}]:443"), "{line}");

    // Without binding (no allow-list): bypassed at connect while bound, and once the binding
    // expires, redirected to the gateway again, which splices the bypass name.
    let curl = |resolve: bool| {
        let mut args = vec![
            "-sS".to_owned(),
            "--max-time".to_owned(),
            "15".to_owned(),
            "-w".to_owned(),
            "\n%{local_ip}".to_owned(),
            "--cacert".to_owned(),
            pki.ca_file().display().to_string(),
        ];
        if resolve {
            // No lookup: the address as it was answered before.
            args.extend(["--resolve".to_owned(), format!("by.test:443:[{v6}]")]);
        }
        args.push("https://by.test/".to_owned());
        let mut command = fixture.command("curl", args);
        curl_result(&open.output(None, &mut command).unwrap())
    };
    let (body, local_ip) = curl(false);
    assert_eq!(
        local_ip,
        site.host.host_v6.to_string(),
        "not bypassed at connect: {body}"
    );
    std::thread::sleep(expiry);
    let (body, local_ip) = curl(true);
    assert_eq!(body["name"], "bound.test", "{body}");
    assert_eq!(local_ip, "::1", "not through the gateway");
    let line = daemon
        .wait_for("the spliced connection", Duration::from_secs(10), |v| {
            v["message"] == "connection closed" && v["sni"] == "by.test"
        })
        .unwrap();
    assert_eq!(line["mode"], "bypass", "{line}");
    assert_eq!(daemon.counter(Counter::BypassedAtConnect).unwrap(), 2);
}

/// Connects of the burst test (the client adds a tenth as warm-up).
const BURST: u64 = 10_000;

#[test]
fn a_burst_of_connections_bypassed_at_connect_is_counted_and_logged_whole() {
    require_root().unwrap();
    // The sink: a listener on the host's side of a test link, port 443, accepting and dropping
    // (a TLS server would make the burst slower than the daemon's reading).
    let link = UpstreamHost::new().unwrap();
    let sink = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sink.bind(&std::net::SocketAddr::from((link.host_v4, 443)).into())
        .unwrap();
    // A long accept queue, so that no SYN waits for the accepting thread.
    sink.listen(4096).unwrap();
    let sink = std::net::TcpListener::from(sink);
    let sink_addr = sink.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in sink.incoming() {
            drop(conn);
        }
    });
    let fixture = DnsFixture::new(&[(link.host_v4.into(), "sink.test")], ip(NOWHERE)).unwrap();
    let cgroup = SandboxCgroup::new().unwrap();
    let config = format!("[tls]\nbypass = [\"sink.test\"]\n{}", fixture.config(""));
    let mut daemon = Daemon::builder()
        .sandbox(cgroup.path().display().to_string())
        .config(&config)
        .start()
        .unwrap();
    let answer = dns_query(&cgroup, &["udp", NOWHERE, "sink.test", "A"]).unwrap();
    assert_answer(&answer, &[&link.host_v4.to_string()], "sink.test");

    // As fast as one process can: faster than the daemon's timer reads, so the programs must
    // wake it when the buffer fills up, or events are lost.
    let mut connects = cmd(env!("CARGO_BIN_EXE_gateway-bench"), ["client", "connects"]);
    connects.args([
        "--addr",
        &sink_addr.to_string(),
        "--count",
        &BURST.to_string(),
    ]);
    let output = cgroup
        .output_within(&mut connects, Duration::from_secs(120))
        .unwrap();
    let result = json(&stdout_ok(&output).unwrap());
    assert_eq!(result["errors"], 0, "{result}");
    let made = BURST + BURST / 10;
    assert_eq!(
        daemon.counter(Counter::BypassedAtConnect).unwrap(),
        made,
        "not every connect was bypassed"
    );
    daemon
        .wait_until("every bypass logged", Duration::from_secs(10), |d| {
            d.summary().count("connection bypassed at connect") == made
        })
        .unwrap_or_else(|err| {
            let logged = daemon.summary().count("connection bypassed at connect");
            panic!("{err:#}: {logged} of {made} logged")
        });
    assert_eq!(daemon.counter(Counter::RedirectedV4).unwrap(), 0);
}
