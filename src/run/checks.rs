//! Settings a run could not train with, refused before any work starts (they may come from `run.json`).

use crate::error::{Error, Result};

/// The most sequences in a micro-batch, and micro-batches in a step: far beyond what fits on any one
/// device at these model sizes, low enough that a corrupt `run.json` cannot ask for a 2^31-row batch.
pub const MAX_BATCH: usize = 1 << 16;

/// A run of no steps would write nothing to resume, materialize or export.
pub fn check_steps(steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::Invalid("--steps must be at least 1".into()));
    }
    Ok(())
}

/// Batch sizes that leave nothing to train on, or that no device could hold, refused before any work starts.
pub fn check_batch(batch_size: usize, grad_accum: usize) -> Result<()> {
    if batch_size == 0 || grad_accum == 0 {
        return Err(Error::Invalid("batch size and gradient accumulation must be positive".into()));
    }
    if batch_size > MAX_BATCH || grad_accum > MAX_BATCH {
        return Err(Error::Invalid(format!(
            "batch size {batch_size} x gradient accumulation {grad_accum}: each must be at most {MAX_BATCH}"
        )));
    }
    Ok(())
}

/// Learning rates, clipping norms, decays and the like: finite and non-negative (`name` = `value`).
pub fn check_rates(rates: &[(&str, f64)]) -> Result<()> {
    match rates.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
        Some((name, v)) => Err(Error::Invalid(format!("{name} is {v}; it must be finite and >= 0"))),
        None => Ok(()),
    }
}

/// A sequence predicts its tokens from the ones before: it needs two at least.
pub fn check_seq_len(seq: usize) -> Result<()> {
    if seq < 2 {
        return Err(Error::Invalid(format!("a training sequence needs at least 2 tokens, got {seq}")));
    }
    if seq > crate::config::LIMITS.positions {
        return Err(Error::Invalid(format!(
            "a sequence of {seq} tokens is longer than any model's context (at most {})",
            crate::config::LIMITS.positions
        )));
    }
    Ok(())
}
