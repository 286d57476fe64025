//! The std shell: sockets, disk, TLS, timers and the command line around
//! the engine.
//!
//! The folders follow a message and then the operator:
//! * [`smtpd`] receives it (listeners, sessions, STARTTLS, deadlines);
//! * [`policy`] decides what happens to it (rule-file compiler, install,
//!   runtime, trace);
//! * [`spool`] keeps it durable;
//! * [`relay`] hands it on (queue, delivery, DNS, bounces);
//! * [`ops`] is the operator's side of the running daemon (control socket,
//!   serial upload, syslog), [`cli`] the command line.
//!
//! [`directory`] is the installed recipient directory (valid recipients and
//! the inbound rewrite map), which `smtpd` and `policy` read.
//! [`config`], [`reply`], [`tls`] and [`time`] serve them all.
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

pub mod auth;
pub mod cli;
pub mod config;
pub mod directory;
#[doc(hidden)]
pub mod fuzz;
pub mod milter;
pub mod ops;
pub mod policy;
pub mod relay;
pub mod reply;
pub mod report;
pub mod sender_auth;
pub mod smtpd;
pub mod spool;
pub mod time;
pub mod tls;
