//! Containment: every connect and send of a sandbox is judged in eBPF (addresses, ports,
//! protocols, socket kinds) and every name at the gateway (SNI, Host). Real clients in real
//! sandbox cgroups; upstreams and packet watchers in test namespaces check what arrived.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly, with the error, on any setup failure"
)]

use std::{
    net::IpAddr,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use gateway_tests::{
    cmd,
    daemon::Daemon,
    net::{NetNs, UpstreamHost},
    pki::TestPki,
    py_script, require_root, run,
    sandbox::{SandboxCgroup, stdout_ok},
    upstream::{Site, Upstream},
    watch::Watcher,
};
use serde_json::Value;

struct Env {
    pki: TestPki,
    cgroup: SandboxCgroup,
}

impl Env {
    fn new() -> Env {
        require_root().unwrap();
        Env {
            pki: TestPki::new("gateway-tests upstream CA").unwrap(),
            cgroup: SandboxCgroup::new().unwrap(),
        }
    }

    /// A daemon serving this sandbox with `options` (`,allow-host=..`) and `config`.
    fn daemon(&self, options: &str, config: &str) -> Daemon {
        Daemon::builder()
            .sandbox(format!("{}{options}", self.cgroup.path().display()))
            .config(&format!("{}{config}", self.pki.trusted_config()))
            .start()
            .unwrap()
    }

    fn run(&self, command: &mut Command) -> Output {
        self.cgroup.output(None, command).unwrap()
    }

    /// Runs tests/py/probe.py inside the sandbox and returns its verdict.
    fn probe(&self, args: &[&str]) -> Value {
        let mut probe = cmd("python3", [py_script("probe.py").to_str().unwrap()]);
        let output = self.run(probe.args(args));
        serde_json::from_str(stdout_ok(&output).unwrap().trim()).unwrap()
    }
}

fn assert_eperm(result: &Value, what: &str) {
    assert_eq!(result["ok"], false, "{what}: {result}");
    assert_eq!(result["errno"], "EPERM", "{what}: {result}");
}

/// curl to `name` pinned to `ip:port`, trusting `ca`.
fn curl(ca: &Path, scheme: &str, name: &str, ip: IpAddr, port: u16, path: &str) -> Command {
    let addr = if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let mut command = cmd(
        "curl",
        [
            "-sS",
            "--max-time",
            "15",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("{name}:{port}:{addr}"),
        ],
    );
    command.arg(format!("{scheme}://{name}:{port}{path}"));
    command
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The refusal line logged for `destination`.
fn refusal_line(daemon: &mut Daemon, destination: &str) -> Value {
    let destination = destination.to_owned();
    daemon
        .wait_for("the refusal line", Duration::from_secs(10), move |v| {
            v["message"] == "refused by policy" && v["destination"] == destination.as_str()
        })
        .unwrap()
}

#[test]
fn host_loopback_and_denied_ranges_fail_at_connect_and_send_nothing() {
    let env = Env::new();
    let site = Site::start(&env.pki, "up-a.test", &["up-a.test"]).unwrap();
    let denied = Site::start(&env.pki, "up-b.test", &["up-b.test"]).unwrap();
    // A service on the host's loopback, which the sandbox must not reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let local_port = listener.local_addr().unwrap().port();
    let listener6 = std::net::TcpListener::bind("[::1]:0").unwrap();
    let local6_port = listener6.local_addr().unwrap().port();
    let mut daemon = env.daemon(&format!(",deny-cidr={}/32", denied.host.v4), "");

    // Allowed: intercepted as usual.
    let ok = env.run(&mut curl(
        &daemon.ca_file(),
        "https",
        "up-a.test",
        site.host.v4.into(),
        443,
        "/",
    ));
    assert_eq!(json(&stdout_ok(&ok).unwrap())["name"], "up-a.test");

    let watcher = Watcher::start(&denied.host.ns, 443).unwrap();
    assert_eperm(
        &env.probe(&["tcp", &denied.host.v4.to_string(), "443"]),
        "denied CIDR",
    );
    let output = env.run(&mut curl(
        &daemon.ca_file(),
        "https",
        "up-b.test",
        denied.host.v4.into(),
        443,
        "/",
    ));
    assert!(!output.status.success());
    assert_eq!(
        watcher.finish().unwrap(),
        (0, 0),
        "a SYN reached the denied upstream"
    );
    let line = refusal_line(&mut daemon, &format!("{}:443", denied.host.v4));
    assert_eq!(line["reason"], "address");
    assert_eq!(line["protocol"], "tcp");
    assert_eq!(
        line["rule"],
        format!("deny {}/32 (deny_cidrs[0])", denied.host.v4)
    );

    for (target, port) in [
        ("127.0.0.1", local_port),
        ("::1", local6_port),
        ("::ffff:127.0.0.1", local_port),
        ("0.0.0.0", local_port),
    ] {
        assert_eperm(&env.probe(&["tcp", target, &port.to_string()]), target);
    }
    let curl_local = env.run(&mut cmd(
        "curl",
        [
            "-sS",
            "-v",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{local_port}/"),
        ],
    ));
    assert!(!curl_local.status.success());
    assert!(
        stderr(&curl_local).contains("Operation not permitted"),
        "{}",
        stderr(&curl_local)
    );
    let line = refusal_line(&mut daemon, &format!("127.0.0.1:{local_port}"));
    assert_eq!(line["rule"], "deny 127.0.0.0/8 (built in: loopback)");
    // The listener never saw a connection.
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err());
}

#[test]
fn link_local_addresses_are_refused_before_any_packet() {
    let env = Env::new();
    let host = UpstreamHost::new().unwrap();
    // A link-local network on the test host's link (never the real metadata address).
    let subnet = 100 + (std::process::id() % 100) as u8;
    let (ours, theirs) = (format!("169.254.{subnet}.1"), format!("169.254.{subnet}.2"));
    run(&mut cmd(
        "ip",
        ["addr", "add", &format!("{ours}/24"), "dev", &host.veth],
    ))
    .unwrap();
    let peer = format!("{}p", host.veth);
    run(&mut host
        .ns
        .exec("ip", ["addr", "add", &format!("{theirs}/24"), "dev", &peer]))
    .unwrap();
    let cert = env.pki.issue("ll", &["ll.test"], &[]).unwrap();
    let _server =
        Upstream::start(&host.ns, "ll.test", &cert, &[], &[format!("{theirs}:8080")]).unwrap();
    // Reachable from outside the sandbox: the refusal is the policy's, not the network's.
    let direct = run(&mut cmd(
        "curl",
        ["-sS", "--max-time", "5", &format!("http://{theirs}:8080/")],
    ))
    .unwrap();
    assert_eq!(
        json(&String::from_utf8_lossy(&direct.stdout))["name"],
        "ll.test"
    );
    let mut daemon = env.daemon(",allow-tcp-port=8080", "");

    let watcher = Watcher::start(&host.ns, 8080).unwrap();
    assert_eperm(&env.probe(&["tcp", &theirs, "8080"]), "link-local");
    assert_eq!(watcher.finish().unwrap(), (0, 0));
    let line = refusal_line(&mut daemon, &format!("{theirs}:8080"));
    assert_eq!(line["rule"], "deny 169.254.0.0/16 (built in: link-local)");
}

#[test]
fn ports_are_refused_unless_allowed() {
    let env = Env::new();
    let host = UpstreamHost::new().unwrap();
    let cert = env.pki.issue("ssh", &["ssh.test"], &[]).unwrap();
    let _server = Upstream::start(
        &host.ns,
        "ssh.test",
        &cert,
        &[],
        &[format!("{}:22", host.v4)],
    )
    .unwrap();
    let closed = SandboxCgroup::new().unwrap();
    let open = SandboxCgroup::new().unwrap();
    let mut daemon = Daemon::builder()
        .sandbox(closed.path().display().to_string())
        .sandbox(format!("{},allow-tcp-port=22", open.path().display()))
        .start()
        .unwrap();
    let probe = |cgroup: &SandboxCgroup| {
        let output = cgroup
            .output(
                None,
                &mut cmd(
                    "python3",
                    [
                        py_script("probe.py").to_str().unwrap(),
                        "tcp",
                        &host.v4.to_string(),
                        "22",
                    ],
                ),
            )
            .unwrap();
        json(&stdout_ok(&output).unwrap())
    };

    let watcher = Watcher::start(&host.ns, 22).unwrap();
    assert_eperm(&probe(&closed), "port 22 by default");
    assert_eq!(watcher.finish().unwrap(), (0, 0));
    let line = refusal_line(&mut daemon, &format!("{}:22", host.v4));
    assert_eq!(line["reason"], "tcp_port");

    assert_eq!(probe(&open)["ok"], true);
    let reached = open
        .output(
            None,
            &mut cmd(
                "curl",
                ["-sS", "--max-time", "5", &format!("http://{}:22/", host.v4)],
            ),
        )
        .unwrap();
    assert_eq!(json(&stdout_ok(&reached).unwrap())["name"], "ssh.test");
}

#[test]
fn udp_is_refused_dns_goes_to_the_gateway_and_raw_sockets_are_never_made() {
    let env = Env::new();
    let host = UpstreamHost::new().unwrap();
    let cert = env.pki.issue("dns", &["dns.test"], &[]).unwrap();
    let _server = Upstream::start_with(
        &host.ns,
        "dns.test",
        &cert,
        &[],
        &[],
        &[
            "--udp",
            &format!("{}:53", host.v4),
            "--udp",
            &format!("{}:443", host.v4),
        ],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {}\n", host.v4)).unwrap();
    let mut daemon = env.daemon(
        "",
        &format!(
            "[policy]\nresolv_conf = {:?}\n",
            resolv.display().to_string()
        ),
    );
    let v4 = host.v4.to_string();

    let watcher = Watcher::start(&host.ns, 443).unwrap();
    let quic = env.probe(&["udp", &v4, "443"]);
    assert_eperm(&quic, "UDP to 443 (QUIC)");
    assert_eperm(
        &env.probe(&["udp-connect", &v4, "443"]),
        "connected UDP to 443",
    );
    assert_eq!(watcher.finish().unwrap(), (0, 0));
    assert_eq!(
        refusal_line(&mut daemon, &format!("{v4}:443"))["reason"],
        "quic"
    );

    // DNS (port 53, UDP and TCP, to the resolver or any other address) goes to the gateway's
    // DNS service, never to the wire: the resolver's echo service sees nothing (the gateway
    // does not answer a datagram that is not DNS).
    let watcher = Watcher::start(&host.ns, 53).unwrap();
    let dns = env.probe(&["udp", &v4, "53", "--reply"]);
    assert_ne!(dns["reply"], "echo:probe", "{dns}");
    assert_eq!(env.probe(&["tcp", &v4, "53"])["ok"], true);
    assert_eq!(env.probe(&["udp", &host.v6.to_string(), "53"])["ok"], true);
    assert_eq!(watcher.finish().unwrap(), (0, 0), "DNS reached the wire");
    assert_eperm(&env.probe(&["udp", &v4, "5353"]), "another UDP port");

    // In a namespace where every group may ping, outside the sandbox these sockets can be
    // made; inside, the program refuses them.
    let ns = NetNs::new("gwp").unwrap();
    run(&mut ns.exec("sysctl", ["-qw", "net.ipv4.ping_group_range=0 2147483647"])).unwrap();
    let probe = py_script("probe.py");
    for kind in ["raw", "ping", "ping6"] {
        let outside =
            run(&mut ns.exec("python3", [probe.to_str().unwrap(), "socket", kind])).unwrap();
        assert_eq!(
            json(&String::from_utf8_lossy(&outside.stdout))["ok"],
            true,
            "{kind} outside the sandbox"
        );
        let mut inside = cmd("python3", [probe.to_str().unwrap(), "socket", kind]);
        let inside = env.cgroup.output(Some(&ns), &mut inside).unwrap();
        assert_eperm(&json(&stdout_ok(&inside).unwrap()), kind);
    }
    let line = daemon
        .wait_for("a socket refusal", Duration::from_secs(10), |v| {
            v["message"] == "refused by policy" && v["reason"] == "socket"
        })
        .unwrap();
    assert!(
        line["rule"]
            .as_str()
            .unwrap()
            .starts_with("only TCP and UDP sockets"),
        "{line}"
    );

    // A TCP Fast Open connect, carried by a send, is judged like a connect.
    assert_eperm(
        &env.probe(&["fastopen", "127.0.0.1", "80"]),
        "TFO to loopback",
    );

    // The counters, as an operator reads them.
    let mut dump = cmd("bpftool", ["map", "dump", "pinned"]);
    let dump = run(dump.arg(daemon.pin_dir().join("refusals"))).unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    for field in ["\"quic\"", "\"udp_port\"", "\"socket\""] {
        assert!(dump.contains(field), "no {field} in {dump}");
    }
}

/// The upstream for name tests: HTTPS on 443 as `name` (certificate for `names`).
fn names_site(env: &Env) -> Site {
    Site::start(
        &env.pki,
        "names.test",
        &["allowed.test", "denied.test", "pay.bank.test"],
    )
    .unwrap()
}

fn assert_forbidden(output: &Output, host: &str, rule: &str) {
    let text = stdout_ok(output).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(status, "403", "{text}");
    assert!(body.contains(host), "{body}");
    assert!(body.contains(rule), "{body}");
}

#[test]
fn denied_names_get_a_403_page_over_h1_and_h2_and_the_upstream_sees_nothing() {
    let env = Env::new();
    let site = names_site(&env);
    let mut daemon = env.daemon(",deny-host=denied.test", "");
    let ip = site.host.v4.into();

    let watcher = Watcher::start(&site.host.ns, 443).unwrap();
    for version in ["--http1.1", "--http2"] {
        let mut request = curl(&daemon.ca_file(), "https", "denied.test", ip, 443, "/");
        request.args([version, "-w", "\n%{http_code}"]);
        assert_forbidden(
            &env.run(&mut request),
            "denied.test",
            "deny_hosts denied.test",
        );
    }
    assert_eq!(
        watcher.finish().unwrap(),
        (0, 0),
        "the upstream was contacted for a denied name"
    );
    let line = daemon
        .wait_for("the forbidden line", Duration::from_secs(10), |v| {
            v["message"] == "connection closed" && v["mode"] == "forbidden"
        })
        .unwrap();
    assert_eq!(line["sni"], "denied.test");

    // Same address, allowed name: intercepted as usual.
    let ok = env.run(&mut curl(
        &daemon.ca_file(),
        "https",
        "allowed.test",
        ip,
        443,
        "/",
    ));
    assert_eq!(json(&stdout_ok(&ok).unwrap())["name"], "names.test");
}

#[test]
fn allow_list_mode_forbids_other_names_and_denied_bypass_names_get_an_alert() {
    let env = Env::new();
    let site = names_site(&env);
    // Names only: curl dials the address itself (--resolve), so no DNS answer binds the names
    // there, which an allow-list's DNS binding would otherwise require.
    let mut daemon = env.daemon(
        ",allow-host=allowed.test,allow-host=*.bank.test,dns-binding=off",
        // Appended to the [tls] table of the trusted config.
        "bypass = [\"*.bank.test\"]\n[policy]\ndeny_hosts = [\"pay.bank.test\"]\n",
    );
    let ip = site.host.v4.into();
    let ok = env.run(&mut curl(
        &daemon.ca_file(),
        "https",
        "allowed.test",
        ip,
        443,
        "/",
    ));
    assert_eq!(json(&stdout_ok(&ok).unwrap())["name"], "names.test");

    let mut other = curl(&daemon.ca_file(), "https", "denied.test", ip, 443, "/");
    other.args(["-w", "\n%{http_code}"]);
    assert_forbidden(
        &env.run(&mut other),
        "denied.test",
        "allow_hosts (no pattern matches)",
    );

    let bypassed = env.run(&mut curl(
        &daemon.ca_file(),
        "https",
        "pay.bank.test",
        ip,
        443,
        "/",
    ));
    assert!(!bypassed.status.success());
    assert!(
        stderr(&bypassed).to_lowercase().contains("access denied"),
        "{}",
        stderr(&bypassed)
    );
    let line = daemon
        .wait_for("the bypass refusal", Duration::from_secs(10), |v| {
            v["message"] == "connection failed" && v["sni"] == "pay.bank.test"
        })
        .unwrap();
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("deny_hosts pay.bank.test"),
        "{line}"
    );
}

/// A host serving plain HTTP on port 80 as `plain.test`.
fn http_site(env: &Env) -> (UpstreamHost, Upstream) {
    let host = UpstreamHost::new().unwrap();
    let cert = env.pki.issue("plain", &["plain.test"], &[]).unwrap();
    let server = Upstream::start(
        &host.ns,
        "plain.test",
        &cert,
        &[],
        &[format!("{}:80", host.v4)],
    )
    .unwrap();
    (host, server)
}

#[test]
fn plain_http_goes_through_the_gateway_with_keep_alive_chunks_and_websockets() {
    let env = Env::new();
    let (host, _server) = http_site(&env);
    let mut daemon = env.daemon(",deny-host=blocked.test", "");
    let ip: IpAddr = host.v4.into();
    let ca = daemon.ca_file();

    // Three requests on one client connection, served by one upstream connection.
    let mut three = curl(&ca, "http", "plain.test", ip, 80, "/");
    three.args([
        "http://plain.test:80/",
        "http://plain.test:80/",
        "-w",
        "\n%{num_connects}\n",
    ]);
    let text = stdout_ok(&env.run(&mut three)).unwrap();
    let bodies: Vec<Value> = text
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(json)
        .collect();
    assert_eq!(bodies.len(), 3, "{text}");
    assert!(
        bodies
            .iter()
            .all(|b| b["host"] == "plain.test" && b["conn"] == bodies[0]["conn"]),
        "{text}"
    );
    let connects: Vec<&str> = text
        .lines()
        .filter(|l| l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty())
        .collect();
    assert_eq!(
        connects
            .iter()
            .map(|c| c.parse::<u32>().unwrap())
            .sum::<u32>(),
        1,
        "{text}"
    );

    // A chunked upload streamed through.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    let mut post = curl(&ca, "http", "plain.test", ip, 80, "/sha256");
    post.args(["-H", "Transfer-Encoding: chunked", "--data-binary"])
        .arg(format!("@{}", file.display()));
    let answer = json(&stdout_ok(&env.run(&mut post)).unwrap());
    assert_eq!(answer["length"], body.len());
    assert_eq!(answer["chunked"], true);
    let expected = run(&mut cmd("sha256sum", [file.to_str().unwrap()])).unwrap();
    assert_eq!(
        answer["sha256"],
        String::from_utf8_lossy(&expected.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    );

    // A WebSocket echo after the 101.
    let ws = env.probe(&["ws", &host.v4.to_string(), "80", "/ws", "plain.test"]);
    assert_eq!(ws["ok"], true, "{ws}");

    // A denied Host gets the gateway's 403 (the Host, not the address, is judged).
    let mut blocked = curl(&ca, "http", "blocked.test", ip, 80, "/");
    blocked.args(["-w", "\n%{http_code}"]);
    assert_forbidden(
        &env.run(&mut blocked),
        "blocked.test",
        "deny_hosts blocked.test",
    );

    let request_line = daemon
        .wait_for("a request line", Duration::from_secs(10), |v| {
            v["message"] == "http request" && v["method"] == "POST"
        })
        .unwrap();
    assert_eq!(request_line["host"], "plain.test");
    assert_eq!(request_line["status"], 200);
    assert!(
        request_line.get("path").is_none(),
        "paths only at debug: {request_line}"
    );
}

#[test]
fn bytes_that_are_not_http_on_an_http_port_follow_plain_tcp() {
    let env = Env::new();
    let (host, _server) = http_site(&env);
    let mut daemon = env.daemon("", "");
    let result = env.probe(&["tcp", &host.v4.to_string(), "80"]);
    assert_eq!(
        result["ok"], true,
        "the connect itself is redirected, not refused"
    );
    let raw = env.run(&mut cmd(
        "python3",
        [
            py_script("client.py").to_str().unwrap(),
            "raw",
            &host.v4.to_string(),
            "80",
            &hex(b"SSH-2.0-OpenSSH\r\n"),
            "5",
        ],
    ));
    let raw = json(&stdout_ok(&raw).unwrap());
    assert_eq!(raw["closed_by_peer"], true, "{raw}");
    assert_eq!(raw["received_hex"], "");
    let line = daemon
        .wait_for("the refusal", Duration::from_secs(10), |v| {
            v["message"] == "connection failed"
                && v["error"].as_str().is_some_and(|e| e.contains("not HTTP"))
        })
        .unwrap();
    assert_eq!(line["mode"], "none");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
