//! Harness for the privileged integration tests: guards for network namespaces, sandbox cgroups,
//! upstream servers and gateway daemons that always clean up, plus helpers to run real clients
//! inside a sandbox. Setup failures are errors (tests fail loudly), never skips.

pub mod bench;
pub mod daemon;
pub mod net;
pub mod nginx;
pub mod pki;
pub mod sandbox;
pub mod upstream;

use std::{
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

/// A name no other guard of this process uses: `<prefix><pid>x<n>` (short enough for interfaces).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The gateway binary under test: $GATEWAY_BIN, else target/debug/gateway of this workspace.
pub fn gateway_bin() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("GATEWAY_BIN") {
        Some(path) => PathBuf::from(path),
        None => workspace_dir().join("target/debug/gateway"),
    };
    if !path.exists() {
        bail!(
            "gateway binary {} not found: build it first (cargo xtask test does)",
            path.display()
        );
    }
    Ok(path)
}

/// The workspace root.
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A script in tests/py.
pub fn py_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(name)
}

/// Fails unless running as root: these tests need eBPF, cgroups and namespaces.
pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the integration tests must run as root (eBPF, cgroups, network namespaces)");
    }
    Ok(())
}

/// Runs a setup command and fails with its stderr when it fails.
pub fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// Shorthand for `Command::new(program).args(args)`.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(program);
    command.args(args);
    command
}

/// The hard RLIMIT_NOFILE of this process (inherited by what it starts).
pub fn hard_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_max
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let hard = hard_nofile();
    let limit = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return 0;
    }
    hard
}
