//! What one sandbox's entries in the policy maps are: its config (listener and DNS service
//! ports, flags), port rules, address rules, resolvers and refusal counters. Installed when it
//! is attached, removed when it is detached.

use std::net::IpAddr;

use gateway_common::{AddrKey, AddrRule, PortKey, PortRule, addr_prefix_len, protocol};
use gateway_proto::cidr::Cidr;

use crate::net::addr::words_from_ip;

/// The map entries of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRules {
    /// The sandbox's id.
    pub sandbox_id: u32,
    /// Its listener's port.
    pub listener_port: u16,
    /// `SandboxConf` flags.
    pub flags: u16,
    /// Its DNS service's port (0: none; DNS then goes only to the resolvers).
    pub dns_port: u16,
    /// Port rules.
    pub ports: Vec<(PortKey, PortRule)>,
    /// Address rules: range, action, rule id.
    pub addrs: Vec<(Cidr, AddrRule)>,
    /// Resolvers that may be sent DNS.
    pub resolvers: Vec<IpAddr>,
}

impl SandboxRules {
    /// Rules with no ports, addresses or resolvers yet.
    pub fn new(sandbox_id: u32, listener_port: u16, flags: u16, dns_port: u16) -> Self {
        SandboxRules {
            sandbox_id,
            listener_port,
            flags,
            dns_port,
            ports: Vec::new(),
            addrs: Vec::new(),
            resolvers: Vec::new(),
        }
    }

    /// Adds a plain HTTP port (TCP) redirected to the listener.
    pub fn redirect_tcp(&mut self, port: u16) {
        self.port(port, protocol::TCP, PortRule::REDIRECT);
    }

    /// Adds an intercepted TLS port (TCP) redirected to the listener, unless the address is
    /// bound only to bypass names.
    pub fn redirect_tls(&mut self, port: u16) {
        self.port(port, protocol::TCP, PortRule::REDIRECT_TLS);
    }

    /// Adds a port left alone.
    pub fn allow(&mut self, port: u16, proto: u8) {
        self.port(port, proto, PortRule::ALLOW);
    }

    fn port(&mut self, port: u16, proto: u8, action: u32) {
        let key = PortKey {
            sandbox_id: self.sandbox_id,
            port,
            protocol: proto,
            _pad: 0,
        };
        self.ports.push((key, PortRule { action }));
    }

    /// Adds an address rule.
    pub fn addr(&mut self, cidr: Cidr, action: u32, rule_id: u32) {
        self.addrs.push((cidr, AddrRule { action, rule_id }));
    }

    /// The trie key of an address rule.
    pub fn trie_key(&self, cidr: &Cidr) -> aya::maps::lpm_trie::Key<AddrKey> {
        aya::maps::lpm_trie::Key::new(
            addr_prefix_len(u32::from(cidr.v6_prefix())),
            self.addr_key(cidr.addr()),
        )
    }

    /// The key of an address for this sandbox (IPv4 as IPv4-mapped).
    pub fn addr_key(&self, ip: IpAddr) -> AddrKey {
        AddrKey {
            sandbox_id: self.sandbox_id,
            addr: words_from_ip(ip),
        }
    }
}
