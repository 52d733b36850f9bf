//! Ctrl-C (SIGINT) or SIGTERM during `shear prune` / `shear train`: the run finishes the step it is in,
//! writes a checkpoint and exits with status 130, so that `--resume` continues without losing a step (with
//! `--save-only-model` the saved model is all there is: such a run cannot be resumed). A second signal ends
//! the process at once; the checkpoint rotation (`shear::run::checkpoint`) keeps the previous checkpoint
//! complete even then.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use signal_hook::consts::{SIGINT, SIGTERM};

/// The shell's status for a process ended by SIGINT.
pub const EXIT_INTERRUPTED: i32 = 130;

pub struct StopRequest(Arc<AtomicBool>);

impl StopRequest {
    /// Install the handlers; call it right before the training loop (until then a signal ends the process
    /// as usual, and nothing is half-written).
    pub fn install() -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [SIGINT, SIGTERM] {
            // The exit goes first, so it sees the flag as the previous signal left it: the first signal
            // only sets the flag, the second exits.
            signal_hook::flag::register_conditional_shutdown(signal, EXIT_INTERRUPTED, Arc::clone(&flag))?;
            signal_hook::flag::register(signal, Arc::clone(&flag))?;
        }
        Ok(Self(flag))
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// For a run's `on_step`: `Break` (checkpoint and stop) once a signal arrived, saying how to go on.
    pub fn control(
        &self,
        step: usize,
        verb: &str,
        run: &Path,
        model_only: bool,
        say: impl Fn(String),
    ) -> ControlFlow<()> {
        if !self.requested() {
            return ControlFlow::Continue(());
        }
        say(if model_only {
            format!("interrupted: model saved at step {step} (--save-only-model: the run cannot be resumed)")
        } else {
            format!(
                "interrupted: checkpoint at step {step}; continue with `shear {verb} --resume --out {}`",
                run.display()
            )
        });
        ControlFlow::Break(())
    }

    /// After the loop: exit with [`EXIT_INTERRUPTED`] if a signal stopped the run before its last step.
    pub fn exit_if_stopped_early(&self, final_step: usize, steps: usize) {
        if self.requested() && final_step < steps {
            std::process::exit(EXIT_INTERRUPTED);
        }
    }
}
