//! Fuzzes the TOML config parser (`gateway/src/config.rs`) and `Pattern::parse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::checks::config(data));
