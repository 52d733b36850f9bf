//! What pruning and training did: polars tables of what the masks keep (per layer, per family), of run logs
//! ([`runs`]), and the SVG charts built from them ([`charts`], [`views`]).

pub mod accuracy;
pub mod charts;
pub mod runs;
pub mod views;

use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::family::Family;
use crate::io::hf::load_config;
use crate::prune::hard_concrete as hc;
use crate::prune::masks::{layouts, Deterministic, MaskSet};
use crate::run::pruning::{load_log_alphas, read_mask_spec};

pub(crate) fn polars_err(e: PolarsError) -> Error {
    Error::Invalid(format!("building a table: {e}"))
}

/// The masks of a run at a snapshot (`None`: the newest), with the step they were saved at.
pub fn run_masks(run: &Path, step: Option<usize>) -> Result<(usize, MaskSet)> {
    let spec = read_mask_spec(run)?;
    let cfg = load_config(&spec.source_model)?;
    let (n, log_alphas) = load_log_alphas(run, step)?;
    let masks = MaskSet::from_log_alphas(&cfg, &spec.target, log_alphas)?;
    masks.clamp_in_place()?; // snapshots are taken after an optimizer step, which may leave the range
    Ok((n, masks))
}

/// Mean P(z > 0) of each row of `family` (per layer), or ones when the family is not pruned.
fn per_layer_scores(masks: &MaskSet, family: Family, layers: usize) -> Result<Vec<f64>> {
    match masks.get(family) {
        None => Ok(vec![1.0; layers]),
        Some(f) => {
            let la: Vec<f32> = f.log_alpha.as_tensor().flatten_all()?.to_vec1()?;
            let per_layer = la.len() / layers;
            Ok(la
                .chunks(per_layer)
                .map(|c| c.iter().map(|&x| hc::score(x as f64)).sum::<f64>() / per_layer as f64)
                .collect())
        }
    }
}

/// Which query heads materialization keeps, `[layer][head]` (a head of a removed KV group is not kept).
/// Layers removed by the layer mask keep their heads here; see `layer_kept`.
pub fn kept_heads(masks: &MaskSet) -> Result<Vec<Vec<bool>>> {
    let cfg = masks.source();
    let (l, h, kv) = (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_kv_heads());
    let g = h / kv;
    let det = masks.deterministic(Deterministic::Target)?;
    let z_group = det.values_or_ones(Family::KvGroup, l * kv)?;
    let z_head = det.values_or_ones(Family::Head, l * h)?;
    Ok((0..l)
        .map(|layer| (0..h).map(|i| z_group[layer * kv + i / g] != 0.0 && z_head[layer * h + i] != 0.0).collect())
        .collect())
}

/// Query heads kept at materialization, per layer and KV group (`[layer][group]`; 0 for a removed group).
/// Layers removed by the layer mask keep their head counts here; see `layer_kept`.
pub fn kept_heads_by_group(masks: &MaskSet) -> Result<Vec<Vec<usize>>> {
    let g = masks.source().group_size();
    Ok(kept_heads(masks)?
        .iter()
        .map(|heads| heads.chunks(g).map(|c| c.iter().filter(|&&k| k).count()).collect())
        .collect())
}

/// One row per source layer. `*_kept` columns are what materialization keeps (exact target counts);
/// `*_expected_sparsity` come from the current mask scores and `*_target_sparsity` from the target.
pub fn layer_table(masks: &MaskSet) -> Result<DataFrame> {
    let cfg = masks.source();
    let (l, m) = (cfg.num_hidden_layers, cfg.intermediate_size);
    let det = masks.deterministic(Deterministic::Target)?;
    let z_layer = det.values_or_ones(Family::Layer, l)?;
    let z_int = det.values_or_ones(Family::Intermediate, l * m)?;
    let hidden_kept = det.values_or_ones(Family::Hidden, cfg.hidden_size)?.iter().filter(|v| **v != 0.0).count() as u32;
    let layer_score: Vec<f64> = match masks.get(Family::Layer) {
        Some(f) => f.log_alpha.as_tensor().to_vec1::<f32>()?.iter().map(|&x| hc::score(x as f64)).collect(),
        None => vec![1.0; l],
    };

    let per_group_all = kept_heads_by_group(masks)?;
    let mut heads_by_group = vec![];
    let mut heads_kept = vec![];
    let mut groups_kept = vec![];
    let mut int_kept = vec![];
    for (layer, per_group) in per_group_all.iter().enumerate() {
        heads_kept.push(per_group.iter().sum::<usize>() as u32);
        groups_kept.push(per_group.iter().filter(|&&n| n > 0).count() as u32);
        heads_by_group.push(per_group.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" "));
        int_kept.push(z_int[layer * m..(layer + 1) * m].iter().filter(|v| **v != 0.0).count() as u32);
    }
    let target = |family: Family| {
        layouts(cfg, masks.target()).iter().find(|f| f.family == family).map(|f| f.target_sparsity()).unwrap_or(0.0)
    };
    let sparsity = |family: Family| -> Result<Vec<f64>> {
        Ok(per_layer_scores(masks, family, l)?.into_iter().map(|s| 1.0 - s).collect())
    };
    let df = df!(
        "layer" => (0..l as u32).collect::<Vec<_>>(),
        "layer_kept" => z_layer.iter().map(|v| *v != 0.0).collect::<Vec<_>>(),
        "layer_score" => layer_score,
        "layer_value" => z_layer.iter().map(|v| *v as f64).collect::<Vec<_>>(),
        "kv_groups_kept" => groups_kept,
        "heads_kept" => heads_kept,
        "heads_by_group" => heads_by_group,
        "intermediate_kept" => int_kept,
        "hidden_kept" => vec![hidden_kept; l],
        "head_expected_sparsity" => sparsity(Family::Head)?,
        "head_target_sparsity" => vec![target(Family::Head); l],
        "kv_group_expected_sparsity" => sparsity(Family::KvGroup)?,
        "kv_group_target_sparsity" => vec![target(Family::KvGroup); l],
        "intermediate_expected_sparsity" => sparsity(Family::Intermediate)?,
        "intermediate_target_sparsity" => vec![target(Family::Intermediate); l],
    )
    .map_err(polars_err)?;
    Ok(df)
}

/// One row per mask family: expected vs target sparsity, units kept at materialization, and whether the
/// kept units are the ones the masks chose ([`MaskSet::decisions`]: kept with P(z > 0) < 0.5, dropped with
/// P > 0.5, rows whose likely count is not the target's; counted inside kept layers and groups).
pub fn family_table(masks: &MaskSet) -> Result<DataFrame> {
    let expected = masks.expected_sparsity()?;
    let decisions = masks.decisions()?;
    let mut names = vec![];
    let mut exp = vec![];
    let mut tgt = vec![];
    let mut kept = vec![];
    let mut total = vec![];
    let (mut below, mut above, mut unbalanced, mut rows) = (vec![], vec![], vec![], vec![]);
    for (f, d) in masks.families.iter().zip(&decisions) {
        let e = expected.iter().find(|e| e.family == f.layout.family).expect("one per family");
        names.push(f.layout.family.name().to_string());
        exp.push(e.mean()?);
        tgt.push(f.layout.target_sparsity());
        kept.push((f.layout.target_kept * f.layout.rows) as u32);
        total.push((f.layout.row_len * f.layout.rows) as u32);
        below.push(d.kept_below_half as u32);
        above.push(d.dropped_above_half as u32);
        unbalanced.push(d.unbalanced_rows as u32);
        rows.push(d.rows as u32);
    }
    df!(
        "family" => names,
        "expected_sparsity" => exp,
        "target_sparsity" => tgt,
        "kept" => kept,
        "total" => total,
        "kept_p_below_half" => below,
        "dropped_p_above_half" => above,
        "unbalanced_rows" => unbalanced,
        "rows_counted" => rows,
    )
    .map_err(polars_err)
}

/// The source units each of `runs` keeps at materialization: layers, and inside kept layers the query
/// heads, the MLP channels; the hidden channels.
struct KeptSets {
    layers: Vec<bool>,
    heads: Vec<Vec<bool>>,
    intermediate: Vec<Vec<bool>>,
    hidden: Vec<bool>,
}

impl KeptSets {
    fn of(masks: &MaskSet) -> Result<Self> {
        let cfg = masks.source();
        let (l, m, d) = (cfg.num_hidden_layers, cfg.intermediate_size, cfg.hidden_size);
        let det = masks.deterministic(Deterministic::Target)?;
        let layers: Vec<bool> = det.values_or_ones(Family::Layer, l)?.iter().map(|v| *v != 0.0).collect();
        let z_int = det.values_or_ones(Family::Intermediate, l * m)?;
        let heads = kept_heads(masks)?.into_iter().zip(&layers).map(|(h, &k)| h.into_iter().map(|x| x && k).collect());
        Ok(Self {
            heads: heads.collect(),
            intermediate: (0..l)
                .map(|i| z_int[i * m..(i + 1) * m].iter().map(|v| *v != 0.0 && layers[i]).collect())
                .collect(),
            hidden: det.values_or_ones(Family::Hidden, d)?.iter().map(|v| *v != 0.0).collect(),
            layers,
        })
    }
}

/// Units kept by both of two sets.
fn shared(a: &[bool], b: &[bool]) -> u32 {
    a.iter().zip(b).filter(|(a, b)| **a && **b).count() as u32
}

fn shared_2d(a: &[Vec<bool>], b: &[Vec<bool>]) -> u32 {
    a.iter().zip(b).map(|(a, b)| shared(a, b)).sum()
}

/// How much two prunings of the same source agree: for every pair of `runs` (label, masks), the layers,
/// query heads (inside kept layers), MLP channels (inside kept layers) and hidden channels both keep, with
/// each one's own count on the diagonal (`a == b`).
pub fn overlap_table(runs: &[(String, MaskSet)]) -> Result<DataFrame> {
    let sets: Vec<KeptSets> = runs.iter().map(|(_, m)| KeptSets::of(m)).collect::<Result<_>>()?;
    if let Some((label, _)) = runs.iter().find(|(_, m)| m.source() != runs[0].1.source()) {
        return Err(Error::Invalid(format!("`{label}` prunes another source than `{}`", runs[0].0)));
    }
    let (mut a, mut b, mut layers, mut heads, mut int, mut hid) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (i, (la, sa)) in runs.iter().map(|r| &r.0).zip(&sets).enumerate() {
        for (lb, sb) in runs.iter().map(|r| &r.0).zip(&sets).skip(i) {
            a.push(la.clone());
            b.push(lb.clone());
            layers.push(shared(&sa.layers, &sb.layers));
            heads.push(shared_2d(&sa.heads, &sb.heads));
            int.push(shared_2d(&sa.intermediate, &sb.intermediate));
            hid.push(shared(&sa.hidden, &sb.hidden));
        }
    }
    df!(
        "a" => a,
        "b" => b,
        "layers_shared" => layers,
        "heads_shared" => heads,
        "intermediate_shared" => int,
        "hidden_shared" => hid,
    )
    .map_err(polars_err)
}
