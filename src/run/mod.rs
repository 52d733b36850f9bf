//! A run's directory, shared by `shear prune` and `shear train`, and everything that reads or writes one:
//! the loops in [`crate::train`] write it, [`crate::report`] and materialization/export read it.
//!
//! | path | holds | written by |
//! |---|---|---|
//! | `run.json` | what was asked: [`pruning::PruneSpec`] or [`training::TrainSpec`] | [`RunLogs::open`] |
//! | `metrics.jsonl` | one [`records`] line per step | the loop |
//! | `evals.jsonl` | one line per evaluation | the loop |
//! | `checkpoint/` | weights, optimizer moments, [`checkpoint::CheckpointState`] | [`checkpoint`] |
//! | `target.toml`, `masks/step_NNNNNN.safetensors` | a pruning run's target and mask snapshots | [`pruning`] |
//!
//! Logs are JSON Lines ([`jsonl`]), flushed line by line, truncated to the checkpoint's step on resume.

pub mod checkpoint;
pub mod checks;
pub mod jsonl;
pub mod pruning;
pub mod records;
pub mod training;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};
use jsonl::{truncate_jsonl, JsonlWriter};

pub const RUN_FILE: &str = "run.json";
pub const METRICS: &str = "metrics.jsonl";
pub const EVALS: &str = "evals.jsonl";

/// Make relative paths of a spec relative to the run directory, so that a run can ship inside the
/// repository (`data/runs/`) and be read from anywhere.
pub fn resolve_in<'a>(run: &Path, paths: impl IntoIterator<Item = &'a mut PathBuf>) {
    for p in paths {
        if p.is_relative() {
            *p = run.join(&*p);
        }
    }
}

pub fn read_spec<T: DeserializeOwned>(run: &Path) -> Result<T> {
    let path = run.join(RUN_FILE);
    let text = crate::io::read_metadata(&path)?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// The open logs of a run being trained.
pub struct RunLogs {
    pub metrics: JsonlWriter,
    pub evals: JsonlWriter,
    start_step: usize,
    started: Instant,
    /// A fresh run's directory, removed again if it is dropped before its first checkpoint.
    fresh: Option<FreshRun>,
}

/// A run directory this process started: until it holds a checkpoint, it can be neither resumed nor
/// reused (`--out` must be new), so a failure before then must leave nothing behind.
struct FreshRun {
    dir: PathBuf,
    /// The directory existed (empty) before: then only what the run wrote into it is removed.
    existed: bool,
}

impl RunLogs {
    /// A fresh run writes `run.json` and empty logs; a resumed one drops log lines after `resumed_at`
    /// (written after the checkpoint it resumes from, and about to be redone).
    pub fn open(run: &Path, spec: &impl Serialize, resumed_at: Option<usize>) -> Result<Self> {
        let mut fresh = None;
        match resumed_at {
            Some(step) => {
                truncate_jsonl(&run.join(METRICS), step)?;
                truncate_jsonl(&run.join(EVALS), step)?;
            }
            None => {
                crate::io::check_writable_destination(run)?;
                fresh = Some(FreshRun { dir: run.to_path_buf(), existed: run.exists() });
                std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
                let text = serde_json::to_string_pretty(spec).expect("a run spec serializes");
                std::fs::write(run.join(RUN_FILE), text).map_err(|e| Error::io(run.join(RUN_FILE), e))?;
                for f in [METRICS, EVALS] {
                    std::fs::write(run.join(f), "").map_err(|e| Error::io(run.join(f), e))?;
                }
            }
        }
        Ok(Self {
            metrics: JsonlWriter::open(&run.join(METRICS))?,
            evals: JsonlWriter::open(&run.join(EVALS))?,
            start_step: resumed_at.unwrap_or(0),
            started: Instant::now(),
            fresh,
        })
    }

    pub fn summary(&self, final_step: usize) -> RunSummary {
        let steps_run = final_step - self.start_step;
        RunSummary {
            steps_run,
            final_step,
            mean_step_seconds: self.started.elapsed().as_secs_f64() / steps_run.max(1) as f64,
        }
    }
}

impl Drop for RunLogs {
    fn drop(&mut self) {
        let Some(fresh) = &self.fresh else { return };
        if checkpoint::latest(&fresh.dir).is_some() {
            return;
        }
        // Best effort, like `StagingDir`: the error that ended the run is the one to report.
        if fresh.existed {
            for entry in std::fs::read_dir(&fresh.dir).into_iter().flatten().flatten() {
                let p = entry.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        } else {
            let _ = std::fs::remove_dir_all(&fresh.dir);
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub steps_run: usize,
    pub final_step: usize,
    pub mean_step_seconds: f64,
}
