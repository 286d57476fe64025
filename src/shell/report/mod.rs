//! The mail-flow report (issue 15, items 2 and 3): seed 001's MX-cost
//! arithmetic. Only the arithmetic ([`mx`]) is here so far; the daemon's
//! history and the `sluice report` command are not built yet.
pub mod mx;
