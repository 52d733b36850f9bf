//! Targeted structured pruning (paper §2.1; docs/method.md §1–5): hard-concrete masks over layers, KV groups, query heads,
//! intermediate dims and hidden dims; the Lagrangian that drives their expected sparsity to a target
//! shape; and materialization of a dense model with exactly that shape.

pub mod hard_concrete;
pub mod lagrangian;
pub mod masks;
pub mod materialize;
pub mod oneshot;
pub mod target;

pub use lagrangian::{FamilyStat, Lagrangian};
pub use masks::{Deterministic, MaskSet};
pub use materialize::materialize;
pub use target::TargetShape;
