//! Bypassed connections spliced in the kernel (`[tls] kernel_splice`, on by default): a real
//! client in a sandbox cgroup, a bypassed name, an upstream in a test namespace. Bytes arrive
//! whole both ways and are counted in the connection's log line; a half-close lets the answer
//! through; resets reach the other side; 10,000 connections leave the splice maps empty and the
//! daemon's descriptors where they were; with `kernel_splice = false` the splice is done in
//! user space.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly, with the error, on any setup failure"
)]

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use gateway_tests::{
    cmd,
    daemon::Daemon,
    net::UpstreamHost,
    pki::TestPki,
    process::Guarded,
    py_script, require_root, run,
    sandbox::{SandboxCgroup, stdout_ok},
    upstream::Site,
};
use serde_json::Value;

/// The bypass rule every test's config has; clients use names under it.
const BYPASS: &str = "bypass = [\"*.splice.test\"]\n";
const SNI: &str = "a.splice.test";

/// The raw peer (tests/py/splice_peer.py server) on the upstream host's port 443, with what it
/// reported of each connection.
struct Peer {
    host: UpstreamHost,
    results: Arc<Mutex<Vec<Value>>>,
    _process: Guarded,
}

impl Peer {
    fn start() -> Peer {
        let host = UpstreamHost::new().unwrap();
        let mut child = host
            .ns
            .exec("python3", [py_script("splice_peer.py")])
            .args(["server", "--listen", &format!("{}:443", host.v4)])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let results = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = Arc::clone(&results);
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            ready_tx.send(lines.next()).ok();
            for line in lines {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        let process = Guarded::new("splice peer", child, Duration::from_secs(5));
        let first = ready_rx.recv_timeout(Duration::from_secs(15)).unwrap();
        assert_eq!(first.as_deref(), Some("LISTENING"));
        Peer {
            host,
            results,
            _process: process,
        }
    }

    /// Waits (up to 15 s) for the peer's report of a connection whose command was `cmd`.
    fn result(&self, cmd: &str) -> Value {
        for _ in 0..150 {
            if let Some(found) = self
                .results
                .lock()
                .unwrap()
                .iter()
                .find(|v| v["cmd"] == cmd)
            {
                return found.clone();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the peer reported no {cmd} connection");
    }
}

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

    /// A daemon serving the sandbox; `tls` is appended to its `[tls]` table.
    fn daemon(&self, tls: &str) -> Daemon {
        Daemon::builder()
            .sandbox(self.cgroup.path().display().to_string())
            .config(&format!("{}{BYPASS}{tls}", self.pki.trusted_config()))
            .start()
            .unwrap()
    }

    /// Runs `splice_peer.py ARGS` in the sandbox against `peer` and returns its JSON report.
    fn client(&self, peer: &Peer, args: &[&str]) -> Value {
        let ip = peer.host.v4.to_string();
        let mut client = cmd("python3", [py_script("splice_peer.py")]);
        client
            .arg(args[0])
            .args([ip.as_str(), "443", SNI])
            .args(&args[1..]);
        let output = self
            .cgroup
            .output_within(&mut client, Duration::from_secs(120))
            .unwrap();
        json(&stdout_ok(&output).unwrap())
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The first `message` line (`connection closed` or `connection failed`) of a bypass.
fn close_line(daemon: &mut Daemon, message: &'static str) -> Value {
    daemon
        .wait_for(message, Duration::from_secs(30), move |v| {
            v["message"] == message && v["mode"] == "bypass"
        })
        .unwrap()
}

/// Entries of the pinned splice maps (sockets, peers).
fn splice_entries(daemon: &Daemon) -> (usize, usize) {
    (
        daemon.map_entries("splice_socks").unwrap(),
        daemon.map_entries("splice_peers").unwrap(),
    )
}

#[test]
fn bytes_arrive_whole_both_ways_and_a_half_close_lets_the_answer_through() {
    let env = Env::new();
    let peer = Peer::start();
    let mut daemon = env.daemon("");
    let (up, down) = (16 << 20, 24 << 20);
    let result = env.client(&peer, &["upload", &up.to_string(), &down.to_string()]);
    // The client half-closed after its upload; the answer came after that.
    assert_eq!(result["reported"]["length"], up, "{result}");
    assert_eq!(
        result["reported"]["sha256"], result["sent_sha256"],
        "{result}"
    );
    assert_eq!(result["received"], down, "{result}");
    assert_eq!(result["down_ok"], true, "{result}");
    assert_eq!(result["error"], Value::Null, "{result}");
    let line = close_line(&mut daemon, "connection closed");
    assert_eq!(line["splice"], "kernel", "{line}");
    assert_eq!(line["sni"], SNI, "{line}");
    // Every byte, ClientHello (replayed from user space) included, counted once.
    assert_eq!(line["bytes_up"], result["sent_total"], "{line} {result}");
    assert_eq!(
        line["bytes_down"], result["received_total"],
        "{line} {result}"
    );
    assert_eq!(splice_entries(&daemon), (0, 0));
    assert!(daemon.problems().is_empty(), "{:#?}", daemon.problems());
}

#[test]
fn tls_through_the_kernel_splice_is_the_upstreams_own_and_intact() {
    let env = Env::new();
    let site = Site::start(&env.pki, "b.splice.test", &["b.splice.test"]).unwrap();
    let mut daemon = env.daemon("");
    let dir = tempfile::tempdir().unwrap();
    let upload = dir.path().join("upload.bin");
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&upload, &data).unwrap();
    let mut post = curl(&env.pki.ca_file(), &site, "/sha256");
    post.arg("--data-binary")
        .arg(format!("@{}", upload.display()))
        .args(["-H", "Content-Type: application/octet-stream"]);
    let answer = json(&stdout_ok(&env.cgroup.output(None, &mut post).unwrap()).unwrap());
    assert_eq!(answer["length"], 8 << 20);
    assert_eq!(answer["sha256"], sha256_file(&upload).as_str());

    let download = dir.path().join("download.bin");
    let headers = dir.path().join("headers.txt");
    let mut get = curl(&env.pki.ca_file(), &site, &format!("/bytes/{}", 32 << 20));
    get.arg("-o").arg(&download).arg("-D").arg(&headers);
    stdout_ok(&env.cgroup.output(None, &mut get).unwrap()).unwrap();
    let sent = std::fs::read_to_string(&headers)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-content-sha256:")
                .map(|v| v.trim().to_string())
        })
        .unwrap();
    assert_eq!(std::fs::metadata(&download).unwrap().len(), 32 << 20);
    assert_eq!(sha256_file(&download), sent);

    daemon
        .wait_until("two spliced connections", Duration::from_secs(30), |d| {
            d.messages("connection closed").len() == 2
        })
        .unwrap();
    let lines = daemon.messages("connection closed");
    for line in &lines {
        assert_eq!(line["mode"], "bypass", "{line}");
        assert_eq!(line["splice"], "kernel", "{line}");
    }
    assert!(
        lines[0]["bytes_up"].as_u64().unwrap() > 8 << 20,
        "{}",
        lines[0]
    );
    assert!(
        lines[1]["bytes_down"].as_u64().unwrap() > 32 << 20,
        "{}",
        lines[1]
    );
    assert_eq!(splice_entries(&daemon), (0, 0));
}

#[test]
fn resets_reach_the_other_side_and_are_logged() {
    let env = Env::new();
    let peer = Peer::start();
    let mut daemon = env.daemon("");

    // The upstream resets mid-response: the client sees a reset too.
    let result = env.client(&peer, &["reset", &(4 << 20).to_string()]);
    assert_eq!(result["error"], "ConnectionResetError", "{result}");
    assert!(result["received"].as_u64().unwrap() <= 4 << 20, "{result}");
    let line = close_line(&mut daemon, "connection failed");
    assert_eq!(line["splice"], "kernel", "{line}");
    assert!(
        line["error"].as_str().unwrap().contains("upstream->client"),
        "{line}"
    );

    // The client resets mid-download, bytes unread: the upstream sees a reset (on its next
    // send: a reset, or a broken pipe once the reset has arrived).
    env.client(&peer, &["abort", &(1 << 20).to_string()]);
    let stream = peer.result("stream");
    assert!(
        matches!(
            stream["error"].as_str(),
            Some("ConnectionResetError" | "BrokenPipeError")
        ),
        "{stream}"
    );
    daemon
        .wait_until("the client's reset logged", Duration::from_secs(30), |d| {
            d.messages("connection failed").iter().any(|v| {
                v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("client->upstream"))
            })
        })
        .unwrap();
    daemon
        .wait_until("the splice maps emptied", Duration::from_secs(10), |d| {
            splice_entries(d) == (0, 0)
        })
        .unwrap();
}

#[test]
fn ten_thousand_kernel_splices_leave_nothing_behind() {
    let env = Env::new();
    let peer = Peer::start();
    let mut daemon = env.daemon("");
    // One first, so the fd count is taken with the daemon's lazily opened state in place.
    let warm = env.client(&peer, &["many", "1", "1"]);
    assert_eq!(warm["ok"], 1, "{warm}");
    daemon
        .wait_until("the first splice logged", Duration::from_secs(10), |d| {
            d.messages("connection closed").len() == 1
        })
        .unwrap();
    let (_, fds_before) = daemon.rss_kib_and_fds().unwrap();

    const COUNT: usize = 10_000;
    // Batches of 2,500 at most 100 at a time: bounded, and each batch checked.
    for _ in 0..COUNT / 2_500 {
        let result = env.client(&peer, &["many", "2500", "100"]);
        let problems: Vec<Value> = daemon.problems().into_iter().take(3).collect();
        assert_eq!(result["ok"], 2_500, "{result} {problems:#?}");
    }
    daemon
        // The warm-up connection and the COUNT after it.
        .wait_until("every splice logged", Duration::from_secs(60), |d| {
            d.summary().count("connection closed") > COUNT as u64
        })
        .unwrap();
    let lines = daemon.messages("connection closed");
    let kernel = lines.iter().filter(|v| v["splice"] == "kernel").count();
    assert_eq!(kernel, COUNT + 1, "every splice in the kernel");
    assert!(
        lines
            .iter()
            .all(|v| v["bytes_up"].as_u64().unwrap() > 100 && v["bytes_down"] == 106),
        "each echo counted whole"
    );
    assert_eq!(splice_entries(&daemon), (0, 0));
    let (_, fds_after) = daemon.rss_kib_and_fds().unwrap();
    assert!(
        fds_after <= fds_before + 8,
        "descriptors: {fds_before} before, {fds_after} after"
    );
    assert!(daemon.problems().is_empty(), "{:#?}", daemon.problems());
}

/// A daemon that dies with splices open leaves their peer entries in the pinned map (its
/// sockets, closed with it, left the socket map); the next one removes them, attaches its
/// verdict program to the adopted map and splices in the kernel again.
#[test]
fn a_restarted_daemon_clears_stale_splices_and_splices_in_the_kernel() {
    let env = Env::new();
    let peer = Peer::start();
    let mut daemon = env.daemon("");
    let ip = peer.host.v4.to_string();
    let mut hold = cmd("python3", [py_script("splice_peer.py")]);
    hold.args(["hold", &ip, "443", SNI, "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let held = Guarded::new(
        "holding client",
        env.cgroup.spawn(None, &mut hold).unwrap(),
        Duration::from_secs(5),
    );
    daemon
        .wait_until("a splice open", Duration::from_secs(15), |d| {
            splice_entries(d) == (2, 2)
        })
        .unwrap();
    daemon.crash().unwrap();
    let stale = daemon.map_entries("splice_peers").unwrap();
    assert_eq!(stale, 2, "the dead daemon's peer entries stay pinned");
    drop(held);
    daemon.restart().unwrap();
    assert_eq!(splice_entries(&daemon), (0, 0));
    let result = env.client(&peer, &["upload", "100000", "100000"]);
    assert_eq!(result["down_ok"], true, "{result}");
    let line = close_line(&mut daemon, "connection closed");
    assert_eq!(line["splice"], "kernel", "{line}");
    assert_eq!(line["bytes_up"], result["sent_total"], "{line}");
}

#[test]
fn with_kernel_splice_off_the_splice_is_done_in_user_space() {
    let env = Env::new();
    let peer = Peer::start();
    let mut daemon = env.daemon("kernel_splice = false\n");
    let result = env.client(&peer, &["upload", "1000000", "2000000"]);
    assert_eq!(
        result["reported"]["sha256"], result["sent_sha256"],
        "{result}"
    );
    assert_eq!(result["down_ok"], true, "{result}");
    let line = close_line(&mut daemon, "connection closed");
    assert_eq!(line["splice"], "user", "{line}");
    assert_eq!(line["bytes_up"], result["sent_total"], "{line}");
    assert_eq!(line["bytes_down"], result["received_total"], "{line}");
    assert_eq!(splice_entries(&daemon), (0, 0));
}

/// curl to `path` on `site` as `b.splice.test`, trusting only the upstream's CA (a bypass shows
/// the upstream's own certificate).
fn curl(ca: &Path, site: &Site, path: &str) -> Command {
    let mut command = cmd("curl", ["-sS", "--fail", "--max-time", "60", "--cacert"]);
    command.arg(ca).args([
        "--resolve",
        &format!("b.splice.test:443:{}", site.host.v4),
        &format!("https://b.splice.test{path}"),
    ]);
    command
}

fn sha256_file(path: &Path) -> String {
    let out = run(&mut cmd("sha256sum", [path])).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}
