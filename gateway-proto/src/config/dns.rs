//! The `[dns]` section: the DNS service each sandbox's queries are sent to — where it forwards
//! them, what a denied name gets, and how long an answer's addresses stay bound to its names.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    num::NonZeroUsize,
    time::Duration,
};

use serde::Deserialize;

use super::{FilePath, Invalid, Key};
use crate::duration::{format_duration, parse_duration};

/// `[dns]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub struct DnsConfig {
    /// Resolvers queries are forwarded to; empty means the host's: the nameservers of
    /// `[policy] resolv_conf`.
    pub upstream: Vec<Upstream>,
    /// Names answered from this file (`/etc/hosts` format) before any resolver is asked.
    pub hosts_file: FilePath,
    /// What a sandbox gets for a name its policy denies.
    pub denied_answer: DeniedAnswer,
    /// Shortest time an answer's addresses stay bound to its names (lower TTLs are raised).
    pub binding_ttl_min: BindingTtl,
    /// Longest time an answer's addresses stay bound to its names (higher TTLs are lowered).
    pub binding_ttl_max: BindingTtl,
    /// Answers kept in the shared cache.
    pub cache_size: DnsCacheSize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            upstream: Vec::new(),
            hosts_file: FilePath::from("/etc/hosts"),
            denied_answer: DeniedAnswer::default(),
            binding_ttl_min: BindingTtl(Duration::from_secs(60)),
            binding_ttl_max: BindingTtl(Duration::from_secs(3600)),
            cache_size: DnsCacheSize::default(),
        }
    }
}

impl DnsConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.binding_ttl_min > self.binding_ttl_max {
            return Err(Invalid {
                key: vec![Key::name("dns"), Key::name("binding_ttl_min")],
                reason: format!(
                    "must not be longer than dns.binding_ttl_max ({} > {})",
                    self.binding_ttl_min, self.binding_ttl_max
                ),
            });
        }
        Ok(())
    }

    /// `ttl` clamped to `[binding_ttl_min, binding_ttl_max]`.
    #[must_use]
    pub fn binding_ttl(&self, ttl: Duration) -> Duration {
        // `max` then `min`, so a config that skipped validation cannot panic here.
        ttl.max(self.binding_ttl_min.get())
            .min(self.binding_ttl_max.get())
    }
}

/// A resolver to forward to: an IP address, with a port (default 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Upstream(SocketAddr);

impl Upstream {
    /// The port used when none is given.
    pub const DEFAULT_PORT: u16 = 53;

    /// The resolver's address.
    #[must_use]
    pub fn addr(self) -> SocketAddr {
        self.0
    }
}

impl From<SocketAddr> for Upstream {
    fn from(addr: SocketAddr) -> Self {
        Upstream(addr)
    }
}

impl From<IpAddr> for Upstream {
    fn from(ip: IpAddr) -> Self {
        Upstream(SocketAddr::new(ip, Upstream::DEFAULT_PORT))
    }
}

impl TryFrom<String> for Upstream {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let addr = match text.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, Upstream::DEFAULT_PORT),
            Err(_) => text.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "invalid resolver {text:?}: write an IP address, optionally with a port \
                     (192.0.2.53, 192.0.2.53:5353, 2001:db8::53, [2001:db8::53]:5353)"
                )
            })?,
        };
        if addr.port() == 0 {
            return Err(format!("invalid resolver {text:?}: port 0 is not a port"));
        }
        if addr.ip().is_unspecified() {
            return Err(format!(
                "invalid resolver {text:?}: the unspecified address is not a resolver"
            ));
        }
        Ok(Upstream(addr))
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The answer to a query for a denied name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeniedAnswer {
    /// NXDOMAIN: the name does not exist (clients give up at once).
    #[default]
    Nxdomain,
    /// REFUSED: the server will not answer (some clients try another server).
    Refused,
}

/// How long an answer's addresses stay bound to its names: 1 second to 7 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct BindingTtl(Duration);

impl BindingTtl {
    /// Shortest accepted.
    pub const MIN: Duration = Duration::from_secs(1);
    /// Longest accepted.
    pub const MAX: Duration = Duration::from_secs(7 * 24 * 3600);

    /// The duration.
    #[must_use]
    pub fn get(self) -> Duration {
        self.0
    }
}

impl TryFrom<String> for BindingTtl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let duration = parse_duration(&text).map_err(|error| error.to_string())?;
        BindingTtl::try_from(duration)
    }
}

impl TryFrom<Duration> for BindingTtl {
    type Error = String;

    fn try_from(duration: Duration) -> Result<Self, String> {
        if duration < Self::MIN || duration > Self::MAX {
            return Err(format!(
                "must be from {} to {} (got {})",
                format_duration(Self::MIN),
                format_duration(Self::MAX),
                format_duration(duration)
            ));
        }
        Ok(BindingTtl(duration))
    }
}

impl fmt::Display for BindingTtl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

/// Answers kept in the DNS cache: 1 to 1,000,000, default 4096.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct DnsCacheSize(NonZeroUsize);

impl DnsCacheSize {
    const DEFAULT: NonZeroUsize = NonZeroUsize::new(4096).expect("4096 is not zero");
    /// The largest cache accepted.
    pub const MAX: usize = 1_000_000;

    /// The number of entries.
    #[must_use]
    pub fn get(self) -> NonZeroUsize {
        self.0
    }
}

impl Default for DnsCacheSize {
    fn default() -> Self {
        DnsCacheSize(Self::DEFAULT)
    }
}

impl TryFrom<i64> for DnsCacheSize {
    type Error = String;

    fn try_from(entries: i64) -> Result<Self, String> {
        usize::try_from(entries)
            .ok()
            .filter(|entries| *entries <= Self::MAX)
            .and_then(NonZeroUsize::new)
            .map(DnsCacheSize)
            .ok_or_else(|| format!("must be from 1 to {} entries (got {entries})", Self::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_take_an_address_with_an_optional_port() {
        let cases = [
            ("192.0.2.53", "192.0.2.53:53"),
            ("192.0.2.53:5353", "192.0.2.53:5353"),
            ("2001:db8::53", "[2001:db8::53]:53"),
            ("[2001:db8::53]:5353", "[2001:db8::53]:5353"),
        ];
        for (text, addr) in cases {
            let upstream = Upstream::try_from(text.to_owned()).unwrap();
            assert_eq!(
                upstream.addr(),
                addr.parse::<SocketAddr>().unwrap(),
                "{text}"
            );
        }
        for text in [
            "dns.example",
            "192.0.2.53:0",
            "0.0.0.0",
            "[::]:53",
            "",
            "1.2.3.4:99999",
        ] {
            assert!(Upstream::try_from(text.to_owned()).is_err(), "{text:?}");
        }
    }

    #[test]
    fn binding_ttls_are_clamped() {
        let config = DnsConfig::default();
        assert_eq!(
            config.binding_ttl(Duration::from_secs(5)),
            Duration::from_secs(60)
        );
        assert_eq!(
            config.binding_ttl(Duration::from_secs(300)),
            Duration::from_secs(300)
        );
        assert_eq!(
            config.binding_ttl(Duration::from_secs(86_400)),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn cache_size_bounds() {
        assert_eq!(DnsCacheSize::try_from(1).unwrap().get().get(), 1);
        assert_eq!(
            DnsCacheSize::try_from(1_000_000).unwrap().get().get(),
            1_000_000
        );
        for entries in [0, -1, 1_000_001] {
            assert_eq!(
                DnsCacheSize::try_from(entries).unwrap_err(),
                format!("must be from 1 to 1000000 entries (got {entries})")
            );
        }
    }
}
