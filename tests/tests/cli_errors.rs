//! Bad input to the CLI gets a clear, specific error and leaves nothing behind.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly, with the error, on any setup failure"
)]

use gateway_tests::{cmd, gateway_bin, require_root};

fn gateway(args: &[&str]) -> (bool, String) {
    let output = cmd(gateway_bin().unwrap().to_str().unwrap(), args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn missing_cgroup_is_named() {
    require_root().unwrap();
    let (ok, stderr) = gateway(&[
        "run",
        "--sandbox",
        "/sys/fs/cgroup/definitely-not-here",
        "--pin-dir",
        "/sys/fs/bpf/gwtest-err1",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("/sys/fs/cgroup/definitely-not-here does not exist"),
        "{stderr}"
    );
    assert!(!std::path::Path::new("/sys/fs/bpf/gwtest-err1").exists());
}

#[test]
fn non_cgroup2_directory_is_rejected() {
    require_root().unwrap();
    let (ok, stderr) = gateway(&[
        "run",
        "--sandbox",
        "/tmp",
        "--pin-dir",
        "/sys/fs/bpf/gwtest-err2",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("/tmp is not a cgroup v2 directory"),
        "{stderr}"
    );
    assert!(!std::path::Path::new("/sys/fs/bpf/gwtest-err2").exists());
}

#[test]
fn bad_sandbox_option_is_named() {
    let (ok, stderr) = gateway(&["run", "--sandbox", "/sys/fs/cgroup/x,color=red"]);
    assert!(!ok);
    assert!(stderr.contains("unknown option `color=red`"), "{stderr}");
}

#[test]
fn pin_dir_outside_bpffs_is_rejected() {
    require_root().unwrap();
    let cgroup = gateway_tests::sandbox::SandboxCgroup::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pins = dir.path().join("pins");
    let (ok, stderr) = gateway(&[
        "run",
        "--sandbox",
        cgroup.path().to_str().unwrap(),
        "--pin-dir",
        pins.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("is not on a bpf filesystem"), "{stderr}");
}

#[test]
fn non_root_is_refused_with_a_reason() {
    // `setpriv` drops to nobody for one command.
    let bin = gateway_bin().unwrap();
    let output = cmd(
        "setpriv",
        ["--reuid=65534", "--regid=65534", "--clear-groups", "--"],
    )
    .arg(bin)
    .args(["exec", "--", "true"])
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gateway must run as root"), "{stderr}");
}

#[test]
fn unusable_ca_files_are_named_at_start() {
    require_root().unwrap();
    let cgroup = gateway_tests::sandbox::SandboxCgroup::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    for (file, expected) in [
        (dir.path().join("missing.pem"), "No such file"),
        (empty.clone(), "holds no certificate"),
    ] {
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, format!("[tls]\nextra_ca_files = [{file:?}]\n")).unwrap();
        let output = cmd(
            gateway_bin().unwrap().to_str().unwrap(),
            ["run", "--sandbox"],
        )
        .arg(cgroup.path())
        .arg("--config")
        .arg(&config)
        .args(["--pin-dir", "/sys/fs/bpf/gwtest-err3"])
        .env("GATEWAY_HOME", dir.path())
        .output()
        .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&file.display().to_string()) && stderr.contains(expected),
            "{stderr}"
        );
        assert!(!std::path::Path::new("/sys/fs/bpf/gwtest-err3").exists());
    }
}

/// `gateway config default | gateway config check /dev/stdin`: the printed defaults are a
/// valid file, and a broken one is refused with its key and line, exit 1.
#[test]
fn config_default_checks_and_a_broken_file_is_named() {
    use std::{io::Write as _, process::Stdio};

    let default = cmd(
        gateway_bin().unwrap().to_str().unwrap(),
        ["config", "default"],
    )
    .output()
    .unwrap();
    assert!(default.status.success());
    let check = |text: &[u8]| {
        let mut child = cmd(
            gateway_bin().unwrap().to_str().unwrap(),
            ["config", "check", "/dev/stdin"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        child.stdin.take().unwrap().write_all(text).unwrap();
        child.wait_with_output().unwrap()
    };
    let valid = check(&default.stdout);
    assert!(
        valid.status.success(),
        "{}",
        String::from_utf8_lossy(&valid.stderr)
    );
    let broken = check(b"[tls]\nvalidity_hours = 0\n");
    assert_eq!(broken.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&broken.stderr).trim(),
        "gateway: /dev/stdin: tls.validity_hours: must be at least 1 (got 0) (line 2, column 18)"
    );
}

/// Pins left by a build whose counters map had another layout (the per-CPU array of five u64
/// before the counters got BTF): the daemon refuses them, naming the map and the way out,
/// and touches nothing; `gateway down` clears them and the next start works.
#[test]
fn pins_of_another_map_layout_are_refused_and_down_clears_them() {
    require_root().unwrap();
    let pins = std::path::PathBuf::from("/sys/fs/bpf").join(gateway_tests::unique("gwtest-old"));
    std::fs::create_dir_all(&pins).unwrap();
    let _cleanup = RemoveOnDrop(pins.clone());
    let made = cmd("bpftool", ["map", "create"])
        .arg(pins.join("counters"))
        .args([
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "5",
            "name",
            "counters",
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let state = tempfile::tempdir().unwrap();
    let start = || {
        let mut command = cmd(gateway_bin().unwrap().to_str().unwrap(), ["--state-dir"]);
        command
            .arg(state.path())
            .args(["run", "--pin-dir"])
            .arg(&pins)
            .env("GATEWAY_HOME", state.path());
        command
    };
    let output = start().output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("counters") && stderr.contains("gateway down"),
        "{stderr}"
    );
    assert!(pins.join("counters").exists(), "the old pins were touched");

    let down = cmd(gateway_bin().unwrap().to_str().unwrap(), ["--state-dir"])
        .arg(state.path())
        .args(["down", "--pin-dir"])
        .arg(&pins)
        .output()
        .unwrap();
    assert!(down.status.success(), "{down:?}");
    assert!(!pins.exists());

    // Now it starts (and is stopped at once: ready is all this test needs).
    let mut daemon = start()
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = daemon.stderr.take().unwrap();
    let ready = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .take(50)
        .any(|line| line.contains("gateway ready"));
    gateway_tests::process::terminate(&mut daemon, std::time::Duration::from_secs(10));
    assert!(ready, "the daemon did not start after down");
}

/// Removes a pin directory when the test ends, however it ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
