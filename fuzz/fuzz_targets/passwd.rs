//! cargo-fuzz entry point: `sluice::shell::fuzz::passwd`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::shell::fuzz::passwd(data));
