//! The policy's life: the rule file is compiled ([`compile`]), installed
//! atomically into the state directory ([`install`]), run on each message
//! ([`runtime`]), and replayed offline for the operator ([`trace`]).

pub mod compile;
pub mod install;
pub mod runtime;
pub mod trace;
