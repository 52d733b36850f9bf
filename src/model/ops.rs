//! The three kernels where candle's fast path has no backward: RMSNorm, softmax and RoPE.
//!
//! candle-nn's fused `rms_norm`, `softmax_last_dim` and `rotary_emb::rope` are `apply_op*_no_bwd`:
//! gradients silently stop at them. [`Kernels::Differentiable`] composes the same math from
//! differentiable primitives; [`Kernels::Fused`] is for inference only.

use candle_core::{DType, Result, Tensor, D};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// candle's fused kernels: fast, but no gradient flows through them.
    Fused,
    /// Decomposed kernels that support `backward()`.
    Differentiable,
}

/// `w ⊙ x / sqrt(mean(x²) + eps)`, the mean taken in f32 as in HF's `LlamaRMSNorm`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        Kernels::Fused => candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32),
        Kernels::Differentiable => {
            let dtype = x.dtype();
            let x32 = x.to_dtype(DType::F32)?;
            let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
            let normed = x32.broadcast_div(&(var + eps)?.sqrt()?)?;
            normed.to_dtype(dtype)?.broadcast_mul(weight)
        }
    }
}

/// Softmax over the last dimension, computed in f32 (HF eager attention does the same) and cast back.
pub fn softmax_last_dim(x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let p = match kernels {
        Kernels::Fused => candle_nn::ops::softmax_last_dim(&x32)?,
        Kernels::Differentiable => candle_nn::ops::softmax(&x32, D::Minus1)?,
    };
    p.to_dtype(dtype)
}

/// Rotate-half RoPE (HF layout) on `x: [batch, heads, seq, head_dim]`; `cos`, `sin`: `[seq, head_dim/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        Kernels::Fused => candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin),
        Kernels::Differentiable => candle_nn::rotary_emb::rope_slow(x, cos, sin),
    }
}

/// Additive causal mask `[seq, offset + seq]`: query `i` (absolute position `offset + i`) sees keys `0..=offset + i`.
pub fn causal_mask(seq: usize, offset: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let total = offset + seq;
    let mask: Vec<f32> =
        (0..seq).flat_map(|i| (0..total).map(move |j| if j > offset + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (seq, total), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The fused and the differentiable kernels compute the same function; only the latter has a backward.
    #[test]
    fn fused_and_differentiable_agree() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev)?;
        let w = Tensor::randn(0f32, 1.0, 8, &dev)?;
        let cos = Tensor::randn(0f32, 1.0, (5, 4), &dev)?;
        let sin = Tensor::randn(0f32, 1.0, (5, 4), &dev)?;
        let pairs = [
            (rms_norm(&x, &w, 1e-5, Kernels::Fused)?, rms_norm(&x, &w, 1e-5, Kernels::Differentiable)?),
            (softmax_last_dim(&x, Kernels::Fused)?, softmax_last_dim(&x, Kernels::Differentiable)?),
            (rope(&x, &cos, &sin, Kernels::Fused)?, rope(&x, &cos, &sin, Kernels::Differentiable)?),
        ];
        for (a, b) in pairs {
            assert!(max_abs_diff(&a, &b) < 1e-5);
        }
        let xv = Var::from_tensor(&x)?;
        let y = rms_norm(xv.as_tensor(), &w, 1e-5, Kernels::Differentiable)?;
        let y = softmax_last_dim(&y, Kernels::Differentiable)?;
        let y = rope(&y, &cos, &sin, Kernels::Differentiable)?;
        let grads = (y.sqr()?.sum_all()?).backward()?;
        let g = grads.get(xv.as_tensor()).expect("gradient reaches the input");
        assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }

    #[test]
    fn causal_mask_with_offset() -> Result<()> {
        let m = causal_mask(2, 3, DType::F32, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(m[0], vec![0.0, 0.0, 0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], vec![0.0; 5]);
        Ok(())
    }
}
