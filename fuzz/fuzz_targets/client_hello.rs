//! Fuzzes the TLS ClientHello/SNI parser (`gateway/src/tls/hello.rs`) and `ServerName::new`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::checks::client_hello(data));
