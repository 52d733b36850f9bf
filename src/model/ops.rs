//! The kernels where candle's fast path has no backward: RMSNorm, softmax, RoPE (and SwiGLU, which is
//! two ops in candle).
//!
//! candle-nn's fused `rms_norm`, `softmax_last_dim` and `rotary_emb::rope` are `apply_op*_no_bwd`:
//! gradients silently stop at them. [`Kernels::Differentiable`] uses our fused CPU kernels with a
//! backward ([`super::fused`]) on f32 CPU tensors and composes the same math from differentiable candle
//! primitives elsewhere; [`Kernels::Composite`] always composes (the reference the fused kernels are
//! tested against); [`Kernels::Fused`] is for inference only.

use candle_core::{DType, Result, Tensor, D};

use super::fused;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// candle's fused kernels: fast, but no gradient flows through them.
    Fused,
    /// Kernels that support `backward()`: fused ones on f32 CPU tensors, composite ones elsewhere.
    Differentiable,
    /// Decomposed candle ops that support `backward()`, on every device.
    Composite,
}

impl Kernels {
    /// Whether our fused kernels with a backward run on `x` (f32 on the CPU, not asked for composite).
    fn fused_bwd(self, x: &Tensor) -> bool {
        self == Kernels::Differentiable && fused::applies(x)
    }
}

/// A bias-free linear layer, `x @ Wᵀ` over the last dim of `x`.
///
/// The input is flattened to one `[tokens, in]` matrix, so the forward and both backward products are
/// single large matmuls: on f32 CPU tensors one `gemm` call each way ([`fused::linear`]), elsewhere a
/// candle matmul. (candle-nn's `Linear` broadcasts `W` over the batch instead: its weight gradient is then
/// a batch of small `k = seq` products, materialized per sequence and summed.)
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
}

impl Linear {
    pub fn new(weight: Tensor) -> Self {
        Self { weight }
    }
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fused::applies(x) && fused::applies(&self.weight) {
            return fused::linear(x, &self.weight);
        }
        let (out, inp) = self.weight.dims2()?;
        let mut dims = x.dims().to_vec();
        let n = x.elem_count() / inp;
        let y = x.reshape((n, inp))?.matmul(&self.weight.t()?)?;
        *dims.last_mut().expect("at least one dim") = out;
        y.reshape(dims)
    }
}

/// `w ⊙ x / sqrt(mean(x²) + eps)`, the mean taken in f32 as in HF's `LlamaRMSNorm`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        Kernels::Fused => candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32),
        _ if kernels.fused_bwd(x) => fused::rms_norm(x, weight, None, eps),
        Kernels::Differentiable | Kernels::Composite => {
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
        Kernels::Differentiable | Kernels::Composite => candle_nn::ops::softmax(&x32, D::Minus1)?,
    };
    p.to_dtype(dtype)
}

/// Rotate-half RoPE (HF layout) on `x: [batch, heads, seq, head_dim]`; `cos`, `sin`: `[seq, head_dim/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        Kernels::Fused => candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin),
        _ if kernels.fused_bwd(x) => fused::rope(x, cos, sin),
        Kernels::Differentiable | Kernels::Composite => candle_nn::rotary_emb::rope_slow(x, cos, sin),
    }
}

/// `silu(gate) ⊙ up`, the SwiGLU MLP's activation.
pub fn swiglu(gate: &Tensor, up: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if kernels != Kernels::Composite && fused::applies(gate) {
        return fused::swiglu(gate, up);
    }
    candle_nn::ops::silu(gate)? * up
}

/// Causal attention probabilities from unscaled scores `[b, kv, g * seq, kv_len]` (query row `r` at
/// position `offset + r % seq`): `softmax(scale · scores + causal mask)`. On f32 CPU tensors one fused
/// kernel (no mask tensor, with a backward); elsewhere scale, additive mask and softmax.
pub fn causal_softmax(scores: &Tensor, scale: f64, seq: usize, offset: usize, kernels: Kernels) -> Result<Tensor> {
    if kernels != Kernels::Composite && fused::applies(scores) {
        return fused::causal_softmax(scores, scale, seq, offset);
    }
    let (b, kv, rows, kv_len) = scores.dims4()?;
    let scores = (scores * scale)?;
    let scores = if seq > 1 {
        let mask = causal_mask(seq, offset, scores.dtype(), scores.device())?;
        scores.reshape((b, kv, rows / seq, seq, kv_len))?.broadcast_add(&mask)?.reshape((b, kv, rows, kv_len))?
    } else {
        scores // a single query position attends to everything cached
    };
    softmax_last_dim(&scores, kernels)
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
        // The composite path is what runs off the CPU; it must differentiate too.
        let xv = Var::from_tensor(&x)?;
        let y = rms_norm(xv.as_tensor(), &w, 1e-5, Kernels::Composite)?;
        let y = softmax_last_dim(&y, Kernels::Composite)?;
        let y = rope(&y, &cos, &sin, Kernels::Composite)?;
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
