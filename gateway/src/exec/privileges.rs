//! Taking root's keys away before the command runs: the target user's ids and groups, no
//! capability in any set (bounding, ambient, effective, permitted, inheritable), and
//! no_new_privs, so neither a setuid binary nor file capabilities can give any back.
//!
//! Dropping capabilities matters even for uid 0: without CAP_SYS_ADMIN it cannot remount, setns
//! or mount; without CAP_BPF / CAP_SYS_ADMIN it cannot load or inspect BPF programs.

use std::{fs, io, path::Path};

use nix::{
    sys::prctl,
    unistd::{Gid, Uid, setgroups, setresgid, setresuid},
};

/// Where the kernel says which is its highest capability number.
const CAP_LAST_CAP: &str = "/proc/sys/kernel/cap_last_cap";

/// Errors dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The highest capability number could not be read.
    #[error("reading {CAP_LAST_CAP}: {source}")]
    LastCap {
        #[source]
        source: io::Error,
    },
    /// The highest capability number is not a number.
    #[error("{CAP_LAST_CAP} holds {text:?}, not a capability number")]
    LastCapParse { text: String },
    /// A capability could not be dropped from the bounding set.
    #[error("dropping capability {cap} from the bounding set: {source}")]
    BoundingSet {
        cap: u32,
        #[source]
        source: io::Error,
    },
    /// Switching groups or user failed.
    #[error("{op} to {id}: {source}")]
    Ids {
        op: &'static str,
        id: u32,
        #[source]
        source: nix::Error,
    },
    /// The ambient or the process's capability sets could not be cleared.
    #[error("clearing the {set} capabilities: {source}")]
    Capabilities {
        set: &'static str,
        #[source]
        source: io::Error,
    },
    /// PR_SET_NO_NEW_PRIVS failed.
    #[error("setting no_new_privs: {source}")]
    NoNewPrivs {
        #[source]
        source: nix::Error,
    },
}

/// Who to become.
#[derive(Clone, Debug)]
pub struct Target {
    /// User id.
    pub uid: Uid,
    /// Primary group id.
    pub gid: Gid,
    /// Supplementary groups.
    pub groups: Vec<Gid>,
}

/// The kernel's highest capability number. Read before PID 1 mounts its own /proc, whose
/// /proc/sys is then read-only (reading still works, but the helper keeps the number handy).
pub fn last_cap() -> Result<u32, PrivilegeError> {
    let text = fs::read_to_string(Path::new(CAP_LAST_CAP))
        .map_err(|source| PrivilegeError::LastCap { source })?;
    text.trim()
        .parse()
        .map_err(|_| PrivilegeError::LastCapParse { text })
}

/// Becomes `target` with no capabilities and no_new_privs. The order matters: the bounding set
/// needs CAP_SETPCAP and the ids CAP_SETUID/CAP_SETGID, so the ids change after the bounding
/// set and before the remaining sets are emptied.
pub fn drop_to(target: &Target, last_cap: u32) -> Result<(), PrivilegeError> {
    drop_bounding_set(last_cap)?;
    let ids = |op, id| move |source| PrivilegeError::Ids { op, id, source };
    setgroups(&target.groups).map_err(ids("setgroups", target.gid.as_raw()))?;
    setresgid(target.gid, target.gid, target.gid).map_err(ids("setresgid", target.gid.as_raw()))?;
    setresuid(target.uid, target.uid, target.uid).map_err(ids("setresuid", target.uid.as_raw()))?;
    clear_ambient()?;
    clear_capability_sets()?;
    prctl::set_no_new_privs().map_err(|source| PrivilegeError::NoNewPrivs { source })
}

/// Removes every capability from the bounding set: nothing executed later can gain one back.
fn drop_bounding_set(last_cap: u32) -> Result<(), PrivilegeError> {
    for cap in 0..=last_cap {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and reads no memory.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if rc != 0 {
            return Err(PrivilegeError::BoundingSet {
                cap,
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Empties the ambient set (which would otherwise survive execve of an unprivileged binary).
fn clear_ambient() -> Result<(), PrivilegeError> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL reads no memory.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(PrivilegeError::Capabilities {
            set: "ambient",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties the effective, permitted and inheritable sets (nix has no capset; libc has only the
/// raw syscall). For a non-root target setresuid already emptied them; for uid 0 this is what
/// takes the capabilities away.
fn clear_capability_sets() -> Result<(), PrivilegeError> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and, for version 3, two data structs; both live on this
    // stack frame for the duration of the call and have the kernel's layout (#[repr(C)]).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(PrivilegeError::Capabilities {
            set: "effective, permitted and inheritable",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}
