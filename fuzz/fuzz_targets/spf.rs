//! cargo-fuzz entry point: `sluice::shell::fuzz::spf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::shell::fuzz::spf(data));
