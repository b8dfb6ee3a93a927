//! A sandbox: a cgroup (and optionally its own network namespace) whose outbound TCP connections
//! to intercepted ports are redirected through the gateway.

pub mod cgroup;
pub mod mountinfo;
pub mod netns;

use std::{
    fmt,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::Command,
};

/// The daemon's identifier for a sandbox, part of every `ORIG_DST` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SandboxId(pub u32);

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A sandbox as its connections report it: the id for log lines (its `Display`), the name
/// and the daemon's metrics for counting.
#[derive(Clone, Debug)]
pub struct SandboxTag {
    /// The sandbox.
    pub id: SandboxId,
    /// Its name: the metrics label.
    pub name: std::sync::Arc<str>,
    /// Where its connections are counted.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl SandboxTag {
    /// A tag counting into metrics of its own (tests, and code with no daemon around).
    pub fn detached(id: SandboxId) -> SandboxTag {
        SandboxTag {
            id,
            name: std::sync::Arc::from(id.to_string()),
            metrics: std::sync::Arc::default(),
        }
    }
}

impl fmt::Display for SandboxTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.id.fmt(f)
    }
}

/// What a command must do between fork and exec to run inside a sandbox.
///
/// The process joins the cgroup before exec, so every socket it creates belongs to the sandbox,
/// and (optionally) dies with the process that spawned it, so it cannot outlive the gateway.
#[derive(Debug)]
pub struct Confinement {
    procs: File,
    netns: Option<OwnedFd>,
    die_with_parent: bool,
}

impl Confinement {
    /// Confine to `cgroup` (and `netns`, when given).
    pub fn new(
        cgroup: &cgroup::Cgroup,
        netns: Option<&netns::NetNs>,
    ) -> Result<Self, cgroup::CgroupError> {
        let procs = cgroup.procs_writer()?;
        let netns = netns
            .map(|ns| ns.try_clone_fd())
            .transpose()
            .map_err(|source| cgroup::CgroupError::Io {
                op: "dup netns fd for",
                path: cgroup.path().into(),
                source,
            })?;
        Ok(Confinement {
            procs,
            netns,
            die_with_parent: false,
        })
    }

    /// Also kill the command when the spawning thread's process dies (PR_SET_PDEATHSIG).
    pub fn die_with_parent(mut self) -> Self {
        self.die_with_parent = true;
        self
    }

    /// Arrange for `command` to be confined when spawned. `self` must outlive the spawn.
    pub fn apply(&self, command: &mut Command) {
        let procs = self.procs.as_raw_fd();
        let netns = self.netns.as_ref().map(AsRawFd::as_raw_fd);
        let die_with_parent = self.die_with_parent;
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
        // functions (write, setns, prctl, getppid) on descriptors opened before the fork.
        unsafe {
            command.pre_exec(move || {
                if die_with_parent {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // The parent may have died before prctl took effect.
                    if libc::getppid() as u32 != parent {
                        return Err(io::Error::from_raw_os_error(libc::ESRCH));
                    }
                }
                // "0" moves the writing process itself.
                if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(fd) = netns
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}
