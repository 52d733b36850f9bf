//! Linear layers: `x @ Wᵀ` and its two gradient products, one `gemm` call each.

use super::*;

/// `x @ Wᵀ` for `x: [..., in]`, `W: [out, in]`, as one `gemm` call on the flattened tokens, and a
/// backward that writes `dx = dy W` and `dW = dyᵀ x` directly (candle's matmul backward goes through
/// the transpose and reshape nodes, each with its own zero-filled gradient buffer of weight size).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

pub(super) struct Linear;

pub(super) fn parallelism() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        n if n > 1 => gemm::Parallelism::Rayon(n),
        _ => gemm::Parallelism::None,
    }
}

/// `lhs[m×k] · rhs[k×n]` on row-major views, multi-threaded, into a new buffer. The buffer is not
/// zero-filled first: gemm (with `read_dst = false`) writes every entry without reading it, and a memset
/// of every linear layer's output was 2% of a training step, on one thread.
pub(super) fn matmul_new(m: usize, n: usize, k: usize, lhs: View, rhs: View) -> Vec<f32> {
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
pub(super) struct LinearBwd {
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

#[cfg(test)]
mod tests {
    use super::super::tests::check;
    use super::*;
    use candle_core::{Device, Var};

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
}
