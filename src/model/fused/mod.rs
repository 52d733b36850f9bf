//! Fused CPU kernels *with* a backward pass, for f32 training (and inference) on the CPU.
//!
//! Composed from candle primitives, RMSNorm, attention (layout copies, RoPE, mask, softmax), SwiGLU and
//! the cross-entropy are chains of 5–10 ops each, and candle-nn's `Linear` adds transpose and reshape
//! nodes; every node allocates its output, and in the backward a zero-filled gradient plus the products.
//! On SmolLM2 that churn took over 40% of a training step (`shear bench train`, README "Performance").
//! Here each piece is one kernel forward and one backward, parallel over rows (or over sequences × KV
//! groups for attention), with matrix products done by `gemm` on strided views. Each computes the same
//! function as the composed ops; each kernel's file tests its values and gradients against them. They run
//! on f32 CPU tensors ([`applies`]); the table in [`super::ops`] says where each one runs.
//!
//! One file per kernel, its forward and backward side by side: `linear`, `rms_norm`, `softmax` (causal),
//! `rope`, `swiglu`, `cross_entropy`, `distill` (the distillation loss over the logits), `attention`. This file holds what they share: storage access,
//! uninitialized outputs, the vectorizable `exp` and reductions, and the strided `gemm` call.

use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

mod attention;
mod cross_entropy;
mod distill;
mod linear;
mod rms_norm;
mod rope;
mod softmax;
mod swiglu;
#[cfg(test)]
mod tests;

pub use attention::*;
pub use cross_entropy::*;
pub use distill::*;
pub use linear::*;
pub use rms_norm::*;
pub use rope::*;
pub use softmax::*;
pub use swiglu::*;

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
