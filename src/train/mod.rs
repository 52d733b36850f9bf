//! Training: the optimizer and schedule, checkpoints, and the loops (pruning now; continued pre-training
//! shares these pieces).

pub mod checkpoint;
pub mod continued;
pub mod metrics;
pub mod optim;
pub mod pruning;
pub mod run;
pub mod step;
