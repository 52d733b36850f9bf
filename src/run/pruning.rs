//! A pruning run's directory (docs/method.md §4): besides the common files ([`super`]), `target.toml` and
//! the mask snapshots `masks/step_NNNNNN.safetensors` (log-α and both deterministic masks, at every eval).
//! From it come the masked model that materialization must reproduce, and the materialized model itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::checks::{check_batch, check_rates, check_seq_len, check_steps};
use crate::config::LlamaConfig;
use crate::data::mixture::MixtureConfig;
use crate::error::{Error, Result};
use crate::family::{Family, MaskValues};
use crate::model::{Llama, TensorMap};
use crate::prune::masks::{Deterministic, MaskSet};
use crate::prune::TargetShape;

pub const TARGET_FILE: &str = "target.toml";
pub const MASKS_DIR: &str = "masks";

/// Hyperparameters of a pruning run (defaults: the paper's recipe, scaled to the step count).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PruneConfig {
    pub steps: usize,
    /// Sequences per micro-batch (one forward, one mask sample).
    pub batch_size: usize,
    /// Micro-batches per optimizer step, each with its own mask sample (docs/method.md §4: the paper's 32
    /// sequences per step are 8 devices × 4, one draw per device).
    #[serde(default = "one")]
    pub grad_accum: usize,
    pub seq_len: usize,
    /// Learning rate of the model weights.
    pub lr: f64,
    /// Learning rate of the mask log-α.
    pub mask_lr: f64,
    /// Learning rate of the Lagrange multipliers (applied as ascent).
    pub lambda_lr: f64,
    /// Linear LR warm-up steps of the cosine schedule.
    pub lr_warmup_steps: usize,
    /// Steps over which the target sparsity grows from 0 to its final value.
    pub lagrangian_warmup_steps: usize,
    pub alpha_f: f64,
    pub max_grad_norm: f64,
    pub eval_interval: usize,
    /// Held-out tokens evaluated at each eval interval.
    pub eval_tokens: usize,
    /// With a text file: the fraction of its tokens held out for evaluation (its last part).
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    pub checkpoint_interval: usize,
    /// Checkpoints hold the weights, log-α and λ but not the AdamW moments (a third of the size); such a
    /// run can be materialized but not resumed.
    #[serde(default)]
    pub save_only_model: bool,
    pub seed: u64,
    /// With a corpus: the domain mixture and how it moves at each eval (docs/method.md §6).
    #[serde(flatten)]
    pub mixture: MixtureConfig,
}

fn one() -> usize {
    1
}

fn default_eval_fraction() -> f64 {
    0.05
}

impl PruneConfig {
    /// The paper's proportions: LR warm-up 10% of the steps, target warm-up 20% (640 of 3,200 steps),
    /// with floors for shorter runs. The min-max has a start-up transient of a fixed length in *steps*, not
    /// in fractions of the run: λ, stepped by Adam, climbs about its learning rate per step whatever the
    /// gap, and log-α (Adam too) then moves by about its learning rate per step in lockstep across a whole
    /// family, oscillating for ~100 steps.
    /// - Target warm-up `max(20%, min(50%, 640))`, and at least 100 steps or the whole run: 20% of 400
    ///   steps misses the target by 0.3 at its end while 50% tracks it within 0.003
    ///   (`scripts/reference/lagrangian_dynamics.py`).
    /// - LR warm-up `max(10%, min(50%, 80))`: at full learning rate the transient drives every log-α of a
    ///   family together into the band where each sample attenuates half the units. A 40-step run with a
    ///   4-step warm-up then had a sampled-mask loss of 14.7 (uniform prediction: 10.8) with weights frozen
    ///   as much as without; a 20-step warm-up keeps it below 8.6 (README, "Short runs").
    pub fn for_steps(steps: usize) -> Self {
        Self {
            steps,
            batch_size: 4,
            grad_accum: 1,
            seq_len: 256,
            lr: 1e-4,
            mask_lr: 1.0,
            lambda_lr: 1.0,
            lr_warmup_steps: (steps / 10).max((steps / 2).min(80)),
            lagrangian_warmup_steps: (steps / 5).max((steps / 2).clamp(100, 640).min(steps)),
            alpha_f: 0.1,
            max_grad_norm: 1.0,
            eval_interval: 50,
            eval_tokens: 8192,
            eval_fraction: default_eval_fraction(),
            checkpoint_interval: 100,
            save_only_model: false,
            seed: 17,
            mixture: MixtureConfig::none(),
        }
    }

    /// Sizes that leave nothing to train on are refused before any work starts.
    pub fn validate(&self) -> Result<()> {
        check_steps(self.steps)?;
        check_batch(self.batch_size, self.grad_accum)?;
        check_seq_len(self.seq_len)?;
        check_rates(&[
            ("lr", self.lr),
            ("mask_lr", self.mask_lr),
            ("lambda_lr", self.lambda_lr),
            ("max_grad_norm", self.max_grad_norm),
            ("alpha_f", self.alpha_f),
        ])
    }
}

/// What a pruning run was asked to do (`run.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneSpec {
    pub source_model: PathBuf,
    pub data: PathBuf,
    pub target: TargetShape,
    pub config: PruneConfig,
}

/// A run's `run.json`. Relative model and data paths are relative to the run directory, so that a run can
/// ship inside the repository (`data/runs/`).
pub fn read_spec(run: &Path) -> Result<PruneSpec> {
    let mut spec: PruneSpec = super::read_spec(run)?;
    super::resolve_in(run, [&mut spec.source_model, &mut spec.data]);
    Ok(spec)
}

/// What reading a run's masks needs of its `run.json`: a pruning run's, or a one-shot pruning's
/// (`shear oneshot` writes one into its output's `oneshot/`).
#[derive(Debug, Clone, Deserialize)]
pub struct MaskSpec {
    pub source_model: PathBuf,
    pub target: TargetShape,
}

pub fn read_mask_spec(run: &Path) -> Result<MaskSpec> {
    let mut spec: MaskSpec = super::read_spec(run)?;
    super::resolve_in(run, [&mut spec.source_model]);
    Ok(spec)
}

/// The name of the mask snapshot of `step` in a run's `masks/`.
pub fn snapshot_name(step: usize) -> String {
    format!("{MASKS_DIR}/step_{step:06}.safetensors")
}

/// A fresh run's `target.toml` and (empty) `masks/`.
pub fn write_target(run: &Path, target: &TargetShape) -> Result<()> {
    std::fs::create_dir_all(run.join(MASKS_DIR)).map_err(|e| Error::io(run, e))?;
    let toml = toml::to_string(target).expect("a target shape serializes");
    std::fs::write(run.join(TARGET_FILE), toml).map_err(|e| Error::io(run, e))
}

/// `masks/step_NNNNNN.safetensors`: log-α of every family and the deterministic masks, with the target
/// counts (`z_target.*`, what materialization keeps) and the expected counts (`z_expected.*`).
pub fn save_mask_snapshot(
    run: &Path,
    step: usize,
    masks: &MaskSet,
    det: &MaskValues,
    expected: &MaskValues,
) -> Result<()> {
    let mut t: BTreeMap<String, Tensor> = BTreeMap::new();
    for f in &masks.families {
        t.insert(format!("log_alpha.{}", f.layout.family.name()), f.log_alpha.as_tensor().clone());
    }
    for (family, v) in det.iter() {
        t.insert(format!("z_target.{}", family.name()), v.clone());
    }
    for (family, v) in expected.iter() {
        t.insert(format!("z_expected.{}", family.name()), v.clone());
    }
    let path = run.join(snapshot_name(step));
    let views: Vec<(&str, &Tensor)> = t.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors::serialize_to_file(views, None, &path)
        .map_err(|e| Error::Weights { path: path.clone(), msg: format!("cannot write masks: {e}") })
}

/// The newest mask snapshot of a run (or the one at `step`), as learned log-α per family.
pub fn load_log_alphas(run: &Path, step: Option<usize>) -> Result<(usize, BTreeMap<Family, Tensor>)> {
    let dir = run.join(MASKS_DIR);
    let mut snapshots: Vec<(usize, PathBuf)> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_prefix("step_")?.strip_suffix(".safetensors")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    snapshots.sort();
    let (n, path) = match step {
        Some(s) => snapshots
            .into_iter()
            .find(|(n, _)| *n == s)
            .ok_or_else(|| Error::Invalid(format!("{}: no mask snapshot for step {s}", dir.display())))?,
        None => snapshots.pop().ok_or_else(|| Error::Invalid(format!("{}: no mask snapshots yet", dir.display())))?,
    };
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| Error::Weights { path: path.clone(), msg: e.to_string() })?;
    crate::model::check_finite(&t, &path)?;
    let mut out = BTreeMap::new();
    for (k, v) in t {
        if let Some(f) = k.strip_prefix("log_alpha.").and_then(Family::from_name) {
            out.insert(f, v);
        }
    }
    Ok((n, out))
}

/// A run's latest checkpoint: the source config, the trained weights and the learned masks.
fn checkpointed(run: &Path) -> Result<(PruneSpec, LlamaConfig, TensorMap, MaskSet)> {
    let spec = read_spec(run)?;
    let source_cfg = crate::io::hf::load_config(&spec.source_model)?;
    let (t, _) = checkpoint::load(run, &Device::Cpu)?;
    let weights: TensorMap = checkpoint::take_prefixed(&t, "weights");
    let log_alphas: BTreeMap<Family, Tensor> = checkpoint::take_prefixed(&t, "log_alpha")
        .into_iter()
        .filter_map(|(k, v)| Family::from_name(&k).map(|f| (f, v)))
        .collect();
    let masks = MaskSet::from_log_alphas(&source_cfg, &spec.target, log_alphas)?;
    Ok((spec, source_cfg, weights, masks))
}

/// The source model with a run's latest trained weights, and its deterministic target masks: the masked
/// model that materialization must reproduce exactly.
pub fn masked_model(run: &Path) -> Result<(Llama, MaskValues)> {
    let (_, source_cfg, weights, masks) = checkpointed(run)?;
    Ok((Llama::new(&source_cfg, &weights)?, masks.deterministic(Deterministic::Target)?))
}

/// Materialize a pruning run: deterministic masks with exactly the target counts from the latest
/// checkpoint's log-α, folded into its weights, written as an HF directory (tokenizer files copied from
/// the source model).
pub fn materialize(run: &Path, out: &Path) -> Result<PathBuf> {
    crate::io::check_writable_destination(out)?;
    let (spec, source_cfg, weights, masks) = checkpointed(run)?;
    let det = masks.deterministic(Deterministic::Target)?;
    let (cfg, small) = crate::prune::materialize(&source_cfg, &weights, &det, &spec.target)?;
    let opts = crate::io::SaveOptions { companions_from: Some(spec.source_model.clone()), ..Default::default() };
    crate::io::save_model(out, &cfg, &small, &opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_warmups() {
        let w = |steps| PruneConfig::for_steps(steps).lagrangian_warmup_steps;
        let lr = |steps| PruneConfig::for_steps(steps).lr_warmup_steps;
        assert_eq!((w(3200), lr(3200)), (640, 320), "the paper's recipe");
        assert_eq!((w(10_000), lr(10_000)), (2000, 1000));
        assert_eq!((w(800), lr(800)), (400, 80));
        assert_eq!((w(400), lr(400)), (200, 80));
        assert_eq!((w(150), lr(150)), (100, 75), "the transient's floors");
        assert_eq!((w(40), lr(40)), (40, 20), "a run shorter than the transient warms up throughout");
    }
}
