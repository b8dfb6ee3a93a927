//! Program entry points and their fallible bodies.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_addr},
    btf_maps::{HashMap, LruHashMap},
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie},
    macros::{btf_map, cgroup_sock_addr, map, sock_ops},
    maps::PerCpuArray,
    programs::{SockAddrContext, SockOpsContext},
};
use gateway_common::{ClientKey, Counter, OrigDstEntry, SandboxConf, is_v4_mapped, v4_mapped};

/// Reads a context field with a volatile load of exactly its width. Plain reads let LLVM merge
/// loads of different fields into one with a computed offset, which the verifier rejects
/// ("dereference of modified ctx ptr").
macro_rules! ctx_read {
    ($ptr:expr, $($field:tt)+) => {
        core::ptr::read_volatile(core::ptr::addr_of!((*$ptr).$($field)+))
    };
}

/// cgroup_sock_addr verdicts.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

const IPPROTO_TCP: u32 = 6;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

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

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::LEN, 0);

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

#[sock_ops]
pub fn gateway_sock_ops(ctx: SockOpsContext) -> u32 {
    if try_sock_ops(&ctx).is_err() {
        count(Counter::MapErrors);
    }
    1
}

fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    let Some((conf, port)) = intercepted(sa) else {
        return Ok(ALLOW);
    };
    // SAFETY: `sa` is the kernel-provided context, valid for the program's run.
    let ip4 = unsafe { ctx_read!(sa, user_ip4) };
    remember(ctx, v4_mapped(ip4), port, &conf)?;
    // SAFETY: as above; user_ip4/user_port are writable in connect4.
    unsafe {
        (*sa).user_ip4 = LOOPBACK4;
        (*sa).user_port = u32::from(conf.listener_port.to_be());
    }
    count(Counter::RedirectedV4);
    Ok(ALLOW)
}

fn try_connect6(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    let Some((conf, port)) = intercepted(sa) else {
        return Ok(ALLOW);
    };
    // SAFETY: `sa` is the kernel-provided context; each word is read on its own because the
    // verifier rejects wider loads of user_ip6.
    let ip = unsafe {
        [
            ctx_read!(sa, user_ip6[0]),
            ctx_read!(sa, user_ip6[1]),
            ctx_read!(sa, user_ip6[2]),
            ctx_read!(sa, user_ip6[3]),
        ]
    };
    remember(ctx, ip, port, &conf)?;
    let (listener, counter) = if is_v4_mapped(&ip) {
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

/// The sandbox config and destination port when this connect must be redirected.
fn intercepted(sa: *mut bpf_sock_addr) -> Option<(SandboxConf, u16)> {
    // SAFETY: `sa` is the kernel-provided context, valid for the program's run.
    let (protocol, user_port) = unsafe { (ctx_read!(sa, protocol), ctx_read!(sa, user_port)) };
    if protocol != IPPROTO_TCP {
        return None;
    }
    let conf = sandbox_conf()?;
    // user_port holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(user_port as u16);
    conf.intercepts(port).then_some((conf, port))
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
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *value += 1 };
    }
}
