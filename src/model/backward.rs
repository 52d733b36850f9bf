//! The training step's backward pass written out by hand (f32 on the CPU), with or without pruning masks.
//!
//! candle's autograd gives every node of the graph its own zero-filled gradient buffer and then adds
//! the node's contribution into it; for SmolLM2 that is ~30 nodes per layer, each a few MB, every step,
//! and with masks each broadcast multiply adds a full-size product and a reduction to its backward.
//! Here the forward keeps each block's activations, and the backward calls the fused kernels' gradient
//! functions in reverse order, writing each weight's gradient once and each mask's as one row-sum.
//! It computes exactly what `loss.backward()` computes through [`super::fused`]'s kernels; `tests/model.rs`
//! checks every parameter's and every mask's gradient against autograd with the composed candle ops.
//!
//! The masks themselves come out of a small graph (hard-concrete samples of log-α); the gradients here
//! stop at the mask values, and [`Llama::mask_surrogate`] carries them the rest of the way through
//! autograd: `Σ z · dz` with `dz` held constant has the gradient `dz` at `z`.

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use super::{fused, Llama, MaskValues, Teacher};
use crate::error::{Error, Result};
use crate::family::Family;

/// What [`Llama::lm_loss_grads`] returns.
pub struct LossGrads {
    /// Mean next-token NLL of each sample.
    pub per_sample: Vec<f32>,
    /// With a teacher: each sample's mean `KL(p_teacher ‖ p_student)` (nats, before the `A·T²` factor).
    pub per_sample_kl: Option<Vec<f32>>,
    /// Gradient of every weight, keyed by the weight tensors as `backward()` keys them.
    pub weights: GradStore,
    /// Gradient of every mask given (absent families stay `None`).
    pub masks: MaskGrads,
}

/// Gradients with respect to the mask values of a [`MaskValues`]. The head and KV-group masks enter the
/// model through their per-dim product (`head_scales`), so their gradient is taken there, `[L, H * head_dim]`.
#[derive(Default)]
pub struct MaskGrads {
    pub layer: Option<Tensor>,
    pub head_dims: Option<Tensor>,
    pub intermediate: Option<Tensor>,
    pub hidden: Option<Tensor>,
}

/// One block's activations during a calibration pass, each `[b, t, ·]`.
pub struct Activations {
    /// The block's input and output (the residual stream).
    pub x: Tensor,
    pub y: Tensor,
    /// The input norm's output (what q, k, v read) and the post-attention norm's (what gate and up read).
    pub a: Tensor,
    pub h: Tensor,
    /// The attention output before `o_proj`, head `i` in columns `i·hd .. (i+1)·hd`.
    pub ctx: Tensor,
    /// The SwiGLU activation, `down_proj`'s input.
    pub act: Tensor,
}

/// What the backward needs of one block's forward (`d` hidden, `H`/`KV` query/KV heads of `hd` dims, `m`
/// intermediate).
struct Saved {
    /// `[b, t, d]`: the block's input.
    x: Tensor,
    /// `[b, t, d]`: the input norm's output, the projections' input.
    a: Tensor,
    /// `[b, t, H * hd]`, `[b, t, KV * hd]`, `[b, t, KV * hd]`: the projections, before RoPE.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// `[b, t, H * hd]`: the attention output before the head mask.
    ctx: Tensor,
    /// `[b, t, d]`: the residual stream after the attention.
    x1: Tensor,
    /// `[b, t, d]`: the post-attention norm's output, the MLP's input.
    h: Tensor,
    /// `[b, t, m]`: `gate_proj`'s output.
    gate: Tensor,
    /// `[b, t, m]`: `up_proj`'s output before the intermediate mask.
    up: Tensor,
    /// `[b, t, m]`: the SwiGLU activation, `down_proj`'s input.
    act: Tensor,
    /// `[b, t, d]` each: `o_proj`'s and `down_proj`'s outputs before the layer and hidden masks (kept only
    /// with either).
    o: Option<Tensor>,
    down: Option<Tensor>,
}

/// What the saving forward leaves for the loss and the backward (the blocks' activations went to its sink).
struct Forward {
    /// `[b, t, d]`: the last block's output, the final norm's input.
    x: Tensor,
    /// `[b, t, d]`: the final norm's output, the LM head's input.
    hf: Tensor,
}

/// What the forward and the backward of one [`Llama::lm_loss_grads`] call share: the RoPE tables and the
/// detached mask values.
struct Pass {
    /// `[t, hd / 2]` each.
    cos: Tensor,
    sin: Tensor,
    /// `[d]`: the hidden mask, f32.
    hidden: Option<Tensor>,
    /// `[L]`: the layer mask.
    layer: Option<Vec<f32>>,
    /// `[L, H * hd]`: see [`MaskGrads::head_dims`].
    head_dims: Option<Tensor>,
    /// `[L, m]`.
    intermediate: Option<Tensor>,
}

/// One block's mask values, detached: what multiplies where (see [`MaskValues`]).
struct BlockZ {
    layer: Option<f32>,
    /// `[H * hd]`.
    head_dims: Option<Tensor>,
    /// `[m]`.
    intermediate: Option<Tensor>,
    /// What a sub-layer's output is multiplied by before the residual add: layer ⊙ hidden (`[1]` or `[d]`).
    out_scale: Option<Tensor>,
}

impl Pass {
    fn block(&self, i: usize, device: &candle_core::Device) -> Result<BlockZ> {
        let layer = self.layer.as_ref().map(|z| z[i]);
        let out_scale = match (layer, &self.hidden) {
            (None, None) => None,
            (Some(l), None) => Some(Tensor::new(&[l], device)?),
            (None, Some(h)) => Some(h.clone()),
            (Some(l), Some(h)) => Some((h * l as f64)?),
        };
        Ok(BlockZ {
            layer,
            head_dims: self.head_dims.as_ref().map(|z| z.get(i)).transpose()?,
            intermediate: self.intermediate.as_ref().map(|z| z.get(i)).transpose()?,
            out_scale,
        })
    }
}

/// `y ⊙ z`, or `y` without a mask.
fn scaled(y: &Tensor, z: &Option<Tensor>) -> Result<Tensor> {
    Ok(match z {
        Some(z) => y.broadcast_mul(z)?,
        None => y.clone(),
    })
}

/// A detached view of a weight: the fused ops then record no graph.
fn w(t: &Tensor) -> Tensor {
    t.detach()
}

impl Llama {
    /// Whether [`Llama::lm_loss_grads`] can run: f32 weights on the CPU.
    pub fn hand_backward_applies(&self) -> bool {
        fused::applies(&self.embed_tokens)
    }

    /// The per-sample mean next-token NLL of `ids: [b, seq]` (positions `0..seq-1` predict `1..seq`) under
    /// `masks` (none: the plain model), and the gradients of `Σ per-sample loss / n_samples` for every
    /// weight and every mask value. The loss is the NLL, or with a `teacher` its distillation loss.
    pub fn lm_loss_grads(
        &self,
        ids: &Tensor,
        n_samples: usize,
        masks: Option<&MaskValues>,
        teacher: Option<&Teacher>,
    ) -> Result<LossGrads> {
        if !self.hand_backward_applies() {
            return Err(Error::Invalid("the hand-written backward needs f32 weights on the CPU".into()));
        }
        let (b, seq) = ids.dims2()?;
        if seq < 2 {
            return Err(Error::Invalid(format!("a training sequence needs at least 2 tokens, got {seq}")));
        }
        let t = seq - 1;
        let inputs = ids.narrow(1, 0, t)?.flatten_all()?;
        let targets = ids.narrow(1, 1, t)?.flatten_all()?;
        let (cos, sin) = self.rope_tables(0, t)?;
        self.check_ids(ids)?;
        // Detached, like the weights (`w`): the fused ops then record no graph.
        let masks = masks.map(MaskValues::detach).unwrap_or_default();
        masks.check_shapes(&self.cfg)?;
        let pass = Pass {
            cos,
            sin,
            hidden: masks.get(Family::Hidden).map(|z| z.to_dtype(candle_core::DType::F32)).transpose()?,
            layer: masks.get(Family::Layer).map(|z| z.to_vec1()).transpose()?,
            head_dims: self.head_scales(&masks)?,
            intermediate: masks.get(Family::Intermediate).cloned(),
        };

        let mut blocks = Vec::with_capacity(self.blocks.len());
        let Forward { x, hf } = self.forward_saving(&inputs, b, t, &pass, |_, saved, _| {
            blocks.push(saved);
            Ok(())
        })?;
        let logits = fused::linear(&hf, &w(self.lm_head.weight()))?;
        // The logits become their own gradient: d loss / d (a position's loss) is 1 / (t · n_samples).
        let dlogits = logits.reshape((b * t, ()))?;
        drop(logits);
        let dy = 1.0 / (t * n_samples) as f32;
        let (nll, kl) = match teacher {
            None => (fused::cross_entropy_with_grad_in_place(&dlogits, &targets, dy)?, None),
            Some(teacher) => {
                let (nll, kl) = teacher.grads_in_place(&ids.narrow(1, 0, t)?, &dlogits, &targets, dy)?;
                (nll, Some(kl))
            }
        };
        let means = |v: &[f32]| -> Vec<f32> { v.chunks(t).map(|row| row.iter().sum::<f32>() / t as f32).collect() };
        let per_sample = means(&nll);
        let per_sample_kl = kl.as_deref().map(means);

        let mut grads = GradStore::default();
        let mut acc = MaskGradAcc::new(self.blocks.len());
        let (dhf, d_lm_head) = fused::linear_grads(&hf, &w(self.lm_head.weight()), &dlogits.reshape((b, t, ()))?)?;
        drop(dlogits);
        let (mut dx, d_norm, dz) =
            fused::rms_norm_grads(&x, &w(&self.norm), pass.hidden.as_ref(), &dhf, self.cfg.rms_norm_eps)?;
        acc.add_hidden(dz)?;
        grads.insert(&self.norm, d_norm);
        for (i, saved) in blocks.into_iter().enumerate().rev() {
            dx = self.block_backward(i, saved, &pass, dx, &mut acc, &mut grads)?;
        }
        self.embedding_backward(&inputs, dx, d_lm_head, &pass, &mut acc, &mut grads)?;
        let mask_grads = acc.finish(masks.get(Family::Layer).is_some(), self.device())?;
        Ok(LossGrads { per_sample, per_sample_kl, weights: grads, masks: mask_grads })
    }

    /// The forward of [`Llama::lm_loss_grads`] on `inputs: [b · t]`: each block's activations go to
    /// `keep(block, activations, block output)` as they are made.
    fn forward_saving(
        &self,
        inputs: &Tensor,
        b: usize,
        t: usize,
        pass: &Pass,
        mut keep: impl FnMut(usize, Saved, &Tensor) -> Result<()>,
    ) -> Result<Forward> {
        let (heads, kv, eps) = (self.cfg.num_attention_heads, self.cfg.num_kv_heads(), self.cfg.rms_norm_eps);
        let zh = pass.hidden.as_ref();
        let mut x = w(&self.embed_tokens).embedding(inputs)?.reshape((b, t, ()))?;
        if let Some(h) = zh {
            x = x.broadcast_mul(h)?;
        }
        for (i, blk) in self.blocks.iter().enumerate() {
            let z = pass.block(i, self.device())?;
            let s = &z.out_scale;
            let a = fused::rms_norm(&x, &w(&blk.input_norm), zh, eps)?;
            let q = fused::linear(&a, &w(blk.q_proj.weight()))?;
            let k = fused::linear(&a, &w(blk.k_proj.weight()))?;
            let v = fused::linear(&a, &w(blk.v_proj.weight()))?;
            let ctx = fused::attention(&q, &k, &v, &pass.cos, &pass.sin, heads, kv)?;
            let o = fused::linear(&scaled(&ctx, &z.head_dims)?, &w(blk.o_proj.weight()))?;
            let x1 = (&x + scaled(&o, s)?)?;
            let h = fused::rms_norm(&x1, &w(&blk.post_attention_norm), zh, eps)?;
            let gate = fused::linear(&h, &w(blk.gate_proj.weight()))?;
            let up = fused::linear(&h, &w(blk.up_proj.weight()))?;
            let act = fused::swiglu(&gate, &scaled(&up, &z.intermediate)?)?;
            let down = fused::linear(&act, &w(blk.down_proj.weight()))?;
            let x2 = (&x1 + scaled(&down, s)?)?;
            let (o, down) = if s.is_some() { (Some(o), Some(down)) } else { (None, None) };
            keep(i, Saved { x, a, q, k, v, ctx, x1, h, gate, up, act, o, down }, &x2)?;
            x = x2;
        }
        let hf = fused::rms_norm(&x, &w(&self.norm), zh, eps)?;
        Ok(Forward { x, hf })
    }

    /// The unmasked forward of `ids: [b, t]` on the training kernels (f32 on the CPU), handing every
    /// block's activations to `visit` (one-shot pruning's calibration, [`crate::prune::oneshot`]); returns
    /// the final norm's output `[b, t, d]`.
    pub fn calibration_pass(
        &self,
        ids: &Tensor,
        mut visit: impl FnMut(usize, &Activations) -> Result<()>,
    ) -> Result<Tensor> {
        if !self.hand_backward_applies() {
            return Err(Error::Invalid(
                "calibration runs the f32 CPU kernels: load the model in f32 on the CPU".into(),
            ));
        }
        let (b, t) = ids.dims2()?;
        self.check_ids(ids)?;
        let (cos, sin) = self.rope_tables(0, t)?;
        let pass = Pass { cos, sin, hidden: None, layer: None, head_dims: None, intermediate: None };
        let out = self.forward_saving(&ids.flatten_all()?, b, t, &pass, |i, s, y| {
            visit(i, &Activations { x: s.x, a: s.a, ctx: s.ctx, h: s.h, act: s.act, y: y.clone() })
        })?;
        Ok(out.hf)
    }

    /// Block `i`'s backward: from `dx`, the gradient at its output `[b, t, d]`, to the gradient at its
    /// input; its weights' gradients go into `grads`, its masks' into `acc`.
    fn block_backward(
        &self,
        i: usize,
        s: Saved,
        pass: &Pass,
        dx: Tensor,
        acc: &mut MaskGradAcc,
        grads: &mut GradStore,
    ) -> Result<Tensor> {
        let (heads, kv, eps) = (self.cfg.num_attention_heads, self.cfg.num_kv_heads(), self.cfg.rms_norm_eps);
        let (blk, zh) = (&self.blocks[i], pass.hidden.as_ref());
        let z = pass.block(i, self.device())?;
        let scale = &z.out_scale;
        // x2 = x1 + down(swiglu(gate(h), up(h) ⊙ z_int)) ⊙ scale, h = norm(x1)
        let d_down_out = acc.through_scale(&dx, &s.down, scale, z.layer, zh, i)?;
        let (d_act, d_down) = fused::linear_grads(&s.act, &w(blk.down_proj.weight()), &d_down_out)?;
        let up_m = scaled(&s.up, &z.intermediate)?;
        let (d_gate, mut d_up) = fused::swiglu_grads(&s.gate, &up_m, &d_act)?;
        if let Some(zi) = &z.intermediate {
            acc.intermediate[i] = Some(fused::row_sums_of_product(&d_up, &s.up)?);
            d_up = d_up.broadcast_mul(zi)?;
        }
        let (dh_gate, d_gate_w) = fused::linear_grads(&s.h, &w(blk.gate_proj.weight()), &d_gate)?;
        let (dh_up, d_up_w) = fused::linear_grads(&s.h, &w(blk.up_proj.weight()), &d_up)?;
        let (dx1_norm, d_post_norm, dz) =
            fused::rms_norm_grads(&s.x1, &w(&blk.post_attention_norm), zh, &(dh_gate + dh_up)?, eps)?;
        acc.add_hidden(dz)?;
        let dx1 = (dx + dx1_norm)?;
        // x1 = x + o(attention(q(a), k(a), v(a)) ⊙ z_head) ⊙ scale, a = norm(x)
        let d_o_out = acc.through_scale(&dx1, &s.o, scale, z.layer, zh, i)?;
        let ctx_m = scaled(&s.ctx, &z.head_dims)?;
        let (mut d_ctx, d_o) = fused::linear_grads(&ctx_m, &w(blk.o_proj.weight()), &d_o_out)?;
        if let Some(zd) = &z.head_dims {
            acc.head_dims[i] = Some(fused::row_sums_of_product(&d_ctx, &s.ctx)?);
            d_ctx = d_ctx.broadcast_mul(zd)?;
        }
        let (dq, dk, dv) = fused::attention_grads(&s.q, &s.k, &s.v, &pass.cos, &pass.sin, heads, kv, &d_ctx)?;
        let (da_q, d_q) = fused::linear_grads(&s.a, &w(blk.q_proj.weight()), &dq)?;
        let (da_k, d_k) = fused::linear_grads(&s.a, &w(blk.k_proj.weight()), &dk)?;
        let (da_v, d_v) = fused::linear_grads(&s.a, &w(blk.v_proj.weight()), &dv)?;
        let (dx_norm, d_in_norm, dz) =
            fused::rms_norm_grads(&s.x, &w(&blk.input_norm), zh, &((da_q + da_k)? + da_v)?, eps)?;
        acc.add_hidden(dz)?;
        for (param, g) in [
            (blk.down_proj.weight(), d_down),
            (blk.gate_proj.weight(), d_gate_w),
            (blk.up_proj.weight(), d_up_w),
            (&blk.post_attention_norm, d_post_norm),
            (blk.o_proj.weight(), d_o),
            (blk.q_proj.weight(), d_q),
            (blk.k_proj.weight(), d_k),
            (blk.v_proj.weight(), d_v),
            (&blk.input_norm, d_in_norm),
        ] {
            grads.insert(param, g);
        }
        Ok((dx1 + dx_norm)?)
    }

    /// The embedding's backward, from `dx: [b, t, d]` at the first block's input: each position's gradient
    /// added to its token's row (of the LM head's gradient `d_lm_head` when the two share their weights).
    fn embedding_backward(
        &self,
        inputs: &Tensor,
        dx: Tensor,
        d_lm_head: Tensor,
        pass: &Pass,
        acc: &mut MaskGradAcc,
        grads: &mut GradStore,
    ) -> Result<()> {
        // x0 = embedding(inputs) ⊙ z_hidden: the hidden mask's last term, then the rows' gradient.
        let mut dx = dx.reshape((inputs.elem_count(), ()))?;
        if let Some(h) = &pass.hidden {
            acc.add_hidden(Some(fused::row_sums_of_product(&dx, &w(&self.embed_tokens).embedding(inputs)?)?))?;
            dx = dx.broadcast_mul(h)?;
        }
        if self.cfg.tie_word_embeddings {
            grads.insert(&self.embed_tokens, d_lm_head.index_add(inputs, &dx, 0)?);
        } else {
            let d_embed = self.embed_tokens.zeros_like()?.index_add(inputs, &dx, 0)?;
            grads.insert(&self.embed_tokens, d_embed);
            grads.insert(self.lm_head.weight(), d_lm_head);
        }
        Ok(())
    }

    /// `Σ z · dz` over the masks of `masks` (still attached to whatever graph produced them) with `dz` held
    /// constant: its `backward()` carries the mask gradients of [`Llama::lm_loss_grads`] on to that graph
    /// (log-α, through the hard-concrete sample). A scalar tensor.
    pub fn mask_surrogate(&self, masks: &MaskValues, grads: &MaskGrads) -> Result<Tensor> {
        let head_dims = self.head_scales(masks)?;
        let pairs = [
            (masks.get(Family::Layer), grads.layer.as_ref()),
            (head_dims.as_ref(), grads.head_dims.as_ref()),
            (masks.get(Family::Intermediate), grads.intermediate.as_ref()),
            (masks.get(Family::Hidden), grads.hidden.as_ref()),
        ];
        let mut total = Tensor::zeros((), candle_core::DType::F32, self.device())?;
        for (z, dz) in pairs {
            if let (Some(z), Some(dz)) = (z, dz) {
                let term = (z.to_dtype(candle_core::DType::F32)? * dz.detach())?.sum_all()?;
                total = (total + term)?;
            }
        }
        Ok(total)
    }
}

/// Mask gradients as the backward collects them, layer by layer.
struct MaskGradAcc {
    layer: Vec<f32>,
    head_dims: Vec<Option<Tensor>>,
    intermediate: Vec<Option<Tensor>>,
    hidden: Option<Tensor>,
}

impl MaskGradAcc {
    fn new(n_layers: usize) -> Self {
        Self {
            layer: vec![0f32; n_layers],
            head_dims: vec![None; n_layers],
            intermediate: vec![None; n_layers],
            hidden: None,
        }
    }

    /// The collected gradients, a family's absent where its mask was (`with_layer`: a layer mask was given).
    fn finish(self, with_layer: bool, device: &candle_core::Device) -> Result<MaskGrads> {
        let stack = |rows: Vec<Option<Tensor>>| -> Result<Option<Tensor>> {
            if rows.iter().all(|r| r.is_none()) {
                return Ok(None);
            }
            let rows: Vec<Tensor> = rows.into_iter().map(|r| r.expect("every layer has the mask")).collect();
            Ok(Some(Tensor::stack(&rows, 0)?))
        };
        let n_layers = self.layer.len();
        Ok(MaskGrads {
            layer: if with_layer { Some(Tensor::from_vec(self.layer, n_layers, device)?) } else { None },
            head_dims: stack(self.head_dims)?,
            intermediate: stack(self.intermediate)?,
            hidden: self.hidden,
        })
    }

    fn add_hidden(&mut self, g: Option<Tensor>) -> Result<()> {
        if let Some(g) = g {
            self.hidden = Some(match self.hidden.take() {
                Some(acc) => (acc + g)?,
                None => g,
            });
        }
        Ok(())
    }

    /// The gradient through a sub-layer output `y` of layer `i` multiplied by `scale = layer ⊙ hidden`
    /// before the residual add: `dy = dres ⊙ scale`; the per-dim row sums `Σ dres ⊙ y` split into the
    /// layer mask's gradient (weighted by the hidden mask) and the hidden mask's (by the layer mask).
    fn through_scale(
        &mut self,
        dres: &Tensor,
        y: &Option<Tensor>,
        scale: &Option<Tensor>,
        layer: Option<f32>,
        hidden: Option<&Tensor>,
        i: usize,
    ) -> Result<Tensor> {
        let (Some(y), Some(scale)) = (y, scale) else { return Ok(dres.clone()) };
        let dims = fused::row_sums_of_product(dres, y)?; // [d]
        if layer.is_some() {
            let weighted = match hidden {
                Some(h) => (&dims * h)?,
                None => dims.clone(),
            };
            self.layer[i] += weighted.sum_all()?.to_scalar::<f32>()?;
        }
        if hidden.is_some() {
            self.add_hidden(Some((&dims * layer.unwrap_or(1.0) as f64)?))?;
        }
        Ok(dres.broadcast_mul(scale)?)
    }
}
