//! The pieces of one optimizer step of plain LM training, shared by continued pre-training and
//! `shear bench train`: a micro-batch's loss and gradients, their accumulation, and the clipped update.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::optim::{clip_factor, global_grad_norm, AdamW};
use crate::error::{Error, Result};
use crate::model::{nll_from_logits, Kernels, Llama};

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

/// A non-finite loss stops the run. At step 1 nothing has been updated yet, so the model or its data are
/// at fault, not the learning rate; later, the usual cause is a step too large (`lr_flags` to lower).
pub fn check_loss(loss: f64, step: usize, lr_flags: &str) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    if step <= 1 {
        return Err(Error::Invalid(format!(
            "non-finite loss ({loss}) at step 1, before any update: the model's outputs overflow on this data \
             (check its weights' magnitudes and the token ids)"
        )));
    }
    Err(Error::Invalid(format!("non-finite loss ({loss}) at step {step}; lower {lr_flags}")))
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

/// Forward and backward of one micro-batch `ids: [b, seq]` (positions `0..seq-1` predict `1..seq`).
/// The loss differentiated is `Σ per-sample mean NLL / n_samples`, so gradients summed over the
/// micro-batches of a step are those of the step's mean loss. Returns the per-sample losses and gradients.
/// On the CPU in f32 the backward is the model's hand-written one ([`Llama::lm_loss_grads`]); elsewhere
/// candle's autograd.
pub fn micro_batch(model: &Llama, ids: &Tensor, n_samples: usize) -> Result<(Vec<f32>, GradStore)> {
    if model.hand_backward_applies() {
        let out = model.lm_loss_grads(ids, n_samples, None)?;
        return Ok((out.per_sample, out.weights));
    }
    let seq = ids.dim(1)?;
    check_seq_len(seq)?;
    let logits = model.forward_masked(&ids.narrow(1, 0, seq - 1)?, Kernels::Differentiable, None)?;
    let per_sample = nll_from_logits(&logits, &ids.narrow(1, 1, seq - 1)?)?.mean(1)?; // [b]
    let values: Vec<f32> = per_sample.to_vec1()?;
    let grads = (per_sample.sum_all()? / n_samples as f64)?.backward()?;
    Ok((values, grads))
}

/// Add `grads` into `acc` for every var of `vars` (the first micro-batch's store is taken as is).
pub fn accumulate(acc: Option<GradStore>, mut grads: GradStore, vars: &[Var]) -> Result<GradStore> {
    let Some(mut acc) = acc else { return Ok(grads) };
    for v in vars {
        if let Some(g) = grads.remove(v.as_tensor()) {
            let sum = match acc.get(v.as_tensor()) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            acc.insert(v.as_tensor(), sum);
        }
    }
    Ok(acc)
}

/// Clip the global gradient norm over `vars` to `max_norm` and step every optimizer with the schedule's
/// `lr_factor`. Returns the norm before clipping.
pub fn update(optimizers: &mut [AdamW], grads: &GradStore, vars: &[Var], lr_factor: f64, max_norm: f64) -> Result<f64> {
    let norm = global_grad_norm(grads, vars)?;
    let scale = clip_factor(norm, max_norm);
    for opt in optimizers.iter_mut() {
        opt.step(grads, lr_factor, scale)?;
    }
    Ok(norm)
}
