//! The operator's side of the running daemon: the [`control`] requests
//! (policy, status, queue), the agents' [`counters`], the operator [`log`]
//! (syslog), the [`metrics`] registry (fed by the daemon through
//! [`stats`], which also writes the STATS line) and rule uploads over the
//! serial line ([`upload`]).

pub mod control;
pub mod counters;
pub mod log;
pub mod metrics;
pub mod stats;
pub mod upload;
