//! Training: the optimizer and schedule, one step's pieces, the two stages (pruning, continued
//! pre-training) and the one loop that drives either. What a run writes is [`crate::run`]'s.
//!
//! | module | holds |
//! |---|---|
//! | [`optim`] | AdamW, the cosine schedule, gradient clipping |
//! | [`step`] | a micro-batch's loss and gradients, accumulation, the clipped update; hand vs autograd backward |
//! | [`pruning`] | [`pruning::Pruner`] (`new/step/save/restore`) and the pruning stage |
//! | [`continued`] | [`continued::Trainer`] (`new/step/save/restore`) and the continued pre-training stage |
//! | [`driver`] | the loop both stages run: eval, checkpoint and stop cadence |

pub mod continued;
pub mod driver;
pub mod optim;
pub mod pruning;
pub mod step;
