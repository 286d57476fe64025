//! cargo-fuzz entry point: `sluice::shell::fuzz::rules`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::shell::fuzz::rules(data));
