//! `[[sandbox]]`: sandboxes `gateway run` serves from the start, as `--sandbox` names them on
//! the command line.

use std::path::PathBuf;

use serde::Deserialize;

use super::{PolicyOverrides, SecretName};
use crate::{
    Pattern,
    cidr::Cidr,
    ports::PortList,
    sandbox_spec::{SandboxName, SandboxSpec},
};

/// One `[[sandbox]]` table: the options of a `--sandbox` value, as keys.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct SandboxTable {
    /// Its cgroup v2 directory (relative paths are under the cgroup2 mount).
    pub cgroup: PathBuf,
    /// Its network namespace file, when it has its own.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Its name (default: the cgroup directory's name).
    #[serde(default)]
    pub name: Option<SandboxNameValue>,
    /// Replaces `[policy] tls_ports`.
    #[serde(default)]
    pub tls_ports: Option<PortList>,
    /// Replaces `[policy] http_ports`.
    #[serde(default)]
    pub http_ports: Option<PortList>,
    /// Added to `[policy] allow_tcp_ports`.
    #[serde(default)]
    pub allow_tcp_ports: PortList,
    /// Added to `[policy] allow_udp_ports`.
    #[serde(default)]
    pub allow_udp_ports: PortList,
    /// Added to `[policy] allow_cidrs`.
    #[serde(default)]
    pub allow_cidrs: Vec<Cidr>,
    /// Added to `[policy] deny_cidrs`.
    #[serde(default)]
    pub deny_cidrs: Vec<Cidr>,
    /// Added to `[policy] allow_hosts`.
    #[serde(default)]
    pub allow_hosts: Vec<Pattern>,
    /// Added to `[policy] deny_hosts`.
    #[serde(default)]
    pub deny_hosts: Vec<Pattern>,
    /// Replaces `[policy] dns_binding`.
    #[serde(default)]
    pub dns_binding: Option<bool>,
    /// The `[[secrets]]` it is given.
    #[serde(default)]
    pub secrets: Vec<SecretName>,
}

/// A sandbox name as a config value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SandboxNameValue(SandboxName);

impl TryFrom<String> for SandboxNameValue {
    type Error = &'static str;

    fn try_from(text: String) -> Result<Self, &'static str> {
        text.parse().map(SandboxNameValue)
    }
}

impl SandboxTable {
    /// The table as a spec.
    #[must_use]
    pub fn to_spec(&self) -> SandboxSpec {
        SandboxSpec {
            cgroup: self.cgroup.clone(),
            netns: self.netns.clone(),
            name: self.name.as_ref().map(|name| name.0.clone()),
            owner: None,
            policy: PolicyOverrides {
                tls_ports: self.tls_ports.clone(),
                http_ports: self.http_ports.clone(),
                allow_tcp_ports: self.allow_tcp_ports.as_slice().to_vec(),
                allow_udp_ports: self.allow_udp_ports.as_slice().to_vec(),
                allow_cidrs: self.allow_cidrs.clone(),
                deny_cidrs: self.deny_cidrs.clone(),
                allow_hosts: self.allow_hosts.clone(),
                deny_hosts: self.deny_hosts.clone(),
                block_quic: None,
                require_sni: None,
                dns_binding: self.dns_binding,
            },
            secrets: self.secrets.clone(),
        }
    }
}
