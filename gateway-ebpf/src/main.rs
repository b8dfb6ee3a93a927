//! The gateway's eBPF programs, attached to every sandbox cgroup.
//!
//! `gateway_connect4`/`gateway_connect6` and `gateway_sendmsg4`/`gateway_sendmsg6` judge every
//! connect and send, rewrite DNS to the sandbox's DNS service and redirect TCP connects to
//! intercepted ports to its listener, remembering the original destination under the socket
//! cookie; `gateway_sock_ops` moves that record, once the connection is established, to
//! `ORIG_DST`, keyed by the client address the listener will see as its peer (and reports
//! connections bypassed at connect); `gateway_recvmsg4/6` and `gateway_getpeername4/6` show DNS
//! replies as coming from the address the client sent to; `gateway_sock_create` refuses every
//! socket but TCP and UDP.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot panic; this is never reached.
    loop {}
}

/// Lets `cargo clippy --workspace` and `cargo test` build this crate for the host.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
