//! Fuzzes the TOML config parser (`gateway-proto/src/config`) and `Pattern::parse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_proto::invariants::config(data));
