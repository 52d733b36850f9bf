//! Checkpoints: named tensors (`state.safetensors`) plus a JSON document (`state.json`) in `RUN/checkpoint/`.
//!
//! Written atomically with rotation: the new checkpoint goes to `checkpoint.partial/`, the old one is renamed
//! to `checkpoint.old/`, the new one renamed into place, and only then is the old one deleted. A crash at
//! any point leaves a complete checkpoint under `checkpoint/` or `checkpoint.old/`; a failed write (a full
//! disk) removes its `checkpoint.partial/`.
//!
//! A run made with `save_only_model` writes its weights (and masks) but not the AdamW moments, a third of
//! the size; its state says so (`"model_only": true`) and [`ensure_resumable`] refuses it.
//!
//! `state.json` is a [`CheckpointState`]: the step, each optimizer's step count, and what else the loop
//! needs to continue bit for bit (the pruning step's mask-sampling RNG, a corpus loader's state).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::data::loader::LoaderState;
use crate::error::{Error, Result};
use crate::rng::Rng;

pub const DIR: &str = "checkpoint";
const PARTIAL: &str = "checkpoint.partial";
const OLD: &str = "checkpoint.old";
const TENSORS: &str = "state.safetensors";
const STATE: &str = "state.json";

/// A checkpoint's `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    /// Optimizer steps taken.
    pub step: usize,
    /// The pruning step's mask-sampling (and text-batch) RNG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<Rng>,
    /// Steps taken by each optimizer, in the loop's order (all equal to `step`).
    pub optimizer_steps: OptimizerSteps,
    /// A run on a corpus: the dynamic loader's proportions, cursors and RNG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader: Option<LoaderState>,
    /// Written without the optimizer moments (`save_only_model`): cannot be resumed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub model_only: bool,
}

/// Each optimizer's step count. Continued pre-training's checkpoints before the two loops shared one
/// state type held a single number; they still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OptimizerSteps {
    PerOptimizer(Vec<usize>),
    Single(usize),
}

impl OptimizerSteps {
    pub fn counts(&self) -> Vec<usize> {
        match self {
            OptimizerSteps::PerOptimizer(v) => v.clone(),
            OptimizerSteps::Single(n) => vec![*n],
        }
    }
}

impl CheckpointState {
    /// The state's step, which must lie within the run's `steps` (a step past them would resume into a run
    /// that trains nothing), and be every one of the run's `optimizers`' step count (anything else is a
    /// corrupt or foreign state).
    pub fn checked_step(&self, run: &Path, steps: usize, optimizers: usize) -> Result<usize> {
        if self.step > steps {
            return Err(corrupt(
                run,
                format!("the checkpoint is at step {}, past the run's {steps} steps (--steps)", self.step),
            ));
        }
        let counts = self.optimizer_steps.counts();
        if counts != vec![self.step; optimizers] {
            return Err(corrupt(
                run,
                format!(
                    "checkpoint optimizer_steps {counts:?}: expected one count per optimizer ({optimizers}), each \
                     equal to its step {}",
                    self.step
                ),
            ));
        }
        Ok(self.step)
    }
}

/// A training or pruning run's checkpoint: `model` (what materialize and export read), the optimizer state
/// that `add_optimizer_state` adds unless `state.model_only`, and `state`.
pub fn save_run(
    run: &Path,
    mut model: BTreeMap<String, Tensor>,
    state: &CheckpointState,
    add_optimizer_state: impl FnOnce(&mut BTreeMap<String, Tensor>),
) -> Result<()> {
    if !state.model_only {
        add_optimizer_state(&mut model);
    }
    save(run, &model, state)
}

pub fn save(run: &Path, tensors: &BTreeMap<String, Tensor>, state: &impl Serialize) -> Result<()> {
    // A checkpoint is what resume, materialize and export trust: never one holding a NaN or an infinity.
    crate::model::check_finite(tensors, &run.join(DIR).join(TENSORS))
        .map_err(|e| Error::Invalid(format!("not checkpointing a diverged run: {e}")))?;
    let partial = run.join(PARTIAL);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    if let Err(e) = write_complete(&partial, tensors, state) {
        // Best effort: the write's own error is the one to report.
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    let (current, old) = (run.join(DIR), run.join(OLD));
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    if current.exists() {
        std::fs::rename(&current, &old).map_err(|e| Error::io(&current, e))?;
    }
    std::fs::rename(&partial, &current).map_err(|e| Error::io(&partial, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// Write the tensors and the state into `dir` and sync both to disk.
fn write_complete(dir: &Path, tensors: &BTreeMap<String, Tensor>, state: &impl Serialize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let views: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tpath = dir.join(TENSORS);
    safetensors::serialize_to_file(views, None, &tpath)
        .map_err(|e| Error::Weights { path: tpath.clone(), msg: format!("cannot write checkpoint: {e}") })?;
    let spath = dir.join(STATE);
    std::fs::write(&spath, serde_json::to_string_pretty(state).expect("json")).map_err(|e| Error::io(&spath, e))?;
    for f in [&tpath, &spath] {
        std::fs::File::open(f).and_then(|f| f.sync_all()).map_err(|e| Error::io(f, e))?;
    }
    Ok(())
}

/// The newest complete checkpoint directory of `run`, if any.
pub fn latest(run: &Path) -> Option<PathBuf> {
    [DIR, OLD].iter().map(|d| run.join(d)).find(|d| d.join(TENSORS).exists() && d.join(STATE).exists())
}

pub fn load(run: &Path, device: &Device) -> Result<(BTreeMap<String, Tensor>, CheckpointState)> {
    let dir = latest_or_error(run)?;
    let tpath = dir.join(TENSORS);
    let bytes = std::fs::read(&tpath).map_err(|e| Error::io(&tpath, e))?;
    let tensors: BTreeMap<String, Tensor> = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| corrupt(run, format!("corrupt checkpoint {}: {e}", tpath.display())))?
        .into_iter()
        .collect();
    crate::model::check_finite(&tensors, &tpath)?;
    Ok((tensors, read_state(&dir)?))
}

/// The error for a checkpoint that cannot be resumed into `run` (the message names the file or field).
pub fn corrupt(run: &Path, msg: String) -> Error {
    Error::Checkpoint { run: run.to_path_buf(), msg }
}

/// Set `var` from the checkpoint tensor `key`, which must be there with the var's shape and dtype.
pub fn restore_var(saved: &BTreeMap<String, Tensor>, key: &str, var: &Var, run: &Path) -> Result<()> {
    let t = saved.get(key).ok_or_else(|| corrupt(run, format!("the checkpoint lacks tensor `{key}`")))?;
    if t.dims() != var.dims() || t.dtype() != var.dtype() {
        return Err(corrupt(
            run,
            format!(
                "checkpoint tensor `{key}` is {:?} {:?}, the run expects {:?} {:?}",
                t.dtype(),
                t.dims(),
                var.dtype(),
                var.dims()
            ),
        ));
    }
    Ok(var.set(t)?)
}

/// Whether `run` can be resumed, from its checkpoint's `state.json` alone, so that a run without a
/// checkpoint, or with a model-only one, is refused before any work (`prune` and `train` check it first;
/// the CLI even before it loads the model).
pub fn ensure_resumable(run: &Path) -> Result<()> {
    refuse_model_only(run, &read_state(&latest_or_error(run)?)?)
}

/// The state of the newest complete checkpoint of `run`, if it has one.
pub fn latest_state(run: &Path) -> Result<Option<CheckpointState>> {
    latest(run).map(|dir| read_state(&dir)).transpose()
}

fn latest_or_error(run: &Path) -> Result<PathBuf> {
    latest(run).ok_or_else(|| corrupt(run, "no checkpoint found".into()))
}

fn read_state(dir: &Path) -> Result<CheckpointState> {
    let spath = dir.join(STATE);
    let text = crate::io::read_metadata(&spath)?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        run: dir.parent().unwrap_or(dir).to_path_buf(),
        msg: format!("corrupt checkpoint state {}: {e}", spath.display()),
    })
}

fn refuse_model_only(run: &Path, state: &CheckpointState) -> Result<()> {
    if state.model_only {
        return Err(corrupt(
            run,
            "the run was made with save_only_model (--save-only-model), so its checkpoint has no optimizer state \
             and the run cannot be resumed; materialize or export it, or start a new run from that model"
                .into(),
        ));
    }
    Ok(())
}

/// Tensors of `map` whose name starts with `prefix.`, with the prefix removed.
pub fn take_prefixed(map: &BTreeMap<String, Tensor>, prefix: &str) -> BTreeMap<String, Tensor> {
    let p = format!("{prefix}.");
    map.iter().filter_map(|(k, v)| k.strip_prefix(&p).map(|rest| (rest.to_string(), v.clone()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_a_complete_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        let t = |x: f32| Tensor::new(&[x], &Device::Cpu).unwrap();
        let state = |step| CheckpointState {
            step,
            rng: None,
            optimizer_steps: OptimizerSteps::PerOptimizer(vec![step]),
            loader: None,
            model_only: false,
        };
        save(run, &BTreeMap::from([("a.x".into(), t(1.0))]), &state(1)).unwrap();
        save(run, &BTreeMap::from([("a.x".into(), t(2.0))]), &state(2)).unwrap();
        let (m, s) = load(run, &Device::Cpu).unwrap();
        assert_eq!(s.step, 2);
        assert_eq!(take_prefixed(&m, "a")["x"].to_vec1::<f32>().unwrap(), vec![2.0]);
        // A crash between the two renames leaves only checkpoint.old: it is still found.
        std::fs::rename(run.join(DIR), run.join(OLD)).unwrap();
        std::fs::create_dir(run.join(PARTIAL)).unwrap(); // a half-written new one
        assert_eq!(load(run, &Device::Cpu).unwrap().1.step, 2);
    }

    /// Continued pre-training wrote one number for its optimizer's steps before the two loops shared this
    /// state; such a checkpoint still resumes, and a count that is not the step is refused.
    #[test]
    fn an_older_single_optimizer_count_still_reads() {
        let old = r#"{"step": 30, "optimizer_steps": 30}"#;
        let state: CheckpointState = serde_json::from_str(old).unwrap();
        assert_eq!(state.checked_step(Path::new("run"), 40, 1).unwrap(), 30);
        let bad: CheckpointState = serde_json::from_str(r#"{"step": 30, "optimizer_steps": [30, 29]}"#).unwrap();
        let err = bad.checked_step(Path::new("run"), 40, 2).unwrap_err().to_string();
        assert!(err.contains("optimizer_steps [30, 29]"), "{err}");
    }
}
