//! The plain training step's backward pass written out by hand (f32 on the CPU, no pruning masks).
//!
//! candle's autograd gives every node of the graph its own zero-filled gradient buffer and then adds
//! the node's contribution into it; for SmolLM2 that is ~30 nodes per layer, each a few MB, every step.
//! Here the forward keeps each block's activations, and the backward calls the fused kernels' gradient
//! functions in reverse order, writing each weight's gradient once. It computes exactly what
//! `loss.backward()` computes through [`super::fused`]'s kernels; `tests/model.rs` checks every
//! parameter's gradient against autograd with the composed candle ops.

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use super::{fused, Llama};
use crate::error::{Error, Result};

/// What the backward needs of one block's forward.
struct Saved {
    x: Tensor,
    a: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    ctx: Tensor,
    x1: Tensor,
    h: Tensor,
    gate: Tensor,
    up: Tensor,
    act: Tensor,
}

impl Llama {
    /// Whether [`Llama::lm_loss_grads`] can run: f32 weights on the CPU.
    pub fn hand_backward_applies(&self) -> bool {
        fused::applies(&self.embed_tokens)
    }

    /// The per-sample mean next-token NLL of `ids: [b, seq]` (positions `0..seq-1` predict `1..seq`) and
    /// the gradients of `Σ per-sample NLL / n_samples` for every weight, keyed by the weight tensors as
    /// `backward()` keys them.
    pub fn lm_loss_grads(&self, ids: &Tensor, n_samples: usize) -> Result<(Vec<f32>, GradStore)> {
        if !self.hand_backward_applies() {
            return Err(Error::Invalid("the hand-written backward needs f32 weights on the CPU".into()));
        }
        let (b, seq) = ids.dims2()?;
        if seq < 2 {
            return Err(Error::Invalid(format!("a training sequence needs at least 2 tokens, got {seq}")));
        }
        let t = seq - 1;
        let c = &self.cfg;
        let (heads, kv, eps) = (c.num_attention_heads, c.num_kv_heads(), c.rms_norm_eps);
        let inputs = ids.narrow(1, 0, t)?.flatten_all()?;
        let targets = ids.narrow(1, 1, t)?.flatten_all()?;
        let (cos, sin) = (self.cos.narrow(0, 0, t)?, self.sin.narrow(0, 0, t)?);
        // Detached views of the weights: the fused ops then record no graph.
        let w = |t: &Tensor| t.detach();

        let mut x = w(&self.embed_tokens).embedding(&inputs)?.reshape((b, t, ()))?;
        let mut saved = Vec::with_capacity(self.blocks.len());
        for blk in &self.blocks {
            let a = fused::rms_norm(&x, &w(&blk.input_norm), None, eps)?;
            let q = fused::linear(&a, &w(blk.q_proj.weight()))?;
            let k = fused::linear(&a, &w(blk.k_proj.weight()))?;
            let v = fused::linear(&a, &w(blk.v_proj.weight()))?;
            let ctx = fused::attention(&q, &k, &v, &cos, &sin, heads, kv)?;
            let x1 = (&x + fused::linear(&ctx, &w(blk.o_proj.weight()))?)?;
            let h = fused::rms_norm(&x1, &w(&blk.post_attention_norm), None, eps)?;
            let gate = fused::linear(&h, &w(blk.gate_proj.weight()))?;
            let up = fused::linear(&h, &w(blk.up_proj.weight()))?;
            let act = fused::swiglu(&gate, &up)?;
            let x2 = (&x1 + fused::linear(&act, &w(blk.down_proj.weight()))?)?;
            saved.push(Saved { x, a, q, k, v, ctx, x1, h, gate, up, act });
            x = x2;
        }
        let hf = fused::rms_norm(&x, &w(&self.norm), None, eps)?;
        let logits = fused::linear(&hf, &w(self.lm_head.weight()))?;
        // The logits become their own gradient: d loss / d nll is 1 / (t · n_samples) at every position.
        let dlogits = logits.reshape((b * t, ()))?;
        let nll = fused::cross_entropy_with_grad_in_place(&dlogits, &targets, 1.0 / (t * n_samples) as f32)?;
        let per_sample: Vec<f32> = nll.chunks(t).map(|row| row.iter().sum::<f32>() / t as f32).collect();

        let mut grads = GradStore::default();
        let (dhf, d_lm_head) = fused::linear_grads(&hf, &w(self.lm_head.weight()), &dlogits.reshape((b, t, ()))?)?;
        drop(dlogits);
        let (mut dx, d_norm) = fused::rms_norm_grads(&x, &w(&self.norm), &dhf, eps)?;
        grads.insert(&self.norm, d_norm);
        for (blk, s) in self.blocks.iter().zip(saved).rev() {
            // x2 = x1 + down(swiglu(gate(h), up(h))), h = norm(x1)
            let (d_act, d_down) = fused::linear_grads(&s.act, &w(blk.down_proj.weight()), &dx)?;
            let (d_gate, d_up) = fused::swiglu_grads(&s.gate, &s.up, &d_act)?;
            let (dh_gate, d_gate_w) = fused::linear_grads(&s.h, &w(blk.gate_proj.weight()), &d_gate)?;
            let (dh_up, d_up_w) = fused::linear_grads(&s.h, &w(blk.up_proj.weight()), &d_up)?;
            let (dx1_norm, d_post_norm) =
                fused::rms_norm_grads(&s.x1, &w(&blk.post_attention_norm), &(dh_gate + dh_up)?, eps)?;
            let dx1 = (dx + dx1_norm)?;
            // x1 = x + o(attention(q(a), k(a), v(a))), a = norm(x)
            let (d_ctx, d_o) = fused::linear_grads(&s.ctx, &w(blk.o_proj.weight()), &dx1)?;
            let (dq, dk, dv) = fused::attention_grads(&s.q, &s.k, &s.v, &cos, &sin, heads, kv, &d_ctx)?;
            let (da_q, d_q) = fused::linear_grads(&s.a, &w(blk.q_proj.weight()), &dq)?;
            let (da_k, d_k) = fused::linear_grads(&s.a, &w(blk.k_proj.weight()), &dk)?;
            let (da_v, d_v) = fused::linear_grads(&s.a, &w(blk.v_proj.weight()), &dv)?;
            let (dx_norm, d_in_norm) =
                fused::rms_norm_grads(&s.x, &w(&blk.input_norm), &((da_q + da_k)? + da_v)?, eps)?;
            dx = (dx1 + dx_norm)?;
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
        }
        // The embedding's gradient: each position's dx added to its token's row (of the LM head's gradient
        // when the two share their weights).
        let dx = dx.reshape((b * t, ()))?;
        if self.cfg.tie_word_embeddings {
            grads.insert(&self.embed_tokens, d_lm_head.index_add(&inputs, &dx, 0)?);
        } else {
            let d_embed = self.embed_tokens.zeros_like()?.index_add(&inputs, &dx, 0)?;
            grads.insert(&self.embed_tokens, d_embed);
            grads.insert(self.lm_head.weight(), d_lm_head);
        }
        Ok((per_sample, grads))
    }
}
