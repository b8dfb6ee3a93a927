//! The gateway's eBPF programs, attached to every sandbox cgroup.
//!
//! `gateway_connect4`/`gateway_connect6` redirect a sandbox's TCP connects to intercepted ports to
//! its listener and remember the original destination under the socket cookie;
//! `gateway_sock_ops` moves that record, once the connection is established, to `ORIG_DST`, keyed
//! by the client address the listener will see as its peer.
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
