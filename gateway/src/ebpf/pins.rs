//! The bpffs directory (default /sys/fs/bpf/gateway) where maps and links are pinned, so
//! operators can inspect them with bpftool and sandboxes stay redirected if the daemon dies.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::Map,
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
}

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A locked pin directory; dropping it removes the directory and the map pins in it.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
    /// Held for the daemon's lifetime so that two daemons never share the directory.
    _lock: Flock<File>,
}

impl PinDir {
    /// Creates (or takes over) `path`, holding an exclusive lock on it while this value lives.
    /// Pins left by a daemon that died are removed: this daemon attaches afresh.
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
        let dir = PinDir {
            path: path.into(),
            _lock: lock,
        };
        for stale in dir.remove_pins()? {
            tracing::warn!(pin = %stale.display(), "removed stale pin left by a previous gateway");
        }
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes every pin in the directory (not the directory), returning what was removed.
    fn remove_pins(&self) -> Result<Vec<PathBuf>, PinError> {
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
        Ok(removed)
    }

    /// Pins `map` as `<dir>/<lower-case name>`.
    pub fn pin_map(&self, name: &str, map: &Map) -> Result<(), PinError> {
        let path = self.path.join(name.to_ascii_lowercase());
        map.pin(&path)
            .map_err(|source| PinError::Pin { path, source })
    }

    /// Pins `link` as `<dir>/links/<name>`.
    pub fn pin_link(&self, name: &str, link: FdLink) -> Result<PinnedLinkGuard, PinError> {
        let path = self.path.join("links").join(name);
        let link = link.pin(&path).map_err(|source| PinError::Pin {
            path: path.clone(),
            source,
        })?;
        Ok(PinnedLinkGuard {
            link: Some(link),
            path,
        })
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(err) = self.remove_pins() {
            tracing::error!(error = %err, "failed to remove pins");
        }
        let _ = fs::remove_dir(self.path.join("links"));
        let _ = fs::remove_dir(&self.path);
    }
}

/// A pinned link; dropping it removes the pin and so detaches the program.
#[derive(Debug)]
pub struct PinnedLinkGuard {
    link: Option<PinnedLink>,
    path: PathBuf,
}

impl Drop for PinnedLinkGuard {
    fn drop(&mut self) {
        if let Some(link) = self.link.take()
            && let Err(err) = link.unpin()
        {
            tracing::error!(pin = %self.path.display(), error = %err, "failed to unpin link");
        }
    }
}
