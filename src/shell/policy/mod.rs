//! The policy's life: the rule file is compiled ([`compile`]), installed
//! atomically into the state directory ([`install`]), run on each message
//! ([`runtime`], which finds attachment names with [`mime`]), its
//! decisions rendered into routes, refusals and header edits ([`render`]),
//! and replayed offline for the operator ([`trace`]). The header edits are
//! spliced in at delivery by [`relay::splice`](super::relay::splice).

pub mod compile;
pub mod install;
pub mod mime;
pub mod render;
pub mod runtime;
pub mod trace;
mod trace_auth;
