//! Harness for the privileged integration tests, the bench and the soak: guards for network
//! namespaces, sandbox cgroups, upstream servers, a test DNS server and gateway daemons that
//! clean up on drop and report on stderr what they could not clean up, plus helpers to run real
//! clients inside a sandbox. Setup failures are errors (tests fail loudly), never skips.

pub mod bench;
pub mod daemon;
pub mod dns;
pub mod dns_fixture;
pub mod net;
pub mod nginx;
pub mod pki;
pub mod proc;
pub mod process;
pub mod sandbox;
pub mod upstream;
pub mod watch;

use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};
use nix::sys::resource::{Resource, getrlimit};

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

/// Where the program `name` is installed: searched in $PATH, then in /usr/sbin and /sbin (which
/// a non-login root shell may lack, and where nginx lives).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.extend([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]);
    let search: OsString = std::env::join_paths(dirs).ok()?;
    let cwd = std::env::current_dir().ok()?;
    which::which_in(name, Some(search), cwd).ok()
}

/// Fails unless running as root: these tests need eBPF, cgroups and namespaces.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
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

/// The hard RLIMIT_NOFILE of this process (inherited by what it starts); 1024 if unreadable.
pub fn hard_nofile() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(_, hard)| hard)
}
