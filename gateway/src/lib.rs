//! gateway: a host egress gateway for sandboxes. eBPF programs on each sandbox's cgroup redirect
//! its outbound connections to a per-sandbox listener, which relays them to where they were going.

pub mod cli;
pub mod daemon;
pub mod ebpf;
pub mod exec;
pub mod logging;
pub mod net;
pub mod relay;
pub mod sandbox;
