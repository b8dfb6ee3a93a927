//! Fuzzes secret substitution (`gateway-proto/src/secrets`): header, Basic, query and body
//! placeholders, bodies split into chunks, scrubbing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_proto::invariants::secrets(data));
