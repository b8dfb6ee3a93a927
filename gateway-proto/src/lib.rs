//! gateway-proto: everything that parses sandbox or operator input, pure and fuzzable — host
//! names and patterns (one normalizer), the TLS ClientHello, the config model, ports, durations
//! and sandbox specs. No build script, no eBPF, no async runtime.

pub mod cidr;
pub mod config;
pub mod duration;
pub mod hello;
pub mod http_sniff;
pub mod invariants;
pub mod name;
pub mod pattern;
pub mod ports;
pub mod resolv_conf;
pub mod sandbox_spec;
pub mod secrets;

pub use name::HostName;
pub use pattern::Pattern;
