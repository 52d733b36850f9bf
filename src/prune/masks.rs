//! The learnable masks: one log-α tensor per family the target prunes ([`crate::family`]), GQA-aware.
//!
//! | family | log-α shape | a row (where counts are enforced) | kept per row at materialization |
//! |---|---|---|---|
//! | `layer` | `[L]` | all layers | `layers` |
//! | `kv_group` | `[L, KV]` | one layer's KV groups | `kv_heads` |
//! | `head` | `[L, H]` | one KV group's query heads | `heads / kv_heads` |
//! | `intermediate` | `[L, m]` | one layer | `intermediate` |
//! | `hidden` | `[d]` | all hidden dims | `hidden` |
//!
//! A query head is scaled by its own mask times its group's mask, so every kept group keeps the same
//! number of query heads and the result is a valid uniform `LlamaConfig`. For an MHA source (one query
//! head per group) head pruning *is* group pruning. A family exists only if the target is smaller than the
//! source along it.
//!
//! ## Where the constraint acts
//!
//! The paper's Lagrangian has one term per layer for heads and MLP dims (§2 of the paper:
//! `L̃_head,j = λ·(Σ_h z_j,h − H_T) + φ·(Σ_h z_j,h − H_T)²`, λ1 and λ2 here), λ and φ shared by the layers.
//! With GQA the materialized config also fixes the count *per KV group*, so shear writes the head term once
//! per (layer, KV group) instead: the same equation one level finer, the same shared multipliers. A
//! per-layer term only constrains the sum over a layer's groups; its quadratic part has no gradient towards
//! moving a head from a crowded group to a sparse one, and the masks then settle with, say, 3 + 2 + 1 heads
//! where materialization needs 2 + 2 + 2 (it then keeps a head the masks scored ≈ 0 and drops one scored
//! ≈ 1). Per group, `λ2·(s_g − t)²` pulls each group to its own count. Per-group multipliers would add state
//! and checkpoint shape for no gain we could measure (`scripts/reference/gqa_head_constraint.py`), and a
//! parametrization shared across groups would force head `i` of every group to live or die together.
//!
//! When the `kv_group` family prunes whole groups, a group's head term is weighted by that group's keep
//! probability (detached): the heads of a group on its way out stop counting, and the head constraint
//! cannot push a group out to escape its own term.

use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use super::hard_concrete as hc;
use super::target::TargetShape;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::family::{Family, MaskScores, MaskValues};
use crate::rng::Rng;

/// How a deterministic mask decides how many entries of a row are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deterministic {
    /// The expected number of zeros, `round(n − Σ score)`: the pruning-time evals (the structure the
    /// masks currently describe).
    Expected,
    /// Exactly the target count: materialization.
    Target,
}

/// Layout of one family: its log-α shape and how it splits into rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyLayout {
    pub family: Family,
    pub shape: Vec<usize>,
    pub rows: usize,
    pub row_len: usize,
    /// Entries kept per row in the target.
    pub target_kept: usize,
    /// Rows per constraint element: the Lagrangian is per layer for kv_group / intermediate, per
    /// (layer, KV group) for head (one row each), over the whole family for layer / hidden.
    pub rows_per_element: usize,
}

impl FamilyLayout {
    /// Target sparsity of the family, `1 − kept / row_len`.
    pub fn target_sparsity(&self) -> f64 {
        1.0 - self.target_kept as f64 / self.row_len as f64
    }
}

/// The families needed to cut `target` out of `source`.
pub fn layouts(source: &LlamaConfig, target: &TargetShape) -> Vec<FamilyLayout> {
    let (l, d, m) = (source.num_hidden_layers, source.hidden_size, source.intermediate_size);
    let (kv, g) = (source.num_kv_heads(), source.group_size());
    let t_group = target.heads / target.kv_heads;
    let mut out = vec![];
    let mut add = |family: Family, rows, row_len, target_kept, rows_per_element, prunes: bool| {
        if prunes {
            let shape = family.shape(source);
            out.push(FamilyLayout { family, shape, rows, row_len, target_kept, rows_per_element });
        }
    };
    add(Family::Layer, 1, l, target.layers, 1, target.layers < l);
    add(Family::KvGroup, l, kv, target.kv_heads, 1, target.kv_heads < kv);
    add(Family::Head, l * kv, g, t_group, 1, t_group < g);
    add(Family::Intermediate, l, m, target.intermediate, 1, target.intermediate < m);
    add(Family::Hidden, 1, d, target.hidden, 1, target.hidden < d);
    out
}

/// One family's learnable log-α.
pub struct MaskFamily {
    pub layout: FamilyLayout,
    pub log_alpha: Var,
}

impl MaskFamily {
    /// Deterministic mask values, flattened: per row, the `k` entries with the smallest soft values are 0.
    fn deterministic(&self, mode: Deterministic) -> Result<Vec<f32>> {
        let la: Vec<f32> = self.log_alpha.as_tensor().flatten_all()?.to_vec1()?;
        let mut values = Vec::with_capacity(la.len());
        for row in la.chunks(self.layout.row_len) {
            let zeros = match mode {
                Deterministic::Target => self.layout.row_len - self.layout.target_kept,
                Deterministic::Expected => hc::expected_zeros(row),
            };
            values.extend(hc::deterministic_row(row, zeros));
        }
        Ok(values)
    }
}

/// Whether a family's scores agree with what materialization keeps ([`MaskSet::decisions`]). A decisive,
/// balanced run has `kept_below_half = dropped_above_half = unbalanced_rows = 0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub family: Family,
    /// Rows counted (those inside kept structures), and the entries kept in them.
    pub rows: usize,
    pub kept: usize,
    /// Kept entries the masks give a keep probability P(z > 0) below 0.5.
    pub kept_below_half: usize,
    /// Dropped entries with P(z > 0) above 0.5.
    pub dropped_above_half: usize,
    /// Rows whose number of entries with P(z > 0) > 0.5 is not the target count.
    pub unbalanced_rows: usize,
}

/// The learnable masks of a pruning run.
pub struct MaskSet {
    pub families: Vec<MaskFamily>,
    source: LlamaConfig,
    target: TargetShape,
}

/// Per-family expected sparsity, one entry per constraint element (per layer, per (layer, KV group) for
/// heads, or a single one).
pub struct ExpectedSparsity {
    pub family: Family,
    /// `[elements]`, differentiable in log-α.
    pub sparsity: Tensor,
    /// `[elements]` weights of the elements in the constraint's mean (no gradient): for heads when KV groups
    /// are pruned too, each group's keep probability; `None` is equal weights.
    pub weights: Option<Tensor>,
}

impl ExpectedSparsity {
    /// The (weighted) mean over elements: what the metrics report as the family's expected sparsity.
    pub fn mean(&self) -> Result<f64> {
        Ok(weighted_mean(&self.sparsity, self.weights.as_ref())?.to_scalar::<f32>()? as f64)
    }
}

/// `Σ w·x / Σ w` over all elements, or the plain mean without weights.
pub fn weighted_mean(x: &Tensor, weights: Option<&Tensor>) -> Result<Tensor> {
    Ok(match weights {
        None => x.mean_all()?,
        Some(w) => ((x * w)?.sum_all()? / w.sum_all()?.to_scalar::<f32>()?.max(f32::MIN_POSITIVE) as f64)?,
    })
}

impl MaskSet {
    /// Fresh masks: log-α ~ Normal(5, 0.01) as in the reference code (clamped to ln 100 at first use).
    pub fn new(source: &LlamaConfig, target: &TargetShape, rng: &mut Rng, device: &Device) -> Result<Self> {
        target.validate(source)?;
        let families = layouts(source, target)
            .into_iter()
            .map(|layout| {
                let n: usize = layout.shape.iter().product();
                let init: Vec<f32> = (0..n).map(|_| (hc::LOG_ALPHA_INIT + 0.01 * rng.normal()) as f32).collect();
                let log_alpha = Var::from_tensor(&Tensor::from_vec(init, layout.shape.clone(), device)?)?;
                Ok(MaskFamily { layout, log_alpha })
            })
            .collect::<Result<_>>()?;
        Ok(Self { families, source: source.clone(), target: *target })
    }

    /// Masks with the given log-α values (e.g. from a checkpoint), checked against the layouts.
    pub fn from_log_alphas(
        source: &LlamaConfig,
        target: &TargetShape,
        mut values: std::collections::BTreeMap<Family, Tensor>,
    ) -> Result<Self> {
        target.validate(source)?;
        let families = layouts(source, target)
            .into_iter()
            .map(|layout| {
                let t = values.remove(&layout.family).ok_or_else(|| {
                    Error::Invalid(format!("no log-alpha for the `{}` mask family", layout.family.name()))
                })?;
                if t.dims() != layout.shape.as_slice() {
                    return Err(Error::Shape {
                        name: format!("{} log-alpha", layout.family.name()),
                        expected: layout.shape.clone(),
                        found: t.dims().to_vec(),
                    });
                }
                Ok(MaskFamily { layout, log_alpha: Var::from_tensor(&t.to_dtype(DType::F32)?)? })
            })
            .collect::<Result<_>>()?;
        Ok(Self { families, source: source.clone(), target: *target })
    }

    pub fn source(&self) -> &LlamaConfig {
        &self.source
    }
    pub fn target(&self) -> &TargetShape {
        &self.target
    }
    pub fn vars(&self) -> Vec<Var> {
        self.families.iter().map(|f| f.log_alpha.clone()).collect()
    }
    pub fn get(&self, family: Family) -> Option<&MaskFamily> {
        self.families.iter().find(|f| f.layout.family == family)
    }

    /// Clamp every log-α to ±ln 100 in place. The reference clamps before every use (pitfall 5); doing
    /// it here once per step, before sampling and before the Lagrangian, is the same thing.
    pub fn clamp_in_place(&self) -> Result<()> {
        for f in &self.families {
            f.log_alpha.set(&hc::clamp_tensor(f.log_alpha.as_tensor())?)?;
        }
        Ok(())
    }

    /// One training sample of every family (fresh noise from `rng`), differentiable in log-α. Call
    /// [`MaskSet::clamp_in_place`] first: clamping again here would halve the gradient of entries sitting
    /// exactly on the bound (candle splits a max/min gradient between equal operands).
    pub fn sample(&self, rng: &mut Rng) -> Result<MaskValues> {
        let mut out = MaskValues::default();
        for f in &self.families {
            let la = f.log_alpha.as_tensor();
            let n = la.elem_count();
            let u: Vec<f32> = (0..n).map(|_| rng.uniform() as f32).collect();
            let u = Tensor::from_vec(u, la.shape(), la.device())?;
            out.insert(f.layout.family, hc::sample_tensor(la, &u)?);
        }
        Ok(out)
    }

    /// Deterministic masks (no gradient): per row, the `k` entries with the smallest soft values are 0
    /// and the others keep sigmoid(1.2 · log-α).
    pub fn deterministic(&self, mode: Deterministic) -> Result<MaskValues> {
        let mut out = MaskValues::default();
        for f in &self.families {
            let values = f.deterministic(mode)?;
            let device = f.log_alpha.device();
            out.insert(f.layout.family, Tensor::from_vec(values, f.layout.shape.clone(), device)?);
        }
        Ok(out)
    }

    /// How well each family's scores agree with what materialization keeps (target-count masks), counted
    /// inside the structures the materialized model has: heads of kept layers and kept KV groups, MLP dims
    /// and KV groups of kept layers.
    pub fn decisions(&self) -> Result<Vec<Decision>> {
        // One target-count mask per family; the layer and group masks also say which rows count.
        let z: Vec<Vec<f32>> =
            self.families.iter().map(|f| f.deterministic(Deterministic::Target)).collect::<Result<_>>()?;
        let kept_of = |family: Family| {
            let i = self.families.iter().position(|f| f.layout.family == family)?;
            Some(z[i].iter().map(|&v| v != 0.0).collect::<Vec<bool>>())
        };
        let (layer_kept, group_kept) = (kept_of(Family::Layer), kept_of(Family::KvGroup));
        let on = |kept: &Option<Vec<bool>>, i: usize| kept.as_ref().is_none_or(|k| k[i]);
        let groups_per_layer = self.source.num_kv_heads();
        self.families
            .iter()
            .zip(&z)
            .map(|(f, z)| {
                let layout = &f.layout;
                let la: Vec<f32> = f.log_alpha.as_tensor().flatten_all()?.to_vec1()?;
                let mut d = Decision {
                    family: layout.family,
                    rows: 0,
                    kept: 0,
                    kept_below_half: 0,
                    dropped_above_half: 0,
                    unbalanced_rows: 0,
                };
                for (row, (la, z)) in la.chunks(layout.row_len).zip(z.chunks(layout.row_len)).enumerate() {
                    let parent_kept = match layout.family {
                        Family::Layer | Family::Hidden => true,
                        Family::KvGroup | Family::Intermediate => on(&layer_kept, row),
                        Family::Head => on(&layer_kept, row / groups_per_layer) && on(&group_kept, row),
                    };
                    if !parent_kept {
                        continue;
                    }
                    d.rows += 1;
                    let mut above_half = 0;
                    for (&la, &z) in la.iter().zip(z) {
                        let likely = hc::score(la as f64) > 0.5;
                        above_half += likely as usize;
                        if z != 0.0 {
                            d.kept += 1;
                            d.kept_below_half += !likely as usize;
                        } else {
                            d.dropped_above_half += likely as usize;
                        }
                    }
                    d.unbalanced_rows += (above_half != layout.target_kept) as usize;
                }
                Ok(d)
            })
            .collect()
    }

    /// Expected sparsity of every family, per constraint element: `1 − mean(score)` over each layer
    /// (kv_group, intermediate), each KV group of each layer (head), or the whole family (layer, hidden).
    /// Differentiable; call [`MaskSet::clamp_in_place`] first.
    pub fn expected_sparsity(&self) -> Result<Vec<ExpectedSparsity>> {
        let group_scores = match self.get(Family::KvGroup) {
            Some(g) => Some(hc::score_tensor(g.log_alpha.as_tensor())?.flatten_all()?.detach()),
            None => None,
        };
        self.families
            .iter()
            .map(|f| {
                let scores = hc::score_tensor(f.log_alpha.as_tensor())?;
                let per_element = f.layout.row_len * f.layout.rows_per_element;
                let elements = f.layout.rows / f.layout.rows_per_element;
                let kept = scores.reshape((elements, per_element))?.mean(1)?;
                // Head elements are (layer, group) in the same order as the kv_group log-α.
                let weights = if f.layout.family == Family::Head { group_scores.clone() } else { None };
                Ok(ExpectedSparsity { family: f.layout.family, sparsity: kept.affine(-1.0, 1.0)?, weights })
            })
            .collect()
    }

    /// Scores P(z > 0) of every family, host-side (for logging and reports).
    pub fn scores(&self) -> Result<MaskScores> {
        let mut s = MaskScores::ones(&self.source);
        for f in &self.families {
            let la: Vec<f32> = f.log_alpha.as_tensor().flatten_all()?.to_vec1()?;
            let v: Vec<f64> = la.iter().map(|&x| hc::score(x as f64)).collect();
            s.set(f.layout.family, v);
        }
        Ok(s)
    }
}

impl MaskScores {
    /// Expected number of attention + MLP parameters (the prunable part: no embeddings, norms or LM head),
    /// GQA-aware: a query head costs its `q_proj` rows and `o_proj` columns (2·d·head_dim), a KV group its
    /// `k_proj` and `v_proj` rows (2·d·head_dim), an intermediate dim 3·d; `d` is the expected number of kept
    /// hidden dims, and everything in a layer is scaled by its layer score.
    pub fn expected_params(&self, cfg: &LlamaConfig) -> f64 {
        let (l, h, kv, hd, m) =
            (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim(), cfg.intermediate_size);
        let g = h / kv;
        let (layer, kv_group, head) = (self.of(Family::Layer), self.of(Family::KvGroup), self.of(Family::Head));
        let intermediate = self.of(Family::Intermediate);
        let d: f64 = self.of(Family::Hidden).iter().sum();
        let costs = ParamCosts::new(d, hd);
        (0..l)
            .map(|l_i| {
                let attention: f64 = (0..kv)
                    .map(|group| {
                        let heads: f64 = (0..g).map(|i| head[l_i * h + group * g + i]).sum();
                        kv_group[l_i * kv + group] * (costs.kv_group + costs.query_head * heads)
                    })
                    .sum();
                let mlp: f64 = intermediate[l_i * m..(l_i + 1) * m].iter().sum::<f64>() * costs.intermediate;
                layer[l_i] * (attention + mlp)
            })
            .sum()
    }
}

/// Parameters removed with one unit of each family (for a hidden width `d`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ParamCosts {
    pub query_head: f64,
    pub kv_group: f64,
    pub intermediate: f64,
}

impl ParamCosts {
    pub fn new(d: f64, head_dim: usize) -> Self {
        Self { query_head: 2.0 * d * head_dim as f64, kv_group: 2.0 * d * head_dim as f64, intermediate: 3.0 * d }
    }
}

/// Attention + MLP parameters of a config: what [`MaskScores::expected_params`] gives with all ones.
pub fn prunable_params(cfg: &LlamaConfig) -> f64 {
    let pc = cfg.param_counts();
    (pc.layers * (pc.per_layer_attention + pc.per_layer_mlp)) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> LlamaConfig {
        LlamaConfig::new(49152, 576, 1536, 30, 9, 3, 64, true)
    }

    #[test]
    fn layouts_follow_the_target() {
        let target = TargetShape { layers: 24, hidden: 384, heads: 6, kv_heads: 3, intermediate: 1024 };
        let l = layouts(&smollm2(), &target);
        let fams: Vec<Family> = l.iter().map(|f| f.family).collect();
        // All 3 KV groups stay: no kv_group family.
        assert_eq!(fams, vec![Family::Layer, Family::Head, Family::Intermediate, Family::Hidden]);
        let head = &l[1];
        assert_eq!((head.rows, head.row_len, head.target_kept, head.rows_per_element), (90, 3, 2, 1));
        assert!((head.target_sparsity() - 1.0 / 3.0).abs() < 1e-12);
        let small = TargetShape { layers: 16, hidden: 256, heads: 4, kv_heads: 2, intermediate: 640 };
        assert!(layouts(&smollm2(), &small).iter().any(|f| f.family == Family::KvGroup));
    }

    /// Parameter accounting with 0/1 masks of a target's shape gives exactly the target config's count
    /// (GQA, a KV group removed, hidden pruned); with all ones, the source's.
    #[test]
    fn expected_params_with_binary_masks_is_the_target_size() {
        let src = smollm2();
        assert_eq!(MaskScores::ones(&src).expected_params(&src), prunable_params(&src));
        let target = TargetShape { layers: 16, hidden: 256, heads: 4, kv_heads: 2, intermediate: 640 };
        let mut rng = Rng::new(0);
        let masks = MaskSet::new(&src, &target, &mut rng, &Device::Cpu).unwrap();
        // Random log-α so the kept set is arbitrary.
        for f in &masks.families {
            let n = f.log_alpha.elem_count();
            let v: Vec<f32> = (0..n).map(|_| (rng.uniform() * 8.0 - 4.0) as f32).collect();
            f.log_alpha.set(&Tensor::from_vec(v, f.layout.shape.clone(), &Device::Cpu).unwrap()).unwrap();
        }
        let det = masks.deterministic(Deterministic::Target).unwrap();
        let ind = MaskScores::indicators(&src, &det).unwrap();
        assert_eq!(ind.expected_params(&src), prunable_params(&target.config(&src)));
        assert_eq!(ind.of(Family::Hidden).iter().sum::<f64>(), 256.0);
        // Every kept group keeps 2 heads; exactly 2 groups per layer are kept.
        for layer in 0..30 {
            let kept_groups = (0..3).filter(|g| ind.of(Family::KvGroup)[layer * 3 + g] == 1.0).count();
            assert_eq!(kept_groups, 2);
            for g in 0..3 {
                assert_eq!((0..3).filter(|i| ind.of(Family::Head)[layer * 9 + g * 3 + i] == 1.0).count(), 2);
            }
        }
    }

    #[test]
    fn fresh_masks_have_near_zero_expected_sparsity() {
        let src = smollm2();
        let target = TargetShape { layers: 24, hidden: 384, heads: 6, kv_heads: 3, intermediate: 1024 };
        let masks = MaskSet::new(&src, &target, &mut Rng::new(1), &Device::Cpu).unwrap();
        masks.clamp_in_place().unwrap();
        for e in masks.expected_sparsity().unwrap() {
            let v: Vec<f32> = e.sparsity.to_vec1().unwrap();
            let expected_len = match e.family {
                Family::Layer | Family::Hidden => 1,
                Family::Head => 90, // one element per (layer, KV group)
                _ => 30,
            };
            assert_eq!(v.len(), expected_len, "{:?}", e.family);
            // log-α clamps to 4.605: score 0.99798.
            assert!(v.iter().all(|s| (s - (1.0 - 0.99798)).abs() < 1e-4), "{:?} {v:?}", e.family);
        }
    }

    /// With KV groups pruned too, a group's head term is weighted by the group's keep probability: the
    /// heads of a group on its way out do not count, and the weights carry no gradient.
    #[test]
    fn heads_of_a_dropped_group_do_not_count() {
        let src = LlamaConfig::new(64, 48, 32, 1, 6, 3, 8, true);
        let target = TargetShape { layers: 1, hidden: 48, heads: 2, kv_heads: 2, intermediate: 32 };
        let masks = MaskSet::new(&src, &target, &mut Rng::new(0), &Device::Cpu).unwrap();
        let set = |f: Family, v: Vec<f32>| {
            let fam = masks.get(f).unwrap();
            fam.log_alpha.set(&Tensor::from_vec(v, fam.layout.shape.clone(), &Device::Cpu).unwrap()).unwrap();
        };
        // Groups 0 and 1 kept (log-α at the clamp), group 2 on its way out; group 2 keeps both its heads,
        // groups 0 and 1 one each.
        set(Family::KvGroup, vec![4.6, 4.6, -4.6]);
        set(Family::Head, vec![4.6, -4.6, -4.6, 4.6, 4.6, 4.6]);
        let e = masks.expected_sparsity().unwrap().into_iter().find(|e| e.family == Family::Head).unwrap();
        let per_group: Vec<f32> = e.sparsity.to_vec1().unwrap();
        assert_eq!(per_group.len(), 3, "one element per (layer, KV group)");
        let w: Vec<f32> = e.weights.as_ref().unwrap().to_vec1().unwrap();
        let p = |la: f64| hc::score(la) as f32;
        assert_eq!(w, vec![p(4.6), p(4.6), p(-4.6)], "weights are the groups' keep probabilities");
        let weighted: f32 = per_group.iter().zip(&w).map(|(s, w)| s * w).sum::<f32>() / w.iter().sum::<f32>();
        assert!((e.mean().unwrap() as f32 - weighted).abs() < 1e-6);
        // Unweighted, group 2's sparsity of ~0 would pull the mean to ~1/3; weighted it stays near 1/2.
        let plain = per_group.iter().sum::<f32>() / 3.0;
        assert!(weighted > 0.45 && plain < 0.33, "weighted {weighted}, plain {plain}");
        let grads = weighted_mean(&e.sparsity, e.weights.as_ref()).unwrap().backward().unwrap();
        assert!(grads.get(masks.get(Family::Head).unwrap().log_alpha.as_tensor()).is_some());
        assert!(grads.get(masks.get(Family::KvGroup).unwrap().log_alpha.as_tensor()).is_none(), "no way out");
    }
}
