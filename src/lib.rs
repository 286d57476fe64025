//! sluice: a small, durable SMTP relay for DMZ boxes.
//!
//! The crate is a functional core and an imperative shell. [`engine`] is the
//! core: `no_std`, no allocation, no I/O and no clock; state machines that
//! turn bytes into events and replies. `shell` (behind the default `std`
//! feature) drives the engine with sockets, disk, TLS and timers.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod engine;

#[cfg(feature = "std")]
pub mod shell;
