//! `gateway exec` against a hostile command: uid 0 inside cannot leave the sandbox cgroup or its
//! redirection, has no capabilities, cannot reach BPF or other network namespaces; the command
//! runs as the sudo invoker or `--user`; `kill -9` of exec takes every process of the sandbox
//! down and the next exec removes what was left; clients that ignore SSL_CERT_FILE (GnuTLS wget
//! and git, OpenSSL's hashed directory) trust the gateway, resolv.conf names the gateway's DNS
//! (also through a systemd-resolved style link), and the host's trust files and resolv.conf stay
//! as they were. Each test runs real programs inside exec against an upstream in its own netns.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly, with the error, on any setup failure"
)]

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant},
};

use gateway::sandbox::cgroup::cgroup2_mount;
use gateway_tests::{
    cmd, gateway_bin, pki::TestPki, require_root, run, sandbox::stdout_ok, upstream::Site,
};

const GATEWAY_ISSUER: &str = "gateway local CA";

/// Every exec removes the cgroups of killed execs (and kills what is inside them), so the
/// `kill -9` test runs alone: otherwise a parallel test's exec could kill its sleeps first and
/// hide whether the PID namespace did.
static EXECS: RwLock<()> = RwLock::new(());

/// Held by tests that may run their execs side by side.
fn shared() -> RwLockReadGuard<'static, ()> {
    EXECS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held by the test that needs no other exec running.
fn exclusive() -> RwLockWriteGuard<'static, ()> {
    EXECS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

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

/// `gateway exec [extra] -- argv...` with `home`, the given environment on top of this one's
/// minus sudo's variables (so the command runs as root unless a test says otherwise), from /.
fn exec_command(home: &Path, extra: &[&str], env: &[(&str, &str)], argv: &[&str]) -> Command {
    let mut command = cmd(gateway_bin().unwrap().to_str().unwrap(), ["exec"]);
    command
        .arg("--config")
        .arg(home.join("gateway.toml"))
        .env("GATEWAY_HOME", home)
        .env_remove("SUDO_UID")
        .env_remove("SUDO_GID")
        .env_remove("SUDO_USER")
        .envs(env.iter().copied())
        .current_dir("/");
    command.args(extra).arg("--").args(argv);
    command
}

/// Runs `gateway exec` to completion; returns its output and the pid it ran as.
fn gateway_exec(home: &Path, extra: &[&str], env: &[(&str, &str)], argv: &[&str]) -> (Output, u32) {
    let child = exec_command(home, extra, env, argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The issuer line of `curl -v` for the server certificate.
fn curl_issuer(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|line| {
            line.trim_start_matches('*')
                .trim()
                .strip_prefix("issuer:")
                .map(|issuer| issuer.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no issuer in curl output: {stderr}"))
}

/// `curl -v` to the site by name, trusting what exec hands it.
fn curl_to(ip: IpAddr) -> String {
    format!(
        "curl -sS -v --fail --max-time 15 -o /dev/null --resolve exec.test:443:{ip} https://exec.test/"
    )
}

/// The `/proc/self/status` fields `name` of the command's shell.
fn status_field<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in {stdout}"))
}

#[test]
fn uid0_cannot_leave_the_cgroup_and_stays_intercepted() {
    require_root().unwrap();
    let _execs = shared();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = site(&pki);
    let home = home(Some(&pki));
    let procs = cgroup2_mount().unwrap().join("cgroup.procs");

    // The escape that works for a plain uid-0 process: write its pid into the root cgroup,
    // leaving the cgroup the programs are attached to. Then the same shell goes out again.
    let script = format!(
        "id -u; \
         if echo $$ > {procs}; then echo escape=done; else echo escape=refused; fi; \
         echo cgroup=$(grep '^0::' /proc/$$/cgroup); \
         {curl}",
        procs = procs.display(),
        curl = curl_to(site.host.v4.into()),
    );
    let (output, _) = gateway_exec(home.path(), &[], &[], &["sh", "-c", &script]);
    let stdout = stdout_ok(&output).unwrap();
    let log = stderr(&output);
    assert!(stdout.starts_with("0\n"), "not uid 0: {stdout}");
    assert!(stdout.contains("escape=refused"), "{stdout}\n{log}");
    assert!(log.contains("Read-only file system"), "{log}");
    // Still at the root of its cgroup namespace, which is the sandbox cgroup.
    assert!(stdout.contains("cgroup=0::/\n"), "{stdout}");
    let issuer = curl_issuer(&log);
    assert!(issuer.contains(GATEWAY_ISSUER), "issuer: {issuer}");
    assert!(
        log.contains("connection closed") && log.contains(&format!("{}:443", site.host.v4)),
        "the gateway did not see the connection: {log}"
    );
}

#[test]
fn uid0_has_no_capabilities_and_reaches_neither_bpf_nor_other_namespaces() {
    require_root().unwrap();
    let _execs = shared();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = site(&pki);
    let home = home(Some(&pki));
    let mount = cgroup2_mount().unwrap();

    let script = format!(
        "id -u; grep -E '^(Cap|NoNewPrivs)' /proc/self/status; \
         bpftool prog show >/dev/null 2>&1; echo bpftool_prog=$?; \
         bpftool map show >/dev/null 2>&1; echo bpftool_map=$?; \
         nsenter -t 1 -n true 2>/dev/null; echo nsenter_pid1=$?; \
         nsenter --net={netns} true 2>/dev/null; echo nsenter_upstream=$?; \
         mount -o remount,rw {mount} 2>/dev/null; echo remount=$?; \
         echo x > {mount}/x.test 2>/dev/null; echo write_cgroupfs=$?",
        netns = site.host.ns.path().display(),
        mount = mount.display(),
    );
    let (output, _) = gateway_exec(home.path(), &[], &[], &["sh", "-c", &script]);
    let stdout = stdout_ok(&output).unwrap();
    assert!(stdout.starts_with("0\n"), "not uid 0: {stdout}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(&stdout, set),
            "0000000000000000",
            "{set}: {stdout}"
        );
    }
    assert_eq!(status_field(&stdout, "NoNewPrivs"), "1", "{stdout}");
    for check in [
        "bpftool_prog",
        "bpftool_map",
        "nsenter_pid1",
        "nsenter_upstream",
        "remount",
        "write_cgroupfs",
    ] {
        let code = stdout
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{check}=")))
            .unwrap_or_else(|| panic!("no {check} in {stdout}"));
        assert_ne!(code, "0", "{check} succeeded inside exec: {stdout}");
    }
    assert!(!mount.join("x.test").exists());
}

/// `id -u`, `id -g`, HOME, USER and the effective capabilities of a command run with `extra`
/// and `env`.
fn identity_inside(extra: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let home = home(None);
    let script = "id -u; id -g; echo $HOME; echo $USER; grep CapEff /proc/self/status";
    let (output, _) = gateway_exec(home.path(), extra, env, &["sh", "-c", script]);
    stdout_ok(&output)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

const NOBODY: [&str; 5] = [
    "65534",
    "65534",
    "/nonexistent",
    "nobody",
    "CapEff:\t0000000000000000",
];

#[test]
fn the_sudo_invoker_runs_the_command() {
    require_root().unwrap();
    let _execs = shared();
    // What sudo sets when user nobody runs `sudo gateway exec ...`.
    let seen = identity_inside(&[], &[("SUDO_UID", "65534"), ("SUDO_GID", "65534")]);
    assert_eq!(seen, NOBODY);
}

#[test]
fn the_user_flag_names_who_runs_the_command() {
    require_root().unwrap();
    let _execs = shared();
    assert_eq!(identity_inside(&["--user", "nobody"], &[]), NOBODY);
    assert_eq!(identity_inside(&["--user", "65534:65534"], &[]), NOBODY);
    // --user wins over the sudo invoker.
    let seen = identity_inside(
        &["--user", "nobody"],
        &[("SUDO_UID", "0"), ("SUDO_GID", "0")],
    );
    assert_eq!(seen, NOBODY);
}

/// Kills (by pid) an exec the test started, should the test end before it does.
struct ExecGuard(Child);

impl Drop for ExecGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Live (not zombie) processes whose argv is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        let matches =
            args.len() == argv.len() && args.iter().zip(argv).all(|(a, b)| *a == b.as_bytes());
        let zombie = std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        });
        if matches && !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// Polls `done` every 20 ms until it holds or `timeout` passes; returns whether it held.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_of_exec_takes_the_sandbox_down_and_the_next_exec_removes_its_cgroup() {
    require_root().unwrap();
    let _execs = exclusive();
    let home = home(None);
    // A duration no other test uses marks the sleeps.
    let duration = format!("61.{}", std::process::id());
    let sleeper = ["sleep", duration.as_str()];
    let script = format!("sleep {duration} & sleep {duration}");
    let child = exec_command(home.path(), &[], &[], &["sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut exec = ExecGuard(child);
    let pid = exec.0.id();
    assert!(
        wait_until(Duration::from_secs(15), || processes_running(&sleeper)
            .len()
            == 2),
        "the two sleeps never started: {:?}",
        processes_running(&sleeper)
    );

    exec.0.kill().unwrap();
    exec.0.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || processes_running(&sleeper)
            .is_empty()),
        "sleeps still alive 2 s after kill -9 of exec: {:?}",
        processes_running(&sleeper)
    );
    // Nothing removed it yet (no other exec runs): the PID namespace took the sleeps down.
    let stale = cgroup2_mount().unwrap().join(format!("gateway-exec-{pid}"));
    let stale_bundle = std::env::temp_dir().join(format!("gateway-exec-{pid}"));
    assert!(stale.exists(), "the killed exec's cgroup is already gone");

    let (output, _) = gateway_exec(home.path(), &[], &[], &["true"]);
    stdout_ok(&output).unwrap();
    assert!(!stale.exists(), "{} left behind", stale.display());
    assert!(
        !stale_bundle.exists(),
        "{} left behind",
        stale_bundle.display()
    );
    let log = stderr(&output);
    assert!(
        log.contains("removed the cgroup of an exec that is gone")
            && log.contains(&format!("exec_pid={pid}")),
        "{log}"
    );
    // Whatever gateway-exec-* cgroups remain belong to running execs (of parallel tests).
    for entry in std::fs::read_dir(cgroup2_mount().unwrap())
        .unwrap()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("gateway-exec-") {
            assert!(
                Path::new("/proc").join(pid).exists(),
                "{name} belongs to no running process"
            );
        }
    }
}

/// A bare git repository with one commit (a file `hello.txt`), prepared for git's dumb HTTP
/// protocol, under `<root>/repo.git`.
fn dumb_http_repo(root: &Path) -> PathBuf {
    let repo = root.join("repo.git");
    let work = root.join("work");
    let git = |args: &[&str]| {
        let mut command = cmd("git", args);
        // The host's git configuration must not matter.
        command
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1");
        run(&mut command).unwrap();
    };
    let (repo_s, work_s) = (repo.to_str().unwrap(), work.to_str().unwrap());
    git(&["init", "-q", "--bare", "-b", "main", repo_s]);
    git(&["init", "-q", "-b", "main", work_s]);
    std::fs::write(work.join("hello.txt"), "hello from exec.test\n").unwrap();
    git(&["-C", work_s, "add", "hello.txt"]);
    git(&[
        "-C",
        work_s,
        "-c",
        "user.name=test",
        "-c",
        "user.email=test@exec.test",
        "commit",
        "-q",
        "-m",
        "hello",
    ]);
    git(&["-C", work_s, "push", "-q", repo_s, "main"]);
    git(&["-C", repo_s, "update-server-info"]);
    repo
}

#[test]
fn wget_and_git_trust_the_gateway_through_the_system_paths() {
    require_root().unwrap();
    let _execs = shared();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let root = tempfile::tempdir().unwrap();
    dumb_http_repo(root.path());
    let static_dir = root.path().to_str().unwrap().to_string();
    let site = Site::with_cert(
        "exec.test",
        |host| {
            pki.issue(
                "exec.test",
                &["exec.test"],
                &[host.v4.into(), host.v6.into()],
            )
        },
        &["--static", &static_dir],
    )
    .unwrap();
    let home = home(Some(&pki));
    let clone = tempfile::tempdir().unwrap();
    let ip = site.host.v4;

    // Without the variables, so only the distribution paths can make them trust the gateway.
    // wget cannot pin a name to an address: it dials the IP, whose certificate the gateway
    // forges with an IP SAN. git (libcurl) pins the name.
    let script = format!(
        "unset SSL_CERT_FILE CURL_CA_BUNDLE REQUESTS_CA_BUNDLE NODE_EXTRA_CA_CERTS; \
         wget -q --no-hsts --timeout=15 -O - https://{ip}/ && \
         git -c http.curloptResolve=exec.test:443:{ip} clone -q https://exec.test/repo.git {dest}/repo && \
         cat {dest}/repo/hello.txt",
        dest = clone.path().display(),
    );
    let (output, _) = gateway_exec(home.path(), &[], &[], &["sh", "-c", &script]);
    let stdout = stdout_ok(&output).unwrap();
    assert!(stdout.contains("\"name\": \"exec.test\""), "wget: {stdout}");
    assert!(stdout.ends_with("hello from exec.test\n"), "git: {stdout}");
    let log = stderr(&output);
    assert!(
        log.matches("connection closed").count() >= 2,
        "wget and git did not go through the gateway: {log}"
    );
}

/// sha256 of each existing system trust file, and of the listing of /etc/ssl/certs.
fn host_trust_state() -> String {
    let mut state = String::new();
    for path in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/ssl/cert.pem",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if Path::new(path).exists() {
            let output = run(&mut cmd("sha256sum", [path])).unwrap();
            state.push_str(&String::from_utf8_lossy(&output.stdout));
        }
    }
    let listing = run(&mut cmd(
        "sh",
        [
            "-c",
            "ls -l --time-style=full-iso /etc/ssl/certs | sha256sum",
        ],
    ))
    .unwrap();
    state.push_str(&String::from_utf8_lossy(&listing.stdout));
    state
}

#[test]
fn the_hashed_directory_holds_the_gateway_ca_and_host_files_stay_unchanged() {
    require_root().unwrap();
    let _execs = shared();
    let pki = TestPki::new("gateway-tests upstream CA").unwrap();
    let site = site(&pki);
    let home = home(Some(&pki));
    let before = host_trust_state();

    // uid 0 tries to change what it trusts; then OpenSSL finds the gateway CA by subject hash
    // alone (no CA file, no store).
    let script = format!(
        "echo tampered >> /etc/ssl/certs/ca-certificates.crt 2>/dev/null; echo append=$?; \
         grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt; \
         openssl s_client -connect {ip}:443 -servername exec.test -CApath /etc/ssl/certs \
           -no-CAfile -no-CAstore -verify_return_error </dev/null 2>&1",
        ip = site.host.v4,
    );
    let (output, _) = gateway_exec(home.path(), &[], &[], &["sh", "-c", &script]);
    let stdout = stdout_ok(&output).unwrap();
    assert!(
        !stdout.contains("append=0"),
        "the bundle was writable: {stdout}"
    );
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    assert!(
        stdout.contains(&format!("issuer=CN = {GATEWAY_ISSUER}")),
        "{stdout}"
    );

    // The bundle inside ends with the gateway CA, after the system roots.
    let (output, _) = gateway_exec(
        home.path(),
        &[],
        &[],
        &["cat", "/etc/ssl/certs/ca-certificates.crt"],
    );
    let bundle = stdout_ok(&output).unwrap();
    let ca = std::fs::read_to_string(home.path().join("tls/ca.crt")).unwrap();
    assert!(
        bundle.ends_with(&ca),
        "the bundle does not end with the gateway CA"
    );
    assert!(
        bundle.matches("BEGIN CERTIFICATE").count() > 1,
        "no system roots"
    );

    assert_eq!(host_trust_state(), before, "the host's trust files changed");
}

/// The nameserver exec's resolv.conf names: the loopback address, whose port 53 the programs
/// redirect to the sandbox's DNS service.
const GATEWAY_NAMESERVER: &str = "nameserver 127.0.0.1";

/// The `nameserver` lines of a resolv.conf.
fn nameservers(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| line.starts_with("nameserver"))
        .collect()
}

#[test]
fn resolv_conf_names_the_gateway_inside_and_the_hosts_stays_unchanged() {
    require_root().unwrap();
    let _execs = shared();
    let home = home(None);
    let before = std::fs::read("/etc/resolv.conf").ok();

    // uid 0 tries to point its resolver elsewhere.
    let script = "cat /etc/resolv.conf; \
                  echo 'nameserver 192.0.2.1' >> /etc/resolv.conf 2>/dev/null; echo append=$?";
    let (output, _) = gateway_exec(home.path(), &[], &[], &["sh", "-c", script]);
    let stdout = stdout_ok(&output).unwrap();
    assert_eq!(nameservers(&stdout), [GATEWAY_NAMESERVER], "{stdout}");
    assert!(
        !stdout.contains("append=0"),
        "resolv.conf was writable: {stdout}"
    );

    assert_eq!(
        std::fs::read("/etc/resolv.conf").ok(),
        before,
        "the host's resolv.conf changed"
    );
}

/// `command` run by `sh -c setup` in a private mount namespace of its own: what `setup` mounts
/// there is seen by `command` and by nothing else on the host.
fn in_private_mounts(setup: &str, command: &Command) -> Command {
    let mut wrapped = cmd(
        "unshare",
        ["--mount", "--propagation", "private", "sh", "-c"],
    );
    wrapped
        .arg(format!("{setup} && exec \"$@\""))
        .arg("sh")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

#[test]
fn a_resolv_conf_link_is_covered_where_it_leads() {
    require_root().unwrap();
    let _execs = shared();
    let home = home(None);
    // systemd-resolved's layout, made in this test's own view of /etc (an overlay whose upper
    // layer is a temporary directory): /etc/resolv.conf -> ../<dir>/run/stub-resolv.conf.
    let dir = tempfile::tempdir().unwrap();
    let (upper, work, run_dir) = (
        dir.path().join("upper"),
        dir.path().join("work"),
        dir.path().join("run"),
    );
    for made in [&upper, &work, &run_dir] {
        std::fs::create_dir(made).unwrap();
    }
    let stub = run_dir.join("stub-resolv.conf");
    let stub_text = "nameserver 192.0.2.53\noptions edns0 trust-ad\n";
    std::fs::write(&stub, stub_text).unwrap();
    let link = format!("..{}", stub.display());
    let setup = format!(
        "mount -t overlay overlay -o lowerdir=/etc,upperdir={},workdir={} /etc \
         && ln -sfn {link} /etc/resolv.conf",
        upper.display(),
        work.display(),
    );
    let host_before = std::fs::read("/etc/resolv.conf").ok();

    let script = "readlink /etc/resolv.conf; cat /etc/resolv.conf";
    let exec = exec_command(home.path(), &[], &[], &["sh", "-c", script]);
    let output = in_private_mounts(&setup, &exec).output().unwrap();
    let stdout = stdout_ok(&output).unwrap();
    assert_eq!(
        stdout.lines().next(),
        Some(link.as_str()),
        "still a link: {stdout}"
    );
    assert_eq!(nameservers(&stdout), [GATEWAY_NAMESERVER], "{stdout}");

    assert_eq!(
        std::fs::read_to_string(&stub).unwrap(),
        stub_text,
        "the link's target changed"
    );
    assert_eq!(
        std::fs::read("/etc/resolv.conf").ok(),
        host_before,
        "the host's resolv.conf changed"
    );
}
