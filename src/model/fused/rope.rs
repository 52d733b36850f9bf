//! Rotate-half RoPE.

use super::*;

/// HF's rotate-half RoPE on `x: [batch, heads, seq, head_dim]` with `cos`, `sin`: `[seq, head_dim / 2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos, sin) = (cos.contiguous()?.flatten_all()?.to_vec1::<f32>()?, sin.contiguous()?.flatten_all()?.to_vec1()?);
    x.contiguous()?.apply_op1(Rope { cos: cos.into(), sin: sin.into(), inverse: false })
}

#[derive(Clone)]
pub(super) struct Rope {
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

#[cfg(test)]
mod tests {
    use super::super::tests::check;
    use super::*;
    use candle_core::{Device, Var};

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
}
