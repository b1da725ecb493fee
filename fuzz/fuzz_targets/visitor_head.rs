//! See `ggrok_server::fuzzing::visitor_head` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ggrok_server::fuzzing::visitor_head(data));
