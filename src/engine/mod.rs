//! The functional core: pure, `no_std`, allocation-free state machines.
//!
//! Nothing here touches a socket, a file or a clock; the shell feeds bytes in
//! and carries replies out. Capacities live in [`limits`].
#![forbid(unsafe_code)]

pub mod addr;
pub mod client;
pub mod decimal;
pub mod directory;
pub mod dkim;
pub mod dmarc;
pub mod dnsbl;
pub mod header;
pub mod limits;
pub mod milter;
pub mod policy;
pub mod reply;
pub mod reputation;
pub mod smtp;
pub mod spf;
