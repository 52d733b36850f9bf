//! The one loop both stages run: take a step (which logs its metrics line), evaluate when due, show the
//! caller, checkpoint when due, stop when asked. A stage ([`Stage`]) supplies the steps; the cadence
//! (`eval_interval`, `checkpoint_interval`, the last step) lives here only.

use std::ops::ControlFlow;
use std::path::Path;

use crate::error::Result;
use crate::run::{RunLogs, RunSummary};

/// What the driver needs of a stage (pruning, continued pre-training).
pub trait Stage {
    /// What the caller's `on_step` sees after each step.
    type Progress;
    /// Optimizer steps taken so far.
    fn steps_done(&self) -> usize;
    /// Which backward the stage runs, for the run's log.
    fn backward(&self) -> super::step::Backward;
    /// Draw a batch, take one optimizer step and write its `metrics.jsonl` line.
    fn step(&mut self, logs: &mut RunLogs) -> Result<Self::Progress>;
    /// Evaluate, write the `evals.jsonl` line and record it in `progress`.
    fn evaluate(&mut self, progress: &mut Self::Progress, logs: &mut RunLogs) -> Result<()>;
    /// Write the checkpoint.
    fn checkpoint(&self, run: &Path) -> Result<()>;
}

/// When a run of `steps` steps evaluates and checkpoints.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub steps: usize,
    /// Evaluate every N steps and at the last (0: never).
    pub eval_interval: usize,
    /// Checkpoint every N steps (0: only at the last), at the last, and before a requested stop.
    pub checkpoint_interval: usize,
}

impl Cadence {
    pub fn evaluates(&self, step: usize) -> bool {
        self.eval_interval > 0 && (step.is_multiple_of(self.eval_interval) || step == self.steps)
    }
    pub fn checkpoints(&self, step: usize, stopping: bool) -> bool {
        step == self.steps
            || stopping
            || (self.checkpoint_interval > 0 && step.is_multiple_of(self.checkpoint_interval))
    }
}

/// Run `stage` from where it stands to `cadence.steps`. `on_step` sees every step; returning `Break`
/// checkpoints and stops early (the run can be resumed).
pub fn drive<S: Stage>(
    stage: &mut S,
    run: &Path,
    mut logs: RunLogs,
    cadence: Cadence,
    mut on_step: impl FnMut(&S::Progress) -> ControlFlow<()>,
) -> Result<RunSummary> {
    tracing::info!("backward: {}", stage.backward());
    while stage.steps_done() < cadence.steps {
        let mut progress = stage.step(&mut logs)?;
        let step = stage.steps_done();
        if cadence.evaluates(step) {
            stage.evaluate(&mut progress, &mut logs)?;
        }
        let stop = on_step(&progress).is_break();
        if cadence.checkpoints(step, stop) {
            stage.checkpoint(run)?;
        }
        if stop {
            break;
        }
    }
    Ok(logs.summary(stage.steps_done()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evals_and_checkpoints_fall_on_their_intervals_and_the_last_step() {
        let c = Cadence { steps: 25, eval_interval: 10, checkpoint_interval: 0 };
        let evals: Vec<usize> = (1..=25).filter(|&s| c.evaluates(s)).collect();
        let checkpoints: Vec<usize> = (1..=25).filter(|&s| c.checkpoints(s, false)).collect();
        assert_eq!((evals, checkpoints), (vec![10, 20, 25], vec![25]));
        assert!(c.checkpoints(7, true), "a requested stop checkpoints");
        assert!(!Cadence { eval_interval: 0, ..c }.evaluates(25), "eval_interval 0 never evaluates");
    }
}
