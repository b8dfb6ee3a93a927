//! Process plumbing shared by `gateway run` and `gateway exec`: the root check, signals, the
//! open-file limit, and giving memory back after a load.

use tracing::{debug, warn};

/// The gateway needs root for eBPF, cgroups and namespaces.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Not running as root.
    #[error(
        "gateway must run as root (it loads eBPF programs, attaches them to cgroups and enters network namespaces)"
    )]
    NotRoot,
    /// Waiting for signals failed.
    #[error("installing signal handlers: {source}")]
    Signals {
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Fails unless the effective user is root.
pub fn require_root() -> Result<(), ProcessError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(ProcessError::NotRoot)
    }
}

/// A signal that stops the daemon (or that exec passes on to its command).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGHUP: reload what can be reloaded.
    Hangup,
}

impl Signal {
    /// The name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
            Signal::Hangup => "SIGHUP",
        }
    }
}

impl From<Signal> for nix::sys::signal::Signal {
    fn from(signal: Signal) -> Self {
        match signal {
            Signal::Interrupt => nix::sys::signal::Signal::SIGINT,
            Signal::Terminate => nix::sys::signal::Signal::SIGTERM,
            Signal::Hangup => nix::sys::signal::Signal::SIGHUP,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// SIGINT, SIGTERM and SIGHUP, as a stream of [`Signal`]s.
#[derive(Debug)]
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening (must run inside the runtime).
    pub fn new() -> Result<Self, ProcessError> {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind| signal(kind).map_err(|source| ProcessError::Signals { source });
        Ok(Signals {
            int: listen(SignalKind::interrupt())?,
            term: listen(SignalKind::terminate())?,
            hup: listen(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::Interrupt,
            _ = self.term.recv() => Signal::Terminate,
            _ = self.hup.recv() => Signal::Hangup,
        }
    }
}

/// Keeps the daemon's memory (secret values among it) out of core dumps and away from other
/// processes of the same user: not dumpable (no core file, no ptrace, /proc/PID/mem root-only)
/// and a zero core size limit for good measure.
pub fn no_core_dumps() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        warn!(error = %err, "could not make the process undumpable");
    }
    if let Err(err) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        warn!(error = %err, "could not set the core size limit to 0");
    }
}

/// Raises the open-file soft limit to the hard limit (every relayed connection holds two
/// descriptors) and returns the soft limit in force afterwards.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                debug!(from = soft, to = hard, "raised the open-file limit");
                hard
            }
            Err(err) => {
                warn!(soft, hard, error = %err, "could not raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => {
            debug!(limit = soft, "open-file limit");
            soft
        }
        Err(err) => {
            warn!(error = %err, "could not read the open-file limit");
            0
        }
    }
}

/// Whether `pid` is a live (not zombie) process running the same program as this one, judged
/// by its command name: what tells the leftovers of a killed `gateway exec` (named after its
/// pid) from those of one still running. The name, not the executable's inode, so that an exec
/// started before an upgrade of the binary still counts as running.
pub fn is_running_gateway(pid: u32) -> bool {
    let comm = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    let live = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which may itself contain ") ".
        !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z' | 'X') | None
        )
    });
    live && comm(&pid.to_string())
        .is_some_and(|theirs| comm("self").is_some_and(|ours| theirs == ours))
}

/// Gives memory back to the system once a load has passed: the allocator keeps freed memory
/// of thousands of closed connections otherwise, and the daemon's RSS would stay at its peak.
#[derive(Debug, Default)]
pub struct Trim {
    peak_since_trim: usize,
}

impl Trim {
    /// Connections at which a drop to at most a quarter of the peak triggers a trim.
    const MIN_PEAK: usize = 256;

    /// Called periodically with the number of open connections.
    pub fn after_load(&mut self, open: usize) {
        self.peak_since_trim = self.peak_since_trim.max(open);
        if self.peak_since_trim >= Self::MIN_PEAK && open <= self.peak_since_trim / 4 {
            release_free_memory();
            debug!(
                peak = self.peak_since_trim,
                open, "returned free memory to the system"
            );
            self.peak_since_trim = open;
        }
    }
}

#[cfg(target_env = "gnu")]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; no pointer is passed.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
fn release_free_memory() {}

/// A process watched through a pidfd: unlike its pid, it cannot come to name another process.
#[derive(Debug)]
pub struct Pidfd(std::os::fd::OwnedFd);

impl Pidfd {
    /// Watches the running process `pid`.
    ///
    /// # Errors
    /// The `pidfd_open` error (ESRCH: no such process).
    pub fn open(pid: u32) -> std::io::Result<Pidfd> {
        let pid = libc::pid_t::try_from(pid)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; nix has
        // no wrapper for it.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = std::os::fd::RawFd::try_from(fd)
            .map_err(|_| std::io::Error::other("descriptor out of range"))?;
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        Ok(Pidfd(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    /// Whether the process has exited (its pidfd is readable then).
    pub fn exited(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd as _;
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }
}
