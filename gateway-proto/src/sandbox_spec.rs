//! A sandbox as an operator names it on the command line: `CGROUP[,netns=PATH][,port=N]...`.

use std::{path::PathBuf, str::FromStr};

use crate::ports::{Ports, PortsError};

/// A parsed `--sandbox` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The sandbox's cgroup v2 directory (relative paths are under the cgroup2 mount).
    pub cgroup: PathBuf,
    /// The sandbox's network namespace (e.g. /run/netns/NAME), when it has its own.
    pub netns: Option<PathBuf>,
    /// Intercepted TCP destination ports.
    pub ports: Ports,
}

/// Why a `--sandbox` value could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The value had no cgroup path.
    #[error("sandbox `{spec}`: the cgroup path is empty")]
    EmptyCgroup {
        /// The value given.
        spec: String,
    },
    /// An option other than `netns=` or `port=`.
    #[error("sandbox `{spec}`: unknown option `{option}` (expected netns=PATH or port=N)")]
    UnknownOption {
        /// The value given.
        spec: String,
        /// The option not understood.
        option: String,
    },
    /// A port that is not a number in 1..=65535.
    #[error("sandbox `{spec}`: port `{value}` is not a number from 1 to 65535")]
    BadPort {
        /// The value given.
        spec: String,
        /// The port text.
        value: String,
    },
    /// The ports together are not a valid set.
    #[error("sandbox `{spec}`: {source}")]
    Ports {
        /// The value given.
        spec: String,
        /// What is wrong with them.
        #[source]
        source: PortsError,
    },
    /// `netns=` given twice or empty.
    #[error("sandbox `{spec}`: netns must be given once, with a path")]
    BadNetns {
        /// The value given.
        spec: String,
    },
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
                    ports.push(value.parse::<u16>().map_err(|_| SpecError::BadPort {
                        spec: spec.into(),
                        value: value.into(),
                    })?);
                }
                _ => {
                    return Err(SpecError::UnknownOption {
                        spec: spec.into(),
                        option: option.into(),
                    });
                }
            }
        }
        let ports = Ports::new(ports).map_err(|source| SpecError::Ports {
            spec: spec.into(),
            source,
        })?;
        Ok(SandboxSpec {
            cgroup: PathBuf::from(cgroup),
            netns,
            ports,
        })
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
        assert_eq!(spec.ports.as_slice(), &[443]);
    }

    #[test]
    fn parses_netns_and_ports() {
        let spec: SandboxSpec = "sb1,netns=/run/netns/x,port=443,port=8443,port=443"
            .parse()
            .unwrap();
        assert_eq!(spec.netns, Some(PathBuf::from("/run/netns/x")));
        assert_eq!(spec.ports.as_slice(), &[443, 8443]);
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
            Err(SpecError::Ports {
                source: PortsError::Zero,
                ..
            })
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
            Err(SpecError::Ports {
                source: PortsError::TooMany { count: 9 },
                ..
            })
        ));
    }
}
