//! Map key and value types shared by the gateway's eBPF programs and its daemon.
//!
//! Every type is `#[repr(C)]` with explicit padding fields so that both sides agree on the
//! layout byte for byte and hash keys never contain uninitialised bytes.
//!
//! Addresses are kept in IPv6 form, IPv4 as IPv4-mapped (`::ffff:a.b.c.d`), as four 32-bit words
//! holding the address bytes in network order (the way the kernel's `bpf_sock_addr` and
//! `bpf_sock_ops` present them). Ports are in host byte order.
#![no_std]

/// Most ports in one port list of a sandbox (intercepted TLS, HTTP, allowed TCP, allowed UDP).
pub const MAX_PORTS: usize = 16;

/// Pinned map names under the gateway's bpffs directory, as operators see them.
pub mod map_names {
    /// Per-sandbox configuration keyed by cgroup id.
    pub const SANDBOXES: &str = "SANDBOXES";
    /// Original destinations of connections between connect() and establishment, by socket cookie.
    pub const PENDING: &str = "PENDING";
    /// Original destinations of established connections, by sandbox and client address.
    pub const ORIG_DST: &str = "ORIG_DST";
    /// Per-CPU event counters: one [`crate::Counters`] entry, key 0.
    pub const COUNTERS: &str = "COUNTERS";
    /// What a sandbox may do with a destination port, by sandbox, port and protocol.
    pub const PORT_RULES: &str = "PORT_RULES";
    /// Destination address rules (LPM trie over sandbox id + address), longest prefix wins.
    pub const ADDR_RULES: &str = "ADDR_RULES";
    /// DNS resolvers a sandbox may query on port 53, by sandbox and address.
    pub const RESOLVERS: &str = "RESOLVERS";
    /// Refusals per sandbox, by reason (per CPU).
    pub const REFUSALS: &str = "REFUSALS";
    /// One event per refusal, read by the daemon for its log lines.
    pub const REFUSAL_EVENTS: &str = "REFUSAL_EVENTS";
    /// Addresses DNS answers gave each sandbox, until when, by sandbox and address.
    pub const DNS_BINDINGS: &str = "DNS_BINDINGS";
    /// Where a socket's DNS was going before it was rewritten to the sandbox's DNS service,
    /// by socket cookie (to give replies back their original source).
    pub const DNS_REDIRECTS: &str = "DNS_REDIRECTS";
    /// Connections left alone at connect (bypassed), between connect() and establishment, by
    /// socket cookie.
    pub const BYPASSED: &str = "BYPASSED";
    /// One event per bypassed connection that established, read by the daemon for its log.
    pub const BYPASS_EVENTS: &str = "BYPASS_EVENTS";
    /// Both sockets of every connection spliced in the kernel, by socket cookie; its stream
    /// verdict program moves each one's received bytes to the other's send queue.
    pub const SPLICE_SOCKS: &str = "SPLICE_SOCKS";
    /// The peer of every socket in `SPLICE_SOCKS` and the bytes moved to it, by socket cookie.
    pub const SPLICE_PEERS: &str = "SPLICE_PEERS";
}

/// Configuration of one sandbox, the value of `SANDBOXES` keyed by the sandbox's cgroup id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxConf {
    /// The daemon's identifier for this sandbox; part of every per-sandbox key.
    pub sandbox_id: u32,
    /// Port of the sandbox's listener on 127.0.0.1 and ::1 (host byte order).
    pub listener_port: u16,
    /// [`SandboxConf::BLOCK_QUIC`], [`SandboxConf::DNS_BINDING`].
    pub flags: u16,
    /// Port of the sandbox's DNS service on 127.0.0.1 and ::1 (host byte order); 0 when it
    /// has none, and then DNS may go only to the `RESOLVERS`.
    pub dns_port: u16,
    /// Always zero.
    pub _pad: u16,
}

impl SandboxConf {
    /// UDP to port 443 is refused (so HTTP/3 clients fall back to TCP and are intercepted).
    pub const BLOCK_QUIC: u16 = 1;
    /// Connects and sends to an address no DNS answer gave the sandbox (and that no
    /// `allow_cidrs` rule allows) are refused ([`Reason::Unbound`]).
    pub const DNS_BINDING: u16 = 2;

    /// Whether [`SandboxConf::BLOCK_QUIC`] is set.
    #[inline(always)]
    pub const fn blocks_quic(&self) -> bool {
        self.flags & Self::BLOCK_QUIC != 0
    }

    /// Whether [`SandboxConf::DNS_BINDING`] is set.
    #[inline(always)]
    pub const fn binds_dns(&self) -> bool {
        self.flags & Self::DNS_BINDING != 0
    }
}

/// IP protocol numbers the programs judge.
pub mod protocol {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// Key of `PORT_RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortKey {
    /// The sandbox.
    pub sandbox_id: u32,
    /// Destination port, host byte order.
    pub port: u16,
    /// [`protocol::TCP`] or [`protocol::UDP`].
    pub protocol: u8,
    /// Always zero.
    pub _pad: u8,
}

/// Value of `PORT_RULES`: what happens to a connect or send to the port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRule {
    /// [`PortRule::REDIRECT`] or [`PortRule::ALLOW`].
    pub action: u32,
}

impl PortRule {
    /// Rewritten to the sandbox's listener (plain HTTP ports; TCP only).
    pub const REDIRECT: u32 = 1;
    /// Left alone: the connection goes direct (an allowed port).
    pub const ALLOW: u32 = 2;
    /// Rewritten to the sandbox's listener like [`PortRule::REDIRECT`], but an intercepted TLS
    /// port: a connect to an address bound only to bypass names is left alone instead.
    pub const REDIRECT_TLS: u32 = 3;
}

/// Data of an `ADDR_RULES` key and key of `RESOLVERS`: sandbox id, then the address. In the
/// trie the prefix length counts the 32 sandbox bits too (see [`addr_prefix_len`]), so a rule
/// never matches another sandbox's addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey {
    /// The sandbox.
    pub sandbox_id: u32,
    /// Address, IPv6 form, network-order bytes.
    pub addr: [u32; 4],
}

/// Bits of an [`AddrKey`]: what a lookup matches against.
pub const ADDR_KEY_BITS: u32 = 32 + 128;

/// The trie prefix length of a rule for `ip_prefix` bits of an (IPv6-form) address.
#[inline(always)]
pub const fn addr_prefix_len(ip_prefix: u32) -> u32 {
    32 + ip_prefix
}

/// Value of `ADDR_RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrRule {
    /// [`AddrRule::ALLOW`] or [`AddrRule::DENY`].
    pub action: u32,
    /// Which of the sandbox's rules this is, for the refusal's log line.
    pub rule_id: u32,
}

impl AddrRule {
    /// The address may be reached (port rules still apply).
    pub const ALLOW: u32 = 1;
    /// The address may not be reached.
    pub const DENY: u32 = 2;
}

/// Why a connect, send or socket was refused; indexes [`Refusals`] and tags [`RefusalEvent`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The destination address is denied.
    Address = 1,
    /// A TCP port neither intercepted nor allowed.
    TcpPort = 2,
    /// A UDP port not allowed (DNS to the allowed resolvers excepted).
    UdpPort = 3,
    /// UDP to port 443 while QUIC is blocked.
    Quic = 4,
    /// A raw, ICMP or otherwise not TCP/UDP socket.
    Socket = 5,
    /// With DNS binding on: an address no DNS answer gave the sandbox (or whose binding
    /// expired), not allowed by an `allow_cidrs` rule either.
    Unbound = 6,
}

impl Reason {
    /// The reason's name in logs.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Address => "address",
            Reason::TcpPort => "tcp_port",
            Reason::UdpPort => "udp_port",
            Reason::Quic => "quic",
            Reason::Socket => "socket",
            Reason::Unbound => "unbound",
        }
    }

    /// The reason of an event's `reason` byte.
    pub const fn from_u8(value: u8) -> Option<Reason> {
        Some(match value {
            1 => Reason::Address,
            2 => Reason::TcpPort,
            3 => Reason::UdpPort,
            4 => Reason::Quic,
            5 => Reason::Socket,
            6 => Reason::Unbound,
            _ => return None,
        })
    }
}

/// Value of `REFUSALS`: a sandbox's refusals by reason (per CPU; sum them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    /// See [`Reason::Address`].
    pub address: u64,
    /// See [`Reason::TcpPort`].
    pub tcp_port: u64,
    /// See [`Reason::UdpPort`].
    pub udp_port: u64,
    /// See [`Reason::Quic`].
    pub quic: u64,
    /// See [`Reason::Socket`].
    pub socket: u64,
    /// See [`Reason::Unbound`].
    pub unbound: u64,
}

impl Refusals {
    /// Adds one refusal for `reason`.
    #[inline(always)]
    pub fn bump(&mut self, reason: Reason) {
        let slot = match reason {
            Reason::Address => &mut self.address,
            Reason::TcpPort => &mut self.tcp_port,
            Reason::UdpPort => &mut self.udp_port,
            Reason::Quic => &mut self.quic,
            Reason::Socket => &mut self.socket,
            Reason::Unbound => &mut self.unbound,
        };
        *slot += 1;
    }
}

/// One refusal, as the daemon reads it from `REFUSAL_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusalEvent {
    /// The sandbox.
    pub sandbox_id: u32,
    /// The address rule that denied it ([`Reason::Address`]), else 0.
    pub rule_id: u32,
    /// Destination address, IPv6 form, network-order bytes (zero for sockets).
    pub addr: [u32; 4],
    /// Destination port, host byte order (zero for sockets).
    pub port: u16,
    /// IP protocol of the socket.
    pub protocol: u16,
    /// A [`Reason`].
    pub reason: u8,
    /// Always zero.
    pub _pad: u8,
    /// Socket type (SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_RAW 3, ...).
    pub sock_type: u16,
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

/// The fields of [`Counters`], for code that walks them.
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
    /// Connects, sends and sockets refused by policy (by reason and sandbox in `REFUSALS`).
    Refused = 4,
    /// TCP connects to an intercepted TLS port left alone (direct), because every name the
    /// address was given for is a bypass name.
    BypassedAtConnect = 5,
    /// Refusal or bypass events dropped because their ring buffer was full: the counters
    /// still have them, their log lines are missing.
    EventsLost = 6,
}

impl Counter {
    /// Number of counters (fields of [`Counters`]).
    pub const LEN: u32 = 7;
    /// Every counter, in index order.
    pub const ALL: [Counter; Counter::LEN as usize] = [
        Counter::RedirectedV4,
        Counter::RedirectedV6,
        Counter::Established,
        Counter::MapErrors,
        Counter::Refused,
        Counter::BypassedAtConnect,
        Counter::EventsLost,
    ];

    /// The name operators see in logs.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::RedirectedV4 => "redirected_v4",
            Counter::RedirectedV6 => "redirected_v6",
            Counter::Established => "established",
            Counter::MapErrors => "map_errors",
            Counter::Refused => "refused",
            Counter::BypassedAtConnect => "bypassed_at_connect",
            Counter::EventsLost => "events_lost",
        }
    }
}

/// The value of the per-CPU `COUNTERS` array's single entry: named fields, so bpftool prints
/// names (the map has BTF). Each CPU counts in its own copy; readers sum them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// connect() calls redirected to a listener, IPv4 (including IPv4-mapped IPv6).
    pub redirected_v4: u64,
    /// connect() calls redirected to a listener, IPv6.
    pub redirected_v6: u64,
    /// Redirected connections that established and were recorded in `ORIG_DST`.
    pub established: u64,
    /// Map updates that failed (the connection then cannot be relayed and is refused).
    pub map_errors: u64,
    /// Connects, sends and sockets refused by policy (by reason and sandbox in `REFUSALS`).
    pub refused: u64,
    /// TCP connects to an intercepted TLS port left alone because of a bypass-only binding.
    pub bypassed_at_connect: u64,
    /// Refusal or bypass events dropped because their ring buffer was full.
    pub events_lost: u64,
}

impl Counters {
    /// The field that counts `counter`.
    #[inline(always)]
    pub fn slot(&mut self, counter: Counter) -> &mut u64 {
        match counter {
            Counter::RedirectedV4 => &mut self.redirected_v4,
            Counter::RedirectedV6 => &mut self.redirected_v6,
            Counter::Established => &mut self.established,
            Counter::MapErrors => &mut self.map_errors,
            Counter::Refused => &mut self.refused,
            Counter::BypassedAtConnect => &mut self.bypassed_at_connect,
            Counter::EventsLost => &mut self.events_lost,
        }
    }

    /// The value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        match counter {
            Counter::RedirectedV4 => self.redirected_v4,
            Counter::RedirectedV6 => self.redirected_v6,
            Counter::Established => self.established,
            Counter::MapErrors => self.map_errors,
            Counter::Refused => self.refused,
            Counter::BypassedAtConnect => self.bypassed_at_connect,
            Counter::EventsLost => self.events_lost,
        }
    }
}

/// Key of `DNS_BINDINGS`: an address a DNS answer gave a sandbox.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DnsBindingKey {
    /// The sandbox.
    pub sandbox_id: u32,
    /// Address, IPv6 form (IPv4 as IPv4-mapped), network-order bytes.
    pub addr: [u32; 4],
}

/// Value of `DNS_BINDINGS`: until when the address is the sandbox's, and how.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsBinding {
    /// `CLOCK_MONOTONIC` nanoseconds (what `bpf_ktime_get_ns` reads) after which the binding
    /// no longer counts.
    pub expires_ns: u64,
    /// [`DnsBinding::BYPASS_ONLY`].
    pub flags: u32,
    /// Always zero.
    pub _pad: u32,
}

impl DnsBinding {
    /// Every name the address was given for is a TLS bypass name: a TCP connect to it on an
    /// intercepted TLS port is left alone (direct) instead of redirected.
    pub const BYPASS_ONLY: u32 = 1;

    /// Whether [`DnsBinding::BYPASS_ONLY`] is set.
    #[inline(always)]
    pub const fn bypass_only(&self) -> bool {
        self.flags & Self::BYPASS_ONLY != 0
    }
}

/// Value of `DNS_REDIRECTS` (keyed by socket cookie): where a socket's DNS was sent before it
/// was rewritten to the sandbox's DNS service, so replies from the service (and
/// `getpeername`) show that address again.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsRedirect {
    /// The address the client sent to, IPv6 form, network-order bytes.
    pub addr: [u32; 4],
    /// The port the client sent to (53), host byte order.
    pub port: u16,
    /// The DNS service's port it was rewritten to, host byte order.
    pub dns_port: u16,
}

/// A connection left alone at connect because its address is bound only to bypass names: the
/// value of `BYPASSED` (keyed by socket cookie) and, once established, an event in
/// `BYPASS_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BypassEvent {
    /// The sandbox.
    pub sandbox_id: u32,
    /// Destination address, IPv6 form, network-order bytes.
    pub addr: [u32; 4],
    /// Destination port, host byte order.
    pub port: u16,
    /// Always zero.
    pub _pad: u16,
}

/// Value of the per-CPU `SPLICE_PEERS` (keyed by the socket cookie of one socket of a kernel
/// splice): the socket its received bytes are redirected to (the same in every CPU's copy), and
/// how many there were so far.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplicePeer {
    /// The socket cookie of the other socket of the splice (its key in `SPLICE_SOCKS`).
    pub peer_cookie: u64,
    /// Bytes the stream verdict redirected from this socket to the peer (the map is per CPU:
    /// each CPU counts in its own copy, readers sum them; the daemon only reads it).
    pub bytes: u64,
}

/// Flags of every LRU hash map: `BPF_F_NO_COMMON_LRU`, a free list per CPU. With the common
/// list, entries freed by deletes gather in the free list of the CPU that made them while other
/// CPUs, finding the shared list empty, evict live entries of a map far from full (measured
/// here: a burst of 11,000 connections bypassed at connect lost up to a few hundred events of
/// a 16,384-entry map in 3 runs of 15; none in 15 with per-CPU lists).
pub const LRU_MAP_FLAGS: u32 = 2;

/// Size of the `BYPASS_EVENTS` ring buffer: at 40 bytes a record, about 26,000 events, so a
/// burst of connections as fast as one process can make them is read whole on the timer.
pub const BYPASS_EVENTS_BYTES: u32 = 1024 * 1024;
/// Unread bytes of `BYPASS_EVENTS` at which a new event wakes the daemon; below it the daemon
/// reads the buffer on its own timer (every [`BYPASS_EVENTS_POLL_MS`]).
pub const BYPASS_EVENTS_WAKEUP_BYTES: u64 = BYPASS_EVENTS_BYTES as u64 / 2;
/// How often the daemon reads `BYPASS_EVENTS` when not woken, in milliseconds.
pub const BYPASS_EVENTS_POLL_MS: u64 = 100;

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
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AddrRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Refusals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RefusalEvent {}
    // SAFETY: repr(C), only u64 fields, no padding.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as for SandboxConf.
    unsafe impl aya::Pod for super::DnsBindingKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsBinding {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsRedirect {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BypassEvent {}
    // SAFETY: repr(C), only u64 fields, no padding.
    unsafe impl aya::Pod for super::SplicePeer {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<SandboxConf>(), 12);
        assert_eq!(size_of::<OrigDstEntry>(), 24);
        assert_eq!(size_of::<ClientKey>(), 24);
        assert_eq!(size_of::<PortKey>(), 8);
        assert_eq!(size_of::<PortRule>(), 4);
        assert_eq!(size_of::<AddrKey>(), 20);
        assert_eq!(size_of::<AddrRule>(), 8);
        assert_eq!(size_of::<Refusals>(), 48);
        assert_eq!(size_of::<RefusalEvent>(), 32);
        assert_eq!(size_of::<Counters>(), 8 * Counter::LEN as usize);
        assert_eq!(size_of::<DnsBindingKey>(), 20);
        assert_eq!(size_of::<DnsBinding>(), 16);
        assert_eq!(size_of::<DnsRedirect>(), 20);
        assert_eq!(size_of::<BypassEvent>(), 24);
        assert_eq!(size_of::<SplicePeer>(), 16);
    }

    #[test]
    fn flags() {
        let mut conf = SandboxConf {
            sandbox_id: 1,
            listener_port: 1000,
            flags: 0,
            dns_port: 0,
            _pad: 0,
        };
        assert!(!conf.blocks_quic());
        conf.flags |= SandboxConf::BLOCK_QUIC;
        assert!(conf.blocks_quic());
        assert!(!conf.binds_dns());
        conf.flags |= SandboxConf::DNS_BINDING;
        assert!(conf.binds_dns() && conf.blocks_quic());
    }

    #[test]
    fn reasons_round_trip_and_count() {
        let mut refusals = Refusals::default();
        for reason in [
            Reason::Address,
            Reason::TcpPort,
            Reason::UdpPort,
            Reason::Quic,
            Reason::Socket,
            Reason::Unbound,
        ] {
            assert_eq!(Reason::from_u8(reason as u8), Some(reason));
            refusals.bump(reason);
        }
        assert_eq!(Reason::from_u8(0), None);
        assert_eq!(Reason::from_u8(7), None);
        assert_eq!(
            refusals.address + refusals.socket + refusals.quic + refusals.unbound,
            4
        );
    }

    #[test]
    fn prefix_lengths_cover_the_sandbox_bits() {
        assert_eq!(addr_prefix_len(128), ADDR_KEY_BITS);
        assert_eq!(addr_prefix_len(96 + 8), 136);
    }

    #[test]
    fn v4_mapped_roundtrip() {
        let ip = u32::from_ne_bytes([192, 0, 2, 7]);
        let words = v4_mapped(ip);
        assert!(is_v4_mapped(&words));
        assert!(!is_v4_mapped(&[0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]));
    }
}
