//! `gateway exec`: the zero-config entry point runs a real command in a transient sandbox,
//! relays its HTTPS, returns its exit code and leaves nothing behind.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly, with the error, on any setup failure"
)]

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Output,
};

use gateway::sandbox::cgroup::cgroup2_mount;
use gateway_tests::{
    cmd,
    dns::{TestDns, Zone},
    gateway_bin,
    net::UpstreamHost,
    pki::TestPki,
    require_root,
    sandbox::stdout_ok,
    upstream::Site,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

fn site(pki: &TestPki) -> Site {
    Site::start(pki, "exec.test", &["exec.test"]).unwrap()
}

/// A `$GATEWAY_HOME` with a config trusting `pki` (if any) for upstreams.
fn home(pki: Option<&TestPki>) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let config = pki.map(TestPki::trusted_config).unwrap_or_default();
    std::fs::write(home.path().join("gateway.toml"), config).unwrap();
    home
}

/// Runs `gateway exec [extra] -- argv...` with `home` and returns its output and the pid it ran as.
fn gateway_exec(home: &Path, extra: &[&str], argv: &[&str]) -> (Output, u32) {
    let mut command = cmd(gateway_bin().unwrap().to_str().unwrap(), ["exec"]);
    command
        .arg("--config")
        .arg(home.join("gateway.toml"))
        .env("GATEWAY_HOME", home);
    command.args(extra).arg("--").args(argv);
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

/// curl relying on the trust bundle `gateway exec` hands it (no --cacert).
fn curl_args(ip: IpAddr) -> Vec<String> {
    vec![
        "curl".into(),
        "-sS".into(),
        "--fail".into(),
        "--max-time".into(),
        "15".into(),
        "--resolve".into(),
        format!("exec.test:443:{ip}"),
        "https://exec.test/".into(),
    ]
}

fn bpffs_entries() -> Vec<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir("/sys/fs/bpf")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    entries
}

fn assert_nothing_left(pid: u32, bpffs_before: &[PathBuf]) {
    let cgroup = cgroup2_mount().unwrap().join(format!("gateway-exec-{pid}"));
    assert!(
        !cgroup.exists(),
        "transient cgroup {} left behind",
        cgroup.display()
    );
    assert_eq!(bpffs_entries(), bpffs_before, "pins left behind");
    let tree = stdout_ok(&cmd("bpftool", ["cgroup", "tree"]).output().unwrap()).unwrap();
    assert!(!tree.contains(&format!("gateway-exec-{pid}")), "{tree}");
}

#[test]
fn exec_relays_curl_and_cleans_up() {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = site(&pki);
    let before = bpffs_entries();

    let args = curl_args(site.host.v4.into());
    let home = home(Some(&pki));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (output, pid) = gateway_exec(home.path(), &[], &argv);
    let body: Value = serde_json::from_str(&stdout_ok(&output).unwrap()).unwrap();
    assert_eq!(body["name"], "exec.test");
    assert!(
        body["peer"]
            .as_str()
            .unwrap()
            .starts_with(&site.host.host_v4.to_string())
    );
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("connection closed") && log.contains(&format!("{}:443", site.host.v4)),
        "{log}"
    );

    assert_nothing_left(pid, &before);
}

#[test]
fn exec_with_new_netns_still_reaches_upstream() {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = site(&pki);
    let before = bpffs_entries();

    // The command sees only loopback...
    let home = home(Some(&pki));
    let (output, _) = gateway_exec(home.path(), &["--netns", "new"], &["ip", "-o", "link"]);
    let links = stdout_ok(&output).unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:"), "{links}");

    // ...and still reaches the upstream, through the gateway.
    let args = curl_args(site.host.v4.into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (output, pid) = gateway_exec(home.path(), &["--netns", "new"], &argv);
    let body: Value = serde_json::from_str(&stdout_ok(&output).unwrap()).unwrap();
    assert_eq!(body["name"], "exec.test");
    assert_nothing_left(pid, &before);
}

#[test]
fn exec_with_new_netns_resolves_names_through_the_gateway() {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = site(&pki);
    let dns_host = UpstreamHost::new().unwrap();
    let dns = TestDns::on_host(&dns_host, &[Zone::new("test").site(&site)]).unwrap();
    let before = bpffs_entries();

    // A namespace with only lo, a name and no --resolve: the gateway's DNS answers it.
    let home = home(Some(&pki));
    let mut config = std::fs::read_to_string(home.path().join("gateway.toml")).unwrap();
    config.push_str(&format!("[dns]\nupstream = [\"{}\"]\n", dns_host.v4));
    std::fs::write(home.path().join("gateway.toml"), config).unwrap();
    let script = "getent hosts exec.test && curl -sS --fail --max-time 15 https://exec.test/";
    let (output, pid) = gateway_exec(home.path(), &["--netns", "new"], &["sh", "-c", script]);
    let text = stdout_ok(&output).unwrap();
    let (hosts, body) = text.split_once('\n').unwrap();
    assert!(hosts.contains("exec.test"), "{text}");
    assert!(
        hosts.starts_with(&site.host.v6.to_string())
            || hosts.starts_with(&site.host.v4.to_string()),
        "{text}"
    );
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["name"], "exec.test");
    // The upstream resolver was asked by the gateway, from the host's namespace.
    let asked = dns.queries_for("exec.test");
    assert!(!asked.is_empty(), "the resolver was not asked");
    assert!(
        asked
            .iter()
            .all(|q| q.peer.ip() == IpAddr::from(dns_host.host_v4)),
        "{asked:?}"
    );
    assert_nothing_left(pid, &before);
}

#[test]
fn exec_returns_the_exit_code_and_kills_leftover_processes() {
    require_root().unwrap();
    let before = bpffs_entries();
    // A background process that would outlive the command must not outlive the sandbox. The
    // command runs in its own PID namespace, so `$!` is no host pid: a duration no other test
    // uses marks the sleep instead.
    let duration = format!("600.{}", std::process::id());
    let home = home(None);
    let (output, pid) = gateway_exec(
        home.path(),
        &[],
        &["sh", "-c", &format!("sleep {duration} & exit 7")],
    );
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    assert!(
        !sleep_is_alive(&duration),
        "background process `sleep {duration}` survived"
    );
    assert_nothing_left(pid, &before);
}

/// Whether a `sleep DURATION` process runs; a zombie awaiting its reaper counts as dead. Polls
/// briefly, because the kill is asynchronous.
fn sleep_is_alive(duration: &str) -> bool {
    let argv = format!("sleep\0{duration}\0");
    let running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let zombie = std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            });
            cmdline == argv.as_bytes() && !zombie
        })
    };
    for _ in 0..100 {
        if !running() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

#[test]
fn exec_reports_a_missing_program() {
    require_root().unwrap();
    let before = bpffs_entries();
    let home = home(None);
    let (output, pid) = gateway_exec(home.path(), &[], &["/nonexistent/program"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/program") && stderr.contains("No such file"),
        "{stderr}"
    );
    assert_nothing_left(pid, &before);
}

#[test]
fn exec_cleans_up_on_ctrl_c() {
    require_root().unwrap();
    let before = bpffs_entries();
    let mut command = cmd(
        gateway_bin().unwrap().to_str().unwrap(),
        ["exec", "--", "sleep", "30"],
    );
    let mut child = command
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let cgroup = cgroup2_mount().unwrap().join(format!("gateway-exec-{pid}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cgroup.join("cgroup.procs").exists()
        || std::fs::read_to_string(cgroup.join("cgroup.procs"))
            .unwrap_or_default()
            .trim()
            .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started in {}",
            cgroup.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The child is not reaped yet, so the PID is still its own.
    kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    let started = std::time::Instant::now();
    let status = child.wait().unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "exec took {:?} to stop",
        started.elapsed()
    );
    // The interrupt is passed on to the command, whose death by SIGINT is reported as 128 + 2.
    assert_eq!(status.code(), Some(130), "{status}");
    assert_nothing_left(pid, &before);
}

#[test]
fn exec_hands_the_command_a_trust_bundle_with_the_gateway_ca() {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = site(&pki);
    let home = home(Some(&pki));

    // Python's default context trusts SSL_CERT_FILE: no CA given on the command line.
    let url = format!("https://{}/", site.host.v4);
    let client = gateway_tests::py_script("client.py");
    let (output, _) = gateway_exec(
        home.path(),
        &[],
        &["python3", client.to_str().unwrap(), "urllib", &url],
    );
    let result: Value = serde_json::from_str(&stdout_ok(&output).unwrap()).unwrap();
    assert_eq!(
        result["issuer"]["commonName"], "gateway local CA",
        "{result}"
    );

    // Every variable names the same bundle, which holds the gateway CA and is gone afterwards.
    let script = "for v in SSL_CERT_FILE CURL_CA_BUNDLE REQUESTS_CA_BUNDLE NODE_EXTRA_CA_CERTS; do \
                  eval echo \\$$v; done";
    let (output, _) = gateway_exec(home.path(), &[], &["sh", "-c", script]);
    let paths: Vec<String> = stdout_ok(&output)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(paths.len(), 4);
    assert!(
        paths.iter().all(|p| p == &paths[0] && !p.is_empty()),
        "{paths:?}"
    );
    assert!(
        !Path::new(&paths[0]).exists(),
        "bundle {} left behind",
        paths[0]
    );
    let ca = std::fs::read_to_string(home.path().join("tls/ca.crt")).unwrap();
    let (output, _) = gateway_exec(home.path(), &[], &["sh", "-c", "cat \"$SSL_CERT_FILE\""]);
    let bundle = stdout_ok(&output).unwrap();
    assert!(
        bundle.ends_with(&ca),
        "the bundle does not end with the gateway CA"
    );
    assert!(
        bundle.matches("BEGIN CERTIFICATE").count() > 1,
        "no system roots in the bundle"
    );
}
