//! Training: the optimizer and schedule, checkpoints, and the loops (pruning now; continued pre-training
//! shares these pieces).

pub mod checkpoint;
pub mod optim;
pub mod pruning;
