//! The std shell: sockets, disk, TLS, timers and the command line around
//! the engine.
#![deny(clippy::unwrap_used, clippy::expect_used)]

/// `print!` for the commands' standard output: through one locked handle,
/// and a reader that went away (`sluice trace ... | head`) is no panic
/// (see [`cli::out`]).
macro_rules! out {
    ($($t:tt)*) => {
        $crate::shell::cli::out(format_args!($($t)*))
    };
}

/// `println!` for the commands' standard output, like [`out!`].
macro_rules! outln {
    () => {
        $crate::shell::cli::out(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::shell::cli::out(format_args!("{}\n", format_args!($($t)*)))
    };
}

pub mod cli;
pub mod config;
pub mod deadline;
pub mod deliver;
pub mod dns;
pub mod dsn;
pub mod install;
pub mod log;
pub mod policy;
pub mod queue;
pub mod rules;
pub mod server;
pub mod spool;
pub mod time;
pub mod tls;
pub mod trace;
pub mod upload;
