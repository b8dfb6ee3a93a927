//! gateway: a host egress gateway for sandboxes. eBPF programs on each sandbox's cgroup redirect
//! its outbound connections to a per-sandbox listener, which intercepts their TLS with forged
//! certificates from a local CA (or splices it raw, by rule) and re-encrypts it to where they were
//! going.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod ebpf;
pub mod exec;
pub mod logging;
pub mod net;
pub mod relay;
pub mod sandbox;
pub mod tls;
