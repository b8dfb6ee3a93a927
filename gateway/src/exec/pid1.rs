//! PID 1 of exec's PID namespace, forked by the helper: it ties its life to the helper's, mounts
//! the namespace's own /proc, becomes the target user without capabilities, starts the command
//! and reaps until the command exits. Its exit ends the namespace: the kernel kills every
//! process still in it, so background processes of the command never outlive it.
//!
//! The command does not run as PID 1 itself: PID 1 receives only the signals it has a handler
//! for, so an ordinary program (`sleep`) would ignore the SIGINT that exec passes on.

use std::{
    ffi::OsString,
    io,
    os::fd::{AsFd, OwnedFd},
    os::unix::process::CommandExt as _,
    process::Command,
};

use nix::{
    errno::Errno,
    sys::{
        prctl,
        signal::{SigSet, Signal},
    },
    unistd::{Pid, read},
};

use super::{
    init::{InitArgs, Reap, supervise},
    mounts::{self, MountError},
    privileges::{self, PrivilegeError},
};

/// Errors of PID 1 before the command runs (reported on stderr, then exit 125-127).
#[derive(Debug, thiserror::Error)]
enum Pid1Error {
    /// The namespace's /proc could not be mounted.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// Privileges could not be dropped.
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// PR_SET_PDEATHSIG failed.
    #[error("setting the parent-death signal: {source}")]
    DeathSignal {
        #[source]
        source: nix::Error,
    },
    /// The helper died before PID 1 could tie its life to it.
    #[error("the exec helper is gone")]
    HelperGone,
    /// The command could not be started.
    #[error("starting {program:?}: {source}")]
    Spawn {
        program: OsString,
        #[source]
        source: io::Error,
    },
    /// Waiting for the command failed.
    #[error("waiting for the command: {source}")]
    Wait {
        #[source]
        source: nix::Error,
    },
}

impl Pid1Error {
    /// What a shell would answer: 127 not found, 126 not executable; 125 for exec's own failure.
    fn exit_code(&self) -> i32 {
        match self {
            Pid1Error::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => 127,
            Pid1Error::Spawn { .. } => 126,
            _ => 125,
        }
    }
}

/// Runs PID 1 and exits with the command's exit code.
pub(super) fn run(args: &InitArgs, last_cap: u32, helper_alive: OwnedFd, signals: &SigSet) -> ! {
    let code = match start_and_supervise(args, last_cap, &helper_alive, signals) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("gateway: {err}");
            err.exit_code()
        }
    };
    std::process::exit(code)
}

fn start_and_supervise(
    args: &InitArgs,
    last_cap: u32,
    helper_alive: &OwnedFd,
    signals: &SigSet,
) -> Result<i32, Pid1Error> {
    mounts::fresh_proc()?;
    privileges::drop_to(&args.target(), last_cap)?;
    // After the id change, which clears the parent-death signal.
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(|source| Pid1Error::DeathSignal { source })?;
    if !helper_is_alive(helper_alive) {
        return Err(Pid1Error::HelperGone);
    }
    let program = args.command.first().cloned().unwrap_or_default();
    let mut command = Command::new(&program);
    command.args(&args.command[1..]);
    let unblock = signals.to_owned();
    // SAFETY: this process is single-threaded, so anything may run between fork and exec; the
    // closure only calls sigprocmask. std inherits the signal mask into the command (and only
    // resets SIGPIPE): without this, the command would start with SIGINT and SIGTERM blocked.
    unsafe {
        command.pre_exec(move || unblock.thread_unblock().map_err(io::Error::from));
    }
    // std reports a failed execve (ENOENT, EACCES) back here.
    let child = command
        .spawn()
        .map_err(|source| Pid1Error::Spawn { program, source })?;
    // The command is reaped below by waitpid, not through `child`.
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    supervise(pid, Reap::Everyone, signals).map_err(|source| Pid1Error::Wait { source })
}

/// The helper holds the write end until it exits: reading an empty pipe gives EAGAIN while it
/// lives and end-of-file once it is gone.
fn helper_is_alive(helper_alive: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    matches!(read(helper_alive.as_fd(), &mut byte), Err(Errno::EAGAIN))
}
