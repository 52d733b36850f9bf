//! The pieces of one optimizer step, shared by both stages and `shear bench`: which backward runs, a
//! micro-batch's plain LM loss and gradients, their accumulation, the clipped update, the loss check.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::optim::{clip_factor, global_grad_norm, AdamW};
use crate::error::{Error, Result};
use crate::model::{nll_from_logits, DistillLoss, ExecPath, Llama, Teacher};
use crate::run::checks::check_seq_len;

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

/// How a step's gradients are computed: decided once, when a stage is built, and logged once per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backward {
    /// The model's hand-written backward ([`Llama::lm_loss_grads`], masks included): f32 on the CPU.
    Hand,
    /// candle's autograd through the training path's ops: other devices and dtypes.
    Autograd,
}

impl Backward {
    pub fn for_model(model: &Llama) -> Self {
        if model.hand_backward_applies() {
            Backward::Hand
        } else {
            Backward::Autograd
        }
    }
}

impl std::fmt::Display for Backward {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Backward::Hand => "hand-written (f32 on the CPU)",
            Backward::Autograd => "candle autograd",
        })
    }
}

/// What one micro-batch gives: per-sample mean losses and the gradients.
pub struct MicroBatch {
    /// Mean next-token NLL of each sample.
    pub lm: Vec<f32>,
    /// With a teacher: each sample's mean KL to it (nats, before the `A·T²` factor).
    pub kl: Option<Vec<f32>>,
    pub grads: GradStore,
}

/// Forward and backward of one micro-batch `ids: [b, seq]` (positions `0..seq-1` predict `1..seq`).
/// The loss differentiated is `Σ per-sample mean loss / n_samples`, so gradients summed over the
/// micro-batches of a step are those of the step's mean loss; the loss is the NLL, or with a `teacher`
/// `A·T²·KL + (1 − A)·NLL` (docs/method.md §10).
pub fn micro_batch(
    model: &Llama,
    backward: Backward,
    ids: &Tensor,
    n_samples: usize,
    teacher: Option<&Teacher>,
) -> Result<MicroBatch> {
    if backward == Backward::Hand {
        let out = model.lm_loss_grads(ids, n_samples, None, teacher)?;
        return Ok(MicroBatch { lm: out.per_sample, kl: out.per_sample_kl, grads: out.weights });
    }
    let seq = ids.dim(1)?;
    check_seq_len(seq)?;
    let (inputs, targets) = (ids.narrow(1, 0, seq - 1)?, ids.narrow(1, 1, seq - 1)?);
    let logits = model.forward_masked(&inputs, ExecPath::Training, None)?;
    let (lm, kl, per_sample) = match teacher {
        None => {
            let lm = nll_from_logits(&logits, &targets, ExecPath::Training)?.mean(1)?; // [b]
            (lm.clone(), None, lm)
        }
        Some(teacher) => {
            let (nll, kl) = teacher.composed(&inputs, &logits, &targets)?;
            let (lm, kl) = (nll.mean(1)?, kl.mean(1)?);
            let DistillLoss { weight: a, temperature: t, .. } = teacher.loss();
            let total = ((&kl * (a * t * t))? + (&lm * (1.0 - a))?)?;
            (lm, Some(kl), total)
        }
    };
    let grads = (per_sample.sum_all()? / n_samples as f64)?.backward()?;
    Ok(MicroBatch { lm: lm.to_vec1()?, kl: kl.map(|k| k.to_vec1()).transpose()?, grads })
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
