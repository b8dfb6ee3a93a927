//! A sandbox: a cgroup (and optionally its own network namespace) whose outbound TCP connections
//! to intercepted ports are redirected through the gateway.

pub mod cgroup;
pub mod netns;

use std::{
    fmt,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::Command,
    str::FromStr,
};

use gateway_common::MAX_PORTS;

/// Intercepted ports when a sandbox names none.
pub const DEFAULT_PORTS: [u16; 1] = [443];

/// The daemon's identifier for a sandbox, part of every `ORIG_DST` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SandboxId(pub u32);

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A sandbox as named on the command line: `CGROUP[,netns=PATH][,port=N]...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The sandbox's cgroup v2 directory (relative paths are under the cgroup2 mount).
    pub cgroup: PathBuf,
    /// The sandbox's network namespace (e.g. /run/netns/NAME), when it has its own.
    pub netns: Option<PathBuf>,
    /// Intercepted TCP destination ports.
    pub ports: Vec<u16>,
}

/// Why a `--sandbox` value could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The value had no cgroup path.
    #[error("sandbox `{spec}`: the cgroup path is empty")]
    EmptyCgroup { spec: String },
    /// An option other than `netns=` or `port=`.
    #[error("sandbox `{spec}`: unknown option `{option}` (expected netns=PATH or port=N)")]
    UnknownOption { spec: String, option: String },
    /// A port that is not a number in 1..=65535.
    #[error("sandbox `{spec}`: port `{value}` is not a number from 1 to 65535")]
    BadPort { spec: String, value: String },
    /// More ports than the eBPF config holds.
    #[error("sandbox `{spec}`: at most {MAX_PORTS} ports can be intercepted")]
    TooManyPorts { spec: String },
    /// `netns=` given twice or empty.
    #[error("sandbox `{spec}`: netns must be given once, with a path")]
    BadNetns { spec: String },
}

impl FromStr for SandboxSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut parts = spec.split(',');
        let cgroup = parts.next().unwrap_or_default().trim();
        if cgroup.is_empty() {
            return Err(SpecError::EmptyCgroup { spec: spec.into() });
        }
        let mut netns = None;
        let mut ports = Vec::new();
        for option in parts {
            match option.split_once('=') {
                Some(("netns", path)) if !path.is_empty() && netns.is_none() => {
                    netns = Some(PathBuf::from(path));
                }
                Some(("netns", _)) => return Err(SpecError::BadNetns { spec: spec.into() }),
                Some(("port", value)) => {
                    let port = value
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| SpecError::BadPort {
                            spec: spec.into(),
                            value: value.into(),
                        })?;
                    if !ports.contains(&port) {
                        ports.push(port);
                    }
                }
                _ => {
                    return Err(SpecError::UnknownOption {
                        spec: spec.into(),
                        option: option.into(),
                    });
                }
            }
        }
        if ports.is_empty() {
            ports.extend(DEFAULT_PORTS);
        }
        if ports.len() > MAX_PORTS {
            return Err(SpecError::TooManyPorts { spec: spec.into() });
        }
        Ok(SandboxSpec {
            cgroup: PathBuf::from(cgroup),
            netns,
            ports,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_cgroup_with_default_port() {
        let spec: SandboxSpec = "/sys/fs/cgroup/unified/sb1".parse().unwrap();
        assert_eq!(spec.cgroup, PathBuf::from("/sys/fs/cgroup/unified/sb1"));
        assert_eq!(spec.netns, None);
        assert_eq!(spec.ports, vec![443]);
    }

    #[test]
    fn parses_netns_and_ports() {
        let spec: SandboxSpec = "sb1,netns=/run/netns/x,port=443,port=8443,port=443"
            .parse()
            .unwrap();
        assert_eq!(spec.netns, Some(PathBuf::from("/run/netns/x")));
        assert_eq!(spec.ports, vec![443, 8443]);
    }

    #[test]
    fn rejects_bad_specs_with_specific_errors() {
        assert!(matches!(
            "".parse::<SandboxSpec>(),
            Err(SpecError::EmptyCgroup { .. })
        ));
        assert!(matches!(
            "a,color=red".parse::<SandboxSpec>(),
            Err(SpecError::UnknownOption { .. })
        ));
        assert!(matches!(
            "a,port=0".parse::<SandboxSpec>(),
            Err(SpecError::BadPort { .. })
        ));
        assert!(matches!(
            "a,port=70000".parse::<SandboxSpec>(),
            Err(SpecError::BadPort { .. })
        ));
        assert!(matches!(
            "a,netns=".parse::<SandboxSpec>(),
            Err(SpecError::BadNetns { .. })
        ));
        assert!(matches!(
            "a,netns=/x,netns=/y".parse::<SandboxSpec>(),
            Err(SpecError::BadNetns { .. })
        ));
        let many = format!(
            "a{}",
            (1..=9).map(|p| format!(",port={p}")).collect::<String>()
        );
        assert!(matches!(
            many.parse::<SandboxSpec>(),
            Err(SpecError::TooManyPorts { .. })
        ));
    }
}
