//! The helper's private mount namespace: nothing propagates back to the host, the kernel's
//! control filesystems are read-only (above all cgroup2: a uid-0 process without capabilities
//! can otherwise write its pid into an ancestor's `cgroup.procs` and leave the sandbox), the
//! trust material covers the distribution's paths, and PID 1 gets a /proc of its own.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use crate::sandbox::mountinfo::{self, Mount};

/// Errors setting up the mount namespace.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount table could not be read.
    #[error("reading {}: {source}", mountinfo::MOUNTINFO)]
    Table {
        #[source]
        source: std::io::Error,
    },
    /// A mount operation failed.
    #[error("{op} {target}: {source}")]
    Mount {
        op: &'static str,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// No cgroup2 filesystem was found to protect.
    #[error(
        "no cgroup2 mount in {}: cannot make it read-only",
        mountinfo::MOUNTINFO
    )]
    NoCgroup2,
}

/// Filesystems through which a process that is uid 0 (even without capabilities) could steer the
/// kernel: moving between cgroups, reaching pinned BPF objects, writing root-owned knobs.
const KERNEL_INTERFACES: [&str; 9] = [
    "cgroup2",
    "cgroup",
    "sysfs",
    "bpf",
    "debugfs",
    "tracefs",
    "securityfs",
    "configfs",
    "pstore",
];

/// Paths of a fresh /proc that are host-wide knobs writable by uid 0 without capabilities
/// (sysctls, sysrq, IRQ affinity); read-only as in container runtimes.
const PROC_READ_ONLY: [&str; 5] = [
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];

/// The flags every read-only mount of exec gets (tightening only, so never refused).
fn read_only_flags() -> MsFlags {
    MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC
}

/// `mount --make-rprivate /`: the namespace's mounts stop propagating to and from the host.
pub fn make_private() -> Result<(), MountError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(mount_err("make private", Path::new("/")))
}

/// Remounts every kernel-interface filesystem read-only in this namespace (the host's mounts
/// keep their flags). Fails when there is no cgroup2 mount: then there is nothing to trust.
pub fn kernel_interfaces_read_only() -> Result<(), MountError> {
    let mounts = mountinfo::read().map_err(|source| MountError::Table { source })?;
    let targets: Vec<&Mount> = mounts
        .iter()
        .filter(|mount| KERNEL_INTERFACES.contains(&mount.fstype.as_str()))
        .collect();
    if !targets.iter().any(|mount| mount.fstype == "cgroup2") {
        return Err(MountError::NoCgroup2);
    }
    for target in targets {
        remount_read_only(&target.point)?;
    }
    Ok(())
}

/// Bind-mounts `source` over `target` (a file over a file, a directory over a directory),
/// read-only, so the command cannot change what it or its children trust.
pub fn bind_read_only(source: &Path, target: &Path) -> Result<(), MountError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(mount_err("bind-mount onto", target))?;
    remount_read_only(target)
}

/// Mounts a /proc for the PID namespace of the calling process (its PID 1), and makes the
/// host-wide knobs in it read-only.
pub fn fresh_proc() -> Result<(), MountError> {
    let proc = Path::new("/proc");
    mount(
        Some("proc"),
        proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(mount_err("mount proc on", proc))?;
    for path in PROC_READ_ONLY.map(Path::new) {
        if path.exists() {
            bind_read_only(path, path)?;
        }
    }
    Ok(())
}

/// A bind remount changes the flags of this namespace's mount only, not the filesystem's.
fn remount_read_only(target: &Path) -> Result<(), MountError> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        read_only_flags(),
        None::<&str>,
    )
    .map_err(mount_err("remount read-only", target))
}

fn mount_err(op: &'static str, target: &Path) -> impl FnOnce(nix::Error) -> MountError {
    let target = target.to_path_buf();
    move |source| MountError::Mount { op, target, source }
}
