//! Causal softmax of attention scores.

use super::*;

/// `softmax(scale · s + causal mask)` over the last dim of `scores: [..., rows, kv_len]`, where row `r`
/// (counting over all leading dims) is the query at absolute position `offset + r % seq` and sees keys
/// `0..=offset + r % seq`. Masked entries are exactly 0. No mask tensor is built.
pub fn causal_softmax(scores: &Tensor, scale: f64, seq: usize, offset: usize) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax { scale: scale as f32, seq, offset })
}

#[derive(Clone, Copy)]
pub(super) struct CausalSoftmax {
    scale: f32,
    seq: usize,
    offset: usize,
}

impl CausalSoftmax {
    /// Keys visible to flattened row `r`.
    fn visible(&self, r: usize, kv_len: usize) -> usize {
        (self.offset + r % self.seq + 1).min(kv_len)
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "causal-softmax")?;
        let n = last_dim(l);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(n).zip(x.par_chunks(n)).enumerate().for_each(|(r, (y, x))| {
            let k = self.visible(r, n);
            y[..k].iter_mut().zip(&x[..k]).for_each(|(y, x)| *y = x * self.scale);
            let (_, sum) = exp_shifted_in_place(&mut y[..k]);
            let inv = 1.0 / sum;
            y[..k].iter_mut().for_each(|y| *y *= inv);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &CausalSoftmaxBwd(*self))?))
    }
}

/// `dx = scale · y ⊙ (dy − Σ y ⊙ dy)` per row (masked entries have y = 0, hence dx = 0).
pub(super) struct CausalSoftmaxBwd(CausalSoftmax);

impl CustomOp2 for CausalSoftmaxBwd {
    fn name(&self) -> &'static str {
        "causal-softmax-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, dy) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        let n = last_dim(l1);
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(n).zip(y.par_chunks(n).zip(dy.par_chunks(n))).enumerate().for_each(|(r, (dx, (y, dy)))| {
            let k = self.0.visible(r, n);
            let dot: f32 = y[..k].iter().zip(&dy[..k]).map(|(a, b)| a * b).sum();
            for j in 0..k {
                dx[j] = self.0.scale * y[j] * (dy[j] - dot);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::check;
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn causal_softmax_matches_masked_softmax() {
        let dev = Device::Cpu;
        // [b, kv, g * seq, kv_len] with g = 2, seq = 3, a cache offset of 2 (kv_len = 5).
        let (seq, offset, kv_len) = (3, 2, 5);
        let s = Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 1, 2 * seq, kv_len), &dev).unwrap()).unwrap();
        let mask = crate::model::ops::causal_mask(seq, offset, DType::F32, &dev).unwrap();
        check(
            &[&s],
            || causal_softmax(s.as_tensor(), 0.125, seq, offset),
            || {
                let x = (s.as_tensor() * 0.125)?.reshape((2, 1, 2, seq, kv_len))?.broadcast_add(&mask)?;
                candle_nn::ops::softmax(&x, D::Minus1)?.reshape((2, 1, 2 * seq, kv_len))
            },
            1e-6,
        );
    }
}
