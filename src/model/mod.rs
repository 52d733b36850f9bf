//! LLaMA as in HF `modeling_llama.py`: pre-norm blocks with RMSNorm, rotate-half RoPE, grouped-query
//! attention with an explicit `head_dim`, a SwiGLU MLP, and a tied or untied LM head.
//!
//! One implementation serves inference, training and the reference: every forward takes an [`ExecPath`],
//! and which kernel each op then runs is decided in one place, the "what runs when" table of [`ops`].
//! Weights are plain tensors keyed by their HF names; to train them, build the model from `Var`-backed
//! tensors ([`crate::train`]) and gradients flow to those vars. On the CPU in f32 the training and pruning
//! steps skip autograd for the model: `backward.rs` writes the backward pass out by hand, masks included
//! ([`Llama::lm_loss_grads`], [`Llama::mask_surrogate`]).

mod backward;
mod distill;
pub mod fused;
pub mod ops;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Result as CResult, Tensor, Var, D};

pub use backward::{Activations, LossGrads, MaskGrads};
pub use distill::Teacher;
pub use fused::DistillLoss;
pub use ops::{ExecPath, Impl, Linear, Op};

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::family::Family;
pub use crate::family::MaskValues;

/// Tensors keyed by HF parameter name (`model.layers.0.self_attn.q_proj.weight`, ...).
pub type TensorMap = BTreeMap<String, Tensor>;

/// The first tensor of `tensors` holding a NaN or an infinity, as an error naming it and `source` (the
/// file it came from, or what is about to be written). Weights are checked where they enter (load, GGUF
/// import, checkpoints, mask snapshots) and before they are saved, so a non-finite value never trains,
/// converts or exports silently.
pub fn check_finite<'a>(tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>, source: &Path) -> Result<()> {
    for (name, t) in tensors {
        if !t.dtype().is_float() || t.elem_count() == 0 {
            continue;
        }
        // x·0 is 0 for every finite x and NaN for NaN and ±inf: one reduction finds both.
        let probe = t.flatten_all()?.to_dtype(DType::F32)?.affine(0.0, 0.0)?.sum_all()?.to_scalar::<f32>()?;
        if !probe.is_nan() {
            continue;
        }
        let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let bad: Vec<f32> = values.iter().copied().filter(|v| !v.is_finite()).collect();
        return Err(Error::Weights {
            path: source.to_path_buf(),
            msg: format!(
                "tensor `{name}` has {} non-finite values (the first is {}) of {}",
                bad.len(),
                bad[0],
                values.len()
            ),
        });
    }
    Ok(())
}

/// Check that `weights` holds exactly the tensors `cfg` implies, with the right shapes.
pub fn check_weights(cfg: &LlamaConfig, weights: &TensorMap) -> Result<()> {
    let expected = cfg.tensor_shapes();
    for (name, shape) in &expected {
        let t = weights.get(name).ok_or_else(|| Error::MissingTensor(name.clone()))?;
        if t.dims() != shape.as_slice() {
            return Err(Error::Shape { name: name.clone(), expected: shape.clone(), found: t.dims().to_vec() });
        }
        // An integer tensor would be cast to float silently: its values are not weights.
        if !t.dtype().is_float() {
            return Err(Error::Invalid(format!(
                "tensor `{name}` is stored as {:?}; weights are floating point",
                t.dtype()
            )));
        }
    }
    let names: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    for extra in weights.keys().filter(|k| !names.contains(k.as_str())) {
        // A tied model may still carry `lm_head.weight` (some exporters write it); anything else means
        // config and weights disagree, e.g. more layers in the file than in the config.
        if cfg.tie_word_embeddings && extra == "lm_head.weight" {
            // Harmless only if it is the embedding: a tied model computes with the embedding and would
            // silently ignore a different head.
            let (head, embed) = (&weights[extra.as_str()], &weights["model.embed_tokens.weight"]);
            let same = head.dims() == embed.dims()
                && head.to_dtype(DType::F32)?.eq(&embed.to_dtype(DType::F32)?)?.min_all()?.to_scalar::<u8>()? == 1;
            if !same {
                return Err(Error::Invalid(
                    "tie_word_embeddings is true, but the weights hold an `lm_head.weight` that differs from \
                     `model.embed_tokens.weight`"
                        .into(),
                ));
            }
        } else {
            return Err(Error::Invalid(format!(
                "tensor `{extra}` is not part of the model described by the config \
                 ({} layers, tie_word_embeddings={})",
                cfg.num_hidden_layers, cfg.tie_word_embeddings
            )));
        }
    }
    Ok(())
}

struct Block {
    input_norm: Tensor,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_norm: Tensor,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

/// Per-layer keys and values seen so far, for incremental decoding.
///
/// A batch of sequences of different lengths can share one cache left-padded ([`KvCache::left_padded`]): row
/// `b` starts with `pad[b]` padding positions that no real position attends to, so every row's last token
/// sits in the same column and the rows' continuations run as one batch. RoPE rotates queries and keys by
/// their absolute positions, and attention scores depend only on the difference, so a row shifted right by
/// its padding scores as it would alone (up to float rounding).
#[derive(Default, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Leading padding positions per batch row; empty when there are none.
    pad: Vec<usize>,
}

/// A block's view of the cache: its keys and values, and the attention mask when the batch is padded.
struct LayerCache<'a> {
    kv: &'a mut Option<(Tensor, Tensor)>,
    mask: Option<&'a Tensor>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }
    /// An empty cache for a batch whose row `b` will start with `pad[b]` padding tokens.
    pub fn left_padded(pad: Vec<usize>) -> Self {
        Self { layers: vec![], pad }
    }
    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.dim(2).unwrap_or(0)).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cache whose row `i` is this cache's row `rows[i]` (a row may repeat): e.g. a batch of prompts,
    /// each repeated once per continuation that [`Llama::logits_after`] then scores as one batch.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        let batch = self.layers.iter().flatten().map(|(k, _)| k.dim(0)).next().transpose()?.unwrap_or(self.pad.len());
        if let Some(&bad) = rows.iter().find(|&&r| r >= batch) {
            return Err(Error::Invalid(format!("selecting row {bad} of a KV cache of batch {batch}")));
        }
        let device = self.layers.iter().flatten().map(|(k, _)| k.device().clone()).next().unwrap_or(Device::Cpu);
        let index = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), &device)?;
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(|(k, v)| Ok((k.index_select(&index, 0)?, v.index_select(&index, 0)?))).transpose())
            .collect::<Result<_>>()?;
        let pad = if self.pad.is_empty() { vec![] } else { rows.iter().map(|&r| self.pad[r]).collect() };
        Ok(Self { layers, pad })
    }

    /// The additive attention mask `[batch, seq, cached + seq]` for `seq` new positions of a padded batch
    /// (`None` without padding, where the causal mask alone applies): causal, and a real position never
    /// sees padding. A padding position sees the padding before it, so that no row of the softmax is empty.
    fn attention_mask(&self, seq: usize, dtype: DType, device: &Device) -> Result<Option<Tensor>> {
        if self.pad.is_empty() {
            return Ok(None);
        }
        let (offset, batch) = (self.len(), self.pad.len());
        let total = offset + seq;
        let mut mask = Vec::with_capacity(batch * seq * total);
        for &pad in &self.pad {
            for i in offset..total {
                mask.extend((0..total).map(|j| if j > i || (j < pad && i >= pad) { f32::NEG_INFINITY } else { 0.0 }));
            }
        }
        Ok(Some(Tensor::from_vec(mask, (batch, seq, total), device)?.to_dtype(dtype)?))
    }
}

/// The per-block slices of [`MaskValues`].
struct BlockMasks<'a> {
    layer: Option<Tensor>,
    /// `[H * head_dim]`: every query head's scale repeated over its dims.
    head_dims: Option<Tensor>,
    intermediate: Option<Tensor>,
    hidden: Option<&'a HiddenMask>,
}

/// The hidden mask and the 0/1 indicator of its non-zero entries (the masked RMSNorm's index set).
struct HiddenMask {
    z: Tensor,
    kept: Tensor,
    kept_count: Tensor,
}

pub struct Llama {
    cfg: LlamaConfig,
    embed_tokens: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    /// RoPE inverse frequencies `[1, head_dim / 2]`, f32; the cos/sin tables are built per call for the
    /// positions used, so a long `max_position_embeddings` costs nothing until it is reached.
    inv_freq: Tensor,
}

impl Llama {
    /// Build the model from HF-named tensors (checked against `cfg` first). All tensors must share a
    /// device and a float dtype; that dtype is the compute dtype.
    pub fn new(cfg: &LlamaConfig, weights: &TensorMap) -> Result<Self> {
        check_weights(cfg, weights)?;
        let get = |name: &str| weights[name].clone();
        let linear = |name: &str| Linear::new(get(name));
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Block {
                    input_norm: get(&format!("{p}.input_layernorm.weight")),
                    q_proj: linear(&format!("{p}.self_attn.q_proj.weight")),
                    k_proj: linear(&format!("{p}.self_attn.k_proj.weight")),
                    v_proj: linear(&format!("{p}.self_attn.v_proj.weight")),
                    o_proj: linear(&format!("{p}.self_attn.o_proj.weight")),
                    post_attention_norm: get(&format!("{p}.post_attention_layernorm.weight")),
                    gate_proj: linear(&format!("{p}.mlp.gate_proj.weight")),
                    up_proj: linear(&format!("{p}.mlp.up_proj.weight")),
                    down_proj: linear(&format!("{p}.mlp.down_proj.weight")),
                }
            })
            .collect();
        let embed_tokens = get("model.embed_tokens.weight");
        let lm_head =
            if cfg.tie_word_embeddings { Linear::new(embed_tokens.clone()) } else { linear("lm_head.weight") };
        let inv_freq = rope_inv_freq(cfg, embed_tokens.device())?;
        Ok(Self { cfg: cfg.clone(), embed_tokens, blocks, norm: get("model.norm.weight"), lm_head, inv_freq })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// RoPE cos and sin `[len, head_dim / 2]` (f32) for positions `offset..offset + len`: the same values,
    /// bit for bit, as rows of a full `[max_position_embeddings, head_dim / 2]` table.
    fn rope_tables(&self, offset: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let max = self.cfg.max_position_embeddings;
        if offset + len > max {
            return Err(Error::Invalid(format!(
                "sequence of {} positions exceeds max_position_embeddings ({max})",
                offset + len
            )));
        }
        let device = self.inv_freq.device();
        let pos = Tensor::arange(offset as u32, (offset + len) as u32, device)?.to_dtype(DType::F32)?;
        let angles = pos.reshape((len, 1))?.broadcast_mul(&self.inv_freq)?;
        Ok((angles.cos()?, angles.sin()?))
    }

    /// Token ids must index the embedding: a clear error instead of an index-select failure deep inside.
    fn check_ids(&self, ids: &Tensor) -> Result<()> {
        if ids.elem_count() == 0 {
            return Ok(());
        }
        let max = ids.flatten_all()?.max(0)?.to_dtype(DType::U32)?.to_scalar::<u32>()? as usize;
        if max >= self.cfg.vocab_size {
            return Err(Error::Invalid(format!(
                "token id {max} is out of range for the model's vocabulary of {} (vocab_size)",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// Logits `[batch, seq, vocab]` for every position of `ids: [batch, seq]` (u32).
    pub fn forward(&self, ids: &Tensor, path: ExecPath) -> Result<Tensor> {
        self.forward_masked(ids, path, None)
    }

    /// [`Llama::forward`] with pruning masks at their insertion points (docs/method.md §1). A hidden mask needs the
    /// masked RMSNorm, which has a backward on every path (candle-nn has no fused one).
    pub fn forward_masked(&self, ids: &Tensor, path: ExecPath, masks: Option<&MaskValues>) -> Result<Tensor> {
        let hidden = self.hidden_states(ids, path, None, masks)?;
        Ok(self.lm_head.forward(&hidden, path)?)
    }

    /// Logits `[batch, vocab]` of the last position, reusing and extending `cache`.
    pub fn forward_incremental(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let path = ExecPath::Inference;
        let hidden = self.hidden_states(ids, path, Some(cache), None)?;
        let seq = hidden.dim(1)?;
        Ok(self.lm_head.forward(&hidden.narrow(1, seq - 1, 1)?, path)?.squeeze(1)?)
    }

    /// Logits `[n, vocab]` at `positions` (u32 flat indices `row * seq + column` into `ids: [batch, seq]`),
    /// whose tokens continue the positions in `cache` (extended by them): the continuations of prompts
    /// scored once, with the vocabulary projection spent only where a logit is read (inference path).
    pub fn logits_after(&self, ids: &Tensor, cache: &mut KvCache, positions: &Tensor) -> Result<Tensor> {
        let path = ExecPath::Inference;
        let hidden = self.hidden_states(ids, path, Some(cache), None)?;
        let picked = hidden.flatten_to(1)?.index_select(positions, 0)?;
        Ok(self.lm_head.forward(&picked, path)?)
    }

    /// Logits `[.., vocab]` of final-norm hidden states `[.., hidden]` (inference path).
    pub fn project(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden, ExecPath::Inference)?)
    }

    /// Final-norm hidden states `[batch, seq, hidden]`.
    pub fn hidden_states(
        &self,
        ids: &Tensor,
        path: ExecPath,
        mut cache: Option<&mut KvCache>,
        masks: Option<&MaskValues>,
    ) -> Result<Tensor> {
        let (_, seq) = ids.dims2()?;
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let (cos, sin) = self.rope_tables(offset, seq)?;
        self.check_ids(ids)?;
        if let Some(c) = cache.as_mut() {
            c.layers.resize(self.blocks.len(), None);
            if !c.pad.is_empty() && c.pad.len() != ids.dim(0)? {
                return Err(Error::Invalid(format!(
                    "a batch of {} rows continues a padded KV cache of {} rows",
                    ids.dim(0)?,
                    c.pad.len()
                )));
            }
        }
        let attention_mask = match cache.as_ref() {
            Some(c) => c.attention_mask(seq, self.dtype(), self.device())?,
            None => None,
        };
        let masks = masks.cloned().unwrap_or_default();
        masks.check_shapes(&self.cfg)?;
        let hidden = match masks.get(Family::Hidden) {
            Some(z) => {
                let kept = z.ne(0f64)?.to_dtype(DType::F32)?;
                let kept_count = kept.sum_all()?;
                Some(HiddenMask { z: z.to_dtype(self.dtype())?, kept, kept_count })
            }
            None => None,
        };
        let head_dims = self.head_scales(&masks)?;

        let (cos, sin) = (cos.to_dtype(self.dtype())?, sin.to_dtype(self.dtype())?);
        let mut x = self.embed_tokens.embedding(&ids.flatten_all()?)?.reshape((ids.dim(0)?, seq, ()))?;
        if let Some(h) = &hidden {
            x = x.broadcast_mul(&h.z)?;
        }
        // Per-layer masks in the compute dtype, cast once; row `i` is layer `i`'s.
        let in_dtype = |f: Family| masks.get(f).map(|z| z.to_dtype(self.dtype())).transpose();
        let (layer_z, int_z) = (in_dtype(Family::Layer)?, in_dtype(Family::Intermediate)?);
        let row = |t: &Option<Tensor>, i: usize| t.as_ref().map(|z| z.get(i)).transpose();
        for (i, block) in self.blocks.iter().enumerate() {
            let bm = BlockMasks {
                layer: row(&layer_z, i)?,
                head_dims: row(&head_dims, i)?,
                intermediate: row(&int_z, i)?,
                hidden: hidden.as_ref(),
            };
            let layer_cache =
                cache.as_mut().map(|c| LayerCache { kv: &mut c.layers[i], mask: attention_mask.as_ref() });
            x = self.block_forward(block, &x, &cos, &sin, path, layer_cache, &bm)?;
        }
        Ok(self.norm(&x, &self.norm, path, hidden.as_ref())?)
    }

    /// `[L, H * head_dim]`: each query head's combined head and KV-group mask, repeated over its dims.
    fn head_scales(&self, m: &MaskValues) -> Result<Option<Tensor>> {
        let (l, h, kv, hd) =
            (self.cfg.num_hidden_layers, self.cfg.num_attention_heads, self.cfg.num_kv_heads(), self.cfg.head_dim());
        let group = m
            .get(Family::KvGroup)
            .map(|g| g.unsqueeze(2)?.broadcast_as((l, kv, h / kv))?.reshape((l, h)))
            .transpose()?;
        let per_head = match (m.get(Family::Head), group) {
            (Some(a), Some(b)) => Some((a * b)?),
            (Some(a), None) => Some(a.clone()),
            (None, Some(b)) => Some(b),
            (None, None) => None,
        };
        Ok(per_head
            .map(|z| z.unsqueeze(2)?.broadcast_as((l, h, hd))?.reshape((l, h * hd))?.to_dtype(self.dtype()))
            .transpose()?)
    }

    /// RMSNorm, or with a hidden mask the masked RMSNorm of docs/method.md §1: the mean of squares runs over the
    /// kept dims only (those with z != 0), and the output is multiplied by z.
    fn norm(&self, x: &Tensor, weight: &Tensor, path: ExecPath, hidden: Option<&HiddenMask>) -> CResult<Tensor> {
        let Some(h) = hidden else {
            return ops::rms_norm(x, weight, self.cfg.rms_norm_eps, path);
        };
        match path.implementation(Op::MaskedRmsNorm, &[x]) {
            Impl::Shear => fused::rms_norm(x, weight, Some(&h.z), self.cfg.rms_norm_eps),
            Impl::Composed => {
                let dtype = x.dtype();
                let x32 = x.to_dtype(DType::F32)?;
                let var = x32.sqr()?.broadcast_mul(&h.kept)?.sum_keepdim(D::Minus1)?.broadcast_div(&h.kept_count)?;
                let normed = x32.broadcast_div(&(var + self.cfg.rms_norm_eps)?.sqrt()?)?;
                normed.to_dtype(dtype)?.broadcast_mul(weight)?.broadcast_mul(&h.z)
            }
            imp => ops::not_in_table(Op::MaskedRmsNorm, imp),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn block_forward(
        &self,
        b: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        path: ExecPath,
        cache: Option<LayerCache>,
        m: &BlockMasks,
    ) -> CResult<Tensor> {
        // Scale a sub-layer's output by the layer mask and the hidden mask.
        let scale_out = |y: Tensor| -> CResult<Tensor> {
            let y = match &m.layer {
                Some(z) => y.broadcast_mul(z)?,
                None => y,
            };
            match m.hidden {
                Some(h) => y.broadcast_mul(&h.z),
                None => Ok(y),
            }
        };
        let a = self.norm(x, &b.input_norm, path, m.hidden)?;
        let attn = scale_out(self.attention(b, &a, cos, sin, path, cache, m.head_dims.as_ref())?)?;
        let x = (x + attn)?;
        let h = self.norm(&x, &b.post_attention_norm, path, m.hidden)?;
        let up = b.up_proj.forward(&h, path)?;
        let up = match &m.intermediate {
            Some(z) => up.broadcast_mul(z)?,
            None => up,
        };
        let act = ops::swiglu(&b.gate_proj.forward(&h, path)?, &up, path)?;
        let mlp = scale_out(b.down_proj.forward(&act, path)?)?;
        x + mlp
    }

    /// Causal GQA attention (shear's kernel, or [`Llama::composed_attention`]), then `o_proj`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        b: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        path: ExecPath,
        cache: Option<LayerCache>,
        head_dims: Option<&Tensor>,
    ) -> CResult<Tensor> {
        let op = if cache.is_some() { Op::CachedAttention } else { Op::Attention };
        let ctx = match path.implementation(op, &[x]) {
            Impl::Shear => {
                let (q, k, v) = (b.q_proj.forward(x, path)?, b.k_proj.forward(x, path)?, b.v_proj.forward(x, path)?);
                let (h, kv) = (self.cfg.num_attention_heads, self.cfg.num_kv_heads());
                fused::attention(&q, &k, &v, cos, sin, h, kv)?
            }
            Impl::Composed => self.composed_attention(b, x, cos, sin, path, cache)?,
            imp => ops::not_in_table(op, imp),
        };
        let ctx = match head_dims {
            Some(z) => ctx.broadcast_mul(z)?,
            None => ctx,
        };
        b.o_proj.forward(&ctx, path)
    }

    /// The attention context `[b, seq, H * head_dim]` composed from the table's other ops, extending
    /// `cache` when given. Query heads are grouped by the KV head they share (`h / group_size`, as in HF's
    /// `repeat_kv`), and each group is multiplied against its KV head directly, so K and V are never
    /// copied `group_size` times.
    fn composed_attention(
        &self,
        b: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        path: ExecPath,
        cache: Option<LayerCache>,
    ) -> CResult<Tensor> {
        let (bsz, seq, _) = x.dims3()?;
        let (h, kv, hd) = (self.cfg.num_attention_heads, self.cfg.num_kv_heads(), self.cfg.head_dim());
        let g = h / kv;
        let q = b.q_proj.forward(x, path)?.reshape((bsz, seq, h, hd))?.transpose(1, 2)?;
        let k = b.k_proj.forward(x, path)?.reshape((bsz, seq, kv, hd))?.transpose(1, 2)?;
        let v = b.v_proj.forward(x, path)?.reshape((bsz, seq, kv, hd))?.transpose(1, 2)?.contiguous()?;
        let q = ops::rope(&q.contiguous()?, cos, sin, path)?;
        let k = ops::rope(&k.contiguous()?, cos, sin, path)?;
        let mask = cache.as_ref().and_then(|c| c.mask).cloned();
        let (k, v) = match cache {
            Some(LayerCache { kv: slot, .. }) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let kv_len = k.dim(2)?;
        // [b, kv, g*seq, hd] @ [b, kv, hd, kv_len] -> [b, kv, g*seq, kv_len]: the g query heads of a group
        // stacked over the rows, each row at position (kv_len - seq) + row % seq.
        let scores = q.reshape((bsz, kv, g * seq, hd))?.matmul(&k.t()?)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let probs = match &mask {
            Some(m) => ops::masked_softmax(&scores, scale, seq, m, path)?,
            None => ops::causal_softmax(&scores, scale, seq, kv_len - seq, path)?,
        };
        let ctx = probs.matmul(&v)?; // [b, kv, g*seq, hd]
        ctx.reshape((bsz, h, seq, hd))?.transpose(1, 2)?.reshape((bsz, seq, h * hd))
    }

    /// Mean next-token cross-entropy of `ids: [batch, seq]`: positions `0..seq-1` predict `1..seq` (the
    /// released code's label roll, with the last position ignored). The training objective.
    pub fn lm_loss(&self, ids: &Tensor, path: ExecPath, masks: Option<&MaskValues>) -> Result<Tensor> {
        let seq = ids.dim(1)?;
        if seq < 2 {
            return Err(Error::Invalid(format!("a training sequence needs at least 2 tokens, got {seq}")));
        }
        let logits = self.forward_masked(&ids.narrow(1, 0, seq - 1)?, path, masks)?;
        Ok(nll_from_logits(&logits, &ids.narrow(1, 1, seq - 1)?, path)?.mean_all()?)
    }

    /// Per-position cross-entropy (natural log) of `targets` under the logits of `ids`, both `[batch, seq]`,
    /// computed in f32: `[batch, seq]`.
    pub fn token_nll(&self, ids: &Tensor, targets: &Tensor, path: ExecPath) -> Result<Tensor> {
        nll_from_logits(&self.forward(ids, path)?, targets, path)
    }
}

/// `-log softmax(logits)[target]` per position, in f32: `[batch, seq, vocab]`, `[batch, seq]` -> `[batch, seq]`.
pub fn nll_from_logits(logits: &Tensor, targets: &Tensor, path: ExecPath) -> Result<Tensor> {
    match path.implementation(Op::CrossEntropy, &[logits]) {
        Impl::Shear => {
            let (b, s, v) = logits.dims3()?;
            let nll = fused::cross_entropy(&logits.reshape((b * s, v))?, &targets.flatten_all()?)?;
            Ok(nll.reshape((b, s))?)
        }
        Impl::Composed => {
            let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
            Ok(logp.gather(&targets.contiguous()?.unsqueeze(D::Minus1)?, D::Minus1)?.squeeze(D::Minus1)?.neg()?)
        }
        imp => ops::not_in_table(Op::CrossEntropy, imp),
    }
}

/// Wrap every weight in a `Var` so a model built from the returned map is trainable: gradients of a loss
/// computed on [`ExecPath::Training`] reach these vars. A var is a copy; each source tensor is
/// dropped as soon as it is copied, so a caller that hands over the only reference does not keep a second
/// copy of the model for the whole run (538 MB for SmolLM2).
pub fn trainable(weights: TensorMap) -> Result<(BTreeMap<String, Var>, TensorMap)> {
    let mut vars = BTreeMap::new();
    let mut tensors = TensorMap::new();
    for (name, t) in weights {
        let v = Var::from_tensor(&t)?;
        drop(t);
        tensors.insert(name.clone(), v.as_tensor().clone());
        vars.insert(name, v);
    }
    Ok((vars, tensors))
}

/// HF's default RoPE: `inv_freq[i] = theta^(-2i/head_dim)`, in f32 (angles are `pos * inv_freq`).
fn rope_inv_freq(cfg: &LlamaConfig, device: &Device) -> Result<Tensor> {
    let hd = cfg.head_dim();
    let theta = cfg.rope_theta();
    let inv_freq: Vec<f32> = (0..hd / 2).map(|i| (1.0 / theta.powf(2.0 * i as f64 / hd as f64)) as f32).collect();
    Ok(Tensor::from_vec(inv_freq, (1, hd / 2), device)?)
}

/// A randomly initialized model (normal(0, 0.02) weights, norms near 1) for tests and `shear init`.
pub fn random_weights(cfg: &LlamaConfig, seed: u64, dtype: DType, device: &Device) -> Result<TensorMap> {
    // The shape comes from a config or flags, not from a file: refuse what cannot be allocated, rather
    // than abort inside the allocator.
    let bytes = cfg.param_counts().total() as f64 * DType::F32.size_in_bytes() as f64;
    if let Some(limit) = allocatable_bytes().filter(|&l| bytes > l) {
        return Err(Error::Invalid(format!(
            "a model of {:.2}B parameters needs {:.1} GB, more than the {:.1} GB this process can allocate",
            cfg.param_counts().total() as f64 / 1e9,
            bytes / 1e9,
            limit / 1e9
        )));
    }
    let mut rng = crate::rng::Rng::new(seed);
    let mut out = TensorMap::new();
    for (name, shape) in cfg.tensor_shapes() {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            // Not exactly 1, so tests notice a norm weight that is dropped or misplaced.
            (0..n).map(|_| (1.0 + 0.1 * (rng.uniform() - 0.5)) as f32).collect()
        } else {
            (0..n).map(|_| (rng.normal() * 0.02) as f32).collect()
        };
        out.insert(name, Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?);
    }
    Ok(out)
}

/// Memory this process can still allocate: the smaller of the system's available memory and the
/// address-space limit (`ulimit -v`), where Linux reports them.
fn allocatable_bytes() -> Option<f64> {
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? * 1024.0)
    });
    let address_space = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
        let line = l.lines().find(|l| l.starts_with("Max address space"))?;
        line.split_whitespace().nth(3)?.parse::<f64>().ok() // "unlimited" does not parse
    });
    match (available, address_space) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
