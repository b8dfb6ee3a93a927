//! `gateway run`: a sandbox cgroup's TCP/443 reaches the gateway, which relays it to where the
//! sandbox meant to go. Real curl/python clients in real cgroups, real upstreams in a netns.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly, with the error, on any setup failure"
)]

use std::{net::IpAddr, path::Path, process::Command, time::Duration};

use gateway_common::Counter;
use gateway_tests::{
    cmd,
    daemon::Daemon,
    net::NetNs,
    pki::TestPki,
    py_script, require_root,
    sandbox::{SandboxCgroup, stdout_ok},
    upstream::Site,
};
use serde_json::Value;

/// curl https://<site>/ resolved to the site's address of the given family, trusting `ca`.
fn curl(ca: &Path, site: &Site, v6: bool) -> Command {
    let ip = match site.host.addr(v6) {
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let mut command = cmd("curl", ["-sS", "--fail", "--max-time", "15", "--cacert"]);
    command.arg(ca);
    command.args([
        "--resolve",
        &format!("{}:443:{ip}", site.name),
        &format!("https://{}/", site.name),
    ]);
    command
}

/// A test CA, the site `up-a.test`, a sandbox cgroup in the host namespace and a daemon for it.
fn one_site_one_sandbox() -> (TestPki, Site, SandboxCgroup, Daemon) {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = Site::start(&pki, "up-a.test", &["up-a.test"]).unwrap();
    let cgroup = SandboxCgroup::new().unwrap();
    let daemon = Daemon::builder()
        .sandbox(sandbox_spec(&cgroup, None))
        .config(&pki.trusted_config())
        .start()
        .unwrap();
    (pki, site, cgroup, daemon)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn sandbox_spec(cgroup: &SandboxCgroup, netns: Option<&NetNs>) -> String {
    let mut spec = cgroup.path().display().to_string();
    if let Some(ns) = netns {
        spec.push_str(&format!(",netns={}", ns.path().display()));
    }
    spec
}

/// Waits for the daemon's log line of the relayed connection to `orig_dst`.
fn relayed_line(daemon: &mut Daemon, orig_dst: &str) -> Value {
    daemon
        .wait_for(
            &format!("a relayed connection to {orig_dst}"),
            Duration::from_secs(10),
            |v| v["message"] == "connection closed" && v["orig_dst"] == orig_dst,
        )
        .expect("relay log line")
}

fn sandbox_curl_goes_through_gateway(v6: bool) {
    let (_pki, site, cgroup, mut daemon) = one_site_one_sandbox();

    let body = json(
        &stdout_ok(
            &cgroup
                .output(None, &mut curl(&daemon.ca_file(), &site, v6))
                .unwrap(),
        )
        .unwrap(),
    );
    assert_eq!(body["name"], "up-a.test");
    let peer = body["peer"].as_str().unwrap().to_string();
    let host_side = site.host.host_addr(v6).to_string();
    assert!(
        peer.contains(&host_side),
        "upstream saw {peer}, expected the host side of the veth {host_side}"
    );

    // The connection the upstream saw is the one the gateway dialled for this sandbox.
    let line = relayed_line(&mut daemon, &site.socket(v6, 443));
    assert_eq!(
        line["upstream_local"].as_str(),
        Some(peer.as_str()),
        "{line}"
    );
    assert_eq!(line["outcome"], "ok");
    assert!(line["bytes_down"].as_u64().unwrap() > 0);

    let redirected = if v6 {
        Counter::RedirectedV6
    } else {
        Counter::RedirectedV4
    };
    assert_eq!(daemon.counter(redirected).unwrap(), 1);
    assert_eq!(daemon.counter(Counter::Established).unwrap(), 1);
    assert_eq!(daemon.counter(Counter::MapErrors).unwrap(), 0);
}

#[test]
fn sandbox_curl_v4_goes_through_gateway() {
    sandbox_curl_goes_through_gateway(false);
}

#[test]
fn sandbox_curl_v6_goes_through_gateway() {
    sandbox_curl_goes_through_gateway(true);
}

#[test]
fn parallel_connections_reach_their_own_destinations() {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let a = Site::start(&pki, "up-a.test", &["up-a.test"]).unwrap();
    let b = Site::start(&pki, "up-b.test", &["up-b.test"]).unwrap();
    let cgroup = SandboxCgroup::new().unwrap();
    let mut daemon = Daemon::builder()
        .sandbox(sandbox_spec(&cgroup, None))
        .config(&pki.trusted_config())
        .start()
        .unwrap();

    let mut client = cmd("python3", [py_script("client.py")]);
    client
        .args(["parallel", "--count", "50", "--cafile"])
        .arg(daemon.ca_file());
    for site in [&a, &b] {
        client.args([
            "--target",
            &format!("{}={}", site.name, site.socket(false, 443)),
        ]);
    }
    let results = json(&stdout_ok(&cgroup.output(None, &mut client).unwrap()).unwrap());
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 50);
    for result in results {
        assert!(result.get("error").is_none(), "request failed: {result}");
        assert_eq!(
            result["answered_by"], result["target"],
            "answered by the wrong upstream: {result}"
        );
    }
    assert_eq!(
        results
            .iter()
            .filter(|r| r["answered_by"] == "up-a.test")
            .count(),
        25
    );

    daemon
        .wait_until("50 relayed connections", Duration::from_secs(10), |d| {
            d.messages("connection closed").len() >= 50
        })
        .unwrap();
    let closed = daemon.messages("connection closed");
    assert_eq!(closed.len(), 50);
    for site in [&a, &b] {
        let to_site = closed
            .iter()
            .filter(|v| v["orig_dst"] == site.socket(false, 443).as_str())
            .count();
        assert_eq!(to_site, 25, "relays to {}", site.name);
    }
    assert_eq!(daemon.counter(Counter::RedirectedV4).unwrap(), 50);
}

#[test]
fn outside_processes_and_allowed_ports_are_untouched() {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = Site::start(&pki, "up-a.test", &["up-a.test"]).unwrap();
    let cgroup = SandboxCgroup::new().unwrap();
    let daemon = Daemon::builder()
        .sandbox(format!(
            "{},allow-tcp-port=8443",
            sandbox_spec(&cgroup, None)
        ))
        .config(&pki.trusted_config())
        .start()
        .unwrap();

    // Not in the cgroup: reaches the upstream directly.
    let body = json(&stdout_ok(&curl(&pki.ca_file(), &site, false).output().unwrap()).unwrap());
    assert_eq!(body["name"], "up-a.test");

    // In the cgroup, to a port that is not intercepted but allowed: direct, not redirected.
    let url = format!("http://{}/", site.socket(false, 8443));
    let mut plain = cmd("curl", ["-sS", "--fail", "--max-time", "15", &url]);
    let body = json(&stdout_ok(&cgroup.output(None, &mut plain).unwrap()).unwrap());
    assert_eq!(body["name"], "up-a.test");

    std::thread::sleep(Duration::from_millis(300));
    assert!(
        daemon.messages("connection closed").is_empty(),
        "{:#?}",
        daemon.logs()
    );
    assert!(
        daemon.messages("connection failed").is_empty(),
        "{:#?}",
        daemon.logs()
    );
    assert_eq!(daemon.counter(Counter::RedirectedV4).unwrap(), 0);
    assert_eq!(daemon.counter(Counter::Established).unwrap(), 0);
}

#[test]
fn sandbox_with_only_loopback_reaches_upstream_through_gateway() {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = Site::start(&pki, "up-a.test", &["up-a.test"]).unwrap();
    let cgroup = SandboxCgroup::new().unwrap();
    let netns = NetNs::new("gws").unwrap();

    // Without the gateway the sandbox's namespace has no route anywhere.
    let direct = cgroup
        .output(Some(&netns), &mut curl(&pki.ca_file(), &site, false))
        .unwrap();
    assert!(
        !direct.status.success(),
        "reached upstream without the gateway"
    );

    let mut daemon = Daemon::builder()
        .sandbox(sandbox_spec(&cgroup, Some(&netns)))
        .config(&pki.trusted_config())
        .start()
        .unwrap();
    for v6 in [false, true] {
        let body = json(
            &stdout_ok(
                &cgroup
                    .output(Some(&netns), &mut curl(&daemon.ca_file(), &site, v6))
                    .unwrap(),
            )
            .unwrap(),
        );
        assert_eq!(body["name"], "up-a.test");
        assert!(
            body["peer"]
                .as_str()
                .unwrap()
                .contains(&site.host.host_addr(v6).to_string())
        );
        relayed_line(&mut daemon, &site.socket(v6, 443));
    }
}

#[test]
fn dialling_the_listener_directly_is_refused() {
    require_root().unwrap();
    let cgroup = SandboxCgroup::new().unwrap();
    let mut daemon = Daemon::builder()
        .sandbox(sandbox_spec(&cgroup, None))
        .start()
        .unwrap();
    let port = daemon.listener_port(1).unwrap();

    let mut client = cmd("python3", [py_script("client.py")]);
    client.args(["connect", "127.0.0.1", &port.to_string()]);
    let result = json(&stdout_ok(&cgroup.output(None, &mut client).unwrap()).unwrap());
    assert_eq!(
        result["connected"], false,
        "the listener was reached: {result}"
    );
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .contains("Operation not permitted"),
        "{result}"
    );

    // Refused at connect(), as the host's loopback: the listener never saw it.
    let destination = format!("127.0.0.1:{port}");
    let line = daemon
        .wait_for("the refusal", Duration::from_secs(10), |v| {
            v["message"] == "refused by policy" && v["destination"] == destination.as_str()
        })
        .unwrap();
    assert_eq!(line["rule"], "deny 127.0.0.0/8 (built in: loopback)");
    assert!(daemon.messages("connection failed").is_empty());
}

#[test]
fn sandbox_traffic_fails_closed_when_the_daemon_dies() {
    let (_pki, site, cgroup, mut daemon) = one_site_one_sandbox();
    stdout_ok(
        &cgroup
            .output(None, &mut curl(&daemon.ca_file(), &site, false))
            .unwrap(),
    )
    .unwrap();

    daemon.crash().unwrap();
    assert!(
        daemon.pin_dir().join("links").read_dir().unwrap().count() == 10,
        "links must stay pinned"
    );
    let after = cgroup
        .output(None, &mut curl(&daemon.ca_file(), &site, false))
        .unwrap();
    assert!(
        !after.status.success(),
        "sandbox reached upstream with the daemon dead: {after:?}"
    );
    // curl exit 7: could not connect (the redirect still applies, nobody listens).
    assert_eq!(after.status.code(), Some(7), "{after:?}");
}

/// What `bpftool cgroup show` lists for the sandbox's cgroup.
fn attached_programs(cgroup: &SandboxCgroup) -> String {
    stdout_ok(
        &cmd("bpftool", ["cgroup", "show"])
            .arg(cgroup.path())
            .output()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn clean_stop_stays_attached_and_down_detaches_and_unpins() {
    require_root().unwrap();
    let cgroup = SandboxCgroup::new().unwrap();
    let mut daemon = Daemon::builder()
        .sandbox(sandbox_spec(&cgroup, None))
        .start()
        .unwrap();
    let tree = attached_programs(&cgroup);
    for program in [
        "gateway_connect4",
        "gateway_connect6",
        "gateway_sock_ops",
        "gateway_recvmsg4",
        "gateway_getpeername6",
    ] {
        assert!(tree.contains(program), "{program} not attached: {tree}");
    }
    // A clean stop fails closed: the programs stay attached, their pins stay.
    assert!(daemon.stop().unwrap().success());
    assert!(
        daemon.pin_dir().join("links").exists(),
        "pins removed on stop"
    );
    let tree = attached_programs(&cgroup);
    assert!(
        tree.contains("gateway_connect4"),
        "detached on stop: {tree}"
    );

    // `gateway down` with no daemon running is the deliberate way out.
    let down = daemon
        .control([
            std::ffi::OsStr::new("down"),
            "--pin-dir".as_ref(),
            daemon.pin_dir().as_os_str(),
        ])
        .unwrap();
    assert!(down.status.success(), "{down:?}");
    assert!(!daemon.pin_dir().exists(), "pins left behind by down");
    let tree = attached_programs(&cgroup);
    assert!(!tree.contains("gateway_"), "programs left attached: {tree}");
}

#[test]
fn v4_mapped_ipv6_connects_are_redirected_as_ipv4() {
    let (_pki, site, cgroup, mut daemon) = one_site_one_sandbox();

    // An AF_INET6 socket dialling ::ffff:a.b.c.d, as dual-stack programs do.
    let script = format!(
        "import socket, ssl\n\
         s = socket.socket(socket.AF_INET6)\n\
         s.connect(('::ffff:{ip}', 443))\n\
         t = ssl.create_default_context(cafile='{ca}').wrap_socket(s, server_hostname='up-a.test')\n\
         t.sendall(b'GET / HTTP/1.1\\r\\nHost: up-a.test\\r\\nConnection: close\\r\\n\\r\\n')\n\
         data = b''\n\
         while chunk := t.recv(4096): data += chunk\n\
         print(data.split(b'\\r\\n\\r\\n', 1)[1].decode())\n",
        ip = site.host.v4,
        ca = daemon.ca_file().display(),
    );
    let body = json(
        &stdout_ok(
            &cgroup
                .output(None, &mut cmd("python3", ["-c", &script]))
                .unwrap(),
        )
        .unwrap(),
    );
    assert_eq!(body["name"], "up-a.test");
    relayed_line(&mut daemon, &site.socket(false, 443));
    assert_eq!(daemon.counter(Counter::RedirectedV4).unwrap(), 1);
    assert_eq!(daemon.counter(Counter::RedirectedV6).unwrap(), 0);
}

#[test]
fn processes_in_a_child_cgroup_of_a_sandbox_are_redirected_too() {
    let (_pki, site, cgroup, mut daemon) = one_site_one_sandbox();
    // A sandboxed program may create sub-cgroups (systemd-run, container runtimes): the programs
    // run for descendants, and the sandbox is found among the task's cgroup ancestors.
    let mount = gateway::sandbox::cgroup::cgroup2_mount().unwrap();
    let child_name = cgroup.path().strip_prefix(&mount).unwrap().join("child");
    let child =
        gateway::sandbox::cgroup::TransientCgroup::create(child_name.to_str().unwrap()).unwrap();
    let confinement = gateway::sandbox::Confinement::new(child.cgroup(), None).unwrap();
    let mut request = curl(&daemon.ca_file(), &site, false);
    confinement.apply(&mut request);
    let body = json(&stdout_ok(&request.output().unwrap()).unwrap());
    assert_eq!(body["name"], "up-a.test");
    relayed_line(&mut daemon, &site.socket(false, 443));
    assert_eq!(daemon.counter(Counter::RedirectedV4).unwrap(), 1);
    drop(confinement);
    child.remove().unwrap();
}
