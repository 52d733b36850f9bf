//! A frozen teacher for logit distillation (docs/method.md §10): its logits for the student's inputs, and
//! the loss against them on both backward paths.
//!
//! The teacher runs the inference path (no graph, no gradients, no optimizer state). Its logits are made
//! [`TEACHER_ROWS`] positions at a time from its final hidden states, so that on the hand-written path
//! next to the student's own `[positions, vocab]` logits there is one chunk of the teacher's (50 MB for
//! SmolLM2's 49,152 tokens), not a second full-size buffer. (The composed path keeps every chunk's
//! log-probabilities in the graph until the backward.)

use candle_core::{DType, Tensor, D};

use super::fused::{self, DistillLoss};
use super::{ExecPath, Llama};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};

/// Positions whose teacher logits exist at once.
const TEACHER_ROWS: usize = 256;

/// The teacher model and the loss's settings.
pub struct Teacher {
    model: Llama,
    loss: DistillLoss,
}

impl Teacher {
    /// A teacher for `student`: the same vocabulary (the KL is over token ids) and a valid loss.
    pub fn new(model: Llama, loss: DistillLoss, student: &LlamaConfig) -> Result<Self> {
        loss.validate().map_err(Error::Invalid)?;
        let (tv, sv) = (model.config().vocab_size, student.vocab_size);
        if tv != sv {
            return Err(Error::Invalid(format!(
                "the teacher's vocabulary has {tv} tokens and the student's {sv}: distillation compares \
                 distributions over the same token ids"
            )));
        }
        if let Some(k) = loss.top_k.filter(|&k| k > sv) {
            return Err(Error::Invalid(format!("--distill-top-k {k} exceeds the vocabulary of {sv}")));
        }
        // The composed path's top k sorts whole vocabulary rows; candle's CUDA sort cannot (it needs the
        // row in shared memory), so the top-k teacher is refused there rather than failing mid-run.
        if loss.top_k.is_some() && !model.device().is_cpu() {
            return Err(Error::Invalid("--distill-top-k runs on the CPU only".into()));
        }
        Ok(Self { model, loss })
    }

    pub fn loss(&self) -> DistillLoss {
        self.loss
    }
    pub fn model(&self) -> &Llama {
        &self.model
    }
    pub fn into_model(self) -> Llama {
        self.model
    }

    /// `f(first_row, logits)` for consecutive chunks of the teacher's f32 logits `[rows, vocab]` of
    /// `inputs: [b, t]`, rows in `b · t` order.
    fn for_logit_chunks(&self, inputs: &Tensor, mut f: impl FnMut(usize, &Tensor) -> Result<()>) -> Result<()> {
        let hidden = self.model.hidden_states(inputs, ExecPath::Inference, None, None)?.flatten_to(1)?;
        let n = hidden.dim(0)?;
        for r0 in (0..n).step_by(TEACHER_ROWS) {
            let rows = hidden.narrow(0, r0, TEACHER_ROWS.min(n - r0))?;
            let logits = self.model.project(&rows)?.to_dtype(DType::F32)?;
            f(r0, &logits)?;
        }
        Ok(())
    }

    /// The hand-written backward's loss: `student: [b · t, vocab]` f32 logits of `inputs: [b, t]` become
    /// `dy` times the loss's gradient, chunk by chunk; returns each position's LM NLL and KL.
    pub(crate) fn grads_in_place(
        &self,
        inputs: &Tensor,
        student: &Tensor,
        targets: &Tensor,
        dy: f32,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (mut nll, mut kl) = (Vec::with_capacity(targets.elem_count()), Vec::with_capacity(targets.elem_count()));
        self.for_logit_chunks(inputs, |r0, teacher| {
            let n = teacher.dim(0)?;
            let (a, b) = fused::distill_with_grad_in_place(
                &student.narrow(0, r0, n)?,
                teacher,
                &targets.narrow(0, r0, n)?,
                self.loss,
                dy,
            )?;
            nll.extend(a);
            kl.extend(b);
            Ok(())
        })?;
        Ok((nll, kl))
    }

    /// The same loss composed from differentiable candle ops (autograd's path: other devices and
    /// dtypes): per position `[b, t]`, the LM NLL and the KL of `student: [b, t, vocab]` logits, in f32.
    pub fn composed(&self, inputs: &Tensor, student: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t, v) = student.dims3()?;
        let student = student.reshape((b * t, v))?.to_dtype(DType::F32)?;
        let temp = self.loss.temperature;
        let logp_s = candle_nn::ops::log_softmax(&(&student / temp)?, D::Minus1)?;
        let mut kl = Vec::new();
        self.for_logit_chunks(inputs, |r0, teacher| {
            let n = teacher.dim(0)?;
            let logp_s = logp_s.narrow(0, r0, n)?;
            let (teacher, logp_s) = match self.loss.top_k {
                None => (teacher.clone(), logp_s),
                Some(k) => {
                    let ids = teacher.arg_sort_last_dim(false)?.narrow(1, 0, k)?.contiguous()?;
                    (teacher.gather(&ids, 1)?, logp_s.gather(&ids, 1)?)
                }
            };
            let logp_t = candle_nn::ops::log_softmax(&(teacher / temp)?, D::Minus1)?;
            kl.push((logp_t.exp()? * (logp_t - logp_s)?)?.sum(1)?);
            Ok(())
        })?;
        let kl = Tensor::cat(&kl, 0)?.reshape((b, t))?;
        let nll = super::nll_from_logits(&student.reshape((b, t, v))?, targets, ExecPath::Training)?;
        Ok((nll, kl))
    }
}
