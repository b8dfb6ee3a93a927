//! Network namespaces: opening a sandbox's, creating an isolated one, and running code inside.
//!
//! setns(2) changes the calling thread only, so work inside a namespace runs on a short-lived
//! thread of its own and never disturbs tokio's workers, which stay in the host namespace.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    thread,
};

use nix::sched::{CloneFlags, setns, unshare};

/// Errors opening, creating or entering network namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The namespace file could not be opened.
    #[error("open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An operation inside or on a namespace failed.
    #[error("{op} (network namespace {label}): {source}")]
    Op {
        op: &'static str,
        label: String,
        #[source]
        source: io::Error,
    },
}

/// A network namespace held open by file descriptor.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    label: String,
}

impl NetNs {
    /// A path that opens this namespace while this value lives, also from another process
    /// (root's): `/proc/<our pid>/fd/<its descriptor>`.
    pub fn proc_path(&self) -> std::path::PathBuf {
        use std::os::fd::AsRawFd as _;
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd()).into()
    }

    /// The namespace's descriptor, which keeps it alive as long as it is open.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Opens a namespace file such as /run/netns/NAME or /proc/PID/ns/net.
    pub fn open(path: &Path) -> Result<Self, NetNsError> {
        let file = File::open(path).map_err(|source| NetNsError::Open {
            path: path.into(),
            source,
        })?;
        Ok(NetNs {
            fd: file.into(),
            label: path.display().to_string(),
        })
    }

    /// Creates a fresh namespace whose only interface is `lo`, brought up.
    pub fn new_isolated(label: &str) -> Result<Self, NetNsError> {
        let label = label.to_string();
        let err_label = label.clone();
        let fd = on_own_thread(move || {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ("unshare", io::Error::from(e)))?;
            bring_loopback_up().map_err(|e| ("bring lo up", e))?;
            let path = "/proc/thread-self/ns/net";
            File::open(path)
                .map(OwnedFd::from)
                .map_err(|e| ("open /proc/thread-self/ns/net", e))
        })
        .map_err(|(op, source)| NetNsError::Op {
            op,
            label: err_label,
            source,
        })?;
        Ok(NetNs { fd, label })
    }

    /// A human-readable name for logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetNsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let fd = self.fd.as_fd();
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("thread panicked")))
        })
        .map_err(|source| NetNsError::Op {
            op: "setns",
            label: self.label.clone(),
            source,
        })
    }

    /// A duplicate of the namespace descriptor (for a child process to enter).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Runs `f` on a new thread, so namespace changes die with that thread.
fn on_own_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, (&'static str, io::Error)> + Send + 'static,
) -> Result<T, (&'static str, io::Error)> {
    thread::spawn(f)
        .join()
        .unwrap_or_else(|_| Err(("thread", io::Error::other("panicked"))))
}

/// Sets IFF_UP on `lo` in the calling thread's namespace.
fn bring_loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: an all-zero ifreq is valid; the name is NUL-terminated by the zeroing.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which outlives both calls.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
