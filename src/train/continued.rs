//! Continued pre-training with dynamic batch loading (paper §2.2; docs/method.md §6, §8).
//!
//! One step draws `batch_size × grad_accum` sequences (each sample's domain drawn from the current
//! proportions), accumulates gradients over the micro-batches, clips the global norm and takes an AdamW
//! step under a cosine-with-warmup schedule. Every `eval_interval` steps each domain's eval loss is
//! measured and the proportions are updated from the gap to the reference losses. A run directory holds
//! `run.json`, `metrics.jsonl` (per step), `evals.jsonl` (per eval) and `checkpoint/` (weights, AdamW
//! moments, step, loader state with its RNG and cursors), so a killed run resumes bit-for-bit. With
//! `save_only_model` the checkpoint leaves out the moments: it can be exported, not resumed.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Var};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::checkpoint;
use super::optim::{AdamW, AdamWConfig, CosineSchedule};
use super::run::{read_spec, RunLogs, RunSummary};
use super::step::{accumulate, check_batch, check_loss, check_rates, check_steps, micro_batch, update};
use crate::config::LlamaConfig;
use crate::data::corpus::Corpus;
use crate::data::loader::{LoaderState, UpdateRule};
use crate::data::CorpusFeed;
use crate::error::{Error, Result};
use crate::eval::evaluate_corpus;
use crate::model::{trainable, Llama, TensorMap};

/// RedPajama's proportions, the reference's initial mixture (docs/method.md §6).
pub const REDPAJAMA_PROPORTIONS: [(&str, f64); 7] = [
    ("cc", 0.67),
    ("github", 0.045),
    ("book", 0.045),
    ("stackexchange", 0.02),
    ("wiki", 0.045),
    ("arxiv", 0.025),
    ("c4", 0.15),
];

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
    pub update_rule: UpdateRule,
    /// Initial proportions, in the corpus's domain order.
    pub proportions: Vec<f64>,
    /// Reference losses, in the corpus's domain order (unused by `constant`).
    pub reference_losses: Vec<f64>,
}

impl TrainConfig {
    /// The paper's continued pre-training recipe scaled to `steps`: LR 1e-4, warm-up 3%, cosine to 10%.
    pub fn for_steps(steps: usize, domains: &[String]) -> Self {
        let proportions = domains
            .iter()
            .map(|d| REDPAJAMA_PROPORTIONS.iter().find(|(n, _)| n == d).map(|(_, p)| *p).unwrap_or(1.0 / 7.0))
            .collect();
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
            update_rule: UpdateRule::Doremi,
            proportions,
            reference_losses: vec![],
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
}

pub fn read_train_spec(run: &Path) -> Result<TrainSpec> {
    read_spec(run)
}

pub struct StepReport<'a> {
    pub step: usize,
    pub loss: f64,
    pub tokens_per_s: f64,
    /// Per-domain eval losses and the proportions after the update, on eval steps.
    pub eval: Option<(&'a [f64], &'a [f64])>,
}

struct State {
    vars: BTreeMap<String, Var>,
    optimizer: AdamW,
    feed: CorpusFeed,
    step: usize,
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

/// Run (or resume) continued pre-training in `run`. `on_step` sees every step; `Break` checkpoints and stops.
pub fn train(
    run: &Path,
    spec: &TrainSpec,
    cfg: &LlamaConfig,
    weights: TensorMap,
    corpus: Corpus,
    resume: bool,
    mut on_step: impl FnMut(&StepReport) -> ControlFlow<()>,
) -> Result<RunSummary> {
    let c = &spec.config;
    let k = corpus.domains.len();
    if spec.domains != corpus.domains {
        return Err(Error::Invalid(format!(
            "run domains {:?} differ from the corpus's {:?}",
            spec.domains, corpus.domains
        )));
    }
    if c.proportions.len() != k {
        return Err(Error::Invalid(format!("{} initial proportions for {k} domains", c.proportions.len())));
    }
    c.validate()?;
    corpus.check_vocab(cfg.vocab_size)?;
    if resume {
        checkpoint::ensure_resumable(run)?;
    }
    let device = weights.values().next().map(|t| t.device().clone()).unwrap_or(Device::Cpu);
    let (vars, _) = trainable(weights)?;
    let params: Vec<(String, Var)> = vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let adam = AdamWConfig { weight_decay: c.weight_decay, ..AdamWConfig::sheared(c.lr) };
    let feed = CorpusFeed::new(corpus, &c.proportions, c.update_rule, c.reference_losses.clone(), c.seed)?;
    let mut st = State { optimizer: AdamW::new("weights", adam, params)?, feed, vars, step: 0 };
    if resume {
        restore(run, &mut st, &device, c.steps)?;
    }
    let mut logs = RunLogs::open(run, spec, resume.then_some(st.step))?;
    let compute = if c.bf16 { DType::BF16 } else { DType::F32 };
    let schedule = CosineSchedule { warmup: c.warmup_steps, total: c.steps, alpha_f: c.alpha_f };
    let all_vars: Vec<Var> = st.vars.values().cloned().collect();
    let seq = st.feed.corpus.seq_len();
    let domains = st.feed.corpus.domains.clone();
    // In f32 the model can hold the vars themselves; a bf16 model is a fresh copy every step.
    let f32_model = if c.bf16 { None } else { Some(model_of(cfg, &st.vars, DType::F32, false)?) };

    while st.step < c.steps {
        let t0 = Instant::now();
        let n_samples = c.batch_size * c.grad_accum;
        let (batch, sample_domains) = st.feed.next_batch(n_samples, &device)?;
        let bf16_model;
        let model = match &f32_model {
            Some(m) => m,
            None => {
                bf16_model = model_of(cfg, &st.vars, compute, false)?;
                &bf16_model
            }
        };
        let mut acc: Option<GradStore> = None;
        let mut domain_loss = vec![(0f64, 0usize); k];
        for (m, micro) in sample_domains.chunks(c.batch_size).enumerate() {
            let ids = batch.narrow(0, m * c.batch_size, micro.len())?;
            let (values, grads) = micro_batch(model, &ids, n_samples)?;
            if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
                check_loss(*bad as f64, st.step + 1, "--lr")?;
            }
            for (&d, v) in micro.iter().zip(&values) {
                domain_loss[d].0 += *v as f64;
                domain_loss[d].1 += 1;
            }
            acc = Some(accumulate(acc, grads, &all_vars)?);
        }
        let grads = acc.expect("at least one micro-batch");
        let factor = schedule.factor(st.step);
        let norm = update(std::slice::from_mut(&mut st.optimizer), &grads, &all_vars, factor, c.max_grad_norm)?;
        st.step += 1;

        let loss = domain_loss.iter().map(|(s, _)| s).sum::<f64>() / n_samples as f64;
        let seconds = t0.elapsed().as_secs_f64();
        let tokens = n_samples * seq;
        let mut m = Map::new();
        m.insert("step".into(), st.step.into());
        m.insert("loss".into(), loss.into());
        // Only domains that appeared in this batch have a train loss (never 0/0).
        let mut per_domain = Map::new();
        for (d, (sum, n)) in domain_loss.iter().enumerate() {
            if *n > 0 {
                per_domain.insert(domains[d].clone(), (sum / *n as f64).into());
            }
        }
        m.insert("domain_loss".into(), Value::Object(per_domain));
        m.insert("lr".into(), (c.lr * factor).into());
        m.insert("grad_norm".into(), norm.into());
        m.insert("tokens".into(), (st.step * tokens).into());
        m.insert("proportions".into(), json!(st.feed.loader.state.proportions));
        // Cumulative wrap-arounds per domain: repeated data is visible, never silent.
        m.insert("wraps".into(), json!(st.feed.loader.state.wraps));
        m.insert("seconds".into(), seconds.into());
        m.insert("tokens_per_s".into(), (tokens as f64 / seconds).into());
        logs.metrics.write(&Value::Object(m))?;

        let last = st.step == c.steps;
        let mut eval_losses = None;
        if c.eval_interval > 0 && (st.step.is_multiple_of(c.eval_interval) || last) {
            let eval_model = model_of(cfg, &st.vars, DType::F32, true)?;
            let rows = evaluate_corpus(
                &eval_model,
                &st.feed.corpus,
                Some(c.eval_sequences),
                c.batch_size,
                None,
                |_, _, _| {},
            )?;
            let losses: Vec<f64> = rows.iter().map(|r| r.mean_nll).collect();
            let mut record = st.feed.update(&losses)?;
            record["step"] = st.step.into();
            logs.evals.write(&record)?;
            eval_losses = Some(losses);
        }
        let props = st.feed.loader.state.proportions.clone();
        let report = StepReport {
            step: st.step,
            loss,
            tokens_per_s: tokens as f64 / seconds,
            eval: eval_losses.as_deref().map(|l| (l, props.as_slice())),
        };
        let stop = on_step(&report).is_break();
        if last || stop || (c.checkpoint_interval > 0 && st.step.is_multiple_of(c.checkpoint_interval)) {
            save(run, &st, c.save_only_model)?;
        }
        if stop {
            break;
        }
    }
    Ok(logs.summary(st.step))
}

fn save(run: &Path, st: &State, model_only: bool) -> Result<()> {
    let weights = st.vars.iter().map(|(k, v)| (format!("weights.{k}"), v.as_tensor().clone())).collect();
    let state = json!({"step": st.step, "optimizer_steps": st.optimizer.steps, "loader": st.feed.loader.state});
    checkpoint::save_run(run, weights, state, model_only, |t| st.optimizer.save_moments(t, ""))
}

fn restore(run: &Path, st: &mut State, device: &Device, steps: usize) -> Result<()> {
    let (t, state) = checkpoint::load(run, device)?;
    for (k, v) in &st.vars {
        checkpoint::restore_var(&t, &format!("weights.{k}"), v, run)?;
    }
    st.step = checkpoint::step_of(&state, run, steps)?;
    let bad = |msg: String| checkpoint::corrupt(run, format!("checkpoint {msg}"));
    let optimizer_steps = state["optimizer_steps"].as_u64().ok_or_else(|| bad("lacks `optimizer_steps`".into()))?;
    if optimizer_steps != st.step as u64 {
        return Err(bad(format!("optimizer_steps {optimizer_steps} differs from its step {}", st.step)));
    }
    st.optimizer.restore_moments(&t, "", st.step)?;
    let loader: LoaderState =
        serde_json::from_value(state["loader"].clone()).map_err(|e| bad(format!("loader state: {e}")))?;
    st.feed.restore(loader).map_err(|e| bad(e.to_string()))
}

/// Export the latest checkpoint of a training run as an HF directory (tokenizer copied from the model).
pub fn export_run(run: &Path, out: &Path) -> Result<PathBuf> {
    crate::io::check_writable_destination(out)?;
    let spec = read_train_spec(run)?;
    let cfg = crate::io::hf::load_config(&spec.model)?;
    let (t, _) = checkpoint::load(run, &Device::Cpu)?;
    let weights = checkpoint::take_prefixed(&t, "weights");
    let opts = crate::io::SaveOptions { companions_from: Some(spec.model.clone()), ..Default::default() };
    crate::io::save_model(out, &cfg, &weights, &opts)
}
