//! Address ranges (`10.0.0.0/8`, `fd00::/8`, a bare address) as operators write them in
//! policy rules.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// An IPv4 or IPv6 network: an address with its host bits zero and a prefix length. IPv4-mapped
/// IPv6 networks (`::ffff:10.0.0.0/104`) are read as the IPv4 network they map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why text is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part does not parse.
    #[error("`{text}` is not an IPv4 or IPv6 address")]
    Address {
        /// The address part.
        text: String,
    },
    /// The prefix is not a number within the family's bits.
    #[error("prefix `{text}` is not a number from 0 to {max}")]
    Prefix {
        /// The prefix part.
        text: String,
        /// 32 or 128.
        max: u8,
    },
    /// Bits below the prefix are set (`10.1.2.3/8`).
    #[error("host bits are set; the network is {network}")]
    HostBits {
        /// What was probably meant.
        network: Cidr,
    },
}

impl Cidr {
    /// The network `addr/prefix`.
    ///
    /// # Errors
    /// [`CidrError::Prefix`] when `prefix` exceeds the family's bits, [`CidrError::HostBits`]
    /// when `addr` has bits set below it.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let (addr, prefix) = unmap(addr, prefix);
        let max = max_prefix(addr);
        if prefix > max {
            return Err(CidrError::Prefix {
                text: prefix.to_string(),
                max,
            });
        }
        let network = Cidr {
            addr: mask(addr, prefix),
            prefix,
        };
        if network.addr != addr {
            return Err(CidrError::HostBits { network });
        }
        Ok(network)
    }

    /// The network's first address.
    #[must_use]
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length, in the bits of the address's own family.
    #[must_use]
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in this network (IPv4-mapped addresses as IPv4).
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }

    /// The prefix length as IPv6 bits, IPv4 counted as IPv4-mapped (`/8` is `/104`).
    #[must_use]
    pub fn v6_prefix(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 96 + self.prefix,
            IpAddr::V6(_) => self.prefix,
        }
    }
}

/// An IPv4-mapped network becomes the IPv4 one (when its prefix covers the mapping).
fn unmap(addr: IpAddr, prefix: u8) -> (IpAddr, u8) {
    match addr {
        IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix - 96),
            None => (addr, prefix),
        },
        _ => (addr, prefix),
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & keep))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & keep))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| CidrError::Address {
            text: addr_text.to_owned(),
        })?;
        let max = max_prefix(addr);
        let prefix = match prefix_text {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|bits| *bits <= max)
                .ok_or_else(|| CidrError::Prefix {
                    text: prefix.to_owned(),
                    max,
                })?,
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_bare_addresses() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(cidr("fd00::/8").to_string(), "fd00::/8");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("0.0.0.0/0").prefix(), 0);
        assert_eq!(cidr("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn rejects_with_reasons() {
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap_err().to_string(),
            "host bits are set; the network is 10.0.0.0/8"
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix { max: 32, .. })
        ));
        assert!(matches!(
            "example.com/8".parse::<Cidr>(),
            Err(CidrError::Address { .. })
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Cidr>(),
            Err(CidrError::Prefix { .. })
        ));
    }

    #[test]
    fn contains_judges_mapped_addresses_as_ipv4() {
        let private = cidr("10.0.0.0/8");
        assert!(private.contains("10.9.8.7".parse().unwrap()));
        assert!(private.contains("::ffff:10.9.8.7".parse().unwrap()));
        assert!(!private.contains("11.0.0.1".parse().unwrap()));
        assert!(!private.contains("fd00::1".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(cidr("::/0").contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn v6_prefix_counts_the_mapping() {
        assert_eq!(cidr("10.0.0.0/8").v6_prefix(), 104);
        assert_eq!(cidr("fc00::/7").v6_prefix(), 7);
    }
}
