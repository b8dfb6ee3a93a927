//! A sandbox as an operator names it on the command line:
//! `CGROUP[,netns=PATH][,name=NAME][,port=N]...[,allow-host=P]...[,dns-binding=on|off]` — the
//! options of `gateway exec`'s policy flags, without the dashes. Also the form in which the daemon
//! remembers its sandboxes across restarts ([`SandboxSpec`]'s Display writes it back).

use std::{fmt, path::PathBuf, str::FromStr};

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
    /// What operators call it (`sandbox rm NAME`); default: the cgroup directory's name.
    pub name: Option<SandboxName>,
    /// The process the sandbox lives for (`gateway exec`): when it is gone, so is the sandbox.
    pub owner: Option<u32>,
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
         dns-binding=on|off, secret=NAME, name=NAME, owner=PID)"
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
            name: parsed.name,
            owner: parsed.owner,
            policy,
            secrets: parsed.secrets,
        })
    }
}

impl SandboxSpec {
    /// A spec of `cgroup` with nothing else set.
    #[must_use]
    pub fn new(cgroup: PathBuf) -> SandboxSpec {
        SandboxSpec {
            cgroup,
            netns: None,
            name: None,
            owner: None,
            policy: PolicyOverrides::default(),
            secrets: Vec::new(),
        }
    }
}

impl fmt::Display for SandboxSpec {
    /// The canonical spec, parsed back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cgroup.display())?;
        if let Some(netns) = &self.netns {
            write!(f, ",netns={}", netns.display())?;
        }
        if let Some(name) = &self.name {
            write!(f, ",name={name}")?;
        }
        if let Some(owner) = self.owner {
            write!(f, ",owner={owner}")?;
        }
        let policy = &self.policy;
        let ports = |f: &mut fmt::Formatter<'_>, key, list: &Option<PortList>| match list {
            Some(list) => list
                .as_slice()
                .iter()
                .try_for_each(|port| write!(f, ",{key}={port}")),
            None => Ok(()),
        };
        ports(f, "port", &policy.tls_ports)?;
        ports(f, "http-port", &policy.http_ports)?;
        write_each(f, "allow-tcp-port", &policy.allow_tcp_ports)?;
        write_each(f, "allow-udp-port", &policy.allow_udp_ports)?;
        write_each(f, "allow-host", &policy.allow_hosts)?;
        write_each(f, "deny-host", &policy.deny_hosts)?;
        write_each(f, "allow-cidr", &policy.allow_cidrs)?;
        write_each(f, "deny-cidr", &policy.deny_cidrs)?;
        if let Some(on) = policy.dns_binding {
            write!(f, ",dns-binding={}", switch_text(on))?;
        }
        write_each(f, "secret", &self.secrets)
    }
}

/// `,key=item` for each item.
fn write_each<T: fmt::Display>(f: &mut fmt::Formatter<'_>, key: &str, items: &[T]) -> fmt::Result {
    items.iter().try_for_each(|item| write!(f, ",{key}={item}"))
}

/// `on` or `off`, as `dns-binding=` writes a setting.
fn switch_text(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// A sandbox's name: 1 to 64 ASCII letters, digits, `-`, `_` and `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SandboxName(String);

impl SandboxName {
    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of a sandbox without one: its cgroup directory's name, made valid.
    #[must_use]
    pub fn from_cgroup(cgroup: &std::path::Path) -> SandboxName {
        let base = cgroup
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cleaned: String = base
            .chars()
            .map(|c| if is_name_char(c) { c } else { '_' })
            .take(64)
            .collect();
        SandboxName(if cleaned.is_empty() {
            "sandbox".into()
        } else {
            cleaned
        })
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

impl FromStr for SandboxName {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() || text.len() > 64 || !text.chars().all(is_name_char) {
            return Err("a sandbox name is 1 to 64 ASCII letters, digits, `-`, `_` or `.`");
        }
        Ok(SandboxName(text.to_owned()))
    }
}

impl fmt::Display for SandboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Options read so far.
#[derive(Default)]
struct Parsed {
    netns: Option<PathBuf>,
    name: Option<SandboxName>,
    owner: Option<u32>,
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
            "name" => self.name = Some(value.parse().map_err(|why: &str| bad(why.to_owned()))?),
            "owner" => {
                self.owner = Some(
                    value
                        .parse()
                        .map_err(|_| bad("not a process id".to_owned()))?,
                );
            }
            "port" => self.tls_ports.push(port()?.into()),
            "http-port" => self.http_ports.push(port()?.into()),
            "allow-tcp-port" => self.policy.allow_tcp_ports.push(port()?),
            "allow-udp-port" => self.policy.allow_udp_ports.push(port()?),
            "allow-host" => self.policy.allow_hosts.push(pattern()?),
            "deny-host" => self.policy.deny_hosts.push(pattern()?),
            "allow-cidr" => self.policy.allow_cidrs.push(cidr()?),
            "deny-cidr" => self.policy.deny_cidrs.push(cidr()?),
            "dns-binding" => {
                self.policy.dns_binding = Some(match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad("not on or off".to_owned())),
                });
            }
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
        assert_eq!(spec.policy.dns_binding, None);
        let on: SandboxSpec = "sb1,dns-binding=on".parse().unwrap();
        assert_eq!(on.policy.dns_binding, Some(true));
        let off: SandboxSpec = "sb1,dns-binding=on,dns-binding=off".parse().unwrap();
        assert_eq!(off.policy.dns_binding, Some(false), "the last one counts");
    }

    #[test]
    fn the_canonical_form_parses_back_to_the_same_spec() {
        for text in [
            "/sys/fs/cgroup/a",
            "sb1,netns=/run/netns/x,name=agent-1,owner=42,port=443,port=8443,http-port=8080,\
             allow-tcp-port=22,allow-udp-port=123,allow-host=*.github.com,deny-host=x.test,\
             allow-cidr=10.0.0.0/8,deny-cidr=192.0.2.0/24,dns-binding=off,secret=OPENAI_KEY",
            "/sys/fs/cgroup/b,allow-host=a.test,dns-binding=on",
        ] {
            let spec: SandboxSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
            assert_eq!(spec.to_string().parse::<SandboxSpec>().unwrap(), spec);
        }
    }

    #[test]
    fn names_default_to_the_cgroup_directory() {
        let path = std::path::Path::new("/sys/fs/cgroup/unified/gateway-exec-42");
        assert_eq!(SandboxName::from_cgroup(path).as_str(), "gateway-exec-42");
        let odd = std::path::Path::new("/cg/a b:c");
        assert_eq!(SandboxName::from_cgroup(odd).as_str(), "a_b_c");
        assert!("ok.name-1".parse::<SandboxName>().is_ok());
        assert!("no/slash".parse::<SandboxName>().is_err());
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
        assert_eq!(
            "a,dns-binding=yes"
                .parse::<SandboxSpec>()
                .unwrap_err()
                .to_string(),
            "sandbox `a,dns-binding=yes`: dns-binding=yes: not on or off"
        );
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
