//! RMSNorm, optionally with the hidden mask of docs/method.md §1.

use super::*;

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
pub(super) struct RmsNorm {
    eps: f32,
}

/// Per row: the inverse RMS over the kept dims.
pub(super) fn inv_rms(x: &[f32], z: Option<&[f32]>, n_kept: f32, eps: f32) -> f32 {
    let ss: f32 = match z {
        None => x.iter().map(|v| v * v).sum(),
        Some(z) => x.iter().zip(z).filter(|(_, z)| **z != 0.0).map(|(v, _)| v * v).sum(),
    };
    1.0 / (ss / n_kept + eps).sqrt()
}

pub(super) fn kept_count(z: Option<&[f32]>, d: usize) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::super::tests::check;
    use super::*;
    use candle_core::{Device, Var};

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
}
