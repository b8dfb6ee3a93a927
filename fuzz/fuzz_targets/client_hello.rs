//! Fuzzes the TLS ClientHello/SNI parser (`gateway-proto/src/hello.rs`) and `HostName::parse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_proto::invariants::client_hello(data));
