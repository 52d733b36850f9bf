//! The charts of a run, built from its logs and masks: what the notebooks show inline and what
//! `shear inspect --charts DIR` / `shear report` write as SVG files.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::charts::{bar_chart, heatmap, histogram, line_chart, Axes, Grid, Line, Svg};
use super::runs::{prune_evals, prune_metrics, train_evals, train_metrics, xy};
use super::{polars_err, run_masks};
use crate::error::{Error, Result};
use crate::family::{Family, MaskScores};
use crate::prune::hard_concrete as hc;
use crate::prune::masks::{layouts, prunable_params, Deterministic, MaskSet};
use crate::prune::TargetShape;
use crate::LlamaConfig;

fn has(df: &DataFrame, col: &str) -> bool {
    df.column(col).is_ok()
}

/// Families that share a final target (head, intermediate and hidden usually do) share one line: their
/// curves are the same, and one legend entry names them all.
fn by_final_target(families: impl IntoIterator<Item = (Family, f64)>) -> Vec<(Vec<Family>, f64)> {
    let mut groups: Vec<(Vec<Family>, f64)> = vec![];
    for (f, t) in families {
        match groups.iter_mut().find(|(_, g)| (*g - t).abs() < 1e-12) {
            Some((members, _)) => members.push(f),
            None => groups.push((vec![f], t)),
        }
    }
    groups
}

fn names(families: &[Family]) -> String {
    families.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
}

/// The target sparsity of every pruned family over the steps of a run: the linear warm-up of docs/method.md §3.
pub fn target_schedule(source: &LlamaConfig, target: &TargetShape, warmup: usize, steps: usize) -> Result<Svg> {
    let families = layouts(source, target).iter().map(|l| (l.family, l.target_sparsity())).collect::<Vec<_>>();
    let lines: Vec<Line> = by_final_target(families)
        .iter()
        .enumerate()
        .map(|(i, (members, t))| {
            let pts = (0..=steps).map(|s| (s as f64, t * (s as f64 / warmup.max(1) as f64).min(1.0))).collect();
            Line::new(format!("{} (final {t:.3})", names(members)), pts).color(i)
        })
        .collect();
    line_chart(
        &Axes::new(
            format!("Target sparsity, warmed up over {warmup} of {steps} steps"),
            "optimizer step",
            "target sparsity (fraction removed)",
        ),
        &lines,
    )
}

/// Expected sparsity per family (solid, one colour each) against the warmed-up targets (dashed; one line
/// per distinct target, grey when families share it). `title` names the run.
pub fn sparsity_chart(metrics: &DataFrame, title: &str) -> Result<Svg> {
    let present: Vec<(usize, Family)> = Family::ALL
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, f)| has(metrics, &format!("{}_expected_sparsity", f.name())))
        .collect();
    let mut lines = vec![];
    for &(i, f) in &present {
        lines.push(
            Line::new(
                format!("{} expected", f.name()),
                xy(metrics, "step", &format!("{}_expected_sparsity", f.name()))?,
            )
            .color(i),
        );
    }
    let targets = present
        .iter()
        .map(|&(i, f)| Ok((f, (i, xy(metrics, "step", &format!("{}_target_sparsity", f.name()))?))))
        .collect::<Result<std::collections::BTreeMap<_, _>>>()?;
    let finals = targets.iter().map(|(&f, (_, pts))| (f, pts.last().map(|p| p.1).unwrap_or(0.0)));
    for (members, _) in by_final_target(finals) {
        let (own_color, pts) = &targets[&members[0]];
        // A target of one family takes its colour; a shared one is grey.
        let color = if members.len() == 1 { *own_color } else { 6 };
        lines.push(Line::dashed(format!("target: {}", names(&members)), pts.clone()).color(color));
    }
    line_chart(&Axes::new(title, "optimizer step", "sparsity (fraction removed)"), &lines)
}

/// LM loss per step, with the held-out NLL at eval steps when given: of the target-count masks (the model
/// `materialize` gives) and, in runs that log it, of the expected-count masks.
pub fn loss_chart(metrics: &DataFrame, evals: Option<&DataFrame>) -> Result<Svg> {
    let mut lines = vec![Line::new("LM loss (sampled masks, training batch)", xy(metrics, "step", "lm_loss")?)];
    if let Some(e) = evals.filter(|e| has(e, "eval_nll") && e.height() > 0) {
        if has(e, "eval_nll_expected") {
            lines.push(Line::new("held-out NLL, target counts (materialized)", xy(e, "step", "eval_nll")?).color(1));
            lines.push(Line::dashed("held-out NLL, expected counts", xy(e, "step", "eval_nll_expected")?).color(2));
        } else {
            // Runs from before target-count evals logged the expected counts as `eval_nll`.
            lines.push(Line::new("held-out NLL (deterministic masks)", xy(e, "step", "eval_nll")?).color(1));
        }
    }
    line_chart(&Axes::new("Language-modelling loss while pruning", "optimizer step", "loss (nats / token)"), &lines)
}

/// The Lagrangian term (the constraint's contribution to the loss) per step.
pub fn lagrangian_chart(metrics: &DataFrame) -> Result<Svg> {
    line_chart(
        &Axes::new("Lagrangian term  Σ λ1(s − t) + λ2(s − t)²", "optimizer step", "Lagrangian (loss units)"),
        &[Line::new("Lagrangian", xy(metrics, "step", "lagrangian")?).color(1)],
    )
}

/// λ1 (solid) and λ2 (dashed) per family, over steps.
pub fn lambda_chart(metrics: &DataFrame) -> Result<Svg> {
    let mut lines = vec![];
    for (i, f) in Family::ALL.iter().enumerate() {
        let (l1, l2) = (format!("{}_lambda1", f.name()), format!("{}_lambda2", f.name()));
        if has(metrics, &l1) {
            lines.push(Line::new(format!("{} λ1", f.name()), xy(metrics, "step", &l1)?).color(i));
            lines.push(Line::dashed(format!("{} λ2", f.name()), xy(metrics, "step", &l2)?).color(i));
        }
    }
    line_chart(&Axes::new("Lagrange multipliers (gradient ascent)", "optimizer step", "multiplier value"), &lines)
}

/// Expected attention + MLP parameter count under the masks (`expected_params`, the part the masks prune),
/// over steps, against the same count of the target shape ([`prunable_params`] of its config).
pub fn params_chart(metrics: &DataFrame, target_params: f64) -> Result<Svg> {
    let pts: Vec<(f64, f64)> = xy(metrics, "step", "expected_params")?.into_iter().map(|(x, y)| (x, y / 1e6)).collect();
    let (x0, x1) = (pts.first().map(|p| p.0).unwrap_or(0.0), pts.last().map(|p| p.0).unwrap_or(1.0));
    line_chart(
        &Axes::new("Expected attention + MLP parameters under the masks", "optimizer step", "parameters (millions)"),
        &[
            Line::new("expected", pts),
            Line::dashed("target", vec![(x0, target_params / 1e6), (x1, target_params / 1e6)]).color(1),
        ],
    )
}

/// The decision behind the kept heads: every query head's keep probability P(z > 0), layer × head, heavy
/// lines between KV groups, the heads materialization keeps framed, removed layers in grey. With a balanced
/// constraint the framed cells are exactly the dark ones.
pub fn heads_heatmap(masks: &MaskSet) -> Result<Svg> {
    let cfg = masks.source();
    let (l, h, g) = (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.group_size());
    let scores = masks.scores()?;
    let target = MaskScores::indicators(cfg, &masks.deterministic(Deterministic::Target)?)?;
    let layer_on: Vec<bool> = target.of(Family::Layer).iter().map(|&v| v != 0.0).collect();
    let kept = super::kept_heads(masks)?;
    let values: Vec<Vec<f64>> =
        (0..l).map(|layer| scores.of(Family::Head)[layer * h..(layer + 1) * h].to_vec()).collect();
    let marked: Vec<Vec<bool>> =
        kept.iter().zip(&layer_on).map(|(heads, &on)| heads.iter().map(|&k| on && k).collect()).collect();
    let decision = masks.decisions()?.into_iter().find(|d| d.family == Family::Head);
    let note = match &decision {
        Some(d) => format!(
            "framed: kept by materialize. Kept with P < 0.5: {} of {}; dropped with P > 0.5: {}; unbalanced groups: {} of {}",
            d.kept_below_half, d.kept, d.dropped_above_half, d.unbalanced_rows, d.rows
        ),
        None => "framed: kept by materialize (this target prunes no query heads)".into(),
    };
    let grid = Grid {
        values,
        max: 1.0,
        decimals: 2,
        row_labels: (0..l).map(|i| if layer_on[i] { format!("{i}") } else { format!("{i} (removed)") }).collect(),
        col_labels: (0..h).map(|i| format!("g{} h{}", i / g, i % g)).collect(),
        marked,
        greyed_rows: layer_on.iter().map(|on| !on).collect(),
        col_group: g,
        note: Some(note),
    };
    let height = (l as u32 * 22 + 140).clamp(320, 1000);
    heatmap(
        &Axes::new("Query heads: keep probability P(z > 0) per layer, KV groups apart", "KV group g, head h", "layer")
            .size(760, height),
        &grid,
    )
}

/// Kept intermediate (MLP) dims per layer at materialization (removed layers show 0).
pub fn intermediate_chart(masks: &MaskSet) -> Result<Svg> {
    let table = super::layer_table(masks)?;
    let kept = xy(&table, "layer", "intermediate_kept")?;
    let layer_kept = xy(&table, "layer", "layer_value")?;
    let values: Vec<f64> = kept.iter().zip(&layer_kept).map(|(k, l)| if l.1 != 0.0 { k.1 } else { 0.0 }).collect();
    let labels: Vec<String> = (0..values.len()).map(|i| i.to_string()).collect();
    bar_chart(
        &Axes::new(
            format!("Kept intermediate dims per layer (source {})", masks.source().intermediate_size),
            "layer",
            "kept intermediate dims",
        ),
        &labels,
        &values,
        Some(("target", masks.target().intermediate as f64)),
    )
}

/// Keep probability P(z > 0) of each layer's mask; the removed layers are the ones below the cut.
pub fn layer_chart(masks: &MaskSet) -> Result<Svg> {
    let table = super::layer_table(masks)?;
    let scores = xy(&table, "layer", "layer_score")?;
    let kept = xy(&table, "layer", "layer_value")?;
    let removed: Vec<String> =
        kept.iter().filter(|(_, v)| *v == 0.0).map(|(l, _)| format!("{}", *l as usize)).collect();
    let labels: Vec<String> = scores.iter().map(|(l, _)| format!("{}", *l as usize)).collect();
    bar_chart(
        &Axes::new(
            format!(
                "Layer masks: P(z > 0) per layer; removed: {}",
                if removed.is_empty() { "none".to_string() } else { removed.join(", ") }
            ),
            "layer",
            "keep probability P(z > 0)",
        ),
        &labels,
        &scores.iter().map(|p| p.1).collect::<Vec<_>>(),
        None,
    )
}

/// Kept hidden dims in blocks of `block` consecutive dims (the hidden mask is shared by all layers).
pub fn hidden_chart(masks: &MaskSet, block: usize) -> Result<Svg> {
    let cfg = masks.source();
    let det = masks.deterministic(Deterministic::Target)?;
    let z = det.values_or_ones(Family::Hidden, cfg.hidden_size)?;
    let kept_total = z.iter().filter(|v| **v != 0.0).count();
    let values: Vec<f64> = z.chunks(block).map(|c| c.iter().filter(|v| **v != 0.0).count() as f64).collect();
    let labels: Vec<String> = (0..values.len()).map(|i| format!("{}", i * block)).collect();
    bar_chart(
        &Axes::new(
            format!("Kept hidden dims: {kept_total} of {}, per block of {block} dims", cfg.hidden_size),
            "first dim of the block",
            format!("kept dims (of {block})"),
        ),
        &labels,
        &values,
        Some(("uniform share", block as f64 * masks.target().hidden as f64 / cfg.hidden_size as f64)),
    )
}

/// Distribution of keep probabilities P(z > 0) in one mask family.
pub fn score_histogram(masks: &MaskSet, family: Family) -> Result<Svg> {
    let f = masks.get(family).ok_or_else(|| Error::Invalid(format!("this run does not prune `{}`", family.name())))?;
    let la: Vec<f32> = f.log_alpha.as_tensor().flatten_all()?.to_vec1()?;
    let scores: Vec<f64> = la.iter().map(|&x| hc::score(x as f64)).collect();
    histogram(
        &Axes::new(
            format!("Mask scores of `{}` ({} masks)", family.name(), scores.len()),
            "keep probability P(z > 0)",
            "masks",
        ),
        &scores,
        0.0,
        1.0,
        20,
    )
}

/// Domain proportions at each evaluation (step 0: the initial mixture).
pub fn proportions_chart(evals: &DataFrame, title: &str) -> Result<Svg> {
    let lines = per_domain(evals, "proportion", false)?;
    line_chart(&Axes::new(title, "optimizer step", "domain proportion"), &lines)
}

/// Per-domain eval loss (solid) against its reference loss (dashed).
pub fn domain_loss_chart(evals: &DataFrame, title: &str) -> Result<Svg> {
    let mut lines = per_domain(evals, "eval_loss", false)?;
    lines.extend(per_domain(evals, "reference_loss", true)?);
    line_chart(&Axes::new(title, "optimizer step", "eval loss (nats / token)"), &lines)
}

fn per_domain(evals: &DataFrame, column: &str, dashed: bool) -> Result<Vec<Line>> {
    let domains: Vec<String> = {
        let c = evals.column("domain").map_err(polars_err)?.str().map_err(polars_err)?.clone();
        let mut seen: Vec<String> = vec![];
        for d in (0..c.len()).filter_map(|i| c.get(i)) {
            if !seen.iter().any(|s| s == d) {
                seen.push(d.to_string());
            }
        }
        seen
    };
    domains
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let sub = evals
                .clone()
                .filter(&evals.column("domain").map_err(polars_err)?.str().map_err(polars_err)?.equal(d.as_str()))
                .map_err(polars_err)?;
            let pts = xy(&sub, "step", column)?;
            let name = if dashed { format!("{d} reference") } else { d.clone() };
            Ok(if dashed { Line::dashed(name, pts) } else { Line::new(name, pts) }.color(i))
        })
        .collect()
}

/// Per-domain eval losses as numbers: `{domain: loss}`.
pub type DomainLosses = std::collections::BTreeMap<String, f64>;

/// A run's curve per domain: `(domain, [(step, loss)])`.
pub type DomainCurves = Vec<(String, Vec<(f64, f64)>)>;

/// One run's eval loss per domain against the step, `(domain, [(step, loss)])` in the log's domain
/// order, starting with `step0` (the start model's losses on the same sequences) when given.
pub fn domain_curves(evals: &DataFrame, step0: Option<&DomainLosses>) -> Result<DomainCurves> {
    let (steps, domains, losses) = (super::runs::floats(evals, "step")?, super::runs::strings(evals, "domain")?, {
        let c = evals.column("eval_loss").map_err(polars_err)?.f64().map_err(polars_err)?.clone();
        (0..c.len()).map(|i| c.get(i)).collect::<Vec<Option<f64>>>()
    });
    let mut curves: DomainCurves = vec![];
    for ((step, d), loss) in steps.iter().zip(&domains).zip(&losses) {
        let i = match curves.iter().position(|(n, _)| n == d) {
            Some(i) => i,
            None => {
                let start = step0.and_then(|m| m.get(d)).map(|l| vec![(0.0, *l)]).unwrap_or_default();
                curves.push((d.clone(), start));
                curves.len() - 1
            }
        };
        if let Some(l) = loss {
            curves[i].1.push((*step, *l));
        }
    }
    Ok(curves)
}

/// Eval loss minus `reference` per domain for several runs on one chart (the paper's Figure 4 view over
/// time): one colour per domain, the first run solid, the others dashed.
pub fn excess_chart(title: &str, runs: &[(&str, DomainCurves)], reference: &DomainLosses) -> Result<Svg> {
    let mut lines = vec![];
    for (r, (run, curves)) in runs.iter().enumerate() {
        for (i, (domain, points)) in curves.iter().enumerate() {
            let Some(reference) = reference.get(domain) else { continue };
            let pts: Vec<(f64, f64)> = points.iter().map(|(x, l)| (*x, l - reference)).collect();
            let name = format!("{domain}, {run}");
            lines.push(if r == 0 { Line::new(name, pts) } else { Line::dashed(name, pts) }.color(i));
        }
    }
    line_chart(&Axes::new(title, "optimizer step", "eval loss − reference (nats / token)").size(760, 420), &lines)
}

/// The running mean of the last `window` values (fewer at the start): a per-step training loss of small
/// batches is too noisy to compare runs by.
pub fn running_mean(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, (x, y))| {
            sum += y;
            if i >= window {
                sum -= points[i - window].1;
            }
            (*x, sum / (i + 1).min(window) as f64)
        })
        .collect()
}

/// Training loss per step of a continued pre-training run.
pub fn train_loss_chart(metrics: &DataFrame, title: &str) -> Result<Svg> {
    line_chart(
        &Axes::new(title, "optimizer step", "training loss (nats / token)"),
        &[Line::new("train loss", xy(metrics, "step", "loss")?)],
    )
}

/// Every chart of a run directory (pruning or continued pre-training), named for files. `step` picks a
/// pruning run's mask snapshot (`None`: the newest).
pub fn run_charts(run: &Path, step: Option<usize>) -> Result<Vec<(String, Svg)>> {
    let spec: serde_json::Value = crate::run::read_spec(run)?;
    let mut out = vec![];
    if spec.get("target").is_some() {
        let (_, masks) = run_masks(run, step)?;
        // A one-shot pruning's snapshot has masks but no training metrics.
        if run.join(crate::run::METRICS).exists() {
            let metrics = prune_metrics(run)?;
            let evals = prune_evals(run).ok();
            out.push(("sparsity".into(), sparsity_chart(&metrics, "Expected vs target sparsity per mask family")?));
            out.push(("loss".into(), loss_chart(&metrics, evals.as_ref())?));
            out.push(("lagrangian".into(), lagrangian_chart(&metrics)?));
            out.push(("lambdas".into(), lambda_chart(&metrics)?));
            let target_params = prunable_params(&masks.target().config(masks.source()));
            out.push(("params".into(), params_chart(&metrics, target_params)?));
        }
        out.push(("heads".into(), heads_heatmap(&masks)?));
        out.push(("intermediate".into(), intermediate_chart(&masks)?));
        out.push(("layers".into(), layer_chart(&masks)?));
        out.push(("hidden".into(), hidden_chart(&masks, 32)?));
        for f in Family::ALL {
            if masks.get(f).is_some() {
                out.push((format!("scores-{}", f.name()), score_histogram(&masks, f)?));
            }
        }
    } else {
        let evals = train_evals(run)?;
        out.push(("train-loss".into(), train_loss_chart(&train_metrics(run)?, "Continued pre-training loss")?));
        out.push(("proportions".into(), proportions_chart(&evals, "Domain proportions at each evaluation")?));
        out.push(("domain-loss".into(), domain_loss_chart(&evals, "Per-domain eval loss vs reference")?));
    }
    Ok(out)
}

/// Write `charts` as `<dir>/<name>.svg` (creating `dir`); returns the paths written.
pub fn save_charts(charts: &[(String, Svg)], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    charts
        .iter()
        .map(|(name, svg)| {
            let p = dir.join(format!("{name}.svg"));
            svg.save(&p)?;
            Ok(p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_mean_averages_the_last_window() {
        let pts = [(1.0, 4.0), (2.0, 2.0), (3.0, 6.0), (4.0, 0.0)];
        assert_eq!(running_mean(&pts, 2), vec![(1.0, 4.0), (2.0, 3.0), (3.0, 4.0), (4.0, 3.0)]);
        assert_eq!(running_mean(&pts, 10)[3], (4.0, 3.0));
    }
}
