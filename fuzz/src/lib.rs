//! The gateway's self-contained parsers, compiled here by path so the fuzz targets do not
//! depend on the `gateway` crate (whose build script compiles eBPF programs), plus the
//! invariants the fuzz targets and `gateway/tests/fuzz_regressions.rs` both check.

#[path = "../../gateway/src/tls/hello.rs"]
pub mod hello;

#[path = "../../gateway/src/config.rs"]
pub mod config;

pub mod checks;
