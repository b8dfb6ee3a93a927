//! cgroup v2 directories: finding the mount, opening a sandbox's cgroup, transient cgroups.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::mountinfo::{self, Mount};
use crate::process;

/// `statfs` magic of cgroup v2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// How long removing a transient cgroup waits for its processes to exit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors opening, creating or removing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 filesystem is mounted on this host.
    #[error("no cgroup v2 filesystem is mounted (nothing of type cgroup2 in /proc/self/mountinfo)")]
    NoCgroup2,
    /// The named cgroup directory does not exist.
    #[error("cgroup {path} does not exist")]
    Missing { path: PathBuf },
    /// The path exists but is not on the cgroup v2 filesystem.
    #[error("{path} is not a cgroup v2 directory (cgroup2 is mounted at {mount})")]
    NotCgroup2 { path: PathBuf, mount: PathBuf },
    /// A filesystem operation on a cgroup failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A transient cgroup still had processes after they were killed.
    #[error("cgroup {path} still has processes {timeout:?} after they were killed")]
    Busy { path: PathBuf, timeout: Duration },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

/// Where the cgroup v2 hierarchy is mounted (e.g. /sys/fs/cgroup or, on hybrid hosts,
/// /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = mountinfo::read().map_err(io_err("read", Path::new(mountinfo::MOUNTINFO)))?;
    mount_point_of(&mounts, "cgroup2").ok_or(CgroupError::NoCgroup2)
}

/// The mount point of the first filesystem of type `fstype`.
fn mount_point_of(mounts: &[Mount], fstype: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|mount| mount.fstype == fstype)
        .map(|mount| mount.point.clone())
}

/// The cgroup v2 directory this process is in.
pub fn own_cgroup() -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/cgroup");
    let text = fs::read_to_string(path).map_err(io_err("read", path))?;
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or("/");
    Ok(cgroup2_mount()?.join(relative.trim_start_matches('/')))
}

/// An existing cgroup v2 directory, held open (programs attach to the directory fd).
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    dir: File,
    id: u64,
}

impl Cgroup {
    /// Opens `path`; a relative path is taken under the cgroup2 mount.
    pub fn open(path: &Path) -> Result<Self, CgroupError> {
        let mount = cgroup2_mount()?;
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            mount.join(path)
        };
        let dir = File::open(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => CgroupError::Missing { path: path.clone() },
            _ => CgroupError::Io {
                op: "open",
                path: path.clone(),
                source,
            },
        })?;
        let fs = nix::sys::statfs::fstatfs(&dir).map_err(|e| CgroupError::Io {
            op: "statfs",
            path: path.clone(),
            source: e.into(),
        })?;
        if fs.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC
            || !path.join("cgroup.procs").exists()
        {
            return Err(CgroupError::NotCgroup2 { path, mount });
        }
        // On cgroup v2 the cgroup id the kernel reports is the directory's inode number.
        let id = dir.metadata().map_err(io_err("stat", &path))?.ino();
        Ok(Cgroup { path, dir, id })
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel's cgroup id, the key of the `SANDBOXES` map.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The open directory, for attaching programs.
    pub fn dir(&self) -> &File {
        &self.dir
    }

    /// `cgroup.procs`, opened for writing (close-on-exec), to move processes in.
    pub fn procs_writer(&self) -> Result<File, CgroupError> {
        let path = self.path.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))
    }

    /// Whether any process is in this cgroup or below it.
    pub fn is_populated(&self) -> Result<bool, CgroupError> {
        let path = self.path.join("cgroup.events");
        let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
        Ok(text.lines().any(|line| line == "populated 1"))
    }
}

/// A cgroup created for the lifetime of this value; dropping it kills what is left inside and
/// removes the directory.
#[derive(Debug)]
pub struct TransientCgroup {
    cgroup: Option<Cgroup>,
}

impl TransientCgroup {
    /// Creates `<cgroup2 mount>/<name>`.
    pub fn create(name: &str) -> Result<Self, CgroupError> {
        let path = cgroup2_mount()?.join(name);
        fs::create_dir(&path).map_err(io_err("create", &path))?;
        match Cgroup::open(&path) {
            Ok(cgroup) => Ok(TransientCgroup {
                cgroup: Some(cgroup),
            }),
            Err(err) => {
                let _ = fs::remove_dir(&path);
                Err(err)
            }
        }
    }

    /// The created cgroup.
    pub fn cgroup(&self) -> &Cgroup {
        self.cgroup.as_ref().expect("present until removed")
    }

    /// Kills every process left inside, waits for them to exit and removes the directory.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        match self.cgroup.take() {
            Some(cgroup) => remove_cgroup(cgroup),
            None => Ok(()),
        }
    }
}

impl Drop for TransientCgroup {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            let path = cgroup.path.clone();
            if let Err(err) = remove_cgroup(cgroup) {
                tracing::error!(cgroup = %path.display(), error = %err, "failed to remove transient cgroup");
            }
        }
    }
}

fn remove_cgroup(cgroup: Cgroup) -> Result<(), CgroupError> {
    if cgroup.is_populated()? {
        let kill = cgroup.path.join("cgroup.kill");
        fs::write(&kill, "1").map_err(io_err("write", &kill))?;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while cgroup.is_populated()? {
            if Instant::now() > deadline {
                return Err(CgroupError::Busy {
                    path: cgroup.path.clone(),
                    timeout: DRAIN_TIMEOUT,
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
    let Cgroup { path, dir, .. } = cgroup;
    drop(dir);
    fs::remove_dir(&path).map_err(io_err("remove", &path))
}

/// Transient cgroups of `gateway exec` are named after the exec process: `gateway-exec-<pid>`.
const EXEC_CGROUP_PREFIX: &str = "gateway-exec-";

/// The name of the transient cgroup of the exec process `pid`.
pub fn exec_cgroup_name(pid: u32) -> String {
    format!("{EXEC_CGROUP_PREFIX}{pid}")
}

/// The exec pid a transient cgroup (or trust bundle directory) name carries, if it is one.
pub fn exec_cgroup_pid(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(EXEC_CGROUP_PREFIX)?;
    // Digits only: `parse` would also take "+12".
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether the leftovers named after exec `pid` belong to no running exec. This process's own
/// pid counts as gone: whatever carries it was left by an earlier process with the same pid,
/// since this one has not created its own yet.
pub fn exec_is_gone(pid: u32) -> bool {
    pid == std::process::id() || !process::is_running_gateway(pid)
}

/// Removes the transient cgroups of exec processes that died without cleaning up (`kill -9`):
/// every `gateway-exec-<pid>` directory under the cgroup2 mount whose pid is not a running
/// gateway ([`exec_is_gone`]). Whatever still runs inside is killed first (`cgroup.kill`): the programs that
/// redirected it went away with its exec, so it would otherwise have unfiltered network.
/// Returns the directories removed; each removal and each failure is logged. Blocks while the
/// killed processes exit (up to a few seconds each): call it off the async runtime.
pub fn remove_stale_exec_cgroups() -> Result<Vec<PathBuf>, CgroupError> {
    let mount = cgroup2_mount()?;
    let entries = fs::read_dir(&mount).map_err(io_err("list", &mount))?;
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(exec_cgroup_pid) else {
            continue;
        };
        if !exec_is_gone(pid) {
            continue;
        }
        let path = entry.path();
        match remove_stale(&path) {
            Ok(killed) => {
                info!(cgroup = %path.display(), exec_pid = pid, killed_processes = killed, "removed the cgroup of an exec that is gone");
                removed.push(path);
            }
            Err(err) => {
                warn!(cgroup = %path.display(), error = %err, "could not remove the cgroup of an exec that is gone");
            }
        }
    }
    Ok(removed)
}

/// Kills what is inside `path`, removes it and returns how many processes were in it.
fn remove_stale(path: &Path) -> Result<usize, CgroupError> {
    let cgroup = Cgroup::open(path)?;
    let procs = path.join("cgroup.procs");
    let count = fs::read_to_string(&procs)
        .map_err(io_err("read", &procs))?
        .lines()
        .count();
    remove_cgroup(cgroup)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 29 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd
";

    #[test]
    fn finds_cgroup2_on_hybrid_hosts() {
        let mounts = mountinfo::parse(HYBRID);
        assert_eq!(
            mount_point_of(&mounts, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(mount_point_of(&mounts, "bpf"), None);
    }

    #[test]
    fn exec_cgroup_names_round_trip() {
        assert_eq!(exec_cgroup_pid(&exec_cgroup_name(4242)), Some(4242));
        assert_eq!(exec_cgroup_pid("gateway-exec-"), None);
        assert_eq!(exec_cgroup_pid("gateway-exec-12x"), None);
        assert_eq!(exec_cgroup_pid("gwtest-1x2"), None);
    }
}
