//! Operating the daemon: sandboxes added and removed at runtime through the control socket,
//! `gateway exec` through a running daemon, fail-closed stops and restarts that adopt what is
//! pinned, `gateway down`, config reload, and the control socket's root-only rule. Real curls in
//! real sandbox cgroups, a real upstream in a test namespace, and what bpftool and the pins say.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly, with the error, on any setup failure"
)]

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use gateway::sandbox::cgroup::cgroup2_mount;
use gateway_tests::{
    cmd,
    daemon::Daemon,
    gateway_bin,
    pki::TestPki,
    require_root,
    sandbox::{SandboxCgroup, stdout_ok},
    upstream::Site,
    watch::Watcher,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

const SITE: &str = "op.test";

/// A test PKI, one upstream site and a daemon started with no sandboxes.
struct Env {
    pki: TestPki,
    site: Site,
    daemon: Daemon,
}

impl Env {
    fn new() -> Env {
        require_root().unwrap();
        let pki = TestPki::new("gateway-tests upstream CA").unwrap();
        let site = Site::start(&pki, SITE, &[SITE]).unwrap();
        let daemon = Daemon::builder()
            .config(&pki.trusted_config())
            .start()
            .unwrap();
        Env { pki, site, daemon }
    }

    /// `gateway --state-dir DIR ARGS` against this daemon; fails unless it succeeds.
    fn gateway(&self, args: &[&str]) -> String {
        stdout_ok(&self.daemon.control(args).unwrap()).unwrap()
    }

    /// `gateway sandbox add --cgroup PATH --name NAME --json`.
    fn add(&self, cgroup: &SandboxCgroup, name: &str) -> Value {
        let cgroup = cgroup.path().to_str().unwrap();
        json(&self.gateway(&[
            "sandbox", "add", "--cgroup", cgroup, "--name", name, "--json",
        ]))
    }

    fn rm(&self, name: &str) {
        let answer = json(&self.gateway(&["sandbox", "rm", name, "--json"]));
        assert_eq!(answer["removed"], name, "{answer}");
    }

    /// `sandbox ls --json`.
    fn ls(&self) -> Vec<Value> {
        json(&self.gateway(&["sandbox", "ls", "--json"]))
            .as_array()
            .unwrap()
            .clone()
    }

    fn names(&self) -> BTreeSet<String> {
        self.ls()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// curl of `https://op.test/PATH` (pinned to the site's IPv4), trusting only `ca`.
    fn curl(&self, ca: &Path, path: &str) -> Command {
        let mut command = cmd("curl", ["-sS", "--max-time", "15", "--cacert"]);
        command.arg(ca).args([
            "--resolve",
            &format!("{SITE}:443:{}", self.site.host.v4),
            &format!("https://{SITE}{path}"),
        ]);
        command
    }

    /// A request from `cgroup` that must come back intercepted: only the gateway's CA is
    /// trusted, so an answer proves the gateway forged the certificate.
    fn assert_intercepted(&self, cgroup: &SandboxCgroup) {
        let output = cgroup
            .output(None, &mut self.curl(&self.daemon.ca_file(), "/"))
            .unwrap();
        let body = json(&stdout_ok(&output).unwrap());
        assert_eq!(body["name"], SITE, "{body}");
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// What `bpftool cgroup show` lists for a cgroup.
fn attached_programs(cgroup: &Path) -> String {
    stdout_ok(
        &cmd("bpftool", ["cgroup", "show"])
            .arg(cgroup)
            .output()
            .unwrap(),
    )
    .unwrap()
}

/// The pinned links of sandbox `id` (`links/sandbox<id>_*`).
fn pinned_links(daemon: &Daemon, id: u64) -> Vec<String> {
    let prefix = format!("sandbox{id}_");
    std::fs::read_dir(daemon.pin_dir().join("links"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs curls in `cgroup` one after another until `stop` (at most 400, at most 120 s),
/// returning the failures.
fn steady_traffic(env: &Env, cgroup: &SandboxCgroup, stop: &AtomicBool) -> (usize, Vec<Output>) {
    let started = Instant::now();
    let (mut done, mut failed) = (0, Vec::new());
    while !stop.load(Ordering::Relaxed)
        && done < 400
        && started.elapsed() < Duration::from_secs(120)
    {
        let output = cgroup
            .output(None, &mut env.curl(&env.daemon.ca_file(), "/"))
            .unwrap();
        if !output.status.success() {
            failed.push(output);
        }
        done += 1;
    }
    (done, failed)
}

#[test]
fn twenty_sandboxes_come_and_go_while_traffic_flows_in_another() {
    let env = Env::new();
    let steady = SandboxCgroup::new().unwrap();
    env.add(&steady, "steady");
    let stop = AtomicBool::new(false);

    std::thread::scope(|scope| {
        let traffic = scope.spawn(|| steady_traffic(&env, &steady, &stop));
        let cgroups: Vec<SandboxCgroup> = (0..20).map(|_| SandboxCgroup::new().unwrap()).collect();
        let mut expected = BTreeSet::from(["steady".to_owned()]);
        let mut ids = Vec::new();
        let mut add_times = Vec::new();
        for (i, cgroup) in cgroups.iter().enumerate() {
            let name = format!("box{i}");
            let started = Instant::now();
            let added = env.add(cgroup, &name);
            add_times.push(started.elapsed());
            assert_eq!(added["name"], name.as_str(), "{added}");
            assert_eq!(added["cgroup"], cgroup.path().to_str().unwrap(), "{added}");
            ids.push(added["id"].as_u64().unwrap());
            expected.insert(name);
            assert_eq!(env.names(), expected);
            env.assert_intercepted(cgroup);
            assert!(attached_programs(cgroup.path()).contains("gateway_connect4"));
            assert_eq!(pinned_links(&env.daemon, ids[i]).len(), 10);
        }
        for (i, cgroup) in cgroups.iter().enumerate() {
            let name = format!("box{i}");
            env.rm(&name);
            expected.remove(&name);
            assert_eq!(env.names(), expected);
            // No longer redirected: curl reaches the real server, whose certificate the
            // gateway's CA did not sign (curl exit 60).
            let direct = cgroup
                .output(None, &mut env.curl(&env.daemon.ca_file(), "/"))
                .unwrap();
            assert_eq!(direct.status.code(), Some(60), "{direct:?}");
            let tree = attached_programs(cgroup.path());
            assert!(!tree.contains("gateway_"), "still attached: {tree}");
            assert_eq!(pinned_links(&env.daemon, ids[i]), Vec::<String>::new());
        }
        stop.store(true, Ordering::Relaxed);
        let (done, failed) = traffic.join().unwrap();
        assert!(done > 0);
        assert!(
            failed.is_empty(),
            "{} of {done} steady requests failed: {:?}",
            failed.len(),
            failed.first()
        );
        add_times.sort();
        eprintln!(
            "figure: sandbox add (CLI round trip) median {:?}, max {:?} over {}; {done} steady requests meanwhile",
            add_times[add_times.len() / 2],
            add_times[add_times.len() - 1],
            add_times.len()
        );
    });
    assert_eq!(env.names(), BTreeSet::from(["steady".to_owned()]));
    env.assert_intercepted(&steady);
}

#[test]
fn a_sandbox_name_or_cgroup_is_taken_once_and_bad_requests_are_named() {
    let env = Env::new();
    let cgroup = SandboxCgroup::new().unwrap();
    let other = SandboxCgroup::new().unwrap();
    env.add(&cgroup, "one");

    let again = env
        .daemon
        .control([
            "sandbox",
            "add",
            "--cgroup",
            other.path().to_str().unwrap(),
            "--name",
            "one",
        ])
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("one"),
        "{again:?}"
    );

    let twice = env
        .daemon
        .control([
            "sandbox",
            "add",
            "--cgroup",
            cgroup.path().to_str().unwrap(),
            "--name",
            "two",
        ])
        .unwrap();
    assert!(!twice.status.success(), "{twice:?}");

    let missing = env
        .daemon
        .control([
            "sandbox",
            "add",
            "--cgroup",
            "/sys/fs/cgroup/gwtest-not-here",
        ])
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("/sys/fs/cgroup/gwtest-not-here does not exist"),
        "{missing:?}"
    );

    let unknown = env
        .daemon
        .control(["sandbox", "rm", "nobody-here"])
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("nobody-here"),
        "{unknown:?}"
    );
    assert_eq!(env.names(), BTreeSet::from(["one".to_owned()]));
    env.assert_intercepted(&cgroup);
}

/// `gateway --state-dir DIR exec --log-format json -- ARGV`, not waited for.
fn spawn_exec(env: &Env, argv: &[&str]) -> std::process::Child {
    let mut command = cmd(
        gateway_bin().unwrap().to_str().unwrap(),
        ["--log-format", "json"],
    );
    command
        .arg("--state-dir")
        .arg(env.daemon.state_dir())
        .arg("exec")
        .arg("--")
        .args(argv)
        .env("GATEWAY_HOME", env.daemon.home())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.spawn().unwrap()
}

/// Waits (up to `timeout`) until `sandbox ls` satisfies `done`.
fn wait_for_ls(env: &Env, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let list = env.ls();
        if done(&list) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "sandbox ls never became as expected: {list:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn owned_by(list: &[Value], pid: u32) -> bool {
    list.iter().any(|s| {
        s["spec"]
            .as_str()
            .is_some_and(|spec| spec.contains(&format!("owner={pid}")))
    })
}

#[test]
fn exec_registers_with_the_running_daemon_and_is_gone_after() {
    let env = Env::new();
    let v4 = env.site.host.v4.to_string();
    // The command fetches through the gateway, then lingers so the test can see it listed.
    let script = format!(
        "curl -sS --fail --max-time 15 --resolve {SITE}:443:{v4} https://{SITE}/ && sleep 2"
    );
    let child = spawn_exec(&env, &["sh", "-c", &script]);
    let pid = child.id();
    wait_for_ls(&env, Duration::from_secs(10), |list| owned_by(list, pid));
    let output = child.wait_with_output().unwrap();
    let stdout = stdout_ok(&output).unwrap();
    assert_eq!(json(&stdout)["name"], SITE, "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let ready = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "sandbox ready")
        .unwrap_or_else(|| panic!("no `sandbox ready` line: {stderr}"));
    // No second engine: the daemon serves it, and the exec never loaded programs of its own.
    assert_eq!(ready["gateway"], "daemon", "{ready}");
    assert!(!stderr.contains("gateway ready"), "{stderr}");
    assert!(env.ls().is_empty(), "{:?}", env.ls());
    let cgroup = cgroup2_mount().unwrap().join(format!("gateway-exec-{pid}"));
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    let added = env.daemon.messages("sandbox added");
    assert_eq!(added.len(), 1, "{added:?}");
}

#[test]
fn a_killed_exec_is_removed_by_the_daemon_within_two_seconds() {
    let env = Env::new();
    let mut child = spawn_exec(&env, &["sleep", "60"]);
    let pid = child.id();
    wait_for_ls(&env, Duration::from_secs(10), |list| owned_by(list, pid));
    let id = env.ls()[0]["id"].as_u64().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    let gone_after = wait_for_ls(&env, Duration::from_secs(2), <[Value]>::is_empty);
    eprintln!("figure: killed exec's sandbox removed after {gone_after:?}");
    assert_eq!(pinned_links(&env.daemon, id), Vec::<String>::new());
    // Its cgroup, and the command left in it, are removed too.
    let cgroup = cgroup2_mount().unwrap().join(format!("gateway-exec-{pid}"));
    let started = Instant::now();
    while cgroup.exists() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
}

/// A curl from `cgroup` while no daemon runs: it must fail at connect and put nothing on the
/// upstream's wire.
fn assert_fails_closed(env: &Env, cgroup: &SandboxCgroup) {
    let watcher = Watcher::start(&env.site.host.ns, 443).unwrap();
    let output = cgroup
        .output(None, &mut env.curl(&env.pki.ca_file(), "/"))
        .unwrap();
    // curl exit 7: could not connect (the redirect holds, nobody listens).
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    assert_eq!(
        watcher.finish().unwrap(),
        (0, 0),
        "the upstream saw the sandbox"
    );
}

#[test]
fn stops_and_crashes_fail_closed_and_a_restart_adopts_the_sandboxes() {
    let mut env = Env::new();
    let cgroup = SandboxCgroup::new().unwrap();
    let added = env.add(&cgroup, "kept");
    env.assert_intercepted(&cgroup);

    assert!(env.daemon.stop().unwrap().success());
    assert_fails_closed(&env, &cgroup);
    env.daemon.restart().unwrap();
    let adopted = env.ls();
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(adopted[0]["name"], "kept");
    assert_eq!(adopted[0]["id"], added["id"]);
    assert_eq!(adopted[0]["listener_port"], added["listener_port"]);
    env.assert_intercepted(&cgroup);

    env.daemon.crash().unwrap();
    assert_fails_closed(&env, &cgroup);
    env.daemon.restart().unwrap();
    assert_eq!(env.names(), BTreeSet::from(["kept".to_owned()]));
    env.assert_intercepted(&cgroup);
    assert_eq!(env.daemon.messages("sandbox adopted").len(), 2);
    assert_eq!(env.daemon.messages("sandbox added").len(), 1, "re-added");
}

#[test]
fn down_detaches_every_sandbox_removes_every_pin_and_stops_the_daemon() {
    let mut env = Env::new();
    let cgroups = [SandboxCgroup::new().unwrap(), SandboxCgroup::new().unwrap()];
    for (i, cgroup) in cgroups.iter().enumerate() {
        env.add(cgroup, &format!("d{i}"));
    }
    let said = env.gateway(&["down"]);
    assert!(said.contains("pins removed"), "{said}");
    let started = Instant::now();
    while env.daemon.pid().is_ok() && started.elapsed() < Duration::from_secs(10) {
        if env.daemon.stop().is_err() {
            break;
        }
    }
    assert!(!env.daemon.pin_dir().exists(), "pins left behind");
    for cgroup in &cgroups {
        let tree = attached_programs(cgroup.path());
        assert!(!tree.contains("gateway_"), "still attached: {tree}");
    }
    assert!(
        !env.daemon.state_dir().join("control.sock").exists(),
        "control socket left behind"
    );
}

/// Writes the daemon's config file.
fn write_config(env: &Env, extra: &str) {
    std::fs::write(
        env.daemon.config_file(),
        format!("{}{extra}", env.pki.trusted_config()),
    )
    .unwrap();
}

fn sighup(env: &Env) {
    kill(
        Pid::from_raw(env.daemon.pid().unwrap() as i32),
        Signal::SIGHUP,
    )
    .unwrap();
}

#[test]
fn reload_changes_new_connections_only_and_a_broken_file_changes_nothing() {
    let mut env = Env::new();
    let cgroup = SandboxCgroup::new().unwrap();
    env.add(&cgroup, "r");
    // Intercepted: a client trusting only the upstream's CA is refused.
    let before = cgroup
        .output(None, &mut env.curl(&env.pki.ca_file(), "/"))
        .unwrap();
    assert_eq!(before.status.code(), Some(60), "{before:?}");

    // A download that spans the reload: 6 MB at 1.5 MB/s, intercepted.
    let dir = tempfile::tempdir().unwrap();
    let (body, headers) = (dir.path().join("body"), dir.path().join("headers"));
    let mut download = env.curl(&env.daemon.ca_file(), "/bytes/6000000");
    download
        .args(["--fail", "--limit-rate", "1500K", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&headers)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let running = cgroup.spawn(None, &mut download).unwrap();
    wait_for_ls(&env, Duration::from_secs(10), |list| {
        list.first()
            .is_some_and(|s| s["connections"].as_u64() > Some(0))
    });

    write_config(&env, &format!("bypass = [\"{SITE}\"]\n"));
    sighup(&env);
    env.daemon
        .wait_for("the reload", Duration::from_secs(10), |v| {
            v["message"] == "config reloaded"
        })
        .unwrap();
    // New connections are bypassed: the client sees the upstream's own certificate.
    let after = cgroup
        .output(None, &mut env.curl(&env.pki.ca_file(), "/"))
        .unwrap();
    assert_eq!(json(&stdout_ok(&after).unwrap())["name"], SITE);

    // The established download finished whole, through the interception it started with.
    let finished = gateway_tests::process::output_within(running, Duration::from_secs(30)).unwrap();
    assert!(finished.status.success(), "{finished:?}");
    let headers = std::fs::read_to_string(&headers).unwrap();
    let expected = headers
        .lines()
        .find_map(|l| {
            l.strip_prefix("x-content-sha256: ")
                .or_else(|| l.strip_prefix("X-Content-Sha256: "))
        })
        .unwrap_or_else(|| panic!("no digest header: {headers}"))
        .trim()
        .to_owned();
    let sum = stdout_ok(&cmd("sha256sum", [&body]).output().unwrap()).unwrap();
    assert_eq!(sum.split_whitespace().next(), Some(expected.as_str()));

    // A broken file: nothing changes, the daemon logs why, `gateway reload` says why.
    std::fs::write(env.daemon.config_file(), "[tls]\nbypass = 42\n").unwrap();
    sighup(&env);
    let line = env
        .daemon
        .wait_for("the refusal", Duration::from_secs(10), |v| {
            v["message"] == "config not reloaded; the previous one stays"
        })
        .unwrap();
    let why = line["error"].as_str().unwrap();
    let file = env.daemon.config_file().display().to_string();
    assert!(why.contains(&file) && why.contains("tls.bypass"), "{line}");
    let reload = env.daemon.control(["reload"]).unwrap();
    assert!(!reload.status.success());
    let stderr = String::from_utf8_lossy(&reload.stderr);
    assert!(
        stderr.contains(&file) && stderr.contains("tls.bypass"),
        "{stderr}"
    );
    let still = cgroup
        .output(None, &mut env.curl(&env.pki.ca_file(), "/"))
        .unwrap();
    assert_eq!(
        json(&stdout_ok(&still).unwrap())["name"],
        SITE,
        "bypass lost"
    );

    // A good file again, through `gateway reload`: interception is back for new connections,
    // and a new [[sandbox]] table is served.
    let from_file = SandboxCgroup::new().unwrap();
    write_config(
        &env,
        &format!(
            "[[sandbox]]\ncgroup = {:?}\nname = \"from-file\"\n",
            from_file.path()
        ),
    );
    assert!(env.gateway(&["reload"]).contains("config reloaded"));
    env.assert_intercepted(&cgroup);
    assert_eq!(
        env.names(),
        BTreeSet::from(["from-file".to_owned(), "r".to_owned()])
    );
    env.assert_intercepted(&from_file);
}

/// Connects to the control socket as `nobody` and returns what came back (or the error).
fn ask_as_nobody(socket: &Path) -> String {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_UNIX)\n\
         try:\n    s.connect({socket:?})\n\
         except OSError as e:\n    print('connect:', e.strerror); raise SystemExit\n\
         try:\n    s.sendall(b'{{\"command\": \"sandbox_ls\"}}\\n')\n\
         except BrokenPipeError:\n    pass  # a refusal may come before the request is read\n\
         print(s.makefile().readline())\n",
        socket = socket.display().to_string()
    );
    let output = cmd(
        "setpriv",
        [
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &script,
        ],
    )
    .output()
    .unwrap();
    stdout_ok(&output).unwrap()
}

#[test]
fn the_control_socket_refuses_a_peer_that_is_not_root() {
    let env = Env::new();
    let socket = env.daemon.state_dir().join("control.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Let nobody reach the socket file: first its mode stops them ...
    for dir in [env.daemon.home(), &env.daemon.state_dir()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let said = ask_as_nobody(&socket);
    assert!(said.contains("Permission denied"), "{said}");
    // ... and with the mode loosened by mistake, the peer check still does.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let said = ask_as_nobody(&socket);
    assert!(said.contains("root only"), "{said}");
    assert!(!said.contains("sandboxes"), "{said}");
    let refused = env
        .daemon
        .messages("control socket: refused a peer that is not root");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["uid"], 65534);
    // Root still gets its answer.
    assert!(env.ls().is_empty());
}

#[test]
fn status_reports_version_sandboxes_and_connections() {
    let env = Env::new();
    let cgroup = SandboxCgroup::new().unwrap();
    env.add(&cgroup, "s");
    env.assert_intercepted(&cgroup);
    let status = json(&env.gateway(&["status", "--json"]));
    let version = stdout_ok(
        &cmd(gateway_bin().unwrap().to_str().unwrap(), ["--version"])
            .output()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        Some(version.trim()),
        status["version"]
            .as_str()
            .map(|v| format!("gateway {v}"))
            .as_deref(),
        "{status}"
    );
    assert_eq!(status["sandboxes"], 1, "{status}");
    assert!(status["certs_generated"].as_u64() >= Some(1), "{status}");
    let text = env.gateway(&["status"]);
    assert!(text.contains("sandboxes: 1"), "{text}");
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Label pairs of a sample.
type Labels<'a> = &'a [(&'a str, &'a str)];

/// The value of the sample `name{labels...}` in OpenMetrics text, when present.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        let matches = metric == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse::<f64>().ok().map(|v| v as u64))?
    })
}

/// curl `-w` figures of one request: (request bytes, header bytes, body bytes).
fn curl_sizes(output: &Output) -> (u64, u64, u64) {
    let text = stdout_ok(output).unwrap();
    let figures: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (figures[0], figures[1], figures[2])
}

#[test]
fn metrics_count_what_was_sent_and_no_sandbox_reaches_the_endpoint() {
    require_root().unwrap();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = Site::start(&pki, SITE, &[SITE, "by.test"]).unwrap();
    let port = free_port();
    let daemon = Daemon::builder()
        .config(&format!("{}bypass = [\"by.test\"]\n", pki.trusted_config()))
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .start()
        .unwrap();
    let env = Env { pki, site, daemon };
    let (intercepted, bypassed) = (SandboxCgroup::new().unwrap(), SandboxCgroup::new().unwrap());
    env.add(&intercepted, "m");
    env.add(&bypassed, "b");
    let v4 = env.site.host.v4;
    let sized = |ca: &Path, name: &str, path: &str| {
        let mut command = cmd(
            "curl",
            [
                "-sS",
                "--fail",
                "--http1.1",
                "--max-time",
                "15",
                "-o",
                "/dev/null",
                "-w",
                "%{size_request} %{size_header} %{size_download}",
                "--cacert",
            ],
        );
        command.arg(ca).args([
            "--resolve",
            &format!("{name}:443:{v4}"),
            &format!("https://{name}{path}"),
        ]);
        command
    };

    // Three intercepted downloads, whose plaintext bytes are exactly what curl counted.
    let (mut up, mut down) = (0, 0);
    for n in [1000, 5000, 20000] {
        let output = intercepted
            .output(
                None,
                &mut sized(&env.daemon.ca_file(), SITE, &format!("/bytes/{n}")),
            )
            .unwrap();
        let (request, header, body) = curl_sizes(&output);
        assert_eq!(body, n);
        up += request;
        down += header + body;
    }
    // One interception whose upstream fails verification (its certificate lacks the name).
    let mut failed = cmd("curl", ["-sS", "--max-time", "15", "--cacert"]);
    failed.arg(env.daemon.ca_file()).args([
        "--resolve",
        &format!("bad.test:443:{v4}"),
        "https://bad.test/",
    ]);
    assert!(
        !intercepted
            .output(None, &mut failed)
            .unwrap()
            .status
            .success()
    );
    // One refused connect (port 22 is not allowed): EPERM in eBPF.
    let mut refused = cmd("curl", ["-sS", "--max-time", "5"]);
    refused.arg(format!("http://{v4}:22/"));
    assert_eq!(
        intercepted
            .output(None, &mut refused)
            .unwrap()
            .status
            .code(),
        Some(7)
    );
    // Two bypassed downloads: TLS records, so at least the bodies.
    for n in [3000, 4000] {
        let output = bypassed
            .output(
                None,
                &mut sized(&env.pki.ca_file(), "by.test", &format!("/bytes/{n}")),
            )
            .unwrap();
        assert_eq!(curl_sizes(&output).2, n);
    }

    // One plain HTTP request, judged and forwarded by the gateway.
    let plain = SandboxCgroup::new().unwrap();
    let cgroup = plain.path().to_str().unwrap();
    env.gateway(&[
        "sandbox",
        "add",
        "--cgroup",
        cgroup,
        "--name",
        "h",
        "--http-port",
        "8443",
    ]);
    let mut request = cmd("curl", ["-sS", "--fail", "--max-time", "15"]);
    request.arg(format!("http://{v4}:8443/"));
    assert!(plain.output(None, &mut request).unwrap().status.success());

    // The endpoint is not reachable from a sandbox (loopback is denied: EPERM, curl exit 7).
    let scrape_url = format!("http://127.0.0.1:{port}/metrics");
    let mut from_sandbox = cmd("curl", ["-sS", "--max-time", "5", &scrape_url]);
    assert_eq!(
        intercepted
            .output(None, &mut from_sandbox)
            .unwrap()
            .status
            .code(),
        Some(7)
    );

    // Connection lines are logged when they close; wait for all six before scraping.
    let mut env = env;
    env.daemon
        .wait_until("seven closed connections", Duration::from_secs(10), |d| {
            d.summary().count("connection closed") + d.summary().count("connection failed") >= 7
        })
        .unwrap();
    let text = stdout_ok(
        &cmd("curl", ["-sS", "--fail", &scrape_url])
            .output()
            .unwrap(),
    )
    .unwrap();
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
    };
    let conns = "gateway_connections_total";
    let bytes = "gateway_bytes_total";
    let refusals = "gateway_refusals_total";
    let expected: [(&str, Labels, u64); 15] = [
        (
            conns,
            &[("sandbox", "m"), ("mode", "intercept"), ("outcome", "ok")],
            3,
        ),
        (
            conns,
            &[
                ("sandbox", "m"),
                ("mode", "intercept"),
                ("outcome", "error"),
            ],
            1,
        ),
        (
            conns,
            &[("sandbox", "b"), ("mode", "bypass"), ("outcome", "ok")],
            2,
        ),
        (
            conns,
            &[("sandbox", "h"), ("mode", "http"), ("outcome", "ok")],
            1,
        ),
        (bytes, &[("sandbox", "m"), ("direction", "up")], up),
        (bytes, &[("sandbox", "m"), ("direction", "down")], down),
        ("gateway_connections_open", &[("sandbox", "m")], 0),
        (
            "gateway_http_requests_total",
            &[("sandbox", "h"), ("code_class", "2xx")],
            1,
        ),
        (
            "gateway_handshake_failures_total",
            &[("reason", "upstream_verify")],
            1,
        ),
        ("gateway_cert_cache_total", &[("result", "miss")], 1),
        ("gateway_cert_cache_total", &[("result", "hit")], 2),
        ("gateway_certs_generated_total", &[], 1),
        (
            "gateway_ebpf_events_total",
            &[("event", "redirected_v4")],
            7,
        ),
        (refusals, &[("sandbox", "m"), ("reason", "tcp_port")], 1),
        (refusals, &[("sandbox", "b"), ("reason", "tcp_port")], 0),
    ];
    for (name, labels, value) in expected {
        assert_eq!(get(name, labels), value, "{name} {labels:?}");
    }
    let bypass_down = get(bytes, &[("sandbox", "b"), ("direction", "down")]);
    assert!(
        (7000..7000 + 2 * 16384).contains(&bypass_down),
        "{bypass_down}"
    );
    // A sandbox whose policy would reach the endpoint is refused, and so is a reload that
    // would open it to the ones served.
    let other = SandboxCgroup::new().unwrap();
    let open = env
        .daemon
        .control([
            "sandbox",
            "add",
            "--cgroup",
            other.path().to_str().unwrap(),
            "--name",
            "peek",
            "--allow-cidr",
            "127.0.0.1/32",
            "--allow-tcp-port",
            &port.to_string(),
        ])
        .unwrap();
    assert!(!open.status.success());
    let stderr = String::from_utf8_lossy(&open.stderr);
    assert!(
        stderr.contains("sandbox peek may connect to 127.0.0.1"),
        "{stderr}"
    );
    write_config(
        &env,
        &format!(
            "bypass = [\"by.test\"]\n[policy]\nallow_cidrs = [\"127.0.0.0/8\"]\nallow_tcp_ports = [{port}]\n"
        ),
    );
    let reload = env.daemon.control(["reload"]).unwrap();
    assert!(!reload.status.success());
    assert!(
        String::from_utf8_lossy(&reload.stderr).contains("metrics endpoint"),
        "{reload:?}"
    );
    assert_eq!(
        env.names(),
        BTreeSet::from(["b".to_owned(), "h".to_owned(), "m".to_owned()])
    );
}

/// Sandboxes one daemon serves at once in [`hundreds_of_sandboxes_on_one_daemon`].
const MANY: usize = 200;

#[test]
fn hundreds_of_sandboxes_on_one_daemon() {
    let env = Env::new();
    let cgroups: Vec<SandboxCgroup> = (0..MANY).map(|_| SandboxCgroup::new().unwrap()).collect();
    let started = Instant::now();
    for (i, cgroup) in cgroups.iter().enumerate() {
        env.add(cgroup, &format!("many{i}"));
    }
    let adding = started.elapsed();
    assert_eq!(env.ls().len(), MANY);
    // Every one of them is served: a request through each.
    let started = Instant::now();
    for cgroup in &cgroups {
        env.assert_intercepted(cgroup);
    }
    let requests = started.elapsed();
    let (rss_kib, fds) = env.daemon.rss_kib_and_fds().unwrap();
    let status = json(&env.gateway(&["status", "--json"]));
    assert_eq!(status["sandboxes"], MANY, "{status}");
    let started = Instant::now();
    for i in 0..MANY {
        env.rm(&format!("many{i}"));
    }
    let removing = started.elapsed();
    assert!(env.ls().is_empty());
    assert!(
        std::fs::read_dir(env.daemon.pin_dir().join("links"))
            .unwrap()
            .next()
            .is_none(),
        "links left pinned"
    );
    eprintln!(
        "figure: {MANY} sandboxes on one daemon: added in {adding:?} ({:?} each, CLI round trip), one request through each in {requests:?}, daemon RSS {rss_kib} KiB with {fds} fds, removed in {removing:?}",
        adding / MANY as u32
    );
}
