//! The operator's side of the running daemon: the operator [`log`]
//! (syslog) and rule uploads over the serial line ([`upload`]).

pub mod log;
pub mod upload;
