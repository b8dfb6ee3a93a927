//! DNS through the gateway with a real DNS server upstream: the test DNS server (in its own
//! namespace, logging every question) is the gateway's `[dns] upstream`, a second one is the
//! resolver the sandbox's resolv.conf names. Real clients (curl, glibc's `getent`, `openssl
//! s_client`, python sockets) in a real sandbox cgroup; what each server was asked, and what
//! reached the upstreams, is checked on their side.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly, with the error, on any setup failure"
)]

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Output,
    time::Duration,
};

use gateway_tests::{
    cmd,
    daemon::Daemon,
    dns::{TestDns, Transport, Zone},
    dns_fixture::{DnsFixture, dns_query},
    net::UpstreamHost,
    pki::TestPki,
    require_root,
    sandbox::{SandboxCgroup, stdout_ok},
    upstream::Site,
    watch::Watcher,
};
use serde_json::Value;

/// Addresses of `big.test`: more than a 512-byte UDP answer holds (198.18.0.0/15 is never
/// dialled).
const BIG: u8 = 100;
/// What the rogue resolver says `up.test` is: a sandbox that got this was not answered by the
/// gateway.
const ROGUE_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);

fn big_addrs() -> impl Iterator<Item = Ipv4Addr> {
    (1..=BIG).map(|i| Ipv4Addr::new(198, 18, 0, i))
}

/// The zone the gateway's upstream serves: `up.test` (the site), an IPv6-only name, a CNAME
/// chain to `up.test`, a name with [`BIG`] addresses, and a name the sandbox's policy denies.
fn test_zone(site: &Site) -> Zone {
    Zone::new("test")
        .site(site)
        .aaaa("v6only.test", [site.host.v6])
        .cname("alias.test", "mid.test")
        .cname("mid.test", "up.test")
        .a("big.test", big_addrs())
        .a("denied.test", [site.host.v4])
}

/// `[dns]` forwarding to `dns`'s IPv4 address.
fn upstream_config(dns: &UpstreamHost) -> String {
    format!("[dns]\nupstream = [\"{}\"]\n", dns.v4)
}

/// curl in `cgroup` with `fixture`'s resolv.conf, trusting `ca`, printing the body and then
/// the address it connected from.
fn curl(cgroup: &SandboxCgroup, fixture: &DnsFixture, ca: &std::path::Path, url: &str) -> Output {
    let mut curl = fixture.command(
        "curl",
        ["-sS", "--max-time", "15", "-w", "\n%{local_ip}", "--cacert"],
    );
    curl.arg(ca).arg(url);
    cgroup.output(None, &mut curl).unwrap()
}

/// The JSON body curl printed and the local address it connected from.
fn body_and_local(output: &Output) -> (Value, String) {
    let text = stdout_ok(output).unwrap();
    let (body, local) = text.trim_end().rsplit_once('\n').unwrap();
    (serde_json::from_str(body).unwrap(), local.to_owned())
}

/// Asserts the body came from the site as `name`, through the gateway's listener.
fn assert_through_gateway(output: &Output, name: &str) {
    let (body, local) = body_and_local(output);
    assert_eq!(body["host"], name, "{body}");
    assert!(
        local == "127.0.0.1" || local == "::1",
        "{name}: not through the gateway (from {local})"
    );
}

fn getent(cgroup: &SandboxCgroup, fixture: &DnsFixture, args: &[&str]) -> Output {
    cgroup
        .output(None, &mut fixture.command("getent", args))
        .unwrap()
}

#[test]
fn a_sandbox_asking_any_resolver_gets_the_gateways_answers_from_the_upstream() {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = Site::start(
        &pki,
        "up.test",
        &["up.test", "v6only.test", "alias.test", "mid.test"],
    )
    .unwrap();
    let upstream_host = UpstreamHost::new().unwrap();
    let upstream = TestDns::on_host(&upstream_host, &[test_zone(&site)]).unwrap();
    // The resolver the sandbox's resolv.conf names, with answers of its own.
    let rogue_host = UpstreamHost::new().unwrap();
    let rogue = TestDns::on_host(
        &rogue_host,
        &[Zone::new("test").a("up.test", [ROGUE_ANSWER])],
    )
    .unwrap();
    let fixture = DnsFixture::new(&[], rogue_host.v4.into()).unwrap();
    let cgroup = SandboxCgroup::new().unwrap();
    let config = format!(
        "{}{}",
        pki.trusted_config(),
        upstream_config(&upstream_host)
    );
    let mut daemon = Daemon::builder()
        .sandbox(format!("{},deny-host=denied.test", cgroup.path().display()))
        .config(&config)
        .rust_log("info,gateway::dns=debug")
        .start()
        .unwrap();
    let ca = daemon.ca_file();
    let rogue_v4 = rogue_host.v4.to_string();

    // curl by name: resolved through the gateway from the upstream, then intercepted.
    assert_through_gateway(&curl(&cgroup, &fixture, &ca, "https://up.test/"), "up.test");
    let output = getent(&cgroup, &fixture, &["ahosts", "up.test"]);
    let text = stdout_ok(&output).unwrap();
    for addr in [site.host.v4.to_string(), site.host.v6.to_string()] {
        assert!(text.contains(&addr), "getent: no {addr} in {text}");
    }
    assert!(!text.contains(&ROGUE_ANSWER.to_string()), "{text}");
    // The upstream was asked by the gateway, from the host's side of its link; the resolver the
    // sandbox named was never asked.
    let asked = upstream.queries_for("up.test");
    assert!(!asked.is_empty(), "the upstream was not asked");
    for query in &asked {
        assert_eq!(
            query.peer.ip(),
            IpAddr::from(upstream_host.host_v4),
            "{query:?}"
        );
    }
    daemon
        .wait_for("the answer's debug line", Duration::from_secs(10), |v| {
            v["message"] == "DNS query answered" && v["name"] == "up.test"
        })
        .unwrap();

    // A denied name: "Could not resolve host", and nobody upstream heard of it.
    let output = curl(&cgroup, &fixture, &ca, "https://denied.test/");
    assert_eq!(output.status.code(), Some(6), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Could not resolve host"),
        "{output:?}"
    );
    let line = daemon
        .wait_for("the refusal line", Duration::from_secs(10), |v| {
            v["message"] == "DNS query refused by policy" && v["name"] == "denied.test"
        })
        .unwrap();
    assert_eq!(line["rule"], "deny_hosts denied.test", "{line}");

    // NXDOMAIN is passed through with the zone's SOA (so clients cache it), and curl gives up.
    let result = dns_query(&cgroup, &["udp", &rogue_v4, "nosuch.test", "A"]).unwrap();
    assert_eq!(result["rcode"], 3, "{result}");
    assert_eq!(result["authorities"], 1, "no SOA: {result}");
    assert!(upstream.asked("nosuch.test"));
    let output = curl(&cgroup, &fixture, &ca, "https://nosuch.test/");
    assert_eq!(output.status.code(), Some(6), "{output:?}");

    // An IPv6-only name: A is NODATA, AAAA the address; curl gets there over IPv6.
    let result = dns_query(&cgroup, &["udp", &rogue_v4, "v6only.test", "A"]).unwrap();
    assert_eq!(
        (&result["rcode"], &result["answers"]),
        (&0.into(), &serde_json::json!([])),
        "{result}"
    );
    let result = dns_query(&cgroup, &["udp", &rogue_v4, "v6only.test", "AAAA"]).unwrap();
    assert_eq!(
        result["answers"],
        serde_json::json!([site.host.v6.to_string()]),
        "{result}"
    );
    let output = curl(&cgroup, &fixture, &ca, "https://v6only.test/");
    assert_through_gateway(&output, "v6only.test");
    assert_eq!(body_and_local(&output).1, "::1");

    // A CNAME chain: the whole chain, then the address; curl by the first name works.
    let result = dns_query(&cgroup, &["tcp", &rogue_v4, "alias.test", "A"]).unwrap();
    assert_eq!(
        result["cnames"],
        serde_json::json!(["mid.test", "up.test"]),
        "{result}"
    );
    assert_eq!(
        result["answers"],
        serde_json::json!([site.host.v4.to_string()]),
        "{result}"
    );
    assert_through_gateway(
        &curl(&cgroup, &fixture, &ca, "https://alias.test/"),
        "alias.test",
    );

    // A large answer: over UDP without EDNS the sandbox gets it truncated (TC), over TCP whole;
    // glibc retries over TCP by itself. The gateway got it from the upstream over TCP too.
    let result = dns_query(&cgroup, &["udp", &rogue_v4, "big.test", "A"]).unwrap();
    assert_eq!(result["tc"], true, "{result}");
    assert!(
        result["answers"].as_array().unwrap().len() < usize::from(BIG),
        "{result}"
    );
    let result = dns_query(&cgroup, &["tcp", &rogue_v4, "big.test", "A"]).unwrap();
    assert_eq!(result["tc"], false, "{result}");
    assert_eq!(
        result["answers"].as_array().unwrap().len(),
        usize::from(BIG),
        "{result}"
    );
    let output = getent(&cgroup, &fixture, &["ahostsv4", "big.test"]);
    let text = stdout_ok(&output).unwrap();
    for addr in big_addrs() {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{addr} "))),
            "getent: no {addr} in {text}"
        );
    }
    assert!(
        upstream
            .queries_for("big.test")
            .iter()
            .any(|q| q.protocol == Transport::Tcp),
        "the gateway never asked over TCP: {:?}",
        upstream.queries_for("big.test")
    );

    assert!(
        !upstream.asked("denied.test"),
        "the denied name reached the upstream"
    );
    assert_eq!(rogue.queries(), [], "the sandbox's own resolver was asked");
}

/// `openssl s_client` in `cgroup` to `addr:443` claiming `sni`; its output.
fn s_client(cgroup: &SandboxCgroup, addr: IpAddr, sni: &str) -> Output {
    let connect = match addr {
        IpAddr::V4(v4) => format!("{v4}:443"),
        IpAddr::V6(v6) => format!("[{v6}]:443"),
    };
    let mut command = cmd(
        "timeout",
        [
            "15",
            "openssl",
            "s_client",
            "-connect",
            &connect,
            "-servername",
            sni,
            "-brief",
        ],
    );
    command.stdin(std::process::Stdio::null());
    cgroup.output(None, &mut command).unwrap()
}

/// Asserts the handshake was refused with an `access_denied` alert, and the daemon logged the
/// connection to `addr` as SNI spoofing of `sni`.
fn assert_spoofing_refused(daemon: &mut Daemon, output: &Output, addr: IpAddr, sni: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(stderr.contains("access denied"), "{stderr}");
    let dst = match addr {
        IpAddr::V4(v4) => format!("{v4}:443"),
        IpAddr::V6(v6) => format!("[{v6}]:443"),
    };
    let line = daemon
        .wait_for("the spoofing line", Duration::from_secs(10), |v| {
            v["message"] == "connection failed" && v["orig_dst"] == dst && v["sni"] == sni
        })
        .unwrap();
    let error = line["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("SNI spoofing: {sni} is not a name DNS gave")),
        "{line}"
    );
}

#[test]
fn with_dns_binding_a_name_claimed_for_another_address_is_refused_as_spoofing() {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let good = Site::start(&pki, "good.test", &["good.test"]).unwrap();
    let other = Site::start(&pki, "other.test", &["other.test", "by.test"]).unwrap();
    let dns_host = UpstreamHost::new().unwrap();
    let zone = Zone::new("test")
        .a("good.test", [good.host.v4])
        .a("other.test", [other.host.v4])
        .aaaa("by.test", [other.host.v6]);
    let _dns = TestDns::on_host(&dns_host, &[zone]).unwrap();
    let fixture = DnsFixture::new(&[], dns_host.v4.into()).unwrap();
    let cgroup = SandboxCgroup::new().unwrap();
    let config = format!(
        "{}bypass = [\"by.test\"]\n{}",
        pki.trusted_config(),
        upstream_config(&dns_host)
    );
    // An allow-list turns binding on; plain HTTP is the site's port 8443.
    let mut daemon = Daemon::builder()
        .sandbox(format!(
            "{},allow-host=good.test,allow-host=other.test,allow-host=by.test,http-port=8443",
            cgroup.path().display()
        ))
        .config(&config)
        .start()
        .unwrap();
    let ca = daemon.ca_file();

    // Both names resolve and work.
    assert_through_gateway(
        &curl(&cgroup, &fixture, &ca, "https://good.test/"),
        "good.test",
    );
    assert_through_gateway(
        &curl(&cgroup, &fixture, &ca, "https://other.test/"),
        "other.test",
    );
    let output = getent(&cgroup, &fixture, &["ahosts", "by.test"]);
    assert!(
        stdout_ok(&output)
            .unwrap()
            .contains(&other.host.v6.to_string())
    );

    let good_watch = Watcher::start(&good.host.ns, 443).unwrap();
    let other_watch = Watcher::start(&other.host.ns, 443).unwrap();
    let other_plain = Watcher::start(&other.host.ns, 8443).unwrap();
    // An allowed, intercepted name for another allowed address.
    let output = s_client(&cgroup, other.host.v4.into(), "good.test");
    assert_spoofing_refused(&mut daemon, &output, other.host.v4.into(), "good.test");
    // A bypass name for an address bound to an intercepted name: no unobserved tunnel.
    let output = s_client(&cgroup, good.host.v4.into(), "by.test");
    assert_spoofing_refused(&mut daemon, &output, good.host.v4.into(), "by.test");
    // Plain HTTP: the Host header is held to the same rule.
    let mut command = cmd(
        "curl",
        [
            "-sS",
            "--max-time",
            "15",
            "-H",
            "Host: good.test",
            "-w",
            "\n%{http_code}",
        ],
    );
    command.arg(format!("http://{}:8443/", other.host.v4));
    let text = stdout_ok(&cgroup.output(None, &mut command).unwrap()).unwrap();
    let (page, code) = text.trim_end().rsplit_once('\n').unwrap();
    assert_eq!(code, "403", "{text}");
    assert!(page.contains("Host spoofing"), "{page}");

    assert_eq!(
        good_watch.finish().unwrap().0,
        0,
        "a spoofed name reached good.test"
    );
    assert_eq!(
        other_watch.finish().unwrap().0,
        0,
        "a spoofed name reached other.test"
    );
    assert_eq!(
        other_plain.finish().unwrap().0,
        0,
        "a spoofed Host reached other.test"
    );
}
