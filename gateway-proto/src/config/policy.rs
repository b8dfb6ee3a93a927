//! The `[policy]` section: what a sandbox may reach, and how. Defaults for every sandbox,
//! overridden per sandbox by [`PolicyOverrides`] (exec flags, `--sandbox` options).

use serde::Deserialize;

use super::{FilePath, Invalid, Key};
use crate::{
    HostName, Pattern,
    cidr::Cidr,
    pattern::PatternSet,
    ports::{PortList, PortsError},
};

/// `[policy]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub struct PolicyConfig {
    /// TCP ports whose TLS is intercepted (or spliced, by bypass rule) by the gateway.
    pub tls_ports: PortList,
    /// TCP ports whose plain HTTP goes through the gateway.
    pub http_ports: PortList,
    /// Other TCP ports a sandbox may connect to directly (every other port is refused).
    pub allow_tcp_ports: PortList,
    /// UDP ports a sandbox may send to (DNS to the resolvers is always allowed).
    pub allow_udp_ports: PortList,
    /// Refuse UDP to port 443, so HTTP/3 clients fall back to TCP and are intercepted.
    pub block_quic: bool,
    /// Destinations allowed even inside a denied range (longest prefix wins).
    pub allow_cidrs: Vec<Cidr>,
    /// Destinations denied, besides the built-in ones (loopback, link-local, private, ...).
    pub deny_cidrs: Vec<Cidr>,
    /// When not empty, only names matching one of these may be reached (allow-list mode).
    pub allow_hosts: Vec<Pattern>,
    /// Names that may not be reached (the most specific matching pattern decides).
    pub deny_hosts: Vec<Pattern>,
    /// Refuse TLS without SNI (otherwise it is judged by its address alone).
    pub require_sni: bool,
    /// Whose `nameserver` lines are the resolvers a sandbox may send DNS (port 53) to.
    pub resolv_conf: FilePath,
    /// Whether an SNI or Host must be a name DNS gave the sandbox for the dialled address
    /// (and an address no answer gave it is refused); unset means on for allow-lists, see
    /// [`PolicyConfig::dns_binding_effective`].
    pub dns_binding: Option<bool>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            tls_ports: PortList::new([443]).expect("443 is a port"),
            http_ports: PortList::new([80]).expect("80 is a port"),
            allow_tcp_ports: PortList::default(),
            allow_udp_ports: PortList::default(),
            block_quic: true,
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
            require_sni: false,
            resolv_conf: FilePath::from("/etc/resolv.conf"),
            dns_binding: None,
        }
    }
}

/// One sandbox's changes to the defaults: lists are added to, settings replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyOverrides {
    /// Replaces `tls_ports`.
    pub tls_ports: Option<PortList>,
    /// Replaces `http_ports`.
    pub http_ports: Option<PortList>,
    /// Added to `allow_tcp_ports`.
    pub allow_tcp_ports: Vec<u16>,
    /// Added to `allow_udp_ports`.
    pub allow_udp_ports: Vec<u16>,
    /// Added to `allow_cidrs`.
    pub allow_cidrs: Vec<Cidr>,
    /// Added to `deny_cidrs`.
    pub deny_cidrs: Vec<Cidr>,
    /// Added to `allow_hosts`.
    pub allow_hosts: Vec<Pattern>,
    /// Added to `deny_hosts`.
    pub deny_hosts: Vec<Pattern>,
    /// Replaces `block_quic`.
    pub block_quic: Option<bool>,
    /// Replaces `require_sni`.
    pub require_sni: Option<bool>,
    /// Replaces `dns_binding`.
    pub dns_binding: Option<bool>,
}

/// Why a sandbox's policy could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A port list became invalid (too long).
    #[error("{list}: {source}")]
    Ports {
        /// Which list.
        list: &'static str,
        /// Why.
        #[source]
        source: PortsError,
    },
    /// A port is in two lists that say different things about it.
    #[error("port {port} is in both {first} and {second}")]
    Overlap {
        /// The port.
        port: u16,
        /// One list.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
}

impl PolicyConfig {
    /// The policy with `overrides` applied, checked again.
    ///
    /// # Errors
    /// [`PolicyError`] when a list grows too long or two lists now share a port.
    pub fn with_overrides(&self, overrides: &PolicyOverrides) -> Result<PolicyConfig, PolicyError> {
        let add_ports = |list: &'static str, base: &PortList, more: &[u16]| {
            let extra = PortList::new(more.iter().map(|p| i64::from(*p)))
                .and_then(|extra| base.union(&extra));
            extra.map_err(|source| PolicyError::Ports { list, source })
        };
        let merged = PolicyConfig {
            tls_ports: overrides
                .tls_ports
                .clone()
                .unwrap_or_else(|| self.tls_ports.clone()),
            http_ports: overrides
                .http_ports
                .clone()
                .unwrap_or_else(|| self.http_ports.clone()),
            allow_tcp_ports: add_ports(
                "allow_tcp_ports",
                &self.allow_tcp_ports,
                &overrides.allow_tcp_ports,
            )?,
            allow_udp_ports: add_ports(
                "allow_udp_ports",
                &self.allow_udp_ports,
                &overrides.allow_udp_ports,
            )?,
            block_quic: overrides.block_quic.unwrap_or(self.block_quic),
            allow_cidrs: concat(&self.allow_cidrs, &overrides.allow_cidrs),
            deny_cidrs: concat(&self.deny_cidrs, &overrides.deny_cidrs),
            allow_hosts: concat(&self.allow_hosts, &overrides.allow_hosts),
            deny_hosts: concat(&self.deny_hosts, &overrides.deny_hosts),
            require_sni: overrides.require_sni.unwrap_or(self.require_sni),
            resolv_conf: self.resolv_conf.clone(),
            dns_binding: overrides.dns_binding.or(self.dns_binding),
        };
        merged.check_ports()?;
        Ok(merged)
    }

    /// A TCP port may be in one list only: intercepted TLS, HTTP, or allowed direct.
    fn check_ports(&self) -> Result<(), PolicyError> {
        let lists = [
            ("tls_ports", &self.tls_ports),
            ("http_ports", &self.http_ports),
            ("allow_tcp_ports", &self.allow_tcp_ports),
        ];
        for (i, (first, a)) in lists.iter().enumerate() {
            for (second, b) in &lists[i + 1..] {
                if let Some(port) = a.as_slice().iter().find(|port| b.contains(**port)) {
                    return Err(PolicyError::Overlap {
                        port: *port,
                        first,
                        second,
                    });
                }
            }
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        self.check_ports().map_err(|error| {
            let key = match &error {
                PolicyError::Overlap { second, .. } => *second,
                PolicyError::Ports { list, .. } => *list,
            };
            Invalid {
                key: vec![Key::name("policy"), Key::name(key)],
                reason: error.to_string(),
            }
        })
    }

    /// Whether DNS binding is enforced: `dns_binding` when set, else on exactly when the
    /// policy is an allow-list. An allow-list is only as strong as the link between a name
    /// and the address dialled: without binding, a sandbox could claim an allowed name while
    /// dialling any address its address rules let through.
    #[must_use]
    pub fn dns_binding_effective(&self) -> bool {
        self.dns_binding.unwrap_or(!self.allow_hosts.is_empty())
    }

    /// The name rules of this policy.
    #[must_use]
    pub fn name_rules(&self) -> NameRules {
        NameRules {
            allow: PatternSet::new(self.allow_hosts.clone()),
            deny: PatternSet::new(self.deny_hosts.clone()),
        }
    }
}

fn concat<T: Clone>(base: &[T], more: &[T]) -> Vec<T> {
    [base, more].concat()
}

/// Allow and deny patterns for host names (SNI, Host).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameRules {
    allow: PatternSet,
    deny: PatternSet,
}

/// Why a name is denied, for the refusal's log line and 403 page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameDenial {
    /// A `deny_hosts` pattern matched (and no more specific allow pattern did).
    Denied(Pattern),
    /// Allow-list mode, and no `allow_hosts` pattern matched.
    NotAllowed,
}

impl std::fmt::Display for NameDenial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameDenial::Denied(pattern) => write!(f, "deny_hosts {pattern}"),
            NameDenial::NotAllowed => f.write_str("allow_hosts (no pattern matches)"),
        }
    }
}

impl NameRules {
    /// Whether `name` may be reached: the most specific matching pattern decides (a deny
    /// pattern wins a tie); with no match, allow-list mode denies and otherwise it is allowed.
    ///
    /// # Errors
    /// The [`NameDenial`] saying which rule denies it.
    pub fn judge(&self, name: &HostName) -> Result<(), NameDenial> {
        let allow = self.allow.best_match(name);
        let deny = self.deny.best_match(name);
        match (allow, deny) {
            (_, Some(deny)) if allow.is_none_or(|a| deny.specificity() >= a.specificity()) => {
                Err(NameDenial::Denied(deny.clone()))
            }
            (Some(_), _) => Ok(()),
            (None, _) if self.allow.is_empty() => Ok(()),
            (None, _) => Err(NameDenial::NotAllowed),
        }
    }

    /// Whether only listed names may be reached.
    #[must_use]
    pub fn is_allow_list(&self) -> bool {
        !self.allow.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(texts: &[&str]) -> Vec<Pattern> {
        texts.iter().map(|t| Pattern::parse(t).unwrap()).collect()
    }

    fn rules(allow: &[&str], deny: &[&str]) -> NameRules {
        PolicyConfig {
            allow_hosts: patterns(allow),
            deny_hosts: patterns(deny),
            ..PolicyConfig::default()
        }
        .name_rules()
    }

    fn judge(rules: &NameRules, name: &str) -> Result<(), String> {
        rules
            .judge(&HostName::parse(name).unwrap())
            .map_err(|denial| denial.to_string())
    }

    #[test]
    fn no_rules_allow_everything() {
        assert_eq!(judge(&rules(&[], &[]), "any.test"), Ok(()));
    }

    #[test]
    fn deny_list_mode() {
        let rules = rules(&[], &["*.evil.test", "tracker.test"]);
        assert_eq!(
            judge(&rules, "x.evil.test"),
            Err("deny_hosts *.evil.test".into())
        );
        assert!(judge(&rules, "evil.test").is_err());
        assert!(judge(&rules, "tracker.test").is_err());
        assert_eq!(judge(&rules, "good.test"), Ok(()));
    }

    #[test]
    fn allow_list_mode() {
        let rules = rules(&["*.github.com", "pypi.org"], &[]);
        assert!(rules.is_allow_list());
        assert_eq!(judge(&rules, "api.github.com"), Ok(()));
        assert_eq!(judge(&rules, "pypi.org"), Ok(()));
        assert_eq!(
            judge(&rules, "evil.test"),
            Err("allow_hosts (no pattern matches)".into())
        );
    }

    #[test]
    fn the_most_specific_rule_wins_and_deny_wins_ties() {
        let rules = rules(
            &["*.example.com", "ok.secret.example.com"],
            &["*.secret.example.com"],
        );
        assert_eq!(judge(&rules, "www.example.com"), Ok(()));
        assert!(judge(&rules, "x.secret.example.com").is_err());
        assert_eq!(judge(&rules, "ok.secret.example.com"), Ok(()));
        let tie = self::rules(&["*.a.test"], &["*.a.test"]);
        assert!(judge(&tie, "x.a.test").is_err());
    }

    fn ports(list: &[i64]) -> PortList {
        PortList::new(list.iter().copied()).unwrap()
    }

    #[test]
    fn overrides_add_to_lists_and_replace_settings() {
        let base = PolicyConfig {
            allow_tcp_ports: ports(&[22]),
            deny_hosts: patterns(&["a.test"]),
            ..PolicyConfig::default()
        };
        let merged = base
            .with_overrides(&PolicyOverrides {
                tls_ports: Some(ports(&[8443])),
                allow_tcp_ports: vec![2222],
                deny_hosts: patterns(&["b.test"]),
                block_quic: Some(false),
                ..PolicyOverrides::default()
            })
            .unwrap();
        assert_eq!(merged.tls_ports, ports(&[8443]));
        assert_eq!(merged.http_ports, ports(&[80]));
        assert_eq!(merged.allow_tcp_ports, ports(&[22, 2222]));
        assert_eq!(merged.deny_hosts, patterns(&["a.test", "b.test"]));
        assert!(!merged.block_quic);
    }

    #[test]
    fn dns_binding_is_the_setting_else_on_for_allow_lists() {
        let allow_list = PolicyConfig {
            allow_hosts: patterns(&["a.test"]),
            ..PolicyConfig::default()
        };
        assert!(!PolicyConfig::default().dns_binding_effective());
        assert!(allow_list.dns_binding_effective());
        let set = |base: &PolicyConfig, value| {
            base.with_overrides(&PolicyOverrides {
                dns_binding: value,
                ..PolicyOverrides::default()
            })
            .unwrap()
            .dns_binding_effective()
        };
        assert!(!set(&allow_list, Some(false)));
        assert!(set(&PolicyConfig::default(), Some(true)));
        assert!(set(&allow_list, None));
        // Hosts added by a sandbox make its policy an allow-list too.
        let added = PolicyConfig::default()
            .with_overrides(&PolicyOverrides {
                allow_hosts: patterns(&["b.test"]),
                ..PolicyOverrides::default()
            })
            .unwrap();
        assert!(added.dns_binding_effective());
        // A config's explicit setting holds unless the sandbox replaces it.
        let off = PolicyConfig {
            dns_binding: Some(false),
            ..allow_list.clone()
        };
        assert!(!set(&off, None));
        assert!(set(&off, Some(true)));
    }

    #[test]
    fn a_port_in_two_lists_is_refused() {
        let error = PolicyConfig::default()
            .with_overrides(&PolicyOverrides {
                allow_tcp_ports: vec![443],
                ..PolicyOverrides::default()
            })
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "port 443 is in both tls_ports and allow_tcp_ports"
        );
    }
}
