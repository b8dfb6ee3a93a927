//! A sandbox as an operator names it on the command line:
//! `CGROUP[,netns=PATH][,port=N]...[,allow-host=P]...` — the options of `gateway exec`'s policy
//! flags, without the dashes.

use std::{path::PathBuf, str::FromStr};

use crate::{
    Pattern,
    cidr::Cidr,
    config::{PolicyOverrides, SecretName},
    ports::{PortList, PortsError},
};

/// A parsed `--sandbox` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The sandbox's cgroup v2 directory (relative paths are under the cgroup2 mount).
    pub cgroup: PathBuf,
    /// The sandbox's network namespace (e.g. /run/netns/NAME), when it has its own.
    pub netns: Option<PathBuf>,
    /// Its changes to the config's `[policy]`.
    pub policy: PolicyOverrides,
    /// The `[[secrets]]` it is given (`secret=NAME`).
    pub secrets: Vec<SecretName>,
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
    /// An option this parser does not know.
    #[error(
        "sandbox `{spec}`: unknown option `{option}` (expected netns=PATH, port=N, http-port=N, \
         allow-tcp-port=N, allow-udp-port=N, allow-host=P, deny-host=P, allow-cidr=C, deny-cidr=C, \
         secret=NAME)"
    )]
    UnknownOption {
        /// The value given.
        spec: String,
        /// The option not understood.
        option: String,
    },
    /// An option's value is not valid.
    #[error("sandbox `{spec}`: {option}={value}: {reason}")]
    BadValue {
        /// The value given.
        spec: String,
        /// The option.
        option: String,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A port list became invalid.
    #[error("sandbox `{spec}`: {source}")]
    Ports {
        /// The value given.
        spec: String,
        /// What is wrong with the ports.
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
        let mut parsed = Parsed::default();
        for option in parts {
            parsed.option(spec, option)?;
        }
        let policy = parsed.finish(spec)?;
        Ok(SandboxSpec {
            cgroup: PathBuf::from(cgroup),
            netns: parsed.netns,
            policy,
            secrets: parsed.secrets,
        })
    }
}

/// Options read so far.
#[derive(Default)]
struct Parsed {
    netns: Option<PathBuf>,
    secrets: Vec<SecretName>,
    tls_ports: Vec<i64>,
    http_ports: Vec<i64>,
    policy: PolicyOverrides,
}

impl Parsed {
    fn option(&mut self, spec: &str, option: &str) -> Result<(), SpecError> {
        let Some((name, value)) = option.split_once('=') else {
            return Err(unknown(spec, option));
        };
        let bad = |reason: String| SpecError::BadValue {
            spec: spec.into(),
            option: name.into(),
            value: value.into(),
            reason,
        };
        let port = || {
            value
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("not a port from 1 to 65535".into()))
        };
        let pattern = || Pattern::parse(value).map_err(|why| bad(why.to_string()));
        let cidr = || value.parse::<Cidr>().map_err(|why| bad(why.to_string()));
        match name {
            "netns" if !value.is_empty() && self.netns.is_none() => {
                self.netns = Some(PathBuf::from(value));
            }
            "netns" => return Err(SpecError::BadNetns { spec: spec.into() }),
            "port" => self.tls_ports.push(port()?.into()),
            "http-port" => self.http_ports.push(port()?.into()),
            "allow-tcp-port" => self.policy.allow_tcp_ports.push(port()?),
            "allow-udp-port" => self.policy.allow_udp_ports.push(port()?),
            "allow-host" => self.policy.allow_hosts.push(pattern()?),
            "deny-host" => self.policy.deny_hosts.push(pattern()?),
            "allow-cidr" => self.policy.allow_cidrs.push(cidr()?),
            "deny-cidr" => self.policy.deny_cidrs.push(cidr()?),
            "secret" => self
                .secrets
                .push(value.parse().map_err(|why: &str| bad(why.to_owned()))?),
            _ => return Err(unknown(spec, option)),
        }
        Ok(())
    }

    fn finish(&self, spec: &str) -> Result<PolicyOverrides, SpecError> {
        let list = |ports: &[i64]| {
            (!ports.is_empty())
                .then(|| PortList::new(ports.iter().copied()))
                .transpose()
                .map_err(|source| SpecError::Ports {
                    spec: spec.into(),
                    source,
                })
        };
        Ok(PolicyOverrides {
            tls_ports: list(&self.tls_ports)?,
            http_ports: list(&self.http_ports)?,
            ..self.policy.clone()
        })
    }
}

fn unknown(spec: &str, option: &str) -> SpecError {
    SpecError::UnknownOption {
        spec: spec.into(),
        option: option.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_cgroup_with_no_overrides() {
        let spec: SandboxSpec = "/sys/fs/cgroup/unified/sb1".parse().unwrap();
        assert_eq!(spec.cgroup, PathBuf::from("/sys/fs/cgroup/unified/sb1"));
        assert_eq!(spec.netns, None);
        assert_eq!(spec.policy, PolicyOverrides::default());
        assert!(spec.secrets.is_empty());
    }

    #[test]
    fn parses_netns_ports_and_policy() {
        let spec: SandboxSpec = "sb1,netns=/run/netns/x,port=443,port=8443,port=443,\
                                 http-port=8080,allow-tcp-port=22,allow-host=*.github.com,\
                                 deny-cidr=192.0.2.0/24,secret=OPENAI_KEY"
            .parse()
            .unwrap();
        assert_eq!(spec.secrets[0].as_str(), "OPENAI_KEY");
        assert_eq!(spec.netns, Some(PathBuf::from("/run/netns/x")));
        assert_eq!(spec.policy.tls_ports.unwrap().as_slice(), &[443, 8443]);
        assert_eq!(spec.policy.http_ports.unwrap().as_slice(), &[8080]);
        assert_eq!(spec.policy.allow_tcp_ports, vec![22]);
        assert_eq!(spec.policy.allow_hosts[0].to_string(), "*.github.com");
        assert_eq!(spec.policy.deny_cidrs[0].to_string(), "192.0.2.0/24");
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
        let zero = "a,port=0".parse::<SandboxSpec>().unwrap_err().to_string();
        assert_eq!(
            zero,
            "sandbox `a,port=0`: port=0: not a port from 1 to 65535"
        );
        assert!(matches!(
            "a,port=70000".parse::<SandboxSpec>(),
            Err(SpecError::BadValue { .. })
        ));
        assert!(matches!(
            "a,allow-cidr=10.1.2.3/8".parse::<SandboxSpec>(),
            Err(SpecError::BadValue { .. })
        ));
        assert!(matches!(
            "a,deny-host=a b".parse::<SandboxSpec>(),
            Err(SpecError::BadValue { .. })
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
            (1..=17).map(|p| format!(",port={p}")).collect::<String>()
        );
        assert!(matches!(
            many.parse::<SandboxSpec>(),
            Err(SpecError::Ports {
                source: PortsError::TooMany { count: 17 },
                ..
            })
        ));
    }
}
