//! Cross-entropy over the vocabulary.

use super::*;

/// `−log softmax(logits)[target]` per row: `logits: [n, vocab]` (f32), `targets: [n]` (u32) → `[n]`.
/// Neither `log_softmax` nor its gradient is materialized; the backward writes `dy·(softmax − onehot)`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy)
}

pub(super) struct CrossEntropy;

/// `(max, log Σ exp(x − max))` of a row.
pub(super) fn log_sum_exp(x: &[f32]) -> (f32, f32) {
    let max = max_lanes(x);
    // In blocks through a stack buffer: the exps vectorize, and no row-sized temporary is allocated.
    let mut buf = [0f32; 256];
    let mut sum = 0f32;
    for c in x.chunks(buf.len()) {
        let b = &mut buf[..c.len()];
        b.iter_mut().zip(c).for_each(|(b, x)| *b = exp(x - max));
        sum += sum_lanes(b);
    }
    (max, sum.ln())
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, t) = (f32s(s1, l1, "cross-entropy")?, u32s(s2, l2, "cross-entropy")?);
        let v = last_dim(l1);
        if x.len() != t.len() * v {
            bail!("cross-entropy: {} rows of logits, {} targets", x.len() / v.max(1), t.len());
        }
        if let Some(bad) = t.iter().find(|&&t| t as usize >= v) {
            bail!("cross-entropy: target {bad} outside the vocabulary of {v}");
        }
        let mut nll = vec![0f32; t.len()];
        nll.par_iter_mut().zip(x.par_chunks(v)).zip(t.par_iter()).for_each(|((nll, x), &t)| {
            let (max, lse) = log_sum_exp(x);
            *nll = max + lse - x[t as usize];
        });
        Ok((CpuStorage::F32(nll), l2.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, t: &Tensor, _: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(cross_entropy_grad(x, t, dy)?), None))
    }
}

/// `dlogits` of [`cross_entropy`] given the per-row gradient `dy: [n]`.
pub(crate) fn cross_entropy_grad(logits: &Tensor, targets: &Tensor, dy: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op3_no_bwd(&targets.contiguous()?, &dy.contiguous()?, &CrossEntropyBwd)
}

/// One row of logits overwritten with `dy · (softmax(x) − onehot(target))`, with one exp per logit
/// (`e^(x − max)` written in place, then scaled by `dy / Σ`); returns the row's NLL.
pub(super) fn cross_entropy_row_grad(x: &mut [f32], target: usize, dy: f32) -> f32 {
    let logit = x[target];
    let (max, sum) = exp_shifted_in_place(x);
    let scale = dy / sum;
    x.iter_mut().for_each(|x| *x *= scale);
    x[target] -= dy;
    max + sum.ln() - logit
}

/// `dlogits[n, j] = dy[n] · (softmax(x_n)_j − [j = t_n])`.
pub(super) struct CrossEntropyBwd;

impl CustomOp3 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "cross-entropy-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, t, dy) = (f32s(s1, l1, self.name())?, u32s(s2, l2, self.name())?, f32s(s3, l3, self.name())?);
        let v = last_dim(l1);
        let mut dx = x.to_vec();
        dx.par_chunks_mut(v).zip(t.par_iter().zip(dy.par_iter())).for_each(|(dx, (&t, &dy))| {
            cross_entropy_row_grad(dx, t as usize, dy);
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// The cross-entropy and its gradient in one pass, in place: returns `−log softmax(logits)[target]` per
/// row and overwrites `logits: [n, vocab]` with `dy · (softmax − onehot)` (a constant `dy`, the training
/// loss's weight of each position). The hand-written backward uses it: one exp pass over the logits instead
/// of two, and no second logits-sized buffer (200 MB for SmolLM2 at 4 × 256).
pub(crate) fn cross_entropy_with_grad_in_place(logits: &Tensor, targets: &Tensor, dy: f32) -> Result<Vec<f32>> {
    let op = CrossEntropyInPlace { dy, nll: std::sync::Mutex::new(vec![]) };
    logits.inplace_op2(&targets.contiguous()?, &op)?;
    let nll = op.nll.into_inner().map_err(|_| candle_core::Error::Msg("cross-entropy: poisoned lock".into()))?;
    Ok(nll)
}

pub(super) struct CrossEntropyInPlace {
    dy: f32,
    nll: std::sync::Mutex<Vec<f32>>,
}

impl candle_core::InplaceOp2 for CrossEntropyInPlace {
    fn name(&self) -> &'static str {
        "cross-entropy-in-place"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let t = u32s(s2, l2, self.name())?;
        let v = last_dim(l1);
        let x = f32s_mut(s1, l1, self.name())?;
        if x.len() != t.len() * v {
            bail!("{}: {} rows of logits, {} targets", self.name(), x.len() / v.max(1), t.len());
        }
        if let Some(bad) = t.iter().find(|&&t| t as usize >= v) {
            bail!("{}: target {bad} outside the vocabulary of {v}", self.name());
        }
        let mut nll = vec![0f32; t.len()];
        nll.par_iter_mut().zip(x.par_chunks_mut(v)).zip(t.par_iter()).for_each(|((nll, x), &t)| {
            *nll = cross_entropy_row_grad(x, t as usize, self.dy);
        });
        *self.nll.lock().map_err(|_| candle_core::Error::Msg("cross-entropy: poisoned lock".into()))? = nll;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check, max_abs_diff};
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn cross_entropy_matches_log_softmax() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 4.0, (6, 50), &dev).unwrap()).unwrap();
        let t = Tensor::new(&[0u32, 49, 7, 7, 13, 21], &dev).unwrap();
        check(
            &[&x],
            || cross_entropy(x.as_tensor(), &t),
            || {
                let logp = candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1)?;
                logp.gather(&t.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
            },
            1e-5,
        );
        let bad = Tensor::new(&[0u32, 50, 0, 0, 0, 0], &dev).unwrap();
        let err = cross_entropy(x.as_tensor(), &bad).unwrap_err().to_string();
        assert!(err.contains("target 50 outside the vocabulary of 50"), "{err}");
    }

    #[test]
    fn in_place_cross_entropy_matches_the_two_pass_kernels() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 4.0, (6, 50), &dev).unwrap();
        let t = Tensor::new(&[0u32, 49, 7, 7, 13, 21], &dev).unwrap();
        let nll = cross_entropy(&x, &t).unwrap();
        let grad = cross_entropy_grad(&x, &t, &Tensor::full(0.25f32, 6, &dev).unwrap()).unwrap();
        let y = x.copy().unwrap();
        let got = cross_entropy_with_grad_in_place(&y, &t, 0.25).unwrap();
        assert!(max_abs_diff(&Tensor::new(got.as_slice(), &dev).unwrap(), &nll) < 1e-6);
        assert!(max_abs_diff(&y, &grad) < 1e-7);
    }
}
