//! Fused CPU kernels *with* a backward pass, for f32 training (and inference) on the CPU.
//!
//! Composed from candle primitives, RMSNorm, attention (layout copies, RoPE, mask, softmax), SwiGLU and
//! the cross-entropy are chains of 5–10 ops each, and candle-nn's `Linear` adds transpose and reshape
//! nodes; every node allocates its output, and in the backward a zero-filled gradient plus the products.
//! On SmolLM2 that churn took over 40% of a training step (`shear bench train`, README "Performance").
//! Here each piece is one kernel forward and one backward, parallel over rows (or over sequences × KV
//! groups for attention), with matrix products done by `gemm` on strided views. Each computes the same
//! function as the composed ops; the tests below check values and gradients against them. They run on
//! f32 CPU tensors ([`applies`]); `ops` and the model use the composed ops elsewhere (CUDA, bf16).

use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// True when the fused kernels can run on `x`: an f32 tensor on the CPU.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// The contiguous f32 data of a CPU tensor (`op` names the kernel in the error).
pub(crate) fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => bail!("{op}: expected a contiguous tensor"),
        _ => bail!("{op}: expected an f32 tensor"),
    }
}

/// [`f32s`], writable (in-place kernels).
pub(crate) fn f32s_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => bail!("{op}: expected a contiguous f32 tensor"),
    }
}

/// [`f32s`] of a tensor's storage (from `storage_and_layout`), which must be on the CPU.
fn cpu_f32s<'a>(s: &'a candle_core::Storage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match s {
        candle_core::Storage::Cpu(s) => f32s(s, l, op),
        _ => bail!("{op}: expected a CPU tensor"),
    }
}

/// An output buffer of `n` values for a kernel that writes every one of them (`MaybeUninit::write`):
/// `vec![0.0; n]` would first zero it on one thread, which for the step's activation-sized outputs was
/// a memset of ~1 GB per training step. [`written`] turns it into the `Vec<f32>` once filled.
fn output(n: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit` needs no initialization.
    unsafe { v.set_len(n) };
    v
}

/// Safety: every value of `v` must have been written.
unsafe fn written(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    Vec::from_raw_parts(v.as_mut_ptr() as *mut f32, v.len(), v.capacity())
}

fn u32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [u32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("{op}: expected contiguous u32 targets"),
    }
}

/// `e^x` in f32 without a libm call, so that the loops over it vectorize (glibc's `expf` is scalar, and
/// the exps of softmax, cross-entropy and SiLU were 3% of a training step). Cody–Waite reduction to
/// `r = x − n·ln 2`, `|r| ≤ ln 2 / 2`, Cephes' degree-5 polynomial for `e^r` (≤ 2 ulp from the true
/// value), and `2^n` written into the exponent bits. Below −87.3 it returns 0 (the true value is at most
/// a denormal), above 88.7 it saturates at `e^88.7`, as no finite logit or score gets there.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding and subtracting it rounds to the nearest integer without a branch or libm call.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.336_54, 88.722_83);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.336_54 {
        0.0
    } else {
        er * two_n
    }
}

/// Lanes of the reductions below: independent accumulators let the compiler use vector registers (a
/// single running float sum must stay in order and stays scalar).
const LANES: usize = 16;

fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    for c in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    acc.iter().fold(tail, |m, v| m.max(*v))
}

fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `x ← e^(x − max x)` in place (a softmax numerator); returns `(max, Σ e^(x − max))`.
fn exp_shifted_in_place(x: &mut [f32]) -> (f32, f32) {
    let max = max_lanes(x);
    x.iter_mut().for_each(|v| *v = exp(*v - max));
    (max, sum_lanes(x))
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1)
}

// ---------------------------------------------------------------------------------------------------
// Linear layers.

/// `x @ Wᵀ` for `x: [..., in]`, `W: [out, in]`, as one `gemm` call on the flattened tokens, and a
/// backward that writes `dx = dy W` and `dW = dyᵀ x` directly (candle's matmul backward goes through
/// the transpose and reshape nodes, each with its own zero-filled gradient buffer of weight size).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

struct Linear;

fn parallelism() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        n if n > 1 => gemm::Parallelism::Rayon(n),
        _ => gemm::Parallelism::None,
    }
}

/// `lhs[m×k] · rhs[k×n]` on row-major views, multi-threaded, into a new buffer. The buffer is not
/// zero-filled first: gemm (with `read_dst = false`) writes every entry without reading it, and a memset
/// of every linear layer's output was 2% of a training step, on one thread.
fn matmul_new(m: usize, n: usize, k: usize, lhs: View, rhs: View) -> Vec<f32> {
    let mut dst = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the callers take m, n, k from the lengths of the slices the views read; gemm writes all m·n
    // entries of `dst` through the raw pointer (`read_dst = false`: nothing is read) before the length
    // makes them readable.
    unsafe {
        matmul(m, n, k, dst.as_mut_ptr(), n, false, lhs, rhs, 1.0, parallelism());
        dst.set_len(m * n);
    }
    dst
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32s(s1, l1, "linear")?, f32s(s2, l2, "linear")?);
        let (out, inp) = l2.shape().dims2()?;
        if last_dim(l1) != inp {
            bail!("linear: input has {} features, weight {:?}", last_dim(l1), l2.dims());
        }
        let n = x.len() / inp;
        // y = x · Wᵀ: Wᵀ is W read with swapped strides.
        let y = matmul_new(n, out, inp, View::rows(x, 0, inp), View::rows(w, 0, inp).t());
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = linear_grads(x, w, dy)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `(dx, dW)` of [`linear`] given the output gradient `dy`.
pub(crate) fn linear_grads(x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let dy = dy.contiguous()?;
    let dx = dy.apply_op2_no_bwd(w, &LinearBwd { wrt_input: true })?.reshape(x.shape())?;
    let dw = dy.apply_op2_no_bwd(&x.contiguous()?, &LinearBwd { wrt_input: false })?;
    Ok((dx, dw))
}

/// `dx = dy · W` (`wrt_input`, the second operand is `W`) or `dW = dyᵀ · x` (the second operand is `x`).
struct LinearBwd {
    wrt_input: bool,
}

impl CustomOp2 for LinearBwd {
    fn name(&self) -> &'static str {
        "linear-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (dy, other) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        let (out, inp) = (last_dim(l1), last_dim(l2));
        let n = dy.len() / out;
        let dy = View::rows(dy, 0, out);
        let (rows, lhs) = if self.wrt_input { (n, dy) } else { (out, dy.t()) };
        let grad = matmul_new(rows, inp, if self.wrt_input { out } else { n }, lhs, View::rows(other, 0, inp));
        Ok((CpuStorage::F32(grad), Shape::from((rows, inp))))
    }
}

// ---------------------------------------------------------------------------------------------------
// RMSNorm, optionally with the hidden mask of docs/method.md §1.

/// `y = z ⊙ w ⊙ x / √(Σ_kept x² / n_kept + ε)` over the last dim, where `kept = (z ≠ 0)`; without `z`,
/// plain RMSNorm (`z = 1`, every dim kept).
pub fn rms_norm(x: &Tensor, w: &Tensor, z: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let op = RmsNorm { eps: eps as f32 };
    match z {
        None => x.apply_op2(w, op),
        Some(z) => x.apply_op3(w, z, op),
    }
}

#[derive(Clone, Copy)]
struct RmsNorm {
    eps: f32,
}

/// Per row: the inverse RMS over the kept dims.
fn inv_rms(x: &[f32], z: Option<&[f32]>, n_kept: f32, eps: f32) -> f32 {
    let ss: f32 = match z {
        None => x.iter().map(|v| v * v).sum(),
        Some(z) => x.iter().zip(z).filter(|(_, z)| **z != 0.0).map(|(v, _)| v * v).sum(),
    };
    1.0 / (ss / n_kept + eps).sqrt()
}

fn kept_count(z: Option<&[f32]>, d: usize) -> f32 {
    z.map(|z| z.iter().filter(|v| **v != 0.0).count()).unwrap_or(d).max(1) as f32
}

impl RmsNorm {
    fn forward(&self, x: &[f32], w: &[f32], z: Option<&[f32]>, d: usize) -> Vec<f32> {
        let n_kept = kept_count(z, d);
        let mut y = output(x.len());
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            let r = inv_rms(x, z, n_kept, self.eps);
            match z {
                None => y.iter_mut().zip(x).zip(w).for_each(|((y, x), w)| {
                    y.write(x * r * w);
                }),
                Some(z) => y.iter_mut().zip(x).zip(w).zip(z).for_each(|(((y, x), w), z)| {
                    y.write(x * r * w * z);
                }),
            }
        });
        // SAFETY: every row was written.
        unsafe { written(y) }
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(l1);
        let y = self.forward(f32s(s1, l1, "rms-norm")?, f32s(s2, l2, "rms-norm")?, None, d);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = rms_norm_grads(x, w, None, dy, self.eps as f64)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for RmsNorm {
    fn name(&self) -> &'static str {
        "masked-rms-norm"
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
        let d = last_dim(l1);
        let z = f32s(s3, l3, "masked-rms-norm")?;
        let y = self.forward(f32s(s1, l1, "masked-rms-norm")?, f32s(s2, l2, "masked-rms-norm")?, Some(z), d);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        z: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, dz) = rms_norm_grads(x, w, Some(z), dy, self.eps as f64)?;
        Ok((Some(dx), Some(dw), dz))
    }
}

/// `(dx, dw, dz)` of [`rms_norm`] (`dz` only with a mask). With `a = dy ⊙ w ⊙ z` and `r` the row's
/// inverse RMS: `dx = r·a − r³·x·kept·(a·x)/n_kept`, `dw = Σ_rows dy ⊙ x·r ⊙ z`, `dz = Σ_rows dy ⊙ x·r ⊙ w`.
pub(crate) fn rms_norm_grads(
    x: &Tensor,
    w: &Tensor,
    z: Option<&Tensor>,
    dy: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let eps = eps as f32;
    let dy = dy.contiguous()?;
    let d = x.dim(D::Minus1)?;
    let x = x.contiguous()?;
    let (sx, lx) = x.storage_and_layout();
    let (sdy, ldy) = dy.storage_and_layout();
    let (xv, dyv) = (cpu_f32s(&sx, lx, "rms-norm-bwd")?, cpu_f32s(&sdy, ldy, "rms-norm-bwd")?);
    let wv = w.to_vec1::<f32>()?;
    let zv = z.map(|z| z.to_vec1::<f32>()).transpose()?;
    let zs = zv.as_deref();
    let n_kept = kept_count(zs, d);
    let mut dx = output(xv.len());
    // dw and dz are sums over rows: partial sums over fixed blocks of rows, added in block order, so the
    // result does not depend on how threads split the work (resumed runs must be bit-identical).
    const ROWS: usize = 32;
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(d * ROWS)
        .zip(xv.par_chunks(d * ROWS))
        .zip(dyv.par_chunks(d * ROWS))
        .map(|((dx, x), dy)| {
            let (mut dw, mut dz) = (vec![0f32; d], vec![0f32; d]);
            for ((dx, x), dy) in dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)) {
                let r = inv_rms(x, zs, n_kept, eps);
                let mut ax = 0f32;
                for j in 0..d {
                    let zj = zs.map_or(1.0, |z| z[j]);
                    let xr = x[j] * r;
                    dw[j] += dy[j] * xr * zj;
                    dz[j] += dy[j] * xr * wv[j];
                    ax += dy[j] * wv[j] * zj * x[j];
                }
                let c = r * r * r * ax / n_kept;
                for j in 0..d {
                    let zj = zs.map_or(1.0, |z| z[j]);
                    let kept = if zj != 0.0 { 1.0 } else { 0.0 };
                    dx[j].write(r * dy[j] * wv[j] * zj - c * x[j] * kept);
                }
            }
            (dw, dz)
        })
        .collect();
    let (mut dw, mut dz) = (vec![0f32; d], vec![0f32; d]);
    for (pw, pz) in &partials {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        dz.iter_mut().zip(pz).for_each(|(a, b)| *a += b);
    }
    let dev = x.device();
    // SAFETY: every row of dx was written.
    let dx = Tensor::from_vec(unsafe { written(dx) }, x.shape(), dev)?;
    let dw = Tensor::from_vec(dw, d, dev)?;
    let dz = match z {
        Some(_) => Some(Tensor::from_vec(dz, d, dev)?),
        None => None,
    };
    Ok((dx, dw, dz))
}

// ---------------------------------------------------------------------------------------------------
// Causal softmax of attention scores.

/// `softmax(scale · s + causal mask)` over the last dim of `scores: [..., rows, kv_len]`, where row `r`
/// (counting over all leading dims) is the query at absolute position `offset + r % seq` and sees keys
/// `0..=offset + r % seq`. Masked entries are exactly 0. No mask tensor is built.
pub fn causal_softmax(scores: &Tensor, scale: f64, seq: usize, offset: usize) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax { scale: scale as f32, seq, offset })
}

#[derive(Clone, Copy)]
struct CausalSoftmax {
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
struct CausalSoftmaxBwd(CausalSoftmax);

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

// ---------------------------------------------------------------------------------------------------
// Rotate-half RoPE.

/// HF's rotate-half RoPE on `x: [batch, heads, seq, head_dim]` with `cos`, `sin`: `[seq, head_dim / 2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos, sin) = (cos.contiguous()?.flatten_all()?.to_vec1::<f32>()?, sin.contiguous()?.flatten_all()?.to_vec1()?);
    x.contiguous()?.apply_op1(Rope { cos: cos.into(), sin: sin.into(), inverse: false })
}

#[derive(Clone)]
struct Rope {
    cos: std::sync::Arc<[f32]>,
    sin: std::sync::Arc<[f32]>,
    /// Rotate by the negative angle: the backward of a rotation is its inverse.
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "rope")?;
        let dims = l.dims();
        let (seq, hd) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let half = hd / 2;
        if self.cos.len() != seq * half {
            bail!("rope: tables for {} positions, tensor has {seq}", self.cos.len() / half.max(1));
        }
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hd).zip(x.par_chunks(hd)).enumerate().for_each(|(r, (y, x))| {
            let t = r % seq;
            let (cos, sin) = (&self.cos[t * half..(t + 1) * half], &self.sin[t * half..(t + 1) * half]);
            for i in 0..half {
                let (a, b, s) = (x[i], x[i + half], sign * sin[i]);
                y[i] = a * cos[i] - b * s;
                y[i + half] = b * cos[i] + a * s;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _: &Tensor, _: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let inv = Rope { inverse: !self.inverse, ..self.clone() };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&inv)?))
    }
}

// ---------------------------------------------------------------------------------------------------
// SwiGLU.

/// `silu(gate) ⊙ up`, elementwise.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

struct SwiGlu;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (f32s(s1, l1, "swiglu")?, f32s(s2, l2, "swiglu")?);
        if g.len() != u.len() {
            bail!("swiglu: gate and up differ in size ({} vs {})", g.len(), u.len());
        }
        let mut y = output(g.len());
        y.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK))).for_each(|(y, (g, u))| {
            for ((y, g), u) in y.iter_mut().zip(g).zip(u) {
                y.write(g * sigmoid(*g) * u);
            }
        });
        // SAFETY: every chunk was written.
        let y = unsafe { written(y) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(&self, g: &Tensor, u: &Tensor, _: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = swiglu_grads(g, u, dy)?;
        Ok((Some(dg), Some(du)))
    }
}

/// `(d gate, d up)` of [`swiglu`], in one pass (one sigmoid per element):
/// `d gate = dy ⊙ up ⊙ σ(g)(1 + g(1 − σ(g)))`, `d up = dy ⊙ silu(g)`.
pub(crate) fn swiglu_grads(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let (g, u, dy) = (g.contiguous()?, u.contiguous()?, dy.contiguous()?);
    if g.dims() != u.dims() || g.dims() != dy.dims() {
        bail!("swiglu-bwd: shapes {:?}, {:?}, {:?} differ", g.dims(), u.dims(), dy.dims());
    }
    let (sg, lg) = g.storage_and_layout();
    let (su, lu) = u.storage_and_layout();
    let (sd, ld) = dy.storage_and_layout();
    let (gv, uv, dyv) =
        (cpu_f32s(&sg, lg, "swiglu-bwd")?, cpu_f32s(&su, lu, "swiglu-bwd")?, cpu_f32s(&sd, ld, "swiglu-bwd")?);
    let (mut dg, mut du) = (output(gv.len()), output(gv.len()));
    let outs = dg.par_chunks_mut(CHUNK).zip(du.par_chunks_mut(CHUNK));
    let ins = gv.par_chunks(CHUNK).zip(uv.par_chunks(CHUNK).zip(dyv.par_chunks(CHUNK)));
    outs.zip(ins).for_each(|((dg, du), (g, (u, dy)))| {
        for i in 0..dg.len() {
            let s = sigmoid(g[i]);
            dg[i].write(dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s)));
            du[i].write(dy[i] * g[i] * s);
        }
    });
    // SAFETY: every chunk of both was written.
    let (dg, du) = unsafe { (written(dg), written(du)) };
    let dev = g.device();
    Ok((Tensor::from_vec(dg, g.shape(), dev)?, Tensor::from_vec(du, g.shape(), dev)?))
}

/// `Σ_rows a ⊙ b` over the last dim of two same-shaped tensors: the gradient of a mask `z` that scales
/// `b` along its last dim, given the gradient `a` of the product. Fixed blocks of rows summed in order, so
/// the result does not depend on how threads split the work.
pub(crate) fn row_sums_of_product(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        bail!("row-sums: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    let d = a.dim(D::Minus1)?;
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (av, bv) = (cpu_f32s(&sa, la, "row-sums")?, cpu_f32s(&sb, lb, "row-sums")?);
    const ROWS: usize = 32;
    let partials: Vec<Vec<f32>> = av
        .par_chunks(d * ROWS)
        .zip(bv.par_chunks(d * ROWS))
        .map(|(a, b)| {
            let mut sum = vec![0f32; d];
            for (a, b) in a.chunks(d).zip(b.chunks(d)) {
                sum.iter_mut().zip(a.iter().zip(b)).for_each(|(s, (a, b))| *s += a * b);
            }
            sum
        })
        .collect();
    let mut sum = vec![0f32; d];
    for p in &partials {
        sum.iter_mut().zip(p).for_each(|(s, p)| *s += p);
    }
    Tensor::from_vec(sum, d, a.device())
}

/// Elements per parallel chunk of the elementwise kernels.
const CHUNK: usize = 1 << 14;

// ---------------------------------------------------------------------------------------------------
// Cross-entropy.

/// `−log softmax(logits)[target]` per row: `logits: [n, vocab]` (f32), `targets: [n]` (u32) → `[n]`.
/// Neither `log_softmax` nor its gradient is materialized; the backward writes `dy·(softmax − onehot)`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy)
}

struct CrossEntropy;

/// `(max, log Σ exp(x − max))` of a row.
fn log_sum_exp(x: &[f32]) -> (f32, f32) {
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
fn cross_entropy_row_grad(x: &mut [f32], target: usize, dy: f32) -> f32 {
    let logit = x[target];
    let (max, sum) = exp_shifted_in_place(x);
    let scale = dy / sum;
    x.iter_mut().for_each(|x| *x *= scale);
    x[target] -= dy;
    max + sum.ln() - logit
}

/// `dlogits[n, j] = dy[n] · (softmax(x_n)_j − [j = t_n])`.
struct CrossEntropyBwd;

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

// ---------------------------------------------------------------------------------------------------
// Causal grouped-query attention with RoPE, for whole sequences (no KV cache).

/// `softmax(scale · rope(q) rope(k)ᵀ + causal) v` per query head, reading the projections in the
/// layout the linear layers produce and writing the context in the layout `o_proj` takes:
/// `q: [b, seq, heads · hd]`, `k`, `v`: `[b, seq, kv_heads · hd]` → `[b, seq, heads · hd]`. Query head
/// `h` uses KV head `h / (heads / kv_heads)` (HF's `repeat_kv`); `cos`, `sin`: `[seq, hd / 2]`.
///
/// As candle ops this is 4 layout copies, 2 RoPEs, 2 batched matmuls, mask and softmax, each with its own
/// temporaries and gradient buffers; here it is one pass per (sequence, KV group) with small `gemm`
/// calls on strided views. The backward recomputes the probabilities instead of keeping them.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
    kv_heads: usize,
) -> Result<Tensor> {
    let op = Attention::new(q, k, cos, sin, heads, kv_heads)?;
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// `(dq, dk, dv)` of [`attention`] given the context gradient `dy`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_grads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
    kv_heads: usize,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    Attention::new(q, k, cos, sin, heads, kv_heads)?.grads(q, k, v, dy)
}

#[derive(Clone)]
struct Attention {
    heads: usize,
    kv_heads: usize,
    hd: usize,
    scale: f32,
    cos: std::sync::Arc<[f32]>,
    sin: std::sync::Arc<[f32]>,
}

/// A raw pointer that parallel tasks may share because each writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Safety: `i` must be in bounds of the buffer, and no other task may write element `i`.
    unsafe fn at(&self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

/// A row-major view: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl View {
    fn rows(data: &[f32], offset: usize, rs: usize) -> Self {
        View { ptr: data[offset..].as_ptr(), rs: rs as isize, cs: 1 }
    }
    fn t(self) -> Self {
        View { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

/// [`matmul`] on the calling thread only.
const SERIAL: gemm::Parallelism = gemm::Parallelism::None;

/// The one `gemm` call: `dst[m×n] = beta · lhs[m×k] · rhs[k×n]`, or `dst += …` with `accumulate`
/// (otherwise `dst` is never read), rows of `dst` `dst_rs` apart. The attention kernel passes
/// [`SERIAL`]: it parallelizes over heads itself.
/// Safety: the views must cover their shapes and `dst` its rows; `dst` must not alias `lhs`/`rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    beta: f32,
    threads: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        beta,
        false,
        false,
        false,
        threads,
    );
}

impl Attention {
    fn new(q: &Tensor, k: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize, kv_heads: usize) -> Result<Self> {
        let (_, seq, qd) = q.dims3()?;
        let hd = qd / heads;
        let (cos, sin) =
            (cos.contiguous()?.flatten_all()?.to_vec1::<f32>()?, sin.contiguous()?.flatten_all()?.to_vec1()?);
        if cos.len() != seq * hd / 2 || k.dims3()?.2 != kv_heads * hd || !heads.is_multiple_of(kv_heads) {
            bail!(
                "attention: inconsistent shapes (q {:?}, k {:?}, {heads} heads, {kv_heads} KV heads)",
                q.dims(),
                k.dims()
            );
        }
        Ok(Attention { heads, kv_heads, hd, scale: 1.0 / (hd as f32).sqrt(), cos: cos.into(), sin: sin.into() })
    }

    fn grads(&self, q: &Tensor, k: &Tensor, v: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let packed = q.apply_op3_no_bwd(&k, &v, &AttentionBwd { op: self.clone(), dy: dy.contiguous()? })?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let dq = packed.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = packed.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = packed.narrow(0, nq + nk, nk)?.reshape(v.shape())?;
        Ok((dq, dk, dv))
    }

    /// RoPE of `seq` rows of `hd` values read with row stride `rs` from `src[offset..]`, into `out`
    /// (`[seq, hd]`); `inverse` rotates back (the backward of a rotation).
    fn rope(&self, src: &[f32], offset: usize, rs: usize, seq: usize, out: &mut [f32], inverse: bool) {
        let (hd, half) = (self.hd, self.hd / 2);
        let sign = if inverse { -1.0 } else { 1.0 };
        for t in 0..seq {
            let x = &src[offset + t * rs..offset + t * rs + hd];
            let (cos, sin) = (&self.cos[t * half..(t + 1) * half], &self.sin[t * half..(t + 1) * half]);
            let y = &mut out[t * hd..(t + 1) * hd];
            for i in 0..half {
                let (a, b, s) = (x[i], x[i + half], sign * sin[i]);
                y[i] = a * cos[i] - b * s;
                y[i + half] = b * cos[i] + a * s;
            }
        }
    }

    /// Probabilities `P = softmax(scale · qr krᵀ + causal)` into `p: [seq, seq]` (row t sees 0..=t).
    /// Row blocks only compute the key columns they can see: about half the products of a full `QKᵀ`.
    fn probs(&self, qr: &[f32], kr: &[f32], seq: usize, p: &mut [f32]) {
        let hd = self.hd;
        for (r0, r1) in row_blocks(seq) {
            let q = View::rows(qr, r0 * hd, hd);
            unsafe {
                matmul(
                    r1 - r0,
                    r1,
                    hd,
                    p[r0 * seq..].as_mut_ptr(),
                    seq,
                    false,
                    q,
                    View::rows(kr, 0, hd).t(),
                    self.scale,
                    SERIAL,
                )
            };
        }
        for t in 0..seq {
            let row = &mut p[t * seq..(t + 1) * seq];
            let (_, sum) = exp_shifted_in_place(&mut row[..=t]);
            let inv = 1.0 / sum;
            row[..=t].iter_mut().for_each(|x| *x *= inv);
            row[t + 1..].iter_mut().for_each(|x| *x = 0.0);
        }
    }

    fn dims(&self, l: &Layout) -> Result<(usize, usize)> {
        let (b, seq, _) = l.shape().dims3()?;
        Ok((b, seq))
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
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
        let (q, k, v) = (f32s(s1, l1, "attention")?, f32s(s2, l2, "attention")?, f32s(s3, l3, "attention")?);
        let (b, seq) = self.dims(l1)?;
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.hd);
        let g = h / kvh;
        let (qs, ks) = (h * hd, kvh * hd); // row strides
        let mut out = vec![0f32; q.len()];
        let dst = Shared(out.as_mut_ptr());
        (0..b * kvh).into_par_iter().for_each(|task| {
            let (bi, kv) = (task / kvh, task % kvh);
            let (mut qr, mut kr, mut p) = (vec![0f32; seq * hd], vec![0f32; seq * hd], vec![0f32; seq * seq]);
            self.rope(k, bi * seq * ks + kv * hd, ks, seq, &mut kr, false);
            for head in kv * g..(kv + 1) * g {
                self.rope(q, bi * seq * qs + head * hd, qs, seq, &mut qr, false);
                self.probs(&qr, &kr, seq, &mut p);
                // ctx[bi, :, head] = P · v[bi, :, kv]
                let v_view = View::rows(v, bi * seq * ks + kv * hd, ks);
                for (r0, r1) in row_blocks(seq) {
                    unsafe {
                        let o = dst.at(bi * seq * qs + r0 * qs + head * hd);
                        matmul(r1 - r0, hd, r1, o, qs, false, View::rows(&p, r0 * seq, seq), v_view, 1.0, SERIAL);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = self.grads(q, k, v, dy)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Row blocks `[r0, r1)` of the causal loops: block `i` needs key columns `0..r1` only.
fn row_blocks(seq: usize) -> impl Iterator<Item = (usize, usize)> {
    const BLOCK: usize = 64;
    (0..seq.div_ceil(BLOCK)).map(move |i| (i * BLOCK, ((i + 1) * BLOCK).min(seq)))
}

/// The gradients of [`Attention`] w.r.t. q, k and v, packed one after the other in one flat tensor
/// (a custom op returns one tensor; the three share the recomputed probabilities).
struct AttentionBwd {
    op: Attention,
    dy: Tensor,
}

impl CustomOp3 for AttentionBwd {
    fn name(&self) -> &'static str {
        "attention-bwd"
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
        let name = "attention-bwd";
        let (q, k, v) = (f32s(s1, l1, name)?, f32s(s2, l2, name)?, f32s(s3, l3, name)?);
        let (dy_s, dy_l) = self.dy.storage_and_layout();
        let dy = match &*dy_s {
            candle_core::Storage::Cpu(s) => f32s(s, dy_l, name)?,
            _ => bail!("{name}: expected a CPU gradient"),
        };
        let a = &self.op;
        let (b, seq) = a.dims(l1)?;
        let (h, kvh, hd) = (a.heads, a.kv_heads, a.hd);
        let g = h / kvh;
        let (qs, ks) = (h * hd, kvh * hd);
        let mut out = vec![0f32; q.len() + 2 * k.len()];
        let (dk_base, dv_base) = (q.len(), q.len() + k.len());
        let dst = Shared(out.as_mut_ptr());
        (0..b * kvh).into_par_iter().for_each(|task| {
            let (bi, kv) = (task / kvh, task % kvh);
            let n = seq * hd;
            let (mut qr, mut kr, mut dqr, mut dq) = (vec![0f32; n], vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            let (mut p, mut dp) = (vec![0f32; seq * seq], vec![0f32; seq * seq]);
            // This group's dK (still rotated) and dV, summed over its query heads.
            let (mut dkr, mut dv) = (vec![0f32; n], vec![0f32; n]);
            let kv_off = bi * seq * ks + kv * hd;
            let v_view = View::rows(v, kv_off, ks);
            a.rope(k, kv_off, ks, seq, &mut kr, false);
            for head in kv * g..(kv + 1) * g {
                let q_off = bi * seq * qs + head * hd;
                a.rope(q, q_off, qs, seq, &mut qr, false);
                a.probs(&qr, &kr, seq, &mut p);
                for (r0, r1) in row_blocks(seq) {
                    let (m, d_out) = (r1 - r0, View::rows(dy, q_off + r0 * qs, qs));
                    let p_blk = View::rows(&p, r0 * seq, seq);
                    unsafe {
                        // dV[0..r1] += P[r0..r1, 0..r1]ᵀ dO[r0..r1]
                        matmul(r1, hd, m, dv.as_mut_ptr(), hd, true, p_blk.t(), d_out, 1.0, SERIAL);
                        // dP[r0..r1, 0..r1] = dO[r0..r1] V[0..r1]ᵀ
                        matmul(m, r1, hd, dp[r0 * seq..].as_mut_ptr(), seq, false, d_out, v_view.t(), 1.0, SERIAL);
                    }
                }
                // dS = scale · P ⊙ (dP − rowsum(dP ⊙ P)), zero above the diagonal.
                for t in 0..seq {
                    let (pr, dr) = (&p[t * seq..t * seq + t + 1], &mut dp[t * seq..(t + 1) * seq]);
                    let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                    for j in 0..=t {
                        dr[j] = a.scale * pr[j] * (dr[j] - dot);
                    }
                    dr[t + 1..].iter_mut().for_each(|x| *x = 0.0);
                }
                for (r0, r1) in row_blocks(seq) {
                    let ds_blk = View::rows(&dp, r0 * seq, seq);
                    unsafe {
                        // dQr[r0..r1] = dS[r0..r1, 0..r1] Kr[0..r1]
                        matmul(
                            r1 - r0,
                            hd,
                            r1,
                            dqr[r0 * hd..].as_mut_ptr(),
                            hd,
                            false,
                            ds_blk,
                            View::rows(&kr, 0, hd),
                            1.0,
                            SERIAL,
                        );
                        // dKr[0..r1] += dS[r0..r1, 0..r1]ᵀ Qr[r0..r1]
                        matmul(
                            r1,
                            hd,
                            r1 - r0,
                            dkr.as_mut_ptr(),
                            hd,
                            true,
                            ds_blk.t(),
                            View::rows(&qr, r0 * hd, hd),
                            1.0,
                            SERIAL,
                        );
                    }
                }
                a.rope(&dqr, 0, hd, seq, &mut dq, true);
                for t in 0..seq {
                    unsafe { std::ptr::copy_nonoverlapping(dq[t * hd..].as_ptr(), dst.at(q_off + t * qs), hd) };
                }
            }
            let mut dk = vec![0f32; n];
            a.rope(&dkr, 0, hd, seq, &mut dk, true);
            for t in 0..seq {
                unsafe {
                    std::ptr::copy_nonoverlapping(dk[t * hd..].as_ptr(), dst.at(dk_base + kv_off + t * ks), hd);
                    std::ptr::copy_nonoverlapping(dv[t * hd..].as_ptr(), dst.at(dv_base + kv_off + t * ks), hd);
                }
            }
        });
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
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

struct CrossEntropyInPlace {
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
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The vectorizable `exp` against f64's over the range softmax and SiLU use, at 2·10⁶ points, and its
    /// ends: −∞ and anything below −87.34 give exactly 0, NaN stays NaN.
    #[test]
    fn exp_is_within_two_ulp_of_the_true_value() {
        let mut worst = 0f64;
        for i in 0..=2_000_000 {
            let x = -87.0 + 175.0 * i as f64 / 2e6;
            let (got, want) = (exp(x as f32) as f64, (x as f32 as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.4e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    /// Value and gradients (w.r.t. every var, under a random linear read-out) of `fused` and `reference`.
    fn check(vars: &[&Var], fused: impl Fn() -> Result<Tensor>, reference: impl Fn() -> Result<Tensor>, tol: f32) {
        let (a, b) = (fused().unwrap(), reference().unwrap());
        assert_eq!(a.dims(), b.dims());
        assert!(max_abs_diff(&a, &b) < tol, "values differ by {}", max_abs_diff(&a, &b));
        let probe = Tensor::randn(0f32, 1.0, a.shape(), &Device::Cpu).unwrap();
        let ga = (a * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let (x, y) = (ga.get(v.as_tensor()).expect("fused grad"), gb.get(v.as_tensor()).expect("reference grad"));
            let d = max_abs_diff(x, y);
            let scale = y.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
            assert!(d < tol * scale, "gradient of input {i} differs by {d} (scale {scale})");
        }
    }

    #[test]
    fn rms_norm_matches_composite() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.1, 16, &dev).unwrap()).unwrap();
        // A hidden mask with exact zeros (removed dims) and soft values.
        let zv: Vec<f32> = (0..16).map(|i| if i % 5 == 0 { 0.0 } else { 0.3 + 0.05 * i as f32 }).collect();
        let z = Var::new(zv.as_slice(), &dev).unwrap();
        let eps = 1e-5;
        check(
            &[&x, &w],
            || rms_norm(x.as_tensor(), w.as_tensor(), None, eps),
            || {
                let var = x.as_tensor().sqr()?.mean_keepdim(D::Minus1)?;
                x.as_tensor().broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w.as_tensor())
            },
            1e-5,
        );
        check(
            &[&x, &w, &z],
            || rms_norm(x.as_tensor(), w.as_tensor(), Some(z.as_tensor()), eps),
            || {
                let kept = z.as_tensor().ne(0f64)?.to_dtype(DType::F32)?;
                let n = kept.sum_all()?;
                let var = x.as_tensor().sqr()?.broadcast_mul(&kept)?.sum_keepdim(D::Minus1)?.broadcast_div(&n)?;
                let normed = x.as_tensor().broadcast_div(&(var + eps)?.sqrt()?)?;
                normed.broadcast_mul(w.as_tensor())?.broadcast_mul(z.as_tensor())
            },
            1e-5,
        );
    }

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

    #[test]
    fn rope_matches_rope_slow() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap()).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        check(
            &[&x],
            || rope(x.as_tensor(), &cos, &sin),
            || candle_nn::rotary_emb::rope_slow(x.as_tensor(), &cos, &sin),
            1e-5,
        );
    }

    #[test]
    fn swiglu_matches_composite() {
        let dev = Device::Cpu;
        let g = Var::from_tensor(&Tensor::randn(0f32, 3.0, (4, 37), &dev).unwrap()).unwrap();
        let u = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 37), &dev).unwrap()).unwrap();
        check(
            &[&g, &u],
            || swiglu(g.as_tensor(), u.as_tensor()),
            || candle_nn::ops::silu(g.as_tensor())? * u.as_tensor(),
            1e-5,
        );
    }

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
    fn attention_matches_composite() {
        let dev = Device::Cpu;
        // 70 positions: more than one 64-row causal block.
        let (b, seq, h, kvh, hd) = (2, 70, 4, 2, 8);
        let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, seq, h * hd), &dev).unwrap()).unwrap();
        let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, seq, kvh * hd), &dev).unwrap()).unwrap();
        let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, seq, kvh * hd), &dev).unwrap()).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (seq, hd / 2), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (seq, hd / 2), &dev).unwrap();
        let mask = crate::model::ops::causal_mask(seq, 0, DType::F32, &dev).unwrap();
        check(
            &[&q, &k, &v],
            || attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &cos, &sin, h, kvh),
            || {
                // HF's eager attention: RoPE, repeat_kv, scaled scores, additive mask, softmax.
                let split = |t: &Tensor, n: usize| t.reshape((b, seq, n, hd))?.transpose(1, 2)?.contiguous();
                let qh = candle_nn::rotary_emb::rope_slow(&split(q.as_tensor(), h)?, &cos, &sin)?;
                let kh = candle_nn::rotary_emb::rope_slow(&split(k.as_tensor(), kvh)?, &cos, &sin)?;
                let vh = split(v.as_tensor(), kvh)?;
                let rep = |t: Tensor| -> Result<Tensor> {
                    t.unsqueeze(2)?.broadcast_as((b, kvh, h / kvh, seq, hd))?.reshape((b, h, seq, hd))
                };
                let (kh, vh) = (rep(kh)?, rep(vh)?);
                let s = (qh.matmul(&kh.t()?)? / (hd as f64).sqrt())?.broadcast_add(&mask)?;
                let p = candle_nn::ops::softmax(&s, D::Minus1)?;
                p.matmul(&vh)?.transpose(1, 2)?.reshape((b, seq, h * hd))
            },
            1e-5,
        );
    }

    #[test]
    fn linear_matches_matmul() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, 12), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 12), &dev).unwrap()).unwrap();
        check(
            &[&x, &w],
            || linear(x.as_tensor(), w.as_tensor()),
            || x.as_tensor().broadcast_matmul(&w.as_tensor().t()?),
            1e-5,
        );
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
