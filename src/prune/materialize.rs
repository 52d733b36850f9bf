//! Fold deterministic mask values into the weights and slice out what the masks removed (docs/method.md §5), giving
//! a dense model of exactly the target shape that computes what the masked model computes.
//!
//! Folding (a kept entry's value is sigmoid(1.2·log-α), not 1):
//! - head × KV-group masks scale each query head's columns of `o_proj` (with GQA the heads of a group
//!   share one V, so the reference's fold into `v_proj` rows would be wrong);
//! - the layer mask scales `o_proj` and `down_proj` as a whole;
//! - the intermediate mask scales the rows of `up_proj` (never `gate_proj`);
//! - the hidden mask scales the output rows of `o_proj` and `down_proj`, the block norms' weights and the
//!   embedding's columns; the LM head sees it once, through the final norm (untied) or through the
//!   shared embedding matrix (tied; the final norm then stays unscaled). The reference folds it into both
//!   the final norm and the LM head, applying it twice (its documented bug); we do not.

use candle_core::{Device, Tensor};

use super::target::TargetShape;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::family::{Family, MaskValues};
use crate::model::{check_weights, TensorMap};

fn kept(values: &[f32]) -> Vec<u32> {
    values.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(i, _)| i as u32).collect()
}

fn select(t: &Tensor, dim: usize, idx: &[u32]) -> Result<Tensor> {
    if idx.len() == t.dim(dim)? {
        return Ok(t.clone());
    }
    Ok(t.index_select(&Tensor::new(idx, t.device())?, dim)?)
}

/// Multiply rows (dim 0) of a 2-D tensor, or the entries of a 1-D one, by `scale`.
fn scale_rows(t: &Tensor, scale: &[f32]) -> Result<Tensor> {
    let s = Tensor::new(scale, t.device())?.to_dtype(t.dtype())?;
    Ok(match t.rank() {
        1 => (t * s)?,
        _ => t.broadcast_mul(&s.unsqueeze(1)?)?,
    })
}

fn scale_cols(t: &Tensor, scale: &[f32]) -> Result<Tensor> {
    let s = Tensor::new(scale, t.device())?.to_dtype(t.dtype())?;
    Ok(t.broadcast_mul(&s.unsqueeze(0)?)?)
}

/// Fold `masks` (deterministic, with exactly `target`'s counts) into `weights` of `source`.
pub fn materialize(
    source: &LlamaConfig,
    weights: &TensorMap,
    masks: &MaskValues,
    target: &TargetShape,
) -> Result<(LlamaConfig, TensorMap)> {
    check_weights(source, weights)?;
    let (l, h, kv, hd, m, d) = (
        source.num_hidden_layers,
        source.num_attention_heads,
        source.num_kv_heads(),
        source.head_dim(),
        source.intermediate_size,
        source.hidden_size,
    );
    let g = h / kv;
    let z_layer = masks.values_or_ones(Family::Layer, l)?;
    let z_group = masks.values_or_ones(Family::KvGroup, l * kv)?;
    let z_head = masks.values_or_ones(Family::Head, l * h)?;
    let z_int = masks.values_or_ones(Family::Intermediate, l * m)?;
    let z_hid = masks.values_or_ones(Family::Hidden, d)?;
    let hid_idx = kept(&z_hid);
    let layers_kept = kept(&z_layer);

    let non_uniform = |what: String| {
        Error::Invalid(format!("masks are not uniform over layers ({what}); materialization needs target-count masks"))
    };
    if layers_kept.len() != target.layers {
        return Err(non_uniform(format!("{} layers kept, target {}", layers_kept.len(), target.layers)));
    }
    if hid_idx.len() != target.hidden {
        return Err(non_uniform(format!("{} hidden dims kept, target {}", hid_idx.len(), target.hidden)));
    }

    let get = |name: &str| weights[name].clone();
    let mut out = TensorMap::new();
    let emb = scale_cols(&get("model.embed_tokens.weight"), &z_hid)?;
    out.insert("model.embed_tokens.weight".into(), select(&emb, 1, &hid_idx)?);

    for (new_i, &old_i) in layers_kept.iter().enumerate() {
        let li = old_i as usize;
        let p = format!("model.layers.{li}");
        let q = format!("model.layers.{new_i}");
        let zl = z_layer[li];

        // Attention: a head's combined scale; kept heads grouped by kept KV group, in order.
        let head_scale: Vec<f32> = (0..h).map(|hh| z_head[li * h + hh] * z_group[li * kv + hh / g]).collect();
        let groups: Vec<usize> = (0..kv).filter(|&gg| z_group[li * kv + gg] != 0.0).collect();
        let heads: Vec<usize> =
            groups.iter().flat_map(|&gg| (gg * g..(gg + 1) * g).filter(|&hh| head_scale[hh] != 0.0)).collect();
        if groups.len() != target.kv_heads || heads.len() != target.heads {
            return Err(non_uniform(format!(
                "layer {li} keeps {} KV groups and {} query heads, target {} and {}",
                groups.len(),
                heads.len(),
                target.kv_heads,
                target.heads
            )));
        }
        for &gg in &groups {
            let n = heads.iter().filter(|&&hh| hh / g == gg).count();
            if n != target.heads / target.kv_heads {
                return Err(non_uniform(format!("layer {li}, KV group {gg} keeps {n} query heads")));
            }
        }
        let rows_of = |units: &[usize]| -> Vec<u32> {
            units.iter().flat_map(|&u| (u * hd..(u + 1) * hd).map(|r| r as u32)).collect()
        };
        let head_rows = rows_of(&heads);
        let group_rows = rows_of(&groups);

        let wq = select(&get(&format!("{p}.self_attn.q_proj.weight")), 0, &head_rows)?;
        let wk = select(&get(&format!("{p}.self_attn.k_proj.weight")), 0, &group_rows)?;
        let wv = select(&get(&format!("{p}.self_attn.v_proj.weight")), 0, &group_rows)?;
        out.insert(format!("{q}.self_attn.q_proj.weight"), select(&wq, 1, &hid_idx)?);
        out.insert(format!("{q}.self_attn.k_proj.weight"), select(&wk, 1, &hid_idx)?);
        out.insert(format!("{q}.self_attn.v_proj.weight"), select(&wv, 1, &hid_idx)?);

        let col_scale: Vec<f32> = (0..h * hd).map(|c| head_scale[c / hd] * zl).collect();
        let wo = scale_rows(&scale_cols(&get(&format!("{p}.self_attn.o_proj.weight")), &col_scale)?, &z_hid)?;
        out.insert(format!("{q}.self_attn.o_proj.weight"), select(&select(&wo, 1, &head_rows)?, 0, &hid_idx)?);

        // MLP.
        let zi = &z_int[li * m..(li + 1) * m];
        let int_idx = kept(zi);
        if int_idx.len() != target.intermediate {
            return Err(non_uniform(format!("layer {li} keeps {} intermediate dims", int_idx.len())));
        }
        let up = scale_rows(&get(&format!("{p}.mlp.up_proj.weight")), zi)?;
        let gate = get(&format!("{p}.mlp.gate_proj.weight"));
        out.insert(format!("{q}.mlp.up_proj.weight"), select(&select(&up, 0, &int_idx)?, 1, &hid_idx)?);
        out.insert(format!("{q}.mlp.gate_proj.weight"), select(&select(&gate, 0, &int_idx)?, 1, &hid_idx)?);
        let down = scale_rows(&(get(&format!("{p}.mlp.down_proj.weight")) * zl as f64)?, &z_hid)?;
        out.insert(format!("{q}.mlp.down_proj.weight"), select(&select(&down, 1, &int_idx)?, 0, &hid_idx)?);

        for norm in ["input_layernorm", "post_attention_layernorm"] {
            let w = scale_rows(&get(&format!("{p}.{norm}.weight")), &z_hid)?;
            out.insert(format!("{q}.{norm}.weight"), select(&w, 0, &hid_idx)?);
        }
    }

    let final_norm = get("model.norm.weight");
    if source.tie_word_embeddings {
        // z_hid already lives in the shared embedding matrix, i.e. in the LM head.
        out.insert("model.norm.weight".into(), select(&final_norm, 0, &hid_idx)?);
    } else {
        out.insert("model.norm.weight".into(), select(&scale_rows(&final_norm, &z_hid)?, 0, &hid_idx)?);
        out.insert("lm_head.weight".into(), select(&get("lm_head.weight"), 1, &hid_idx)?);
    }

    let cfg = target.config(source);
    for t in out.values_mut() {
        *t = t.contiguous()?;
    }
    check_weights(&cfg, &out)?;
    Ok((cfg, out))
}

/// Deterministic masks with exactly `target`'s counts from random log-α in [−4, 4] (so kept values spread
/// over (0, 1)), for equivalence tests and demonstrations.
pub fn random_target_masks(source: &LlamaConfig, target: &TargetShape, seed: u64) -> Result<MaskValues> {
    use super::masks::{Deterministic, MaskSet};
    let mut rng = crate::rng::Rng::new(seed);
    let masks = MaskSet::new(source, target, &mut rng, &Device::Cpu)?;
    for f in &masks.families {
        let n = f.log_alpha.elem_count();
        let v: Vec<f32> = (0..n).map(|_| (rng.uniform() * 8.0 - 4.0) as f32).collect();
        f.log_alpha.set(&Tensor::from_vec(v, f.layout.shape.clone(), &Device::Cpu)?)?;
    }
    masks.deterministic(Deterministic::Target)
}
