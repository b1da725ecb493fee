//! See `ggrok_tunnel::fuzzing::local_answer` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ggrok_tunnel::fuzzing::local_answer(data));
