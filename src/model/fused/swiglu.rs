//! SwiGLU, and the row sums of a product the mask gradients use.

use super::*;

/// `silu(gate) ⊙ up`, elementwise.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

pub(super) struct SwiGlu;

pub(super) fn sigmoid(x: f32) -> f32 {
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
pub(super) const CHUNK: usize = 1 << 14;

#[cfg(test)]
mod tests {
    use super::super::tests::check;
    use super::*;
    use candle_core::{Device, Var};

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
}
