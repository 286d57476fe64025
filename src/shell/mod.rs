//! The std shell: sockets, disk, TLS, timers and the command line around
//! the engine.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod cli;
pub mod config;
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
