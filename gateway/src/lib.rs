//! gateway: a host egress gateway for sandboxes. eBPF programs on each sandbox's cgroup redirect
//! its outbound connections to a per-sandbox listener; each connection goes through `conn`
//! (original destination, first bytes, the route decision in `policy`), and is refused,
//! spliced raw, or intercepted with a forged certificate from a local CA (`tls`) and
//! re-encrypted to where it was going.

pub mod admin;
pub mod cli;
pub mod conn;
pub mod control;
pub mod dns;
pub mod ebpf;
pub mod engine;
pub mod exec;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod process;
pub mod relay;
pub mod run;
pub mod sandbox;
pub mod secrets;
pub mod splice;
pub mod state;
pub mod tls;
