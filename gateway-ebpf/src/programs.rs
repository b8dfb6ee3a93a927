//! Program entry points and their fallible bodies.
//!
//! Every connect (TCP and UDP) and every unconnected UDP send of a sandbox is judged, in this
//! order: DNS to an allowed resolver passes; a denied destination address (longest prefix wins,
//! IPv4-mapped judged as IPv4) is refused; an intercepted TCP port is redirected to the
//! sandbox's listener; an allowed port passes; UDP/443 is refused while QUIC is blocked;
//! anything else is refused. Sockets other than TCP and UDP are refused at creation. A refusal
//! is EPERM for the caller, a per-sandbox counter, and an event for the daemon's log.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_addr},
    btf_maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie},
    macros::{btf_map, cgroup_sock, cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use gateway_common::{
    ADDR_KEY_BITS, AddrKey, AddrRule, ClientKey, Counter, Counters, OrigDstEntry, PortKey,
    PortRule, Reason, RefusalEvent, Refusals, SandboxConf, is_v4_mapped, protocol, v4_mapped,
};

/// Reads a context field with a volatile load of exactly its width. Plain reads let LLVM merge
/// loads of different fields into one with a computed offset, which the verifier rejects
/// ("dereference of modified ctx ptr").
macro_rules! ctx_read {
    ($ptr:expr, $($field:tt)+) => {
        core::ptr::read_volatile(core::ptr::addr_of!((*$ptr).$($field)+))
    };
}

/// cgroup_sock_addr and cgroup_sock verdicts (DENY is EPERM for the caller).
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

// BTF maps, so `bpftool map dump` shows field names.
#[btf_map]
static SANDBOXES: HashMap<u64, SandboxConf, 4096> = HashMap::new();

#[btf_map]
static PENDING: LruHashMap<u64, OrigDstEntry, 65536> = LruHashMap::new();

#[btf_map]
static ORIG_DST: LruHashMap<ClientKey, OrigDstEntry, 65536> = LruHashMap::new();

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

/// What to do with one connect or send.
enum Judgement {
    Allow,
    Redirect,
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

/// An unconnected UDP send: judged like a connect, never redirected.
fn try_sendmsg(ctx: &SockAddrContext, family: Family) -> i32 {
    let Some(conf) = sandbox_conf() else {
        return ALLOW;
    };
    let dst = destination(ctx.sock_addr, family);
    match judge(&conf, &dst) {
        Judgement::Allow => ALLOW,
        // Only TCP ports are redirected; a send is never one.
        Judgement::Redirect | Judgement::Deny => DENY,
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
    // SAFETY: `sa` is the kernel-provided context, valid for the program's run; each word is
    // read on its own because the verifier rejects wider loads of user_ip6.
    unsafe {
        let addr = match family {
            Family::V4 => v4_mapped(ctx_read!(sa, user_ip4)),
            Family::V6 => [
                ctx_read!(sa, user_ip6[0]),
                ctx_read!(sa, user_ip6[1]),
                ctx_read!(sa, user_ip6[2]),
                ctx_read!(sa, user_ip6[3]),
            ],
        };
        Destination {
            addr,
            // user_port holds the port in network byte order in its low 16 bits.
            port: u16::from_be(ctx_read!(sa, user_port) as u16),
            protocol: ctx_read!(sa, protocol),
            sock_type: ctx_read!(sa, type_),
        }
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
    if dst.port == DNS_PORT && RESOLVERS.get_ptr(addr_key).is_some() {
        return Judgement::Allow;
    }
    // The BTF trie's lookup is safe: the value is copied out at once.
    if let Some(rule) = ADDR_RULES.get(&Key::new(ADDR_KEY_BITS, addr_key)).copied()
        && rule.action == AddrRule::DENY
    {
        refuse(conf, dst, Reason::Address, rule.rule_id);
        return Judgement::Deny;
    }
    let port_key = PortKey {
        sandbox_id: conf.sandbox_id,
        port: dst.port,
        protocol,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    match unsafe { PORT_RULES.get_ptr(port_key).map(|rule| (*rule).action) } {
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
    let _ = REFUSAL_EVENTS.output(event, 0);
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
