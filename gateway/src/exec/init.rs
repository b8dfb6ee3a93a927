//! `gateway __exec-init`: the single-threaded helper between `gateway exec` and its command.
//!
//! exec is a multi-threaded tokio process, which may only call async-signal-safe functions
//! between fork and exec; so exec's spawn does only what must happen before the helper runs
//! (join the sandbox cgroup, enter the sandbox netns, die with exec: [`Confinement`]) and this
//! fresh, single-threaded process does the rest:
//!
//! 1. `unshare(CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWPID)`, mounts private, the kernel's
//!    control filesystems (cgroup2 first of all) read-only, the trust material over the
//!    distribution's bundle paths and a resolv.conf naming the gateway's DNS over the system's
//!    ([`mounts`], [`trust::overlays`]);
//! 2. forks PID 1 of the new PID namespace ([`pid1`]), which dies with the helper, mounts its
//!    own /proc, drops privileges and starts the command;
//! 3. forwards SIGINT/SIGTERM to PID 1 and exits with its exit code.
//!
//! When PID 1 exits (the command ended) or is killed (the helper died, because exec died), the
//! kernel kills every process left in the namespace: nothing of the sandbox outlives exec.
//!
//! Protocol: exec passes the target ids, the trust directory and the command as arguments
//! ([`InitArgs`]) and the command's environment as the helper's own; no secret passes.
//!
//! [`Confinement`]: crate::sandbox::Confinement

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::OFlag,
    sched::{CloneFlags, unshare},
    sys::{
        signal::{SigSet, Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{ForkResult, Gid, Pid, Uid, fork, pipe2},
};

use super::{
    mounts::{self, MountError},
    pid1,
    privileges::{self, PrivilegeError, Target},
    trust,
};

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "__exec-init";

/// Arguments of `gateway __exec-init` (written by exec, not by people).
#[derive(Clone, Debug, clap::Args)]
pub struct InitArgs {
    /// User id the command runs as.
    #[arg(long)]
    pub uid: u32,
    /// Primary group id the command runs as.
    #[arg(long)]
    pub gid: u32,
    /// Supplementary group ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<u32>,
    /// exec's trust directory, mounted over the distribution's bundle paths and resolv.conf.
    #[arg(long, value_name = "DIR")]
    pub trust_dir: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

impl InitArgs {
    /// Who the command becomes.
    pub fn target(&self) -> Target {
        Target {
            uid: Uid::from_raw(self.uid),
            gid: Gid::from_raw(self.gid),
            groups: self.groups.iter().copied().map(Gid::from_raw).collect(),
        }
    }
}

/// Errors of the helper (the command's own failure is its exit code).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The helper must fork, and only a single-threaded process may do anything after fork.
    #[error("the exec helper runs {threads} threads; it must be single-threaded to fork safely")]
    Threaded { threads: String },
    /// The namespaces could not be created.
    #[error("unshare (mount, cgroup and PID namespaces): {source}")]
    Unshare {
        #[source]
        source: nix::Error,
    },
    /// The mount namespace could not be set up.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The highest capability number could not be read.
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// A system call of the supervision (signal mask, pipe, fork, wait) failed.
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: nix::Error,
    },
}

fn sys(op: &'static str) -> impl FnOnce(nix::Error) -> InitError {
    move |source| InitError::Sys { op, source }
}

/// Runs the helper and returns the command's exit code (128 + signal when it was killed).
pub fn run(args: InitArgs) -> Result<i32, InitError> {
    ensure_single_threaded()?;
    // Blocked before the fork, so PID 1 inherits the mask and no signal is lost in between:
    // both wait for them with sigwait.
    let signals = supervised_signals();
    signals.thread_block().map_err(sys("blocking signals"))?;
    let last_cap = privileges::last_cap()?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP | CloneFlags::CLONE_NEWPID)
        .map_err(|source| InitError::Unshare { source })?;
    mounts::make_private()?;
    mounts::kernel_interfaces_read_only()?;
    if let Some(dir) = &args.trust_dir {
        for (source, target) in trust::overlays(dir) {
            mounts::bind_read_only(&source, &target)?;
        }
    }
    // PID 1 learns that the helper died before PR_SET_PDEATHSIG took effect from this pipe:
    // the helper holds the write end until it exits, so a read that is not EAGAIN means gone.
    let (alive_read, alive_write) =
        pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(sys("pipe"))?;
    // SAFETY: this process is single-threaded (checked above), so the child may run any code.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(alive_write);
            pid1::run(&args, last_cap, alive_read, &signals)
        }
        ForkResult::Parent { child } => {
            drop(alive_read);
            let code = supervise(child, Reap::OnlyChild, &signals);
            // Held until PID 1 is gone (see above).
            drop(alive_write);
            code.map_err(sys("waiting for PID 1"))
        }
    }
}

/// SIGINT and SIGTERM are passed on; SIGCHLD says a child changed state.
pub(super) fn supervised_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        set.add(signal);
    }
    set
}

/// Which children a supervisor reaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reap {
    /// Only the one it waits for (the helper has no other).
    OnlyChild,
    /// Every child, as PID 1 must: orphans of the namespace are reparented to it.
    Everyone,
}

/// Waits (with `signals` blocked) until `child` exits, passing SIGINT and SIGTERM on to it, and
/// returns its exit code, 128 + the signal number when a signal killed it.
pub(super) fn supervise(child: Pid, reap: Reap, signals: &SigSet) -> Result<i32, nix::Error> {
    loop {
        match signals.wait()? {
            signal @ (Signal::SIGINT | Signal::SIGTERM) => {
                // The child may have just exited; its status arrives with SIGCHLD.
                let _ = kill(child, signal);
            }
            _ => {
                if let Some(code) = reap_children(child, reap)? {
                    return Ok(code);
                }
            }
        }
    }
}

/// Reaps what has exited; returns `child`'s exit code once it is among them.
fn reap_children(child: Pid, reap: Reap) -> Result<Option<i32>, nix::Error> {
    let whom = match reap {
        Reap::OnlyChild => Some(child),
        Reap::Everyone => None,
    };
    loop {
        match waitpid(whom, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == child => {
                return Ok(Some(128 + signal as i32));
            }
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Fails unless this process has exactly one thread.
fn ensure_single_threaded() -> Result<(), InitError> {
    let status = fs::read_to_string(Path::new("/proc/self/status")).unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .map(str::trim)
        .unwrap_or("an unknown number of");
    if threads == "1" {
        Ok(())
    } else {
        Err(InitError::Threaded {
            threads: threads.to_string(),
        })
    }
}
