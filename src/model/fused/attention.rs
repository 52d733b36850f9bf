//! Causal grouped-query attention with RoPE, for whole sequences (no KV cache).

use super::*;

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
pub(super) struct Attention {
    heads: usize,
    kv_heads: usize,
    hd: usize,
    scale: f32,
    cos: std::sync::Arc<[f32]>,
    sin: std::sync::Arc<[f32]>,
}

/// A raw pointer that parallel tasks may share because each writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub(super) struct Shared(*mut f32);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Safety: `i` must be in bounds of the buffer, and no other task may write element `i`.
    unsafe fn at(&self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
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
pub(super) fn row_blocks(seq: usize) -> impl Iterator<Item = (usize, usize)> {
    const BLOCK: usize = 64;
    (0..seq.div_ceil(BLOCK)).map(move |i| (i * BLOCK, ((i + 1) * BLOCK).min(seq)))
}

/// The gradients of [`Attention`] w.r.t. q, k and v, packed one after the other in one flat tensor
/// (a custom op returns one tensor; the three share the recomputed probabilities).
pub(super) struct AttentionBwd {
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

#[cfg(test)]
mod tests {
    use super::super::tests::check;
    use super::*;
    use candle_core::{Device, Var};

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
}
