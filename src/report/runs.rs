//! Run logs as polars DataFrames: pruning metrics (`metrics.jsonl`, one row per step), continued
//! pre-training metrics, and per-domain evaluations in long form (one row per eval step and domain).

use std::path::Path;

use polars::prelude::*;
use serde_json::Value;

use super::polars_err;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::run::jsonl::read_records;
use crate::run::records::{PruneEvalRecord, PruneStepRecord, TrainEvalRecord, TrainStepRecord};
use crate::run::{EVALS, METRICS};

/// Every numeric top-level field of a JSONL log as an f64 column (missing values are null), in the order
/// the fields first appear. Nested objects and arrays are left out.
fn numeric_frame(rows: &[Value]) -> Result<DataFrame> {
    let mut names: Vec<String> = vec![];
    for r in rows {
        if let Value::Object(m) = r {
            for (k, v) in m {
                if v.is_number() && !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
    }
    let columns: Vec<Column> = names
        .iter()
        .map(|n| {
            let v: Vec<Option<f64>> = rows.iter().map(|r| r.get(n).and_then(Value::as_f64)).collect();
            Column::new(n.as_str().into(), v)
        })
        .collect();
    DataFrame::new(rows.len(), columns).map_err(polars_err)
}

/// A run's log as typed records (the shared schema of [`crate::run::records`]).
fn log<T: serde::de::DeserializeOwned>(run: &Path, file: &str) -> Result<Vec<T>> {
    let path = run.join(file);
    if !path.exists() {
        return Err(Error::Invalid(format!("{}: no {file} (is this a run directory?)", run.display())));
    }
    read_records(&path)
}

/// Records as rows of their numeric fields.
fn frame_of<T: serde::Serialize>(records: &[T]) -> Result<DataFrame> {
    let rows: Vec<Value> = records.iter().map(|r| serde_json::to_value(r).expect("a record serializes")).collect();
    numeric_frame(&rows)
}

/// A pruning run's per-step log ([`PruneStepRecord`]): `step`, `lm_loss`, `lagrangian`, `expected_params`,
/// and per family `<family>_expected_sparsity`, `<family>_target_sparsity`, `<family>_lambda1`,
/// `<family>_lambda2`, `<family>_kept_below_half`, ...
pub fn prune_metrics(run: &Path) -> Result<DataFrame> {
    frame_of(&log::<PruneStepRecord>(run, METRICS)?)
}

/// A pruning run's evaluations of the deterministic masks ([`PruneEvalRecord`]): `step`, `eval_nll` and
/// `deterministic_params` (target counts), `eval_nll_expected` and `expected_count_params` (expected counts).
pub fn prune_evals(run: &Path) -> Result<DataFrame> {
    frame_of(&log::<PruneEvalRecord>(run, EVALS)?)
}

/// A continued pre-training run's per-step log ([`TrainStepRecord`]): `step`, `loss`, `lr`, `grad_norm`,
/// `tokens`, `tokens_per_s`, `seconds`.
pub fn train_metrics(run: &Path) -> Result<DataFrame> {
    frame_of(&log::<TrainStepRecord>(run, METRICS)?)
}

/// Per-domain evaluations in long form: `step`, `domain`, `eval_loss`, `reference_loss`, `excess`
/// (eval − reference), `proportion` (after that eval's update). A row at step 0 carries the initial
/// proportions (no losses).
pub fn train_evals(run: &Path) -> Result<DataFrame> {
    let rows: Vec<TrainEvalRecord> = log(run, EVALS)?;
    let (mut step, mut domain, mut loss, mut reference, mut proportion) = (vec![], vec![], vec![], vec![], vec![]);
    let reference_of = |r: &TrainEvalRecord, d: &str| r.mixture.reference_loss.as_ref().and_then(|v| v.get(d));
    if let Some(first) = rows.first() {
        for (d, p) in &first.mixture.proportions_before.0 {
            step.push(0u32);
            domain.push(d.clone());
            loss.push(None);
            reference.push(reference_of(first, d));
            proportion.push(Some(*p));
        }
    }
    for r in &rows {
        for (d, l) in &r.mixture.eval_loss.0 {
            step.push(r.step as u32);
            domain.push(d.clone());
            loss.push(Some(*l));
            reference.push(reference_of(r, d));
            proportion.push(r.mixture.proportions.get(d));
        }
    }
    let excess: Vec<Option<f64>> = loss.iter().zip(&reference).map(|(l, r)| Some((*l)? - (*r)?)).collect();
    df!(
        "step" => step,
        "domain" => domain,
        "eval_loss" => loss,
        "reference_loss" => reference,
        "excess" => excess,
        "proportion" => proportion,
    )
    .map_err(polars_err)
}

/// Parameters per module of one layer and of the whole model: `module`, `per_layer`, `layers`, `total`,
/// `share` (of all parameters).
pub fn param_table(cfg: &LlamaConfig) -> Result<DataFrame> {
    let (d, hd, m, v) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size, cfg.vocab_size);
    let (h, kv, l) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.num_hidden_layers);
    let mut rows: Vec<(&str, usize, usize)> = vec![("embed_tokens", v * d, 1)];
    rows.extend([
        ("self_attn.q_proj", h * hd * d, l),
        ("self_attn.k_proj", kv * hd * d, l),
        ("self_attn.v_proj", kv * hd * d, l),
        ("self_attn.o_proj", d * h * hd, l),
        ("mlp.gate_proj", m * d, l),
        ("mlp.up_proj", m * d, l),
        ("mlp.down_proj", d * m, l),
        ("input_layernorm + post_attention_layernorm", 2 * d, l),
        ("norm (final)", d, 1),
        ("lm_head", if cfg.tie_word_embeddings { 0 } else { v * d }, 1),
    ]);
    let total: usize = rows.iter().map(|r| r.1 * r.2).sum();
    debug_assert_eq!(total, cfg.param_counts().total());
    df!(
        "module" => rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        "per_layer" => rows.iter().map(|r| r.1 as u64).collect::<Vec<_>>(),
        "layers" => rows.iter().map(|r| r.2 as u32).collect::<Vec<_>>(),
        "total" => rows.iter().map(|r| (r.1 * r.2) as u64).collect::<Vec<_>>(),
        "share" => rows.iter().map(|r| (r.1 * r.2) as f64 / total as f64).collect::<Vec<_>>(),
    )
    .map_err(polars_err)
}

/// A column as f64 values (nulls dropped together with their `x`), paired with `x`.
pub fn xy(df: &DataFrame, x: &str, y: &str) -> Result<Vec<(f64, f64)>> {
    let get = |name: &str| -> Result<Vec<Option<f64>>> {
        let c = df.column(name).map_err(polars_err)?.cast(&DataType::Float64).map_err(polars_err)?;
        let ca = c.f64().map_err(polars_err)?;
        Ok((0..ca.len()).map(|i| ca.get(i)).collect())
    };
    let (xs, ys) = (get(x)?, get(y)?);
    Ok(xs.into_iter().zip(ys).filter_map(|(a, b)| Some((a?, b?))).collect())
}

/// A column as strings (nulls as empty strings).
pub fn strings(df: &DataFrame, column: &str) -> Result<Vec<String>> {
    let c = df.column(column).map_err(polars_err)?.cast(&DataType::String).map_err(polars_err)?;
    let ca = c.str().map_err(polars_err)?;
    Ok((0..ca.len()).map(|i| ca.get(i).unwrap_or_default().to_string()).collect())
}

/// A column as f64 values (nulls as NaN).
pub fn floats(df: &DataFrame, column: &str) -> Result<Vec<f64>> {
    let c = df.column(column).map_err(polars_err)?.cast(&DataType::Float64).map_err(polars_err)?;
    let ca = c.f64().map_err(polars_err)?;
    Ok((0..ca.len()).map(|i| ca.get(i).unwrap_or(f64::NAN)).collect())
}
