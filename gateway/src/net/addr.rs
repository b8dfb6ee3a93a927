//! Typed socket addresses, so a client address is never mistaken for a destination.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use gateway_common::{ClientKey, OrigDstEntry};

use crate::sandbox::SandboxId;

/// Where a sandbox connection was originally going, as recorded by the eBPF programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDst(pub SocketAddr);

/// The sandbox-side address of an accepted connection (the listener's peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

impl OrigDst {
    /// Whether relaying there would reach this host's own loopback or "this host" address, which
    /// a sandbox must never reach through the gateway.
    pub fn is_host_local(&self) -> bool {
        let ip = self.0.ip().to_canonical();
        ip.is_loopback() || ip.is_unspecified()
    }
}

impl From<OrigDstEntry> for OrigDst {
    fn from(entry: OrigDstEntry) -> Self {
        OrigDst(SocketAddr::new(ip_from_words(entry.ip), entry.port))
    }
}

impl ClientAddr {
    /// The `ORIG_DST` key under which the eBPF side recorded this client's connection.
    pub fn key(&self, sandbox: SandboxId) -> ClientKey {
        ClientKey {
            ip: words_from_ip(self.0.ip()),
            port: self.0.port(),
            _pad: 0,
            sandbox_id: sandbox.0,
        }
    }
}

impl fmt::Display for OrigDst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// IPv6-form words with network-order bytes; IPv4 becomes IPv4-mapped.
pub fn words_from_ip(ip: IpAddr) -> [u32; 4] {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let o = v6.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The inverse of [`words_from_ip`]; IPv4-mapped addresses come back as IPv4.
pub fn ip_from_words(words: [u32; 4]) -> IpAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    IpAddr::V6(Ipv6Addr::from(octets)).to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_match_the_kernel_layout() {
        // The kernel stores 192.0.2.7 in user_ip4 as its bytes in network order.
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let words = words_from_ip(ip);
        assert_eq!(
            words,
            gateway_common::v4_mapped(u32::from_ne_bytes([192, 0, 2, 7]))
        );
        assert_eq!(ip_from_words(words), ip);
    }

    #[test]
    fn v6_roundtrips_and_stays_v6() {
        for s in ["2001:db8::1", "::1", "fd00:1:2:3::4"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(ip_from_words(words_from_ip(ip)), ip);
        }
    }

    #[test]
    fn client_key_carries_sandbox_and_port() {
        let client = ClientAddr("127.0.0.1:40000".parse().unwrap());
        let key = client.key(SandboxId(7));
        assert_eq!(key.port, 40000);
        assert_eq!(key.sandbox_id, 7);
        assert!(gateway_common::is_v4_mapped(&key.ip));
    }

    #[test]
    fn host_local_destinations() {
        for s in [
            "127.0.0.1:443",
            "127.9.9.9:443",
            "[::1]:443",
            "0.0.0.0:443",
            "[::ffff:127.0.0.1]:443",
        ] {
            assert!(OrigDst(s.parse().unwrap()).is_host_local(), "{s}");
        }
        for s in ["198.18.0.2:443", "[fd00::2]:443"] {
            assert!(!OrigDst(s.parse().unwrap()).is_host_local(), "{s}");
        }
    }
}
