//! The bpffs directory (default /sys/fs/bpf/gateway) where maps and links are pinned, so
//! operators can inspect them with bpftool and sandboxes stay confined while no daemon runs.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use aya::{
    pin::PinError as AyaPinError,
    programs::links::{FdLink, PinnedLink},
};
use nix::fcntl::{Flock, FlockArg};

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/gateway";

/// Errors creating, locking or writing the pin directory.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// A filesystem operation on the pin directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The directory is not on a bpf filesystem.
    #[error("{path} is not on a bpf filesystem (mount one with `mount -t bpf bpf /sys/fs/bpf`)")]
    NotBpffs { path: PathBuf },
    /// Another daemon holds the directory.
    #[error("another gateway daemon is using {path} (its lock is held)")]
    Locked { path: PathBuf },
    /// Pinning an object failed.
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: AyaPinError,
    },
    /// Removing a link's pin failed.
    #[error("unpinning {path}: {source}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A pinned link could not be opened.
    #[error("opening the pinned link {path}: {source}")]
    Adopt {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
}

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A locked pin directory. Pins outlive the daemon on purpose: while they exist the sandboxes'
/// programs stay attached and their connects fail without a daemon (fail closed); a new daemon
/// adopts them. Only [`PinDir::remove_all`] (`gateway down`) takes them away.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
    /// Held for the daemon's lifetime so that two daemons never share the directory.
    _lock: Flock<File>,
}

impl PinDir {
    /// Creates (or takes over) `path`, holding an exclusive lock on it while this value lives.
    /// What a previous daemon pinned there stays.
    pub fn create(path: &Path) -> Result<Self, PinError> {
        let io_err = |op| {
            move |source| PinError::Io {
                op,
                path: path.into(),
                source,
            }
        };
        fs::create_dir_all(path.join("links")).map_err(io_err("create"))?;
        let lock = File::open(path).map_err(io_err("open"))?;
        let fs = nix::sys::statfs::fstatfs(&lock).map_err(|e| io_err("statfs")(e.into()))?;
        if fs.filesystem_type().0 as i64 != BPF_FS_MAGIC {
            return Err(PinError::NotBpffs { path: path.into() });
        }
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
            .map_err(|_| PinError::Locked { path: path.into() })?;
        Ok(PinDir {
            path: path.into(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the map `name` is pinned: `<dir>/<lower-case name>`.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.path.join(name.to_ascii_lowercase())
    }

    /// Where the link `name` is pinned: `<dir>/links/<name>`.
    pub fn link_path(&self, name: &str) -> PathBuf {
        self.path.join("links").join(name)
    }

    /// Removes every pin: the links first (detaching their programs), then the maps, then the
    /// directories. Returns what was removed.
    pub fn remove_all(&self) -> Result<Vec<PathBuf>, PinError> {
        let mut removed = Vec::new();
        for dir in [self.path.join("links"), self.path.clone()] {
            let entries = fs::read_dir(&dir).map_err(|source| PinError::Io {
                op: "list",
                path: dir.clone(),
                source,
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if !path.is_dir() {
                    fs::remove_file(&path).map_err(|source| PinError::Io {
                        op: "remove",
                        path: path.clone(),
                        source,
                    })?;
                    removed.push(path);
                }
            }
        }
        for dir in [self.path.join("links"), self.path.clone()] {
            fs::remove_dir(&dir).map_err(|source| PinError::Io {
                op: "remove",
                path: dir.clone(),
                source,
            })?;
        }
        Ok(removed)
    }

    /// Pins `link` as `<dir>/links/<name>`.
    pub fn pin_link(&self, name: &str, link: FdLink) -> Result<PinnedLinkGuard, PinError> {
        let path = self.link_path(name);
        let link = link.pin(&path).map_err(|source| PinError::Pin {
            path: path.clone(),
            source,
        })?;
        Ok(PinnedLinkGuard { link, path })
    }

    /// The link a previous daemon pinned as `<dir>/links/<name>`, if it is there.
    pub fn adopt_link(&self, name: &str) -> Result<Option<PinnedLinkGuard>, PinError> {
        let path = self.link_path(name);
        if !path.exists() {
            return Ok(None);
        }
        let link = PinnedLink::from_pin(&path).map_err(|source| PinError::Adopt {
            path: path.clone(),
            source,
        })?;
        Ok(Some(PinnedLinkGuard { link, path }))
    }
}

/// A pinned link. Dropping it keeps it attached (and pinned); [`PinnedLinkGuard::detach`]
/// removes the pin, which detaches the program.
#[derive(Debug)]
pub struct PinnedLinkGuard {
    link: PinnedLink,
    path: PathBuf,
}

impl PinnedLinkGuard {
    /// Unpins the link, detaching its program.
    pub fn detach(self) -> Result<(), PinError> {
        let path = self.path;
        self.link
            .unpin()
            .map(drop)
            .map_err(|source| PinError::Unpin { path, source })
    }
}
