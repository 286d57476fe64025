//! The policy engine: compiled tables and their evaluation, per recipient.

pub mod table;

pub use table::*;
