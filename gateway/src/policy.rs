//! Policy: what a sandbox may reach and how. [`SandboxPolicy`] is one sandbox's resolved
//! policy (the config's `[policy]` with the sandbox's overrides); [`addr`] holds its address
//! rules, [`route`] the decision for each connection that reaches the gateway, [`bound`] what
//! DNS binding adds to it; the eBPF programs enforce the address and port parts on every
//! connect and send.

pub mod addr;
pub mod bound;
pub mod refusals;
pub mod route;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
};

use gateway_common::{AddrRule, SandboxConf, protocol};
use gateway_proto::{
    config::{NameRules, PlainTcp, PolicyConfig, TlsConfig},
    pattern::PatternSet,
    resolv_conf,
};
use rustls::crypto::CryptoProvider;
use tracing::warn;

pub use self::route::{Refusal, Route};
use self::{
    addr::{Action, AddrRules},
    bound::{Bound, BoundNames},
};
use crate::{
    ebpf::SandboxRules,
    sandbox::SandboxId,
    secrets::SecretScope,
    tls::upstream::{Connectors, UpstreamError},
};

/// The TLS settings every sandbox shares: bypass names, what to do with non-TLS bytes, and
/// the upstream connectors.
#[derive(Debug)]
pub struct TlsPolicy {
    /// Names spliced raw.
    pub bypass: PatternSet,
    /// What to do with bytes that are not the port's protocol.
    pub plain_tcp: PlainTcp,
    /// Upstream connectors by name.
    pub connectors: Connectors,
}

impl TlsPolicy {
    /// The policy of a `[tls]` section; builds (and so checks) every upstream connector.
    ///
    /// # Errors
    /// [`UpstreamError`] naming a CA file that cannot be used.
    pub fn new(
        tls: &TlsConfig,
        provider: &Arc<CryptoProvider>,
    ) -> Result<TlsPolicy, UpstreamError> {
        Ok(TlsPolicy {
            bypass: PatternSet::new(tls.bypass.clone()),
            plain_tcp: tls.plain_tcp,
            connectors: Connectors::build(tls, provider)?,
        })
    }
}

/// What a redirected connection's port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// An intercepted TLS port.
    Tls,
    /// A plain HTTP port.
    Http,
}

impl PortKind {
    /// What a client sends first on such a port, for errors.
    pub fn first_message(self) -> &'static str {
        match self {
            PortKind::Tls => "ClientHello",
            PortKind::Http => "HTTP request",
        }
    }
}

/// One sandbox's resolved policy.
#[derive(Debug)]
pub struct SandboxPolicy {
    /// The merged `[policy]` it was made from.
    pub config: PolicyConfig,
    /// Its address rules (also in the eBPF trie).
    pub addrs: AddrRules,
    /// Its name rules.
    pub names: NameRules,
    /// The resolvers it may send DNS to.
    pub resolvers: Vec<IpAddr>,
    /// The shared TLS settings.
    pub tls: Arc<TlsPolicy>,
    /// Where its secrets may go: connections there take the HTTP-aware path.
    pub secret_scope: SecretScope,
}

impl SandboxPolicy {
    /// Resolves `config` for one sandbox, reading its resolvers from the config's
    /// `resolv_conf` (a missing or unreadable file means no resolver, with a warning).
    pub fn new(
        config: PolicyConfig,
        tls: Arc<TlsPolicy>,
        secret_scope: SecretScope,
    ) -> SandboxPolicy {
        SandboxPolicy {
            addrs: AddrRules::new(&config),
            names: config.name_rules(),
            resolvers: read_resolvers(config.resolv_conf.path()),
            config,
            tls,
            secret_scope,
        }
    }

    /// What `port` is for, if it is redirected at all.
    pub fn port_kind(&self, port: u16) -> Option<PortKind> {
        if self.config.tls_ports.contains(port) {
            Some(PortKind::Tls)
        } else if self.config.http_ports.contains(port) {
            Some(PortKind::Http)
        } else {
            None
        }
    }

    /// Whether a TCP connect of this sandbox to `addr` leaves the sandbox as dialled: the
    /// address is not denied and the port is one it may reach directly (a redirected port
    /// goes to its listener instead).
    pub fn reaches_tcp(&self, addr: SocketAddr) -> bool {
        let port = addr.port();
        let address_allowed = self
            .addrs
            .judge(addr.ip())
            .is_none_or(|rule| rule.action == Action::Allow);
        address_allowed
            && self.port_kind(port).is_none()
            && self.config.allow_tcp_ports.contains(port)
    }

    /// Whether DNS binding is enforced for this sandbox (see
    /// [`PolicyConfig::dns_binding_effective`]).
    pub fn dns_binding(&self) -> bool {
        self.config.dns_binding_effective()
    }

    /// What DNS binding says about a connection to `addr`: not enforced, or the names `table`
    /// holds for it. The table is asked only when binding is on.
    pub fn bound(&self, addr: IpAddr, table: &dyn BoundNames) -> Bound {
        if self.dns_binding() {
            Bound::Names(table.names(addr.to_canonical()))
        } else {
            Bound::NotEnforced
        }
    }

    /// The eBPF map entries enforcing this policy for sandbox `id`, whose listener is on
    /// `listener_port` and DNS service on `dns_port` (0: none, DNS goes only to the
    /// resolvers). With DNS binding on, connects and sends to addresses no DNS answer gave the
    /// sandbox (and no `allow_cidrs` rule allows) are refused.
    pub fn rules(&self, id: SandboxId, listener_port: u16, dns_port: u16) -> SandboxRules {
        let mut flags = 0;
        if self.config.block_quic {
            flags |= SandboxConf::BLOCK_QUIC;
        }
        if self.dns_binding() {
            flags |= SandboxConf::DNS_BINDING;
        }
        let mut rules = SandboxRules::new(id.0, listener_port, flags, dns_port);
        for port in self.config.tls_ports.as_slice() {
            rules.redirect_tls(*port);
        }
        for port in self.config.http_ports.as_slice() {
            rules.redirect_tcp(*port);
        }
        for port in self.config.allow_tcp_ports.as_slice() {
            rules.allow(*port, protocol::TCP);
        }
        for port in self.config.allow_udp_ports.as_slice() {
            rules.allow(*port, protocol::UDP);
        }
        for (rule_id, rule) in self.addrs.entries() {
            let action = match rule.action {
                Action::Allow => AddrRule::ALLOW,
                Action::Deny => AddrRule::DENY,
            };
            rules.addr(rule.cidr, action, rule_id);
        }
        rules.resolvers.clone_from(&self.resolvers);
        rules
    }
}

fn read_resolvers(path: &Path) -> Vec<IpAddr> {
    match std::fs::read_to_string(path) {
        Ok(text) => resolv_conf::nameservers(&text),
        Err(err) => {
            warn!(file = %path.display(), error = %err, "cannot read the resolvers; DNS (port 53) will be refused");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use gateway_common::PortRule;
    use gateway_proto::ports::PortList;

    use super::*;

    fn policy(config: PolicyConfig) -> SandboxPolicy {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = Arc::new(TlsPolicy::new(&TlsConfig::default(), &provider).unwrap());
        SandboxPolicy::new(config, tls, SecretScope::default())
    }

    #[test]
    fn rules_redirect_tls_and_http_ports_and_allow_the_rest_listed() {
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "nameserver 192.0.2.53\n").unwrap();
        let config = PolicyConfig {
            allow_tcp_ports: PortList::new([22]).unwrap(),
            allow_udp_ports: PortList::new([123]).unwrap(),
            resolv_conf: resolv.to_str().unwrap().into(),
            ..PolicyConfig::default()
        };
        let policy = policy(config);
        let rules = policy.rules(SandboxId(7), 4000, 5353);
        let ports: Vec<(u16, u8, u32)> = rules
            .ports
            .iter()
            .map(|(key, rule)| (key.port, key.protocol, rule.action))
            .collect();
        assert_eq!(
            ports,
            [
                (443, protocol::TCP, PortRule::REDIRECT_TLS),
                (80, protocol::TCP, PortRule::REDIRECT),
                (22, protocol::TCP, PortRule::ALLOW),
                (123, protocol::UDP, PortRule::ALLOW),
            ]
        );
        assert_eq!(rules.flags, SandboxConf::BLOCK_QUIC);
        assert_eq!((rules.listener_port, rules.dns_port), (4000, 5353));
        let binding = self::policy(PolicyConfig {
            dns_binding: Some(true),
            ..PolicyConfig::default()
        })
        .rules(SandboxId(7), 4000, 5353);
        assert_eq!(
            binding.flags,
            SandboxConf::BLOCK_QUIC | SandboxConf::DNS_BINDING
        );
        assert_eq!(
            rules.resolvers,
            vec!["192.0.2.53".parse::<IpAddr>().unwrap()]
        );
        assert!(rules.addrs.iter().all(|(_, rule)| rule.rule_id > 0));
        assert_eq!(policy.port_kind(443), Some(PortKind::Tls));
        assert_eq!(policy.port_kind(80), Some(PortKind::Http));
        assert_eq!(policy.port_kind(22), None);
    }

    #[test]
    fn a_missing_resolv_conf_means_no_resolvers() {
        let config = PolicyConfig {
            resolv_conf: "/nonexistent/resolv.conf".into(),
            ..PolicyConfig::default()
        };
        assert!(policy(config).resolvers.is_empty());
    }
}
