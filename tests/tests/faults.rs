//! Faults: upstreams that reset, hang or are unreachable, clients that reset, sandbox cgroups
//! and pins removed under the daemon. Each ends only the affected connections, with a log line,
//! and the daemon keeps serving.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly, with the error, on any setup failure"
)]

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use gateway_tests::{
    cmd,
    daemon::Daemon,
    net::UpstreamHost,
    pki::TestPki,
    py_script, require_root,
    sandbox::{SandboxCgroup, stdout_ok},
    upstream::Upstream,
};
use serde_json::Value;

const TIMEOUT_ARGS: [&str; 4] = ["--connect-timeout", "1s", "--idle-timeout", "2s"];

/// An upstream host serving `fault.test` on 443 (TLS) and never answering on 4443, and a
/// daemon with short timeouts (connect 1 s, idle 2 s) intercepting both ports.
struct Rig {
    _pki: TestPki,
    host: UpstreamHost,
    _server: Upstream,
    cgroup: SandboxCgroup,
    daemon: Daemon,
}

impl Rig {
    fn new() -> Rig {
        require_root().unwrap();
        let pki = TestPki::new("gateway-tests upstream CA").unwrap();
        let host = UpstreamHost::new().unwrap();
        let cert = pki
            .issue("fault", &["fault.test"], &[host.v4.into()])
            .unwrap();
        let listen = [format!("{}:443", host.v4)];
        let blackhole = format!("{}:4443", host.v4);
        let server = Upstream::start_with(
            &host.ns,
            "fault.test",
            &cert,
            &listen,
            &[],
            &["--blackhole", &blackhole],
        )
        .unwrap();
        let cgroup = SandboxCgroup::new().unwrap();
        // 4443 is intercepted too, so the black hole is reached through the gateway.
        let spec = format!("{},port=443,port=4443", cgroup.path().display());
        let daemon = Daemon::builder()
            .sandbox(spec)
            .config(&pki.trusted_config())
            .args(TIMEOUT_ARGS)
            .start()
            .unwrap();
        Rig {
            _pki: pki,
            host,
            _server: server,
            cgroup,
            daemon,
        }
    }

    fn curl(&self, port: u16, path: &str) -> Command {
        let mut command = cmd("curl", ["-sS", "--max-time", "20", "--cacert"]);
        command
            .arg(self.daemon.ca_file())
            .args(["--resolve", &format!("fault.test:{port}:{}", self.host.v4)])
            .arg(format!("https://fault.test:{port}{path}"));
        command
    }

    fn run(&self, command: &mut Command) -> Output {
        self.cgroup.output(None, command).unwrap()
    }

    /// A normal request still works.
    fn assert_still_serving(&self) {
        let out = self.run(&mut self.curl(443, "/"));
        let body: Value = serde_json::from_str(&stdout_ok(&out).unwrap()).unwrap();
        assert_eq!(body["name"], "fault.test");
    }

    fn failure_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> Value {
        self.daemon
            .wait_for(what, Duration::from_secs(15), |v| {
                v["message"] == "connection failed" && v["error"].as_str().is_some_and(&pred)
            })
            .unwrap()
    }
}

fn timed(rig: &Rig, command: &mut Command) -> (Output, Duration) {
    let start = Instant::now();
    let output = rig.run(command);
    (output, start.elapsed())
}

#[test]
fn upstream_reset_mid_response_ends_only_that_connection() {
    let mut rig = Rig::new();
    let (output, _) = timed(&rig, &mut rig.curl(443, "/reset"));
    assert!(
        !output.status.success(),
        "a truncated response passed as complete"
    );
    let line = rig.failure_line("the reset", |e| {
        e.contains("upstream->client") && e.contains("reset")
    });
    assert!(line["bytes_down"].as_u64().unwrap() > 0, "{line}");
    rig.assert_still_serving();
}

#[test]
fn upstream_that_never_handshakes_is_ended_by_the_connect_timeout() {
    let mut rig = Rig::new();
    let (output, took) = timed(&rig, &mut rig.curl(4443, "/"));
    assert_eq!(
        output.status.code(),
        Some(35),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(took < Duration::from_secs(5), "the client waited {took:?}");
    rig.failure_line("the handshake timeout", |e| {
        e.contains("no handshake within 1s")
    });
    rig.assert_still_serving();
}

#[test]
fn upstream_that_never_answers_is_ended_by_the_idle_timeout() {
    let mut rig = Rig::new();
    let (output, took) = timed(&rig, &mut rig.curl(443, "/hang"));
    assert!(!output.status.success());
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "ended after {took:?}"
    );
    rig.failure_line("the idle timeout", |e| e.contains("idle timeout"));
    rig.assert_still_serving();
}

#[test]
fn client_reset_mid_request_ends_only_that_connection() {
    let mut rig = Rig::new();
    let mut client = cmd("python3", [py_script("client.py")]);
    client
        .args([
            "reset-mid-request",
            &rig.host.v4.to_string(),
            "443",
            "fault.test",
        ])
        .arg(rig.daemon.ca_file());
    stdout_ok(&rig.run(&mut client)).unwrap();
    let line = rig.failure_line("the client reset", |e| {
        e.contains("client->upstream") && e.contains("reset")
    });
    assert!(line["bytes_up"].as_u64().unwrap() >= 10240, "{line}");
    rig.assert_still_serving();
}

#[test]
fn unreachable_upstream_fails_promptly() {
    let mut rig = Rig::new();
    let spec_port = 443;
    let mut request = cmd("curl", ["-sS", "--max-time", "20", "--cacert"]);
    request.arg(rig.daemon.ca_file());
    // Port 443 of the host side of the veth: a real address with nothing listening.
    request.args([
        "--resolve",
        &format!("fault.test:{spec_port}:{}", rig.host.host_v4),
        "https://fault.test/",
    ]);
    let (output, took) = timed(&rig, &mut request);
    assert_eq!(
        output.status.code(),
        Some(35),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(took < Duration::from_secs(2), "the client waited {took:?}");
    rig.failure_line("the refused connect", |e| e.contains("Connection refused"));
    rig.assert_still_serving();
}

#[test]
fn a_removed_sandbox_cgroup_is_dropped_and_others_keep_being_served() {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let host = UpstreamHost::new().unwrap();
    let cert = pki.issue("fault", &["fault.test"], &[]).unwrap();
    let _server = Upstream::start(
        &host.ns,
        "fault.test",
        &cert,
        &[format!("{}:443", host.v4)],
        &[],
    )
    .unwrap();
    let doomed = SandboxCgroup::new().unwrap();
    let kept = SandboxCgroup::new().unwrap();
    let specs = [
        doomed.path().display().to_string(),
        kept.path().display().to_string(),
    ];
    let mut daemon = Daemon::builder()
        .sandboxes(specs)
        .config(&pki.trusted_config())
        .start()
        .unwrap();

    std::fs::remove_dir(doomed.path()).unwrap();
    let line = daemon
        .wait_for("the removal noticed", Duration::from_secs(10), |v| {
            v["message"] == "no longer serving a sandbox" && v["why"] == "its cgroup was removed"
        })
        .unwrap();
    assert_eq!(line["sandbox"], "1", "{line}");

    let mut request = cmd("curl", ["-sS", "--fail", "--max-time", "20", "--cacert"]);
    request.arg(daemon.ca_file()).args([
        "--resolve",
        &format!("fault.test:443:{}", host.v4),
        "https://fault.test/",
    ]);
    let body: Value =
        serde_json::from_str(&stdout_ok(&kept.output(None, &mut request).unwrap()).unwrap())
            .unwrap();
    assert_eq!(body["name"], "fault.test");
}

#[test]
fn pins_removed_under_the_daemon_are_reported_and_serving_goes_on() {
    let mut rig = Rig::new();
    std::fs::remove_dir_all(rig.daemon.pin_dir()).unwrap();
    rig.daemon
        .wait_for("the warning", Duration::from_secs(10), |v| {
            v["level"] == "WARN"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("pinned maps and links were removed"))
        })
        .unwrap();
    rig.assert_still_serving();
    assert!(
        rig.daemon.stop().unwrap().success(),
        "clean stop failed: {:#?}",
        rig.daemon.logs()
    );
}
