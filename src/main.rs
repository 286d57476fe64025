//! The `sluice` command: a thin entry point into the shell's CLI.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(sluice::shell::cli::main(&args));
}
