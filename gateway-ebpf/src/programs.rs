//! Program entry points and their fallible bodies.
//!
//! Every connect (TCP and UDP) and every unconnected UDP send of a sandbox is judged, in this
//! order: DNS (port 53, any address) is rewritten to the sandbox's DNS service when it has one,
//! else passes only to an allowed resolver; a denied destination address (longest prefix wins,
//! IPv4-mapped judged as IPv4) is refused; with DNS binding on, an address that no `allow_cidrs`
//! rule allows and no unexpired DNS answer gave the sandbox is refused; a TCP connect to an
//! intercepted TLS port whose address is bound only to bypass names is left alone (direct); an
//! intercepted TCP port is redirected to the sandbox's listener; an allowed port passes; UDP/443
//! is refused while QUIC is blocked; anything else is refused. Sockets other than TCP and UDP
//! are refused at creation. A refusal is EPERM for the caller, a per-sandbox counter, and an
//! event for the daemon's log.
//!
//! DNS rewritten to the service keeps its original destination under the socket cookie, so
//! that `recvmsg4/6` and `getpeername4/6` show the replies' source (and the peer) as the
//! address the client sent to: stub resolvers (glibc's among them) drop answers from another
//! address.
//!
//! A bypassed connection the daemon splices in the kernel has both its sockets in
//! `SPLICE_SOCKS` and each one's peer in `SPLICE_PEERS`: `gateway_splice_verdict` hands every
//! segment one of them receives to the other's send queue, counting the bytes, so they never
//! reach user space.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_addr, sk_action,
    },
    btf_maps::{
        HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, SockHash, lpm_trie::Key,
    },
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_ringbuf_query,
    },
    macros::{btf_map, cgroup_sock, cgroup_sock_addr, sock_ops, stream_verdict},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext},
};
use gateway_common::{
    ADDR_KEY_BITS, AddrKey, AddrRule, BYPASS_EVENTS_BYTES, BYPASS_EVENTS_WAKEUP_BYTES, BypassEvent,
    ClientKey, Counter, Counters, DnsBinding, DnsBindingKey, DnsRedirect, LRU_MAP_FLAGS,
    OrigDstEntry, PortKey, PortRule, Reason, RefusalEvent, Refusals, SandboxConf, SplicePeer,
    is_v4_mapped, protocol, v4_mapped,
};

/// Reads a context field with a volatile load of exactly its width. Plain reads let LLVM merge
/// loads of different fields into one with a computed offset, which the verifier rejects
/// ("dereference of modified ctx ptr").
macro_rules! ctx_read {
    ($ptr:expr, $($field:tt)+) => {
        core::ptr::read_volatile(core::ptr::addr_of!((*$ptr).$($field)+))
    };
}

/// cgroup_sock_addr and cgroup_sock verdicts (DENY is EPERM for the caller). recvmsg and
/// getpeername programs must always return ALLOW.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const DNS_PORT: u16 = 53;
const QUIC_PORT: u16 = 443;

/// Deepest cgroup nesting searched for a sandbox ancestor.
const MAX_CGROUP_DEPTH: i32 = 16;

const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const LOOPBACK6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

/// See [`LRU_MAP_FLAGS`]: every LRU map below has a free list per CPU.
const LRU: usize = LRU_MAP_FLAGS as usize;

// BTF maps, so `bpftool map dump` shows field names.
#[btf_map]
static SANDBOXES: HashMap<u64, SandboxConf, 4096> = HashMap::new();

#[btf_map]
static PENDING: LruHashMap<u64, OrigDstEntry, 65536, LRU> = LruHashMap::new();

#[btf_map]
static ORIG_DST: LruHashMap<ClientKey, OrigDstEntry, 65536, LRU> = LruHashMap::new();

#[btf_map]
static PORT_RULES: HashMap<PortKey, PortRule, 65536> = HashMap::new();

#[btf_map]
static ADDR_RULES: LpmTrie<AddrKey, AddrRule, 65536> = LpmTrie::new();

#[btf_map]
static RESOLVERS: HashMap<AddrKey, u32, 16384> = HashMap::new();

#[btf_map]
static REFUSALS: PerCpuHashMap<u32, Refusals, 4096> = PerCpuHashMap::new();

/// 256 KiB of refusal events; when the daemon falls behind, later events are dropped (the
/// counters still count them).
#[btf_map]
static REFUSAL_EVENTS: RingBuf<RefusalEvent, { 256 * 1024 }> = RingBuf::new();

/// One entry (key 0) of named counters, so `bpftool map dump` prints their names.
#[btf_map]
static COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

/// Addresses DNS answers gave each sandbox, written by the daemon. LRU, so a sandbox asking for
/// endless names evicts its oldest bindings rather than failing the daemon's writes.
#[btf_map]
static DNS_BINDINGS: LruHashMap<DnsBindingKey, DnsBinding, 262144, LRU> = LruHashMap::new();

/// Original destinations of DNS rewritten to a sandbox's DNS service, by socket cookie. LRU:
/// sockets close without telling us.
#[btf_map]
static DNS_REDIRECTS: LruHashMap<u64, DnsRedirect, 65536, LRU> = LruHashMap::new();

/// Connections bypassed at connect, until established, by socket cookie.
#[btf_map]
static BYPASSED: LruHashMap<u64, BypassEvent, 16384, LRU> = LruHashMap::new();

/// Bypass events; when the daemon falls behind, later events are dropped (the counter still
/// counts them).
#[btf_map]
static BYPASS_EVENTS: RingBuf<BypassEvent, { BYPASS_EVENTS_BYTES as usize }> = RingBuf::new();

/// Sockets of connections spliced in the kernel, by socket cookie (two per connection), written
/// by the daemon; `gateway_splice_verdict` is attached to it.
#[btf_map]
static SPLICE_SOCKS: SockHash<u64, 65536> = SockHash::new();

/// The peer of each socket in `SPLICE_SOCKS` and the bytes moved to it, written by the daemon
/// (the program only adds to `bytes`). Per CPU, so each CPU adds to its own copy: the bpf target
/// has no atomic add in `core`, and readers sum the copies. Not LRU: an evicted entry would send
/// a live connection's bytes to user space instead of its peer.
#[btf_map]
static SPLICE_PEERS: PerCpuHashMap<u64, SplicePeer, 65536> = PerCpuHashMap::new();

#[cgroup_sock_addr(connect4)]
pub fn gateway_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

#[cgroup_sock_addr(connect6)]
pub fn gateway_connect6(ctx: SockAddrContext) -> i32 {
    match try_connect6(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn gateway_sendmsg4(ctx: SockAddrContext) -> i32 {
    try_sendmsg(&ctx, Family::V4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn gateway_sendmsg6(ctx: SockAddrContext) -> i32 {
    try_sendmsg(&ctx, Family::V6)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn gateway_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_dns_source(&ctx, Family::V4);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn gateway_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_dns_source(&ctx, Family::V6);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn gateway_getpeername4(ctx: SockAddrContext) -> i32 {
    restore_dns_source(&ctx, Family::V4);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn gateway_getpeername6(ctx: SockAddrContext) -> i32 {
    restore_dns_source(&ctx, Family::V6);
    ALLOW
}

#[cgroup_sock(sock_create)]
pub fn gateway_sock_create(ctx: SockContext) -> i32 {
    try_sock_create(&ctx)
}

#[sock_ops]
pub fn gateway_sock_ops(ctx: SockOpsContext) -> u32 {
    if try_sock_ops(&ctx).is_err() {
        count(Counter::MapErrors);
    }
    1
}

/// Every segment received by a socket in `SPLICE_SOCKS`.
#[stream_verdict]
pub fn gateway_splice_verdict(ctx: SkBuffContext) -> u32 {
    match try_splice_verdict(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

/// What to do with one connect or send.
enum Judgement {
    Allow,
    /// To the sandbox's listener.
    Redirect,
    /// DNS, to the sandbox's DNS service.
    Dns,
    /// Left alone: an intercepted TLS port, but the address is bound only to bypass names.
    Bypass,
    Deny,
}

/// The destination of a connect or send.
struct Destination {
    addr: [u32; 4],
    port: u16,
    protocol: u32,
    sock_type: u32,
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i32> {
    let Some(conf) = sandbox_conf() else {
        return Ok(ALLOW);
    };
    let sa = ctx.sock_addr;
    let dst = destination(sa, Family::V4);
    match judge(&conf, &dst) {
        Judgement::Allow => return Ok(ALLOW),
        Judgement::Deny => return Ok(DENY),
        Judgement::Dns => {
            to_dns_service(ctx, &dst, &conf, Family::V4);
            return Ok(ALLOW);
        }
        Judgement::Bypass => {
            bypass(ctx, &dst, &conf);
            return Ok(ALLOW);
        }
        Judgement::Redirect => {}
    }
    remember(ctx, dst.addr, dst.port, &conf)?;
    // SAFETY: as above; user_ip4/user_port are writable in connect4.
    unsafe {
        (*sa).user_ip4 = LOOPBACK4;
        (*sa).user_port = u32::from(conf.listener_port.to_be());
    }
    count(Counter::RedirectedV4);
    Ok(ALLOW)
}

fn try_connect6(ctx: &SockAddrContext) -> Result<i32, i32> {
    let Some(conf) = sandbox_conf() else {
        return Ok(ALLOW);
    };
    let sa = ctx.sock_addr;
    let dst = destination(sa, Family::V6);
    match judge(&conf, &dst) {
        Judgement::Allow => return Ok(ALLOW),
        Judgement::Deny => return Ok(DENY),
        Judgement::Dns => {
            to_dns_service(ctx, &dst, &conf, Family::V6);
            return Ok(ALLOW);
        }
        Judgement::Bypass => {
            bypass(ctx, &dst, &conf);
            return Ok(ALLOW);
        }
        Judgement::Redirect => {}
    }
    remember(ctx, dst.addr, dst.port, &conf)?;
    let (listener, counter) = if is_v4_mapped(&dst.addr) {
        (v4_mapped(LOOPBACK4), Counter::RedirectedV4)
    } else {
        (LOOPBACK6, Counter::RedirectedV6)
    };
    // SAFETY: as above; user_ip6/user_port are writable in connect6, one word at a time.
    unsafe {
        (*sa).user_ip6[0] = listener[0];
        (*sa).user_ip6[1] = listener[1];
        (*sa).user_ip6[2] = listener[2];
        (*sa).user_ip6[3] = listener[3];
        (*sa).user_port = u32::from(conf.listener_port.to_be());
    }
    count(counter);
    Ok(ALLOW)
}

/// An unconnected UDP send: judged like a connect; only DNS is rewritten.
fn try_sendmsg(ctx: &SockAddrContext, family: Family) -> i32 {
    let Some(conf) = sandbox_conf() else {
        return ALLOW;
    };
    let dst = destination(ctx.sock_addr, family);
    match judge(&conf, &dst) {
        Judgement::Allow => ALLOW,
        Judgement::Dns => {
            to_dns_service(ctx, &dst, &conf, family);
            ALLOW
        }
        // Only TCP ports are redirected or bypassed; a send is never one.
        Judgement::Redirect | Judgement::Bypass | Judgement::Deny => DENY,
    }
}

/// Rewrites DNS to the sandbox's DNS service on loopback (`127.0.0.1`, `::1`, or
/// `::ffff:127.0.0.1` for an IPv4-mapped destination, so the socket's family still fits) and
/// remembers where it was going. A failure to remember is counted but does not refuse the
/// query: only clients that check the reply's source notice.
fn to_dns_service(ctx: &SockAddrContext, dst: &Destination, conf: &SandboxConf, family: Family) {
    // SAFETY: the context pointer is valid for this helper in cgroup_sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let redirect = DnsRedirect {
        addr: dst.addr,
        port: dst.port,
        dns_port: conf.dns_port,
    };
    if DNS_REDIRECTS.insert(&cookie, &redirect, 0).is_err() {
        count(Counter::MapErrors);
    }
    let sa = ctx.sock_addr;
    match family {
        Family::V4 => set_address4(sa, LOOPBACK4, conf.dns_port),
        Family::V6 => {
            let service = if is_v4_mapped(&dst.addr) {
                v4_mapped(LOOPBACK4)
            } else {
                LOOPBACK6
            };
            set_address6(sa, &service, conf.dns_port);
        }
    }
}

/// A connect left alone because its address is bound only to bypass names: counted, and
/// remembered under the socket cookie so `sock_ops` can report it once it is established.
fn bypass(ctx: &SockAddrContext, dst: &Destination, conf: &SandboxConf) {
    count(Counter::BypassedAtConnect);
    // SAFETY: the context pointer is valid for this helper in cgroup_sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let event = BypassEvent {
        sandbox_id: conf.sandbox_id,
        addr: dst.addr,
        port: dst.port,
        _pad: 0,
    };
    // Only the log line is lost when this fails; the connection is fine either way.
    if BYPASSED.insert(&cookie, &event, 0).is_err() {
        count(Counter::MapErrors);
    }
}

/// In recvmsg and getpeername: a reply (or peer) that is the sandbox's DNS service on loopback,
/// on a socket whose DNS was rewritten there, gets the address the client sent to back.
fn restore_dns_source(ctx: &SockAddrContext, family: Family) {
    // SAFETY: the context pointer is valid for this helper in cgroup_sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let Some(redirect) = (unsafe { DNS_REDIRECTS.get(&cookie) }).copied() else {
        return;
    };
    let sa = ctx.sock_addr;
    let (addr, port) = address(sa, family);
    if port != redirect.dns_port {
        return;
    }
    match family {
        Family::V4 => {
            if addr == v4_mapped(LOOPBACK4) && is_v4_mapped(&redirect.addr) {
                set_address4(sa, redirect.addr[3], redirect.port);
            }
        }
        Family::V6 => {
            if addr == LOOPBACK6 || addr == v4_mapped(LOOPBACK4) {
                set_address6(sa, &redirect.addr, redirect.port);
            }
        }
    }
}

/// Writes an IPv4 address and port (host order) into a sock_addr context.
///
/// Not inlined, like the readers below: inlined into code that handles both families, LLVM
/// merges the IPv4 and IPv6 accesses into one with a computed context offset, which the
/// verifier rejects.
#[inline(never)]
fn set_address4(sa: *mut bpf_sock_addr, ip4: u32, port: u16) {
    // SAFETY: `sa` is the kernel-provided context; user_ip4 and user_port are writable in the
    // IPv4 connect, sendmsg, recvmsg and getpeername programs, the only callers.
    unsafe {
        (*sa).user_ip4 = ip4;
        (*sa).user_port = u32::from(port.to_be());
    }
}

/// Writes an IPv6 address and port (host order) into a sock_addr context, a word at a time.
#[inline(never)]
fn set_address6(sa: *mut bpf_sock_addr, ip6: &[u32; 4], port: u16) {
    // SAFETY: `sa` is the kernel-provided context; user_ip6 (one word at a time) and user_port
    // are writable in the IPv6 connect, sendmsg, recvmsg and getpeername programs, the only
    // callers.
    unsafe {
        (*sa).user_ip6[0] = ip6[0];
        (*sa).user_ip6[1] = ip6[1];
        (*sa).user_ip6[2] = ip6[2];
        (*sa).user_ip6[3] = ip6[3];
        (*sa).user_port = u32::from(port.to_be());
    }
}

/// Only TCP stream and UDP datagram sockets may be created in a sandbox: raw sockets, ICMP
/// "ping" sockets, SCTP, MPTCP and the rest would bypass the connect and send checks.
fn try_sock_create(ctx: &SockContext) -> i32 {
    let Some(conf) = sandbox_conf() else {
        return ALLOW;
    };
    let sk = ctx.sock;
    // SAFETY: `sk` is the kernel-provided context, valid for the program's run.
    let (sock_type, protocol) = unsafe { (ctx_read!(sk, type_), ctx_read!(sk, protocol)) };
    let tcp = sock_type == SOCK_STREAM && protocol == u32::from(protocol::TCP);
    let udp = sock_type == SOCK_DGRAM && protocol == u32::from(protocol::UDP);
    if tcp || udp {
        return ALLOW;
    }
    let dst = Destination {
        addr: [0; 4],
        port: 0,
        protocol,
        sock_type,
    };
    refuse(&conf, &dst, Reason::Socket, 0);
    DENY
}

/// The destination of a sock_addr context, IPv4 as IPv4-mapped.
fn destination(sa: *mut bpf_sock_addr, family: Family) -> Destination {
    let (addr, port) = address(sa, family);
    // SAFETY: `sa` is the kernel-provided context, valid for the program's run.
    let (protocol, sock_type) = unsafe { (ctx_read!(sa, protocol), ctx_read!(sa, type_)) };
    Destination {
        addr,
        port,
        protocol,
        sock_type,
    }
}

/// The address and port of a sock_addr context (the destination of a connect or send, the
/// source of a received datagram, the peer for getpeername), IPv4 as IPv4-mapped.
fn address(sa: *mut bpf_sock_addr, family: Family) -> ([u32; 4], u16) {
    let addr = match family {
        Family::V4 => v4_mapped(user_ip4(sa)),
        Family::V6 => user_ip6(sa),
    };
    // SAFETY: `sa` is the kernel-provided context, valid for the program's run.
    let port = unsafe { ctx_read!(sa, user_port) };
    // user_port holds the port in network byte order in its low 16 bits.
    (addr, u16::from_be(port as u16))
}

/// The context's IPv4 address (not inlined: see [`set_address4`]).
#[inline(never)]
fn user_ip4(sa: *mut bpf_sock_addr) -> u32 {
    // SAFETY: `sa` is the kernel-provided context, valid for the program's run.
    unsafe { ctx_read!(sa, user_ip4) }
}

/// The context's IPv6 address, a word at a time (the verifier rejects wider loads).
#[inline(never)]
fn user_ip6(sa: *mut bpf_sock_addr) -> [u32; 4] {
    // SAFETY: `sa` is the kernel-provided context, valid for the program's run.
    unsafe {
        [
            ctx_read!(sa, user_ip6[0]),
            ctx_read!(sa, user_ip6[1]),
            ctx_read!(sa, user_ip6[2]),
            ctx_read!(sa, user_ip6[3]),
        ]
    }
}

/// The policy decision for one destination of one sandbox (see the module doc for the order).
fn judge(conf: &SandboxConf, dst: &Destination) -> Judgement {
    let protocol = if dst.protocol == u32::from(protocol::TCP) {
        protocol::TCP
    } else if dst.protocol == u32::from(protocol::UDP) {
        protocol::UDP
    } else {
        refuse(conf, dst, Reason::Socket, 0);
        return Judgement::Deny;
    };
    let addr_key = AddrKey {
        sandbox_id: conf.sandbox_id,
        addr: dst.addr,
    };
    if dst.port == DNS_PORT {
        // Whatever the address: a sandbox's DNS goes to its own service.
        if conf.dns_port != 0 {
            return Judgement::Dns;
        }
        if RESOLVERS.get_ptr(addr_key).is_some() {
            return Judgement::Allow;
        }
    }
    // The BTF trie's lookup is safe: the value is copied out at once.
    let rule = ADDR_RULES.get(&Key::new(ADDR_KEY_BITS, addr_key)).copied();
    if let Some(rule) = rule
        && rule.action == AddrRule::DENY
    {
        refuse(conf, dst, Reason::Address, rule.rule_id);
        return Judgement::Deny;
    }
    let allowed_address = rule.is_some_and(|rule| rule.action == AddrRule::ALLOW);
    let port_key = PortKey {
        sandbox_id: conf.sandbox_id,
        port: dst.port,
        protocol,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let port_rule = unsafe { PORT_RULES.get_ptr(port_key).map(|rule| (*rule).action) };
    let tls_port = protocol == protocol::TCP && port_rule == Some(PortRule::REDIRECT_TLS);
    // The binding is looked up only when something depends on it.
    let binding = if tls_port || (conf.binds_dns() && !allowed_address) {
        binding(conf, dst)
    } else {
        None
    };
    if conf.binds_dns() && !allowed_address && binding.is_none() {
        refuse(conf, dst, Reason::Unbound, 0);
        return Judgement::Deny;
    }
    if tls_port {
        if binding.is_some_and(|binding| binding.bypass_only()) {
            return Judgement::Bypass;
        }
        return Judgement::Redirect;
    }
    match port_rule {
        Some(PortRule::REDIRECT) if protocol == protocol::TCP => return Judgement::Redirect,
        Some(PortRule::ALLOW) => return Judgement::Allow,
        _ => {}
    }
    let reason = if protocol == protocol::TCP {
        Reason::TcpPort
    } else if dst.port == QUIC_PORT && conf.blocks_quic() {
        Reason::Quic
    } else {
        Reason::UdpPort
    };
    refuse(conf, dst, reason, 0);
    Judgement::Deny
}

/// The sandbox's unexpired binding of the destination address, if a DNS answer gave it one.
fn binding(conf: &SandboxConf, dst: &Destination) -> Option<DnsBinding> {
    let key = DnsBindingKey {
        sandbox_id: conf.sandbox_id,
        addr: dst.addr,
    };
    // SAFETY: the value is copied out at once.
    let binding = unsafe { DNS_BINDINGS.get(&key) }.copied()?;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    (binding.expires_ns > now).then_some(binding)
}

/// Counts a refusal (globally and for the sandbox) and reports it to the daemon.
fn refuse(conf: &SandboxConf, dst: &Destination, reason: Reason, rule_id: u32) {
    count(Counter::Refused);
    match REFUSALS.get_ptr_mut(conf.sandbox_id) {
        // SAFETY: this CPU's slot of the sandbox's entry; only this CPU writes it now.
        Some(refusals) => unsafe { (*refusals).bump(reason) },
        None => {
            let mut refusals = Refusals::default();
            refusals.bump(reason);
            if REFUSALS.insert(conf.sandbox_id, refusals, 0).is_err() {
                count(Counter::MapErrors);
            }
        }
    }
    let event = RefusalEvent {
        sandbox_id: conf.sandbox_id,
        rule_id,
        addr: dst.addr,
        port: dst.port,
        protocol: dst.protocol as u16,
        reason: reason as u8,
        _pad: 0,
        sock_type: dst.sock_type as u16,
    };
    // A full buffer drops the event; the counters above still have it.
    if REFUSAL_EVENTS.output(event, 0).is_err() {
        count(Counter::EventsLost);
    }
}

/// The config of the innermost sandbox cgroup containing the current task, if any.
///
/// Programs attached to a cgroup also run for its descendants, so a process in a child cgroup of
/// a sandbox is still that sandbox's.
fn sandbox_conf() -> Option<SandboxConf> {
    let mut found = None;
    let mut level = 0;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: helper without memory arguments.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        // SAFETY: the value is copied out at once; SANDBOXES is only written by the daemon.
        if let Some(conf) = unsafe { SANDBOXES.get(&id) } {
            found = Some(*conf);
        }
        level += 1;
    }
    found
}

/// Records the original destination under the socket cookie; denies the connect when it cannot.
fn remember(ctx: &SockAddrContext, ip: [u32; 4], port: u16, conf: &SandboxConf) -> Result<(), i32> {
    // SAFETY: the context pointer is valid for this helper in cgroup_sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let entry = OrigDstEntry {
        ip,
        port,
        _pad: 0,
        sandbox_id: conf.sandbox_id,
    };
    PENDING.insert(&cookie, &entry, 0).map_err(|_| {
        count(Counter::MapErrors);
        DENY
    })
}

fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), i32> {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return Ok(());
    }
    // SAFETY: the context pointer is valid for this helper in sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(entry) = (unsafe { PENDING.get(&cookie) }).copied() else {
        report_bypass(cookie);
        return Ok(());
    };
    // Missing is fine: the LRU may have evicted it meanwhile.
    let _ = PENDING.remove(&cookie);
    // SAFETY: as below.
    let family = unsafe { ctx_read!(ctx.ops, family) };
    let ip = match family {
        AF_INET => v4_mapped(local_ip4(ctx)),
        AF_INET6 => local_ip6(ctx),
        _ => return Ok(()),
    };
    let key = ClientKey {
        ip,
        // local_port is in host byte order in bpf_sock_ops.
        // SAFETY: `ctx.ops` is the kernel-provided context, valid for the program's run.
        port: unsafe { ctx_read!(ctx.ops, local_port) } as u16,
        _pad: 0,
        sandbox_id: entry.sandbox_id,
    };
    ORIG_DST.insert(&key, &entry, 0)?;
    count(Counter::Established);
    Ok(())
}

/// A segment of a spliced socket goes to its peer's send queue (flags 0: the peer's egress),
/// counted; one of a socket without a peer entry is passed up to its own receive queue, so
/// nothing is lost while the daemon sets a splice up or takes it down.
fn try_splice_verdict(ctx: &SkBuffContext) -> Result<u32, u32> {
    // SAFETY: the context pointer is valid for this helper in sk_skb programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let peer = SPLICE_PEERS.get_ptr_mut(cookie).ok_or(sk_action::SK_PASS)?;
    let len = ctx.len();
    if len == 0 {
        // A FIN that came alone is queued as an empty segment. TCP has taken the FIN already
        // (the daemon sees the EOF); redirected, the empty segment would make the peer's
        // backlog work report EPIPE on the peer (a send of 0 bytes counts as a hard error).
        return Err(sk_action::SK_DROP);
    }
    // SAFETY: `peer` is this CPU's copy of the entry, valid while the program runs; only this
    // CPU writes it now (the program runs with migration disabled), the daemon only reads it.
    let mut peer_cookie = unsafe {
        (*peer).bytes += u64::from(len);
        (*peer).peer_cookie
    };
    // SK_PASS when the peer is in the map (the segment is queued for it), SK_DROP otherwise.
    Ok(SPLICE_SOCKS.redirect_skb(ctx, &mut peer_cookie, 0) as u32)
}

/// Reports a connection bypassed at connect, now established, to the daemon.
fn report_bypass(cookie: u64) {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(event) = (unsafe { BYPASSED.get(&cookie) }).copied() else {
        return;
    };
    // Missing is fine: the LRU may have evicted it meanwhile.
    let _ = BYPASSED.remove(&cookie);
    // The daemon drains the buffer on a timer: waking it for each connection would cost a
    // context switch per connection, on connections that are meant to cost nothing. Only a
    // buffer filling up wakes it early.
    // SAFETY: the pointer is the ring buffer map itself (what aya's own `output` passes), and
    // the query only reads its positions. aya-ebpf's BTF RingBuf has no `query` yet.
    let unread = unsafe {
        bpf_ringbuf_query(
            core::ptr::addr_of!(BYPASS_EVENTS).cast_mut().cast(),
            u64::from(BPF_RB_AVAIL_DATA),
        )
    };
    let flags = if unread >= BYPASS_EVENTS_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // A full buffer drops the event; the counter already has it.
    if BYPASS_EVENTS.output(event, u64::from(flags)).is_err() {
        count(Counter::EventsLost);
    }
}

/// The socket's local IPv4 address.
///
/// Not inlined, like [`local_ip6`]: inlined, LLVM merges the two reads into one load from a
/// computed context offset, which the verifier rejects.
#[inline(never)]
fn local_ip4(ctx: &SockOpsContext) -> u32 {
    // SAFETY: `ctx.ops` is the kernel-provided context, valid for the program's run.
    unsafe { ctx_read!(ctx.ops, local_ip4) }
}

/// The socket's local IPv6 address, read a word at a time (the verifier rejects the array load).
#[inline(never)]
fn local_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    let ops = ctx.ops;
    // SAFETY: `ops` is the kernel-provided context, valid for the program's run.
    unsafe {
        [
            ctx_read!(ops, local_ip6[0]),
            ctx_read!(ops, local_ip6[1]),
            ctx_read!(ops, local_ip6[2]),
            ctx_read!(ops, local_ip6[3]),
        ]
    }
}

fn count(counter: Counter) {
    if let Some(counters) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: this CPU's copy of the entry; only this CPU writes it while the program runs.
        let slot = unsafe { (*counters).slot(counter) };
        *slot += 1;
    }
}
