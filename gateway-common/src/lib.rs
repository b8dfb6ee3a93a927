//! Map key and value types shared by the gateway's eBPF programs and its daemon.
//!
//! Every type is `#[repr(C)]` with explicit padding fields so that both sides agree on the
//! layout byte for byte and hash keys never contain uninitialised bytes.
//!
//! Addresses are kept in IPv6 form, IPv4 as IPv4-mapped (`::ffff:a.b.c.d`), as four 32-bit words
//! holding the address bytes in network order (the way the kernel's `bpf_sock_addr` and
//! `bpf_sock_ops` present them). Ports are in host byte order.
#![no_std]

/// Most ports one sandbox can have intercepted.
pub const MAX_PORTS: usize = 8;

/// Pinned map names under the gateway's bpffs directory, as operators see them.
pub mod map_names {
    /// Per-sandbox configuration keyed by cgroup id.
    pub const SANDBOXES: &str = "SANDBOXES";
    /// Original destinations of connections between connect() and establishment, by socket cookie.
    pub const PENDING: &str = "PENDING";
    /// Original destinations of established connections, by sandbox and client address.
    pub const ORIG_DST: &str = "ORIG_DST";
    /// Per-CPU event counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
}

/// Configuration of one sandbox, the value of `SANDBOXES` keyed by the sandbox's cgroup id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxConf {
    /// The daemon's identifier for this sandbox; part of every `ORIG_DST` key.
    pub sandbox_id: u32,
    /// Port of the sandbox's listener on 127.0.0.1 and ::1 (host byte order).
    pub listener_port: u16,
    /// How many entries of `ports` are used.
    pub nports: u16,
    /// Intercepted TCP destination ports (host byte order); only the first `nports` count.
    pub ports: [u16; MAX_PORTS],
}

impl SandboxConf {
    /// Whether TCP connections to `port` are redirected for this sandbox.
    #[inline(always)]
    pub fn intercepts(&self, port: u16) -> bool {
        let mut i = 0;
        while i < MAX_PORTS {
            if i < self.nports as usize && self.ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Where a sandbox connection was going, the value of `PENDING` and `ORIG_DST`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDstEntry {
    /// Destination address, IPv6 form, network-order bytes.
    pub ip: [u32; 4],
    /// Destination port, host byte order.
    pub port: u16,
    /// Always zero.
    pub _pad: u16,
    /// Sandbox that made the connection.
    pub sandbox_id: u32,
}

/// Key of `ORIG_DST`: the client address the sandbox's listener sees as the peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Client address, IPv6 form, network-order bytes.
    pub ip: [u32; 4],
    /// Client port, host byte order.
    pub port: u16,
    /// Always zero.
    pub _pad: u16,
    /// Sandbox the client belongs to.
    pub sandbox_id: u32,
}

/// Indices into the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// connect() calls redirected to a listener, IPv4 (including IPv4-mapped IPv6).
    RedirectedV4 = 0,
    /// connect() calls redirected to a listener, IPv6.
    RedirectedV6 = 1,
    /// Redirected connections that established and were recorded in `ORIG_DST`.
    Established = 2,
    /// Map updates that failed (the connection then cannot be relayed and is refused).
    MapErrors = 3,
}

impl Counter {
    /// Number of counters, the size of the `COUNTERS` array.
    pub const LEN: u32 = 4;
    /// Every counter, in index order.
    pub const ALL: [Counter; Counter::LEN as usize] = [
        Counter::RedirectedV4,
        Counter::RedirectedV6,
        Counter::Established,
        Counter::MapErrors,
    ];

    /// The name operators see in logs.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::RedirectedV4 => "redirected_v4",
            Counter::RedirectedV6 => "redirected_v6",
            Counter::Established => "established",
            Counter::MapErrors => "map_errors",
        }
    }
}

/// The IPv4-mapped IPv6 prefix word (`::ffff:0:0/96`, third word) in network-order bytes.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// An IPv4 address (network-order bytes in a u32) as IPv4-mapped IPv6 words.
#[inline(always)]
pub const fn v4_mapped(ip4: u32) -> [u32; 4] {
    [0, 0, V4_MAPPED_WORD, ip4]
}

/// Whether IPv6 words hold an IPv4-mapped address.
#[inline(always)]
pub const fn is_v4_mapped(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data `#[repr(C)]` structs of integers with explicit padding fields, valid
    // for every bit pattern.
    unsafe impl aya::Pod for super::SandboxConf {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDstEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClientKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<SandboxConf>(), 8 + 2 * MAX_PORTS);
        assert_eq!(core::mem::size_of::<OrigDstEntry>(), 24);
        assert_eq!(core::mem::size_of::<ClientKey>(), 24);
    }

    #[test]
    fn intercepts_only_configured_ports() {
        let mut conf = SandboxConf {
            sandbox_id: 1,
            listener_port: 1000,
            nports: 2,
            ports: [0; MAX_PORTS],
        };
        conf.ports[0] = 443;
        conf.ports[1] = 8443;
        conf.ports[2] = 80; // beyond nports: ignored
        assert!(conf.intercepts(443));
        assert!(conf.intercepts(8443));
        assert!(!conf.intercepts(80));
        assert!(!conf.intercepts(0));
    }

    #[test]
    fn v4_mapped_roundtrip() {
        let ip = u32::from_ne_bytes([192, 0, 2, 7]);
        let words = v4_mapped(ip);
        assert!(is_v4_mapped(&words));
        assert!(!is_v4_mapped(&[0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]));
    }
}
