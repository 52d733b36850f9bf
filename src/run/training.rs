//! A continued pre-training run's directory (paper §2.2; docs/method.md §6, §8): the common files
//! ([`super`]) only. Its checkpoint exports as an HF model directory.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::checks::{check_batch, check_rates, check_steps};
use crate::config::LlamaConfig;
use crate::data::loader::UpdateRule;
use crate::data::mixture::MixtureConfig;
use crate::error::{Error, Result};
use crate::model::{DistillLoss, Llama, Teacher};

/// Hyperparameters of a continued pre-training run (defaults: the paper's recipe, scaled to the step count).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub alpha_f: f64,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub eval_interval: usize,
    /// Eval sequences per domain at each eval.
    pub eval_sequences: usize,
    pub checkpoint_interval: usize,
    /// Checkpoints hold the weights but not the AdamW moments (a third of the size); such a run can be
    /// exported but not resumed.
    #[serde(default)]
    pub save_only_model: bool,
    pub seed: u64,
    /// Compute forward and backward in bf16 (weights and optimizer state stay f32).
    pub bf16: bool,
    /// The domain mixture and how it moves at each eval (docs/method.md §6).
    #[serde(flatten)]
    pub mixture: MixtureConfig,
}

impl TrainConfig {
    /// The paper's continued pre-training recipe scaled to `steps`: LR 1e-4, warm-up 3%, cosine to 10%.
    pub fn for_steps(steps: usize, domains: &[String]) -> Self {
        Self {
            steps,
            batch_size: 4,
            grad_accum: 1,
            lr: 1e-4,
            warmup_steps: (steps * 3).div_ceil(100),
            alpha_f: 0.1,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            eval_interval: 50,
            eval_sequences: 16,
            checkpoint_interval: 50,
            save_only_model: false,
            seed: 17,
            bf16: false,
            mixture: MixtureConfig::redpajama(domains, UpdateRule::Doremi),
        }
    }

    /// Sizes and rates that could not train, checked before any work (they may come from `run.json`).
    pub fn validate(&self) -> Result<()> {
        check_steps(self.steps)?;
        check_batch(self.batch_size, self.grad_accum)?;
        check_rates(&[
            ("lr", self.lr),
            ("alpha_f", self.alpha_f),
            ("max_grad_norm", self.max_grad_norm),
            ("weight_decay", self.weight_decay),
        ])
    }
}

/// What a run was asked to do (`run.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSpec {
    pub model: PathBuf,
    pub data: PathBuf,
    pub domains: Vec<String>,
    pub config: TrainConfig,
    /// Logit distillation from this teacher instead of (or beside) the LM loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<TeacherSpec>,
}

/// The teacher of a distillation run and its loss (docs/method.md §10).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TeacherSpec {
    pub model: PathBuf,
    #[serde(flatten)]
    pub loss: DistillLoss,
    /// [`teacher_fingerprint`] of the teacher the run started with: a resumed run refuses another one
    /// (the student's weights come from the checkpoint, the teacher's from its directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// FNV-1a of a model directory's `config.json` and weight files, in hex.
pub fn teacher_fingerprint(dir: &Path) -> Result<String> {
    let mut files = vec![dir.join(crate::io::hf::CONFIG_FILE)];
    files.extend(crate::io::hf::weight_files(dir)?);
    let mut h = String::new();
    for f in files {
        let bytes = std::fs::read(&f).map_err(|e| Error::io(&f, e))?;
        h.push_str(&format!("{:016x}", crate::data::corpus::fnv1a64(&bytes)));
    }
    Ok(format!("{:016x}", crate::data::corpus::fnv1a64(h.as_bytes())))
}

impl TeacherSpec {
    /// The teacher, loaded in `dtype` on `device`, for a student of config `student` (the same vocabulary
    /// and tokenizer file).
    pub fn load(&self, student: &LlamaConfig, student_dir: &Path, dtype: DType, device: &Device) -> Result<Teacher> {
        // Settings that define no loss are refused before anything is read.
        self.loss.validate().map_err(Error::Invalid)?;
        let cfg = crate::io::hf::load_config(&self.model)?;
        if let Some(want) = &self.fingerprint {
            let got = teacher_fingerprint(&self.model)?;
            if &got != want {
                return Err(Error::Invalid(format!(
                    "teacher {} is not the model this run started with (fingerprint {got}, the run's {want})",
                    self.model.display()
                )));
            }
        }
        let read = |dir: &Path| {
            let path = dir.join("tokenizer.json");
            std::fs::read(&path).map_err(|e| Error::io(&path, e))
        };
        if read(&self.model)? != read(student_dir)? {
            return Err(Error::Invalid(format!(
                "teacher {} and student {} have different tokenizer.json files: distillation compares \
                 distributions over the same token ids",
                self.model.display(),
                student_dir.display()
            )));
        }
        let weights = crate::io::hf::load_weights(&self.model, Some(dtype), device)?;
        crate::model::check_weights(&cfg, &weights)
            .map_err(|e| Error::Invalid(format!("teacher {}: {e}", self.model.display())))?;
        Teacher::new(Llama::new(&cfg, &weights)?, self.loss, student)
    }
}

/// A run's `run.json`. Relative model and data paths are relative to the run directory.
pub fn read_spec(run: &Path) -> Result<TrainSpec> {
    let mut spec: TrainSpec = super::read_spec(run)?;
    let teacher = spec.teacher.as_mut().map(|t| &mut t.model);
    super::resolve_in(run, [&mut spec.model, &mut spec.data].into_iter().chain(teacher));
    Ok(spec)
}

/// Export the latest checkpoint of a training run as an HF directory (tokenizer copied from the model).
pub fn export(run: &Path, out: &Path) -> Result<PathBuf> {
    crate::io::check_writable_destination(out)?;
    let spec = read_spec(run)?;
    let cfg = crate::io::hf::load_config(&spec.model)?;
    let (t, _) = checkpoint::load(run, &Device::Cpu)?;
    let weights = checkpoint::take_prefixed(&t, "weights");
    let opts = crate::io::SaveOptions { companions_from: Some(spec.model.clone()), ..Default::default() };
    crate::io::save_model(out, &cfg, &weights, &opts)
}
