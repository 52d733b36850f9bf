//! Continued pre-training with dynamic batch loading (paper §2.2; docs/method.md §6, §8).
//!
//! One step draws `batch_size × grad_accum` sequences (each sample's domain drawn from the current
//! proportions), accumulates gradients over the micro-batches, clips the global norm and takes an AdamW
//! step under a cosine-with-warmup schedule. At each eval every domain's eval loss is measured and the
//! proportions are updated from the gap to the reference losses. The checkpoint holds the weights, the
//! AdamW moments, the step and the loader state with its RNG and cursors, so a killed run resumes
//! bit-for-bit; with `save_only_model` it leaves out the moments and can be exported, not resumed. The
//! run directory is [`crate::run::training`]'s.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use super::driver::{drive, Cadence, Stage};
use super::optim::{AdamW, AdamWConfig, CosineSchedule};
use super::step::{accumulate, check_loss, micro_batch, update, Backward};
use crate::config::LlamaConfig;
use crate::data::corpus::Corpus;
use crate::data::mixture::DomainValues;
use crate::data::CorpusFeed;
use crate::error::{Error, Result};
use crate::eval::evaluate_corpus;
use crate::model::{trainable, Llama, Teacher, TensorMap};
use crate::run::checkpoint::{self, CheckpointState, OptimizerSteps};
use crate::run::records::{TrainEvalRecord, TrainStepRecord};
use crate::run::training::{TrainConfig, TrainSpec};
use crate::run::{RunLogs, RunSummary};

/// What `on_step` sees: the step's `metrics.jsonl` line, and on eval steps its `evals.jsonl` line.
pub struct TrainProgress {
    pub metrics: TrainStepRecord,
    pub eval: Option<TrainEvalRecord>,
}

/// Everything trained in a continued pre-training run, and its optimizer step (shared by [`train`] and
/// the same shape as [`super::pruning::Pruner`]).
pub struct Trainer {
    vars: BTreeMap<String, Var>,
    /// Every var, in the order the gradient norm is taken over.
    all_vars: Vec<Var>,
    cfg: LlamaConfig,
    /// In f32 the model holds the vars themselves; a bf16 model is a fresh copy every step.
    f32_model: Option<Llama>,
    compute: DType,
    optimizer: AdamW,
    schedule: CosineSchedule,
    max_grad_norm: f64,
    backward: Backward,
    /// Distillation's frozen teacher (docs/method.md §10); `None`: the LM loss alone.
    teacher: Option<Teacher>,
    step: usize,
}

/// What one training step did.
pub struct TrainStep {
    /// Per-sample mean LM losses, in batch order.
    pub losses: Vec<f32>,
    /// With a teacher: per-sample mean KL to it.
    pub kl: Option<Vec<f32>>,
    pub grad_norm: f64,
    pub lr_factor: f64,
}

impl Trainer {
    /// The model's weights as trainable vars, fresh AdamW state; with a `teacher`, distillation.
    pub fn new(cfg: &LlamaConfig, weights: TensorMap, c: &TrainConfig, teacher: Option<Teacher>) -> Result<Self> {
        let (vars, _) = trainable(weights)?;
        let params: Vec<(String, Var)> = vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let adam = AdamWConfig { weight_decay: c.weight_decay, ..AdamWConfig::sheared(c.lr) };
        let compute = if c.bf16 { DType::BF16 } else { DType::F32 };
        let f32_model = if c.bf16 { None } else { Some(model_of(cfg, &vars, DType::F32, false)?) };
        // The hand-written backward needs f32 weights on the CPU; a bf16 run always takes autograd.
        let backward = f32_model.as_ref().map(Backward::for_model).unwrap_or(Backward::Autograd);
        Ok(Self {
            all_vars: vars.values().cloned().collect(),
            vars,
            cfg: cfg.clone(),
            f32_model,
            compute,
            optimizer: AdamW::new("weights", adam, params)?,
            schedule: CosineSchedule { warmup: c.warmup_steps, total: c.steps, alpha_f: c.alpha_f },
            max_grad_norm: c.max_grad_norm,
            backward,
            teacher,
            step: 0,
        })
    }

    /// One optimizer step on `batch: [n, seq]`, split into micro-batches of `micro` sequences: the
    /// gradients of the batch's mean loss accumulated over them, the global norm clipped, AdamW stepped.
    pub fn step(&mut self, batch: &Tensor, micro: usize) -> Result<TrainStep> {
        let n_samples = batch.dim(0)?;
        if micro == 0 || n_samples == 0 {
            return Err(Error::Invalid(format!("a step of {n_samples} sequences in micro-batches of {micro}")));
        }
        let bf16_model;
        let model = match &self.f32_model {
            Some(m) => m,
            None => {
                bf16_model = model_of(&self.cfg, &self.vars, self.compute, false)?;
                &bf16_model
            }
        };
        let mut acc: Option<GradStore> = None;
        let mut losses = Vec::with_capacity(n_samples);
        let mut kl = self.teacher.as_ref().map(|_| Vec::with_capacity(n_samples));
        for start in (0..n_samples).step_by(micro) {
            let ids = batch.narrow(0, start, micro.min(n_samples - start))?;
            let out = micro_batch(model, self.backward, &ids, n_samples, self.teacher.as_ref())?;
            let values = out.lm.iter().chain(out.kl.iter().flatten());
            if let Some(bad) = values.into_iter().find(|v| !v.is_finite()) {
                check_loss(*bad as f64, self.step + 1, "--lr")?;
            }
            losses.extend(out.lm);
            if let (Some(kl), Some(values)) = (kl.as_mut(), out.kl) {
                kl.extend(values);
            }
            acc = Some(accumulate(acc, out.grads, &self.all_vars)?);
        }
        let grads = acc.expect("at least one micro-batch");
        let lr_factor = self.schedule.factor(self.step);
        let opt = std::slice::from_mut(&mut self.optimizer);
        let grad_norm = update(opt, &grads, &self.all_vars, lr_factor, self.max_grad_norm)?;
        self.step += 1;
        Ok(TrainStep { losses, kl, grad_norm, lr_factor })
    }

    /// An inference-only copy of the current weights, in f32.
    pub fn eval_model(&self) -> Result<Llama> {
        model_of(&self.cfg, &self.vars, DType::F32, true)
    }
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Checkpoint into `run`: weights, the loader's state and (unless `model_only`) the AdamW moments.
    pub fn save(&self, run: &Path, feed: &CorpusFeed, model_only: bool) -> Result<()> {
        let weights = self.vars.iter().map(|(k, v)| (format!("weights.{k}"), v.as_tensor().clone())).collect();
        let state = CheckpointState {
            step: self.step,
            rng: None,
            optimizer_steps: OptimizerSteps::PerOptimizer(vec![self.optimizer.steps]),
            loader: Some(feed.loader.state.clone()),
            model_only,
        };
        checkpoint::save_run(run, weights, &state, |t| self.optimizer.save_moments(t, ""))
    }

    /// Continue from `run`'s checkpoint, in a run of `steps` steps.
    pub fn restore(&mut self, run: &Path, device: &Device, feed: &mut CorpusFeed, steps: usize) -> Result<()> {
        let (t, state) = checkpoint::load(run, device)?;
        for (k, v) in &self.vars {
            checkpoint::restore_var(&t, &format!("weights.{k}"), v, run)?;
        }
        self.step = state.checked_step(run, steps, 1)?;
        self.optimizer.restore_moments(&t, "", self.step)?;
        let bad = |msg: String| checkpoint::corrupt(run, format!("checkpoint {msg}"));
        let loader = state.loader.ok_or_else(|| bad("state has no `loader`".into()))?;
        feed.restore(loader).map_err(|e| bad(e.to_string()))
    }
}

/// A model over the current values of `vars`, in `dtype` (a bf16 copy stays connected to the f32 vars
/// for backward; `detach` gives an inference-only copy).
fn model_of(cfg: &LlamaConfig, vars: &BTreeMap<String, Var>, dtype: DType, detach: bool) -> Result<Llama> {
    let mut t = TensorMap::new();
    for (k, v) in vars {
        let x = if detach { v.as_tensor().detach() } else { v.as_tensor().clone() };
        t.insert(k.clone(), if x.dtype() == dtype { x } else { x.to_dtype(dtype)? });
    }
    Llama::new(cfg, &t)
}

/// Run (or resume) continued pre-training in `run` (with the spec's teacher, if any). `on_step` sees every step;
/// `Break` checkpoints and stops.
pub fn train(
    run: &Path,
    spec: &TrainSpec,
    cfg: &LlamaConfig,
    weights: TensorMap,
    corpus: Corpus,
    resume: bool,
    on_step: impl FnMut(&TrainProgress) -> ControlFlow<()>,
) -> Result<RunSummary> {
    let c = &spec.config;
    let k = corpus.domains.len();
    if spec.domains != corpus.domains {
        return Err(Error::Invalid(format!(
            "run domains {:?} differ from the corpus's {:?}",
            spec.domains, corpus.domains
        )));
    }
    if c.mixture.proportions.len() != k {
        return Err(Error::Invalid(format!("{} initial proportions for {k} domains", c.mixture.proportions.len())));
    }
    c.validate()?;
    corpus.check_vocab(cfg.vocab_size)?;
    if resume {
        checkpoint::ensure_resumable(run)?;
    }
    let device = weights.values().next().map(|t| t.device().clone()).unwrap_or(Device::Cpu);
    // The teacher computes in the run's compute dtype.
    let dtype = if c.bf16 { DType::BF16 } else { DType::F32 };
    let teacher = spec.teacher.as_ref().map(|t| t.load(cfg, &spec.model, dtype, &device)).transpose()?;
    if let Some(t) = &teacher {
        let max = t.model().config().max_position_embeddings;
        if max < corpus.seq_len() {
            return Err(Error::Invalid(format!(
                "the teacher reads at most {max} positions (max_position_embeddings), the corpus's sequences have {}",
                corpus.seq_len()
            )));
        }
    }
    let mut trainer = Trainer::new(cfg, weights, c, teacher)?;
    let mut feed = CorpusFeed::new(corpus, &c.mixture, c.seed)?;
    if resume {
        trainer.restore(run, &device, &mut feed, c.steps)?;
    }
    let logs = RunLogs::open(run, spec, resume.then_some(trainer.step))?;
    let mut stage = TrainingStage { trainer, feed, c, device };
    let cadence =
        Cadence { steps: c.steps, eval_interval: c.eval_interval, checkpoint_interval: c.checkpoint_interval };
    drive(&mut stage, run, logs, cadence, on_step)
}

/// A continued pre-training run in progress: the [`Trainer`] and its corpus.
struct TrainingStage<'a> {
    trainer: Trainer,
    feed: CorpusFeed,
    c: &'a TrainConfig,
    device: Device,
}

impl Stage for TrainingStage<'_> {
    type Progress = TrainProgress;

    fn steps_done(&self) -> usize {
        self.trainer.step
    }
    fn backward(&self) -> Backward {
        self.trainer.backward
    }

    fn step(&mut self, logs: &mut RunLogs) -> Result<TrainProgress> {
        let c = self.c;
        let t0 = Instant::now();
        let n_samples = c.batch_size * c.grad_accum;
        let (batch, sample_domains) = self.feed.next_batch(n_samples, &self.device)?;
        let TrainStep { losses, kl, grad_norm, lr_factor } = self.trainer.step(&batch, c.batch_size)?;
        let domains = &self.feed.corpus.domains;
        let mut domain_loss = vec![(0f64, 0usize); domains.len()];
        for (&d, &v) in sample_domains.iter().zip(&losses) {
            domain_loss[d].0 += v as f64;
            domain_loss[d].1 += 1;
        }
        let loss = domain_loss.iter().map(|(s, _)| s).sum::<f64>() / n_samples as f64;
        let seconds = t0.elapsed().as_secs_f64();
        let tokens = n_samples * self.feed.corpus.seq_len();
        let step = self.trainer.step;
        let state = &self.feed.loader.state;
        let metrics = TrainStepRecord {
            step,
            loss,
            // Only domains that appeared in this batch have a train loss (never 0/0).
            domain_loss: DomainValues(
                domains
                    .iter()
                    .zip(&domain_loss)
                    .filter(|(_, (_, n))| *n > 0)
                    .map(|(d, (sum, n))| (d.clone(), sum / *n as f64))
                    .collect(),
            ),
            distill_loss: kl.map(|kl| kl.iter().map(|&v| v as f64).sum::<f64>() / n_samples as f64),
            lr: c.lr * lr_factor,
            grad_norm,
            tokens: step * tokens,
            proportions: state.proportions.clone(),
            wraps: state.wraps.clone(),
            seconds,
            tokens_per_s: tokens as f64 / seconds,
        };
        logs.metrics.write(&metrics)?;
        Ok(TrainProgress { metrics, eval: None })
    }

    fn evaluate(&mut self, progress: &mut TrainProgress, logs: &mut RunLogs) -> Result<()> {
        let c = self.c;
        let model = self.trainer.eval_model()?;
        let rows =
            evaluate_corpus(&model, &self.feed.corpus, Some(c.eval_sequences), c.batch_size, None, |_, _, _| {})?;
        let losses: Vec<f64> = rows.iter().map(|r| r.mean_nll).collect();
        let record = TrainEvalRecord { mixture: self.feed.update(&losses)?, step: self.trainer.step };
        logs.evals.write(&record)?;
        progress.eval = Some(record);
        Ok(())
    }

    fn checkpoint(&self, run: &Path) -> Result<()> {
        self.trainer.save(run, &self.feed, self.c.save_only_model)
    }
}
