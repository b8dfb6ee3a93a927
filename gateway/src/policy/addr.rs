//! Destination address rules of one sandbox: the built-in denied ranges plus the policy's
//! `deny_cidrs` and `allow_cidrs`, longest prefix wins. The same entries go to the eBPF LPM
//! trie (which judges every connect and send) and answer [`AddrRules::judge`] here, so tests
//! can check a verdict without sending a packet anywhere.

use std::{fmt, net::IpAddr};

use gateway_proto::{cidr::Cidr, config::PolicyConfig};

/// Ranges a sandbox may not reach unless an allow rule as long or longer covers them.
const BUILT_IN_DENIED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network (unspecified)"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("169.254.0.0/16", "link-local"),
    ("169.254.169.254/32", "cloud metadata"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("fc00::/7", "unique local (ULA)"),
    ("fd00:ec2::254/128", "cloud metadata"),
    ("ff00::/8", "multicast"),
];

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The range may be reached (port rules still apply).
    Allow,
    /// The range may not be reached.
    Deny,
}

/// Where a rule comes from, for the refusal's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Built in, with what the range is.
    BuiltIn(&'static str),
    /// `deny_cidrs[i]` of the policy (config, then the sandbox's own additions).
    DenyCidrs(usize),
    /// `allow_cidrs[i]`.
    AllowCidrs(usize),
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrRule {
    /// The range.
    pub cidr: Cidr,
    /// What it says.
    pub action: Action,
    /// Where it comes from.
    pub origin: Origin,
}

impl fmt::Display for AddrRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        match self.origin {
            Origin::BuiltIn(what) => write!(f, "{action} {} (built in: {what})", self.cidr),
            Origin::DenyCidrs(i) => write!(f, "{action} {} (deny_cidrs[{i}])", self.cidr),
            Origin::AllowCidrs(i) => write!(f, "{action} {} (allow_cidrs[{i}])", self.cidr),
        }
    }
}

/// A sandbox's address rules; a rule's id is its index + 1 (0 means none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrRules {
    rules: Vec<AddrRule>,
}

impl AddrRules {
    /// The rules of `policy`: built-in denials, then `deny_cidrs`, then `allow_cidrs`; for one
    /// range given twice the later rule replaces the earlier, so an allow overrides a deny of
    /// exactly the same range.
    pub fn new(policy: &PolicyConfig) -> AddrRules {
        let built_in = BUILT_IN_DENIED.iter().map(|(cidr, what)| AddrRule {
            cidr: cidr.parse().expect("built-in ranges parse"),
            action: Action::Deny,
            origin: Origin::BuiltIn(what),
        });
        let denied = policy
            .deny_cidrs
            .iter()
            .enumerate()
            .map(|(i, cidr)| AddrRule {
                cidr: *cidr,
                action: Action::Deny,
                origin: Origin::DenyCidrs(i),
            });
        let allowed = policy
            .allow_cidrs
            .iter()
            .enumerate()
            .map(|(i, cidr)| AddrRule {
                cidr: *cidr,
                action: Action::Allow,
                origin: Origin::AllowCidrs(i),
            });
        let mut rules: Vec<AddrRule> = Vec::new();
        for rule in built_in.chain(denied).chain(allowed) {
            match rules.iter_mut().find(|seen| seen.cidr == rule.cidr) {
                Some(seen) => *seen = rule,
                None => rules.push(rule),
            }
        }
        AddrRules { rules }
    }

    /// Every rule with its id, for the eBPF trie.
    pub fn entries(&self) -> impl Iterator<Item = (u32, &AddrRule)> {
        (1u32..).zip(&self.rules)
    }

    /// The rule with this id.
    pub fn rule(&self, id: u32) -> Option<&AddrRule> {
        let index = usize::try_from(id.checked_sub(1)?).ok()?;
        self.rules.get(index)
    }

    /// The rule deciding `ip` (the longest matching prefix), as the eBPF trie finds it;
    /// `None` when no rule covers it (then only the port rules decide).
    pub fn judge(&self, ip: IpAddr) -> Option<&AddrRule> {
        self.rules
            .iter()
            .filter(|rule| rule.cidr.contains(ip))
            .max_by_key(|rule| rule.cidr.v6_prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> AddrRules {
        let cidrs = |list: &[&str]| list.iter().map(|c| c.parse().unwrap()).collect();
        AddrRules::new(&PolicyConfig {
            allow_cidrs: cidrs(allow),
            deny_cidrs: cidrs(deny),
            ..PolicyConfig::default()
        })
    }

    fn verdict(rules: &AddrRules, ip: &str) -> Option<Action> {
        rules.judge(ip.parse().unwrap()).map(|rule| rule.action)
    }

    #[test]
    fn the_dangerous_ranges_are_denied_by_default() {
        let rules = rules(&[], &[]);
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "fd00:ec2::254",
            "169.254.1.1",
            "fe80::1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "::ffff:192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "fc00::1",
            "fd12:3456::1",
            "224.0.0.1",
            "239.255.255.250",
            "ff02::1",
            "255.255.255.255",
        ] {
            assert_eq!(verdict(&rules, ip), Some(Action::Deny), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "198.51.100.7",
        ] {
            assert_eq!(verdict(&rules, ip), None, "{ip}");
        }
    }

    #[test]
    fn metadata_is_named_as_such() {
        let rules = rules(&[], &[]);
        let rule = rules.judge("169.254.169.254".parse().unwrap()).unwrap();
        assert_eq!(
            rule.to_string(),
            "deny 169.254.169.254/32 (built in: cloud metadata)"
        );
        let rule = rules
            .judge("::ffff:169.254.169.254".parse().unwrap())
            .unwrap();
        assert_eq!(rule.origin, Origin::BuiltIn("cloud metadata"));
    }

    #[test]
    fn an_allow_as_long_or_longer_wins() {
        let rules = rules(&["10.0.0.0/8", "192.168.7.0/24"], &[]);
        assert_eq!(verdict(&rules, "10.1.2.3"), Some(Action::Allow));
        assert_eq!(verdict(&rules, "192.168.7.9"), Some(Action::Allow));
        assert_eq!(verdict(&rules, "192.168.8.9"), Some(Action::Deny));
        // A broader allow does not open a narrower built-in denial.
        let broad = self::rules(&["0.0.0.0/0"], &[]);
        assert_eq!(verdict(&broad, "127.0.0.1"), Some(Action::Deny));
        assert_eq!(verdict(&broad, "1.1.1.1"), Some(Action::Allow));
    }

    #[test]
    fn operator_denials_and_ids() {
        let rules = rules(&[], &["198.51.100.0/24"]);
        let rule = rules.judge("198.51.100.7".parse().unwrap()).unwrap();
        assert_eq!(rule.to_string(), "deny 198.51.100.0/24 (deny_cidrs[0])");
        let (id, _) = rules
            .entries()
            .find(|(_, r)| r.origin == Origin::DenyCidrs(0))
            .unwrap();
        assert_eq!(rules.rule(id), Some(rule));
        assert_eq!(rules.rule(0), None);
    }
}
