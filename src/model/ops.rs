//! The execution path, and the one table that says which implementation of each op runs on it.
//!
//! Every op has up to three implementations: shear's own CPU kernel with a backward ([`super::fused`],
//! f32 on the CPU only), candle-nn's fused op (fast, on every device, but `apply_op*_no_bwd`: gradients
//! silently stop at it), and the same math composed from differentiable candle primitives. An
//! [`ExecPath`] names what a caller needs (speed, a backward, or the reference), and
//! [`ExecPath::implementation`] picks for each op, from the op and its input tensors. No other code
//! chooses a kernel: the op functions below, [`Linear::forward`], the model's norm and attention and
//! [`super::nll_from_logits`] each match on its answer. (Whether the training step's backward is the
//! hand-written one is a separate, whole-model question: `Llama::hand_backward_applies`, read once per
//! stage by `train::step::Backward::for_model`.)
//!
//! What runs when (`shear`: [`super::fused`]; `candle-fused`: candle-nn's no-backward op; `composed`:
//! candle primitives); "elsewhere" is off the CPU or not f32 (CUDA, bf16):
//!
//! | op                | `Inference` f32 CPU | `Inference` elsewhere | `Training` f32 CPU | `Training` elsewhere | `Reference` |
//! |-------------------|---------------------|-----------------------|--------------------|----------------------|-------------|
//! | `Linear`          | shear               | composed              | shear              | composed             | composed    |
//! | `RmsNorm`         | candle-fused        | candle-fused          | shear              | composed             | composed    |
//! | `MaskedRmsNorm`   | shear               | composed              | shear              | composed             | composed    |
//! | `Softmax`         | candle-fused        | candle-fused          | composed           | composed             | composed    |
//! | `Rope`            | candle-fused        | candle-fused          | shear              | composed             | composed    |
//! | `Swiglu`          | shear               | composed              | shear              | composed             | composed    |
//! | `CausalSoftmax`   | shear               | composed              | shear              | composed             | composed    |
//! | `Attention`       | shear               | composed              | shear              | composed             | composed    |
//! | `CachedAttention` | composed            | composed              | composed           | composed             | composed    |
//! | `CrossEntropy`    | shear               | composed              | shear              | composed             | composed    |
//!
//! `MaskedRmsNorm` is the RMSNorm under a hidden mask (candle-nn has none). `Attention` is the whole
//! attention after the projections (RoPE, scores, causal softmax, context) as one kernel. Two composed
//! entries are made of other ops of this table, each of which looks itself up: attention is [`rope`], a
//! matmul, [`causal_softmax`] and a matmul, and the causal softmax is a scale, an additive mask and
//! [`softmax_last_dim`] (so `Inference` off the CPU still runs candle-nn's RoPE and softmax there).
//! `CachedAttention` is attention against a KV cache (incremental decoding), which the shear kernel does
//! not take; over a left-padded batch it swaps the causal softmax for [`masked_softmax`] with a per-row
//! mask that also hides the padding. `Softmax` has no shear kernel of its own: on the CPU the model's
//! softmaxes are the causal one and, over padded batches, the masked one built from it. A unit test below checks that this table is what [`ExecPath::implementation`] answers.

use candle_core::{DType, Result, Tensor, D};

use super::fused;

/// Which implementations the model's ops run ([`ExecPath::implementation`], the table above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecPath {
    /// The fastest kernels, with no backward: gradients stop at candle-nn's fused ops. Evaluation,
    /// generation, export checks.
    Inference,
    /// Every op supports `backward()`: shear's CPU kernels on f32 CPU tensors, composed differentiable
    /// candle ops elsewhere. Training and pruning.
    Training,
    /// candle's composed ops everywhere, the linear layers and the cross-entropy included: the oracle the
    /// fast kernels are tested against.
    Reference,
}

/// An op whose implementation [`ExecPath::implementation`] chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Linear,
    RmsNorm,
    MaskedRmsNorm,
    Softmax,
    Rope,
    Swiglu,
    CausalSoftmax,
    Attention,
    CachedAttention,
    CrossEntropy,
}

impl Op {
    pub const ALL: [Op; 10] = [
        Op::Linear,
        Op::RmsNorm,
        Op::MaskedRmsNorm,
        Op::Softmax,
        Op::Rope,
        Op::Swiglu,
        Op::CausalSoftmax,
        Op::Attention,
        Op::CachedAttention,
        Op::CrossEntropy,
    ];
}

/// An implementation of an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// shear's CPU kernel in [`super::fused`], with a backward; f32 CPU tensors only.
    Shear,
    /// candle-nn's fused op: fast, on every device, no backward.
    CandleFused,
    /// The same math composed from candle primitives, differentiable on every device.
    Composed,
}

impl ExecPath {
    /// The implementation of `op` on this path, for `inputs` (the tensors the shear kernel would read that
    /// must be f32 on the CPU: `x` and the weight for [`Op::Linear`], the first input otherwise). The
    /// table in the module doc, and the one place that decides.
    pub fn implementation(self, op: Op, inputs: &[&Tensor]) -> Impl {
        use ExecPath::{Inference, Reference, Training};
        let cpu_f32 = inputs.iter().all(|x| fused::applies(x));
        match (self, op) {
            (Reference, _) => Impl::Composed,
            // No backward, but the fastest on every device.
            (Inference, Op::RmsNorm | Op::Softmax | Op::Rope) => Impl::CandleFused,
            // shear has no standalone softmax kernel; the causal one covers the model's.
            (Training, Op::Softmax) => Impl::Composed,
            // The shear kernel attends within the sequence it is given; decoding against a cache composes.
            (_, Op::CachedAttention) => Impl::Composed,
            (Inference | Training, _) if cpu_f32 => Impl::Shear,
            (Inference | Training, _) => Impl::Composed,
        }
    }
}

/// The arm of an op function for an implementation the table never picks for that op (candle-nn has no
/// fused linear layer, shear no standalone softmax, ...).
pub(crate) fn not_in_table(op: Op, imp: Impl) -> ! {
    unreachable!("the execution-path table never picks {imp:?} for {op:?}")
}

/// A bias-free linear layer, `x @ Wᵀ` over the last dim of `x`.
///
/// The input is flattened to one `[tokens, in]` matrix, so the forward and both backward products are
/// single large matmuls: shear's kernel makes one `gemm` call each way ([`fused::linear`]), composed it is
/// one candle matmul. (candle-nn's `Linear` broadcasts `W` over the batch instead: its weight gradient is
/// then a batch of small `k = seq` products, materialized per sequence and summed.)
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
    pub fn forward(&self, x: &Tensor, path: ExecPath) -> Result<Tensor> {
        match path.implementation(Op::Linear, &[x, &self.weight]) {
            Impl::Shear => fused::linear(x, &self.weight),
            Impl::Composed => {
                let (out, inp) = self.weight.dims2()?;
                let mut dims = x.dims().to_vec();
                let n = x.elem_count() / inp;
                let y = x.reshape((n, inp))?.matmul(&self.weight.t()?)?;
                *dims.last_mut().expect("at least one dim") = out;
                y.reshape(dims)
            }
            imp => not_in_table(Op::Linear, imp),
        }
    }
}

/// `w ⊙ x / sqrt(mean(x²) + eps)`, the mean taken in f32 as in HF's `LlamaRMSNorm`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, path: ExecPath) -> Result<Tensor> {
    match path.implementation(Op::RmsNorm, &[x]) {
        Impl::CandleFused => candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32),
        Impl::Shear => fused::rms_norm(x, weight, None, eps),
        Impl::Composed => {
            let dtype = x.dtype();
            let x32 = x.to_dtype(DType::F32)?;
            let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
            let normed = x32.broadcast_div(&(var + eps)?.sqrt()?)?;
            normed.to_dtype(dtype)?.broadcast_mul(weight)
        }
    }
}

/// Softmax over the last dimension, computed in f32 (HF eager attention does the same) and cast back.
pub fn softmax_last_dim(x: &Tensor, path: ExecPath) -> Result<Tensor> {
    let imp = path.implementation(Op::Softmax, &[x]);
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let p = match imp {
        Impl::CandleFused => candle_nn::ops::softmax_last_dim(&x32)?,
        Impl::Composed => candle_nn::ops::softmax(&x32, D::Minus1)?,
        Impl::Shear => not_in_table(Op::Softmax, imp),
    };
    p.to_dtype(dtype)
}

/// Rotate-half RoPE (HF layout) on `x: [batch, heads, seq, head_dim]`; `cos`, `sin`: `[seq, head_dim/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, path: ExecPath) -> Result<Tensor> {
    match path.implementation(Op::Rope, &[x]) {
        Impl::CandleFused => candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin),
        Impl::Shear => fused::rope(x, cos, sin),
        Impl::Composed => candle_nn::rotary_emb::rope_slow(x, cos, sin),
    }
}

/// `silu(gate) ⊙ up`, the SwiGLU MLP's activation.
pub fn swiglu(gate: &Tensor, up: &Tensor, path: ExecPath) -> Result<Tensor> {
    match path.implementation(Op::Swiglu, &[gate]) {
        Impl::Shear => fused::swiglu(gate, up),
        Impl::Composed => candle_nn::ops::silu(gate)? * up,
        imp => not_in_table(Op::Swiglu, imp),
    }
}

/// Causal attention probabilities from unscaled scores `[b, kv, g * seq, kv_len]` (query row `r` at
/// position `offset + r % seq`): `softmax(scale · scores + causal mask)`. shear's kernel needs no mask
/// tensor; composed, it is scale, additive mask and [`softmax_last_dim`].
pub fn causal_softmax(scores: &Tensor, scale: f64, seq: usize, offset: usize, path: ExecPath) -> Result<Tensor> {
    match path.implementation(Op::CausalSoftmax, &[scores]) {
        Impl::Shear => fused::causal_softmax(scores, scale, seq, offset),
        Impl::Composed if seq > 1 => {
            masked_softmax(scores, scale, seq, &causal_mask(seq, offset, scores.dtype(), scores.device())?, path)
        }
        Impl::Composed => softmax_last_dim(&(scores * scale)?, path), // one query attends to everything cached
        imp => not_in_table(Op::CausalSoftmax, imp),
    }
}

/// Softmax of `scores * scale + mask` over the keys, for attention scores `[b, kv, g * seq, kv_len]` laid out
/// as in grouped attention (each KV head's `g` query heads stacked over the rows) and an additive mask
/// `[seq, kv_len]` for every row of the batch or `[b, seq, kv_len]` per row (a padded batch).
pub fn masked_softmax(scores: &Tensor, scale: f64, seq: usize, mask: &Tensor, path: ExecPath) -> Result<Tensor> {
    let (b, kv, rows, kv_len) = scores.dims4()?;
    let mask = match mask.rank() {
        2 => mask.reshape((1, 1, 1, seq, kv_len))?,
        _ => mask.reshape((mask.dim(0)?, 1, 1, seq, kv_len))?,
    };
    let scores = (scores * scale)?.reshape((b, kv, rows / seq, seq, kv_len))?.broadcast_add(&mask)?;
    softmax_last_dim(&scores.reshape((b, kv, rows, kv_len))?, path)
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

    /// The inference and the training kernels compute the same function; only the latter has a backward.
    #[test]
    fn inference_and_training_agree() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev)?;
        let w = Tensor::randn(0f32, 1.0, 8, &dev)?;
        let cos = Tensor::randn(0f32, 1.0, (5, 4), &dev)?;
        let sin = Tensor::randn(0f32, 1.0, (5, 4), &dev)?;
        let pairs = [
            (rms_norm(&x, &w, 1e-5, ExecPath::Inference)?, rms_norm(&x, &w, 1e-5, ExecPath::Training)?),
            (softmax_last_dim(&x, ExecPath::Inference)?, softmax_last_dim(&x, ExecPath::Training)?),
            (rope(&x, &cos, &sin, ExecPath::Inference)?, rope(&x, &cos, &sin, ExecPath::Training)?),
        ];
        for (a, b) in pairs {
            assert!(max_abs_diff(&a, &b) < 1e-5);
        }
        // The composed ops are what training runs off the CPU; they must differentiate too.
        let xv = Var::from_tensor(&x)?;
        let y = rms_norm(xv.as_tensor(), &w, 1e-5, ExecPath::Reference)?;
        let y = softmax_last_dim(&y, ExecPath::Reference)?;
        let y = rope(&y, &cos, &sin, ExecPath::Reference)?;
        let grads = (y.sqr()?.sum_all()?).backward()?;
        let g = grads.get(xv.as_tensor()).expect("gradient reaches the input");
        assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }

    /// The "what runs when" table of the module doc is what [`ExecPath::implementation`] answers, cell by
    /// cell: an f32 CPU tensor for the "f32 CPU" columns, a bf16 one for "elsewhere" and both for
    /// `Reference`. Editing either without the other fails here.
    #[test]
    fn the_documented_table_is_what_implementation_answers() {
        let doc: Vec<&str> = include_str!("ops.rs").lines().filter_map(|l| l.strip_prefix("//! | `")).collect();
        let f32_cpu = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let elsewhere = Tensor::zeros(4, DType::BF16, &Device::Cpu).unwrap();
        let name = |imp: Impl| match imp {
            Impl::Shear => "shear",
            Impl::CandleFused => "candle-fused",
            Impl::Composed => "composed",
        };
        for op in Op::ALL {
            let rows: Vec<&&str> = doc.iter().filter(|r| r.starts_with(&format!("{op:?}`"))).collect();
            assert_eq!(rows.len(), 1, "{op:?} needs exactly one row in the table");
            let cells: Vec<&str> = rows[0].split('|').skip(1).map(str::trim).filter(|c| !c.is_empty()).collect();
            let at = |path: ExecPath, x: &Tensor| name(path.implementation(op, &[x, x]));
            let expected = [
                at(ExecPath::Inference, &f32_cpu),
                at(ExecPath::Inference, &elsewhere),
                at(ExecPath::Training, &f32_cpu),
                at(ExecPath::Training, &elsewhere),
                at(ExecPath::Reference, &f32_cpu),
            ];
            assert_eq!(cells, expected, "{op:?}: the documented row differs from the code");
            // The oracle is candle's composed ops wherever it runs, whatever the table says.
            for x in [&f32_cpu, &elsewhere] {
                assert_eq!(at(ExecPath::Reference, x), "composed", "{op:?}: the reference composes everywhere");
            }
        }
        assert_eq!(doc.len(), Op::ALL.len(), "a table row names no op");
    }

    /// Every path computes what the reference computes, op by op, in f32 (where shear's kernels run) and in
    /// bf16 (where they don't): the table picks implementations of the same function, and never one
    /// that an op function lacks.
    #[test]
    fn every_path_computes_what_the_reference_computes() -> Result<()> {
        let dev = Device::Cpu;
        // bf16 keeps 8 bits: a kernel that rounds once and one that rounds twice differ by about 2⁻⁸.
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2)] {
            let r = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &dev)?.to_dtype(dtype);
            let (x, x2, w) = (r(&[2, 3, 5, 8])?, r(&[2, 3, 5, 8])?, r(&[8])?);
            let (cos, sin, scores, wl) = (r(&[5, 4])?, r(&[5, 4])?, r(&[2, 3, 10, 7])?, r(&[6, 8])?);
            let lin = Linear::new(wl);
            let all = |path: ExecPath| -> Result<Vec<Tensor>> {
                Ok(vec![
                    lin.forward(&x, path)?,
                    rms_norm(&x, &w, 1e-5, path)?,
                    softmax_last_dim(&x, path)?,
                    rope(&x, &cos, &sin, path)?,
                    swiglu(&x, &x2, path)?,
                    causal_softmax(&scores, 0.3, 5, 2, path)?,
                ])
            };
            let reference = all(ExecPath::Reference)?;
            for path in [ExecPath::Inference, ExecPath::Training] {
                for (i, (a, b)) in all(path)?.iter().zip(&reference).enumerate() {
                    let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
                    let (d, scale) = (max_abs_diff(&a, &b), b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?);
                    assert!(d < tol * scale.max(1.0), "{path:?} {dtype:?} op {i}: differs from the reference by {d}");
                }
            }
        }
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
