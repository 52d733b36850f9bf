//! The run directory shared by `shear prune` and `shear train`: `run.json` (what was asked), `metrics.jsonl`
//! (per step), `evals.jsonl` (per eval) and `checkpoint/`.

use std::path::Path;
use std::time::Instant;

use serde::{de::DeserializeOwned, Serialize};

use super::metrics::{truncate_jsonl, JsonlWriter};
use crate::error::{Error, Result};

pub const RUN_FILE: &str = "run.json";
pub const METRICS: &str = "metrics.jsonl";
pub const EVALS: &str = "evals.jsonl";

pub fn read_spec<T: DeserializeOwned>(run: &Path) -> Result<T> {
    let path = run.join(RUN_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// The open logs of a run being trained.
pub struct RunLogs {
    pub metrics: JsonlWriter,
    pub evals: JsonlWriter,
    start_step: usize,
    started: Instant,
}

impl RunLogs {
    /// A fresh run writes `run.json` and empty logs; a resumed one drops log lines after `resumed_at`
    /// (written after the checkpoint it resumes from, and about to be redone).
    pub fn open(run: &Path, spec: &impl Serialize, resumed_at: Option<usize>) -> Result<Self> {
        match resumed_at {
            Some(step) => {
                truncate_jsonl(&run.join(METRICS), step)?;
                truncate_jsonl(&run.join(EVALS), step)?;
            }
            None => {
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

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub steps_run: usize,
    pub final_step: usize,
    pub mean_step_seconds: f64,
}
