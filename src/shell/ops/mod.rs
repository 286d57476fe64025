//! The operator's side of the running daemon: the [`control`] requests
//! (policy, status, queue), the operator [`log`] (syslog) and rule uploads
//! over the serial line ([`upload`]).

pub mod control;
pub mod log;
pub mod upload;
