//! The policy engine: compiled tables ([`table`]) and their evaluation per
//! recipient ([`eval`]), both `no_std` and allocation-free.

pub mod eval;
pub mod fields;
pub mod filters;
pub mod index;
pub mod table;

pub use eval::*;
pub use filters::*;
pub use index::*;
pub use table::*;
