//! Load: thousands of intercepted connections held at once from one sandbox and released, with
//! the daemon's memory, descriptors and map entries back at their baseline afterwards; 200
//! sandboxes with traffic at once; 1,000 hostile connections while another sandbox is served.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use gateway_tests::{
    cmd,
    daemon::Daemon,
    net::UpstreamHost,
    nginx::Nginx,
    pki::TestPki,
    py_script, require_root,
    sandbox::{SandboxCgroup, stdout_ok},
    upstream::Site,
};
use serde_json::Value;

/// The load tests each saturate the machine's two cores: they run one at a time, so none
/// measures another's load.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connections held at once: 10,000, unless the open-file hard limit (which root cannot raise
/// here without CAP_SYS_RESOURCE) leaves the daemon fewer than two descriptors per connection.
fn held_connections() -> usize {
    let hard = gateway_tests::hard_nofile();
    let by_fds = (hard as usize).saturating_sub(200) / 2;
    let n = by_fds.min(10_000);
    eprintln!(
        "holding {n} connections (RLIMIT_NOFILE hard limit {}: at most {by_fds} by descriptors)",
        hard
    );
    assert!(
        n >= 5_000,
        "the open-file limit ({}) is too low for a meaningful load test",
        hard
    );
    n
}

#[test]
fn thousands_of_held_connections_are_released_without_leaks() {
    require_root().unwrap();
    let _serial = one_at_a_time();
    let n = held_connections();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let host = UpstreamHost::new().unwrap();
    let cert = pki.issue("load", &["load.test"], &[]).unwrap();
    let _nginx = Nginx::start(
        &host.ns,
        "load.test",
        &cert,
        SocketAddr::new(host.v4.into(), 443),
    )
    .unwrap();
    let cgroup = SandboxCgroup::new().unwrap();
    let mut daemon = Daemon::builder()
        .sandbox(cgroup.path().display().to_string())
        .config(&pki.trusted_config())
        .start()
        .unwrap();

    // Baseline after one connection, so the certificate and connector caches are warm.
    let mut warm = cmd("curl", ["-sS", "--fail", "--max-time", "20", "--cacert"]);
    warm.arg(daemon.ca_file()).args([
        "--resolve",
        &format!("load.test:443:{}", host.v4),
        "https://load.test/",
    ]);
    stdout_ok(&cgroup.output(None, &mut warm).unwrap()).unwrap();
    daemon
        .wait_until("the warm-up logged", Duration::from_secs(10), |d| {
            d.messages("connection closed").len() == 1
        })
        .unwrap();
    let (rss_before, fds_before) = daemon.rss_kib_and_fds().unwrap();

    let mut client = cmd("python3", [py_script("client.py")]);
    client
        .args(["hold", &host.v4.to_string(), "443", "load.test"])
        .arg(daemon.ca_file())
        .args(["--count", &n.to_string(), "--hold", "30"])
        .stdout(Stdio::piped());
    let started = Instant::now();
    let mut child = cgroup.spawn(None, &mut client).unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let held = lines.next().unwrap().unwrap();
    assert_eq!(held, format!("HELD {n}"), "not every connection opened");
    let opened_in = started.elapsed();
    let (rss_held, fds_held) = daemon.rss_kib_and_fds().unwrap();
    assert!(
        fds_held >= fds_before + 2 * n,
        "{fds_held} descriptors while holding {n} connections"
    );
    let summary: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(summary["held"], n as u64, "{summary}");
    assert_eq!(summary["error_count"], 0, "{summary}");

    daemon
        .wait_until("every connection logged", Duration::from_secs(60), |d| {
            d.messages("connection closed").len() == n + 1
        })
        .unwrap();
    // Let the allocator settle; then everything is back to where it was.
    std::thread::sleep(Duration::from_secs(2));
    let (rss_after, fds_after) = daemon.rss_kib_and_fds().unwrap();
    eprintln!(
        "opened {n} in {opened_in:?}; RSS KiB before {rss_before}, held {rss_held} ({} per connection), after {rss_after}; fds {fds_before} -> {fds_held} -> {fds_after}",
        (rss_held.saturating_sub(rss_before)) * 1024 / n as u64 / 1024
    );
    assert_eq!(fds_after, fds_before, "descriptors leaked");
    assert_eq!(
        daemon.map_entries("orig_dst").unwrap(),
        0,
        "ORIG_DST entries left"
    );
    assert_eq!(
        daemon.map_entries("pending").unwrap(),
        0,
        "PENDING entries left"
    );
    assert!(
        rss_after <= rss_before + (rss_held - rss_before) / 10 + 4096,
        "RSS did not return towards its baseline: {rss_before} KiB before, {rss_held} held, {rss_after} after"
    );
    assert!(daemon.problems().is_empty(), "{:#?}", daemon.problems());
}

#[test]
fn two_hundred_sandboxes_are_served_at_once() {
    require_root().unwrap();
    let _serial = one_at_a_time();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = Site::start(&pki, "many.test", &["many.test"]).unwrap();
    let host = &site.host;
    let cgroups: Vec<SandboxCgroup> = (0..200).map(|_| SandboxCgroup::new().unwrap()).collect();
    let specs: Vec<String> = cgroups
        .iter()
        .map(|c| c.path().display().to_string())
        .collect();
    let mut daemon = Daemon::builder()
        .sandboxes(specs)
        .config(&pki.trusted_config())
        .start()
        .unwrap();

    let curl = |ca: &std::path::Path| {
        let mut command: Command = cmd("curl", ["-sS", "--fail", "--max-time", "60", "--cacert"]);
        command.arg(ca).args([
            "--resolve",
            &format!("many.test:443:{}", host.v4),
            "https://many.test/",
        ]);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    };
    let children: Vec<_> = cgroups
        .iter()
        .map(|c| c.spawn(None, &mut curl(&daemon.ca_file())).unwrap())
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let body: Value = serde_json::from_str(&stdout_ok(&output).unwrap()).unwrap();
        assert_eq!(body["name"], "many.test");
    }
    daemon
        .wait_until("200 connections logged", Duration::from_secs(30), |d| {
            d.messages("connection closed").len() == 200
        })
        .unwrap();
    let mut sandboxes: Vec<u64> = daemon
        .messages("connection closed")
        .iter()
        .map(|v| v["sandbox"].as_str().unwrap().parse().unwrap())
        .collect();
    sandboxes.sort_unstable();
    assert_eq!(
        sandboxes,
        (1..=200).collect::<Vec<u64>>(),
        "each sandbox's connection went through its own listener"
    );
}

#[test]
fn a_thousand_hostile_connections_leave_the_daemon_and_other_sandboxes_unharmed() {
    require_root().unwrap();
    let _serial = one_at_a_time();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = Site::start(&pki, "calm.test", &["calm.test"]).unwrap();
    let host = &site.host;
    let hostile = SandboxCgroup::new().unwrap();
    let calm = SandboxCgroup::new().unwrap();
    let specs = [
        hostile.path().display().to_string(),
        calm.path().display().to_string(),
    ];
    let config = format!("{}hello_timeout = \"3s\"\n", pki.trusted_config());
    let mut daemon = Daemon::builder()
        .sandboxes(specs)
        .config(&config)
        .start()
        .unwrap();
    let (rss_before, fds_before) = daemon.rss_kib_and_fds().unwrap();

    let hello =
        gateway_tests::workspace_dir().join("gateway-proto/testdata/client-hello/curl-h2-sni.bin");
    let mut attack = cmd("python3", [py_script("client.py")]);
    attack
        .args([
            "hostile",
            &host.v4.to_string(),
            "443",
            "--count",
            "1000",
            "--trickle",
            "0.5",
            "--hello",
        ])
        .arg(&hello)
        .stdout(Stdio::piped());
    let attacker = hostile.spawn(None, &mut attack).unwrap();

    // While the attack runs, the calm sandbox is served promptly, again and again.
    let mut peak_rss = rss_before;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        let mut request = cmd("curl", ["-sS", "--fail", "--max-time", "5", "--cacert"]);
        request.arg(daemon.ca_file()).args([
            "--resolve",
            &format!("calm.test:443:{}", host.v4),
            "https://calm.test/",
        ]);
        let started = Instant::now();
        let body: Value =
            serde_json::from_str(&stdout_ok(&calm.output(None, &mut request).unwrap()).unwrap())
                .unwrap();
        assert_eq!(body["name"], "calm.test");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the calm sandbox waited {:?}",
            started.elapsed()
        );
        peak_rss = peak_rss.max(daemon.rss_kib_and_fds().unwrap().0);
    }

    let output = attacker.wait_with_output().unwrap();
    let results: Value = serde_json::from_str(&stdout_ok(&output).unwrap()).unwrap();
    for kind in ["random", "truncated", "oversized", "slowloris"] {
        let r = &results[kind];
        assert_eq!(r["closed"], 250, "{kind}: {r}");
        assert_eq!(r["answered"], 0, "{kind}: {r}");
        assert!(r["max_seconds"].as_f64().unwrap() < 10.0, "{kind}: {r}");
    }
    daemon
        .wait_until("1,000 refusals logged", Duration::from_secs(30), |d| {
            d.messages("connection failed").len() >= 1000
        })
        .unwrap();
    let (_, fds_after) = daemon.rss_kib_and_fds().unwrap();
    eprintln!(
        "RSS KiB before {rss_before}, peak during attack {peak_rss}; fds {fds_before} -> {fds_after}"
    );
    assert!(
        peak_rss < rss_before + 64 * 1024,
        "memory grew by {} KiB under attack",
        peak_rss - rss_before
    );
    assert_eq!(fds_after, fds_before);
}
