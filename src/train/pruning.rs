//! The pruning stage (docs/method.md §4): the source model trained together with its masks, the
//! Lagrangian pulling each mask family to its target sparsity.
//!
//! One step: clamp log-α → per micro-batch, draw masks → masked LM loss → backward, accumulated; plus the
//! Lagrangian's gradient once → clip the global gradient norm over weights, log-α and λ → AdamW on the
//! three groups (weights, log-α, λ with a negative learning rate), all scaled by one cosine-with-warmup
//! schedule. Every `eval_interval` steps the deterministic masks are evaluated on held-out text and saved:
//! with the target counts (the model `materialize` produces) and, labelled `_expected`, with the counts the
//! scores currently describe.
//!
//! A run directory holds `run.json` (what was asked), `target.toml`, `metrics.jsonl` (one line per step),
//! `evals.jsonl`, `masks/step_NNNNNN.safetensors` (log-α and deterministic masks) and `checkpoint/`.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::checkpoint;
use super::optim::{AdamW, AdamWConfig, CosineSchedule};
use super::run::{read_spec, RunLogs, RunSummary};
use super::step::{accumulate, check_batch, check_loss, check_rates, check_seq_len, check_steps, update};
use crate::config::LlamaConfig;
use crate::data::loader::{LoaderState, UpdateRule};
use crate::data::{CorpusFeed, TextData};
use crate::error::{Error, Result};
use crate::eval::{evaluate_corpus, evaluate_ids};
use crate::family::{Family, MaskScores};
use crate::model::{trainable, Kernels, Llama, MaskValues, TensorMap};
use crate::prune::masks::{layouts, prunable_params, Deterministic, MaskSet};
use crate::prune::{FamilyStat, Lagrangian, TargetShape};
use crate::rng::Rng;

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
    pub checkpoint_interval: usize,
    /// Checkpoints hold the weights, log-α and λ but not the AdamW moments (a third of the size); such a
    /// run can be materialized but not resumed.
    #[serde(default)]
    pub save_only_model: bool,
    pub seed: u64,
    /// With a corpus: how the domain proportions move at each eval (docs/method.md §6).
    #[serde(default = "constant_rule")]
    pub update_rule: UpdateRule,
    /// With a corpus: initial proportions (domain order); reference losses for dynamic rules.
    #[serde(default)]
    pub proportions: Vec<f64>,
    #[serde(default)]
    pub reference_losses: Vec<f64>,
}

fn one() -> usize {
    1
}

fn constant_rule() -> UpdateRule {
    UpdateRule::Constant
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
            checkpoint_interval: 100,
            save_only_model: false,
            seed: 17,
            update_rule: UpdateRule::Constant,
            proportions: vec![],
            reference_losses: vec![],
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

/// What a pruning run trains and evaluates on: a text file, or a corpus with dynamic batch loading.
pub enum PruneData {
    Text(TextData),
    Corpus(Box<CorpusFeed>),
}

/// What a run was asked to do (`run.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    pub source_model: PathBuf,
    pub data: PathBuf,
    pub target: TargetShape,
    pub config: PruneConfig,
}

/// One logged step.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub step: usize,
    pub lm_loss: f64,
    pub lagrangian: f64,
    pub expected_params: f64,
    pub seconds: f64,
    /// Held-out NLL under the target-count masks (the model `materialize` gives), on eval steps.
    pub eval_nll: Option<f64>,
    /// The same under the expected-count masks (the structure the scores describe).
    pub eval_nll_expected: Option<f64>,
    pub metrics: Map<String, Value>,
}

/// A run's `run.json`. Relative model and data paths are relative to the run directory, so that a run can
/// ship inside the repository (`data/runs/`).
pub fn read_run_spec(run: &Path) -> Result<RunSpec> {
    let mut spec: RunSpec = read_spec(run)?;
    for p in [&mut spec.source_model, &mut spec.data] {
        if p.is_relative() {
            *p = run.join(&*p);
        }
    }
    Ok(spec)
}

/// Everything trained in a pruning run, and its optimizer step (shared by [`prune`] and `shear bench prune`).
pub struct Pruner {
    weights: BTreeMap<String, candle_core::Var>,
    model: Llama,
    masks: MaskSet,
    lagrangian: Lagrangian,
    optimizers: [AdamW; 3],
    rng: Rng,
    step: usize,
    /// Every var the gradient norm is clipped over: weights, log-α and λ.
    all_vars: Vec<candle_core::Var>,
    schedule: CosineSchedule,
    max_grad_norm: f64,
    device: Device,
}

/// What one pruning step did.
pub struct PruneStep {
    pub lm_loss: f64,
    pub stats: Vec<FamilyStat>,
    pub grad_norm: f64,
    pub lr_factor: f64,
}

impl Pruner {
    /// The source model's weights as trainable vars, fresh masks (log-α drawn from `config.seed`), zero λs.
    pub fn new(cfg: &LlamaConfig, weights: TensorMap, target: &TargetShape, c: &PruneConfig) -> Result<Self> {
        let device = weights.values().next().map(|t| t.device().clone()).unwrap_or(Device::Cpu);
        let (vars, tensors) = trainable(weights)?;
        let model = Llama::new(cfg, &tensors)?;
        let mut rng = Rng::new(c.seed);
        let masks = MaskSet::new(cfg, target, &mut rng, &device)?;
        let lagrangian = Lagrangian::new(&layouts(cfg, target), c.lagrangian_warmup_steps, &device)?;
        let weight_params: Vec<_> = vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mask_params: Vec<_> =
            masks.families.iter().map(|f| (f.layout.family.name().to_string(), f.log_alpha.clone())).collect();
        let lambda_params: Vec<_> = lagrangian
            .multipliers
            .iter()
            .flat_map(|m| {
                [
                    (format!("{}.1", m.family.name()), m.lambda1.clone()),
                    (format!("{}.2", m.family.name()), m.lambda2.clone()),
                ]
            })
            .collect();
        let optimizers = [
            AdamW::new("weights", AdamWConfig::sheared(c.lr), weight_params)?,
            AdamW::new("log_alpha", AdamWConfig::sheared(c.mask_lr), mask_params)?,
            // Gradient ascent: the multipliers maximize the Lagrangian.
            AdamW::new("lambda", AdamWConfig::sheared(-c.lambda_lr), lambda_params)?,
        ];
        let schedule = CosineSchedule { warmup: c.lr_warmup_steps, total: c.steps, alpha_f: c.alpha_f };
        let all_vars = vars.values().cloned().chain(masks.vars()).chain(lagrangian.vars()).collect();
        Ok(Self {
            weights: vars,
            model,
            masks,
            lagrangian,
            optimizers,
            rng,
            step: 0,
            all_vars,
            schedule,
            max_grad_norm: c.max_grad_norm,
            device,
        })
    }

    /// One optimizer step on the micro-batches `[b, seq]` of one batch: [`Pruner::gradients`], then clip
    /// the global norm over weights, log-α and λ and step AdamW on the three groups.
    pub fn step(&mut self, micro_batches: &[Tensor]) -> Result<PruneStep> {
        let (lm_loss, stats, grads) = self.gradients(micro_batches)?;
        let lagrangian: f64 = stats.iter().map(|s| s.lagrangian).sum();
        if !lagrangian.is_finite() {
            return Err(Error::Invalid(format!(
                "non-finite Lagrangian ({lagrangian}) at step {}; lower --lambda-lr or --mask-lr",
                self.step + 1
            )));
        }
        let lr_factor = self.schedule.factor(self.step);
        let grad_norm = update(&mut self.optimizers, &grads, &self.all_vars, lr_factor, self.max_grad_norm)?;
        self.step += 1;
        Ok(PruneStep { lm_loss, stats, grad_norm, lr_factor })
    }

    /// The current step's loss and gradients, without the update: clamp log-α; per micro-batch a fresh mask
    /// sample, the masked LM loss and its backward, accumulated so that the sum is the gradient of the mean
    /// loss over all sequences; the Lagrangian's gradient once (it depends on log-α and λ only). Returns the
    /// mean LM loss, the per-family constraint statistics and the gradients of every trained var.
    pub fn gradients(&mut self, micro_batches: &[Tensor]) -> Result<(f64, Vec<FamilyStat>, GradStore)> {
        let step = self.step;
        self.masks.clamp_in_place()?;
        let (lag, stats) = self.lagrangian.loss(&self.masks.expected_sparsity()?, step)?;
        let mut grads = Some(lag.to_device(&self.device)?.backward()?);
        let n_samples = micro_batches.iter().map(|b| b.dim(0)).sum::<candle_core::Result<usize>>()?;
        let mut loss_sum = 0.0;
        for batch in micro_batches {
            let z = self.masks.sample(&mut self.rng)?;
            let micro = if self.model.hand_backward_applies() {
                // The model's hand-written backward up to the mask values, then autograd over the small
                // graph from log-α to the masks.
                let out = self.model.lm_loss_grads(batch, n_samples, Some(&z))?;
                loss_sum += out.per_sample.iter().map(|&l| l as f64).sum::<f64>();
                let mut to_log_alpha = self.model.mask_surrogate(&z, &out.masks)?.backward()?;
                let mut micro = out.weights;
                for v in self.masks.vars() {
                    if let Some(g) = to_log_alpha.remove(v.as_tensor()) {
                        micro.insert(v.as_tensor(), g);
                    }
                }
                micro
            } else {
                let lm = self.model.lm_loss(batch, Kernels::Differentiable, Some(&z))?;
                let b = batch.dim(0)?;
                loss_sum += lm.to_scalar::<f32>()? as f64 * b as f64;
                (lm * (b as f64 / n_samples as f64))?.backward()?
            };
            grads = Some(accumulate(grads, micro, &self.all_vars)?);
        }
        let lm_loss = loss_sum / n_samples as f64;
        check_loss(lm_loss, step + 1, "--lr or --mask-lr")?;
        Ok((lm_loss, stats, grads.expect("the Lagrangian's gradients")))
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }
    /// Every trained var: the weights, then log-α, then λ.
    pub fn vars(&self) -> &[candle_core::Var] {
        &self.all_vars
    }
    pub fn masks(&self) -> &MaskSet {
        &self.masks
    }

    /// The model part of a checkpoint: weights, log-α and λ.
    fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.weights {
            out.insert(format!("weights.{k}"), v.as_tensor().clone());
        }
        for f in &self.masks.families {
            out.insert(format!("log_alpha.{}", f.layout.family.name()), f.log_alpha.as_tensor().clone());
        }
        for m in &self.lagrangian.multipliers {
            out.insert(format!("lambda1.{}", m.family.name()), m.lambda1.as_tensor().clone());
            out.insert(format!("lambda2.{}", m.family.name()), m.lambda2.as_tensor().clone());
        }
        out
    }

    fn save(&self, run: &Path, data: &PruneData, model_only: bool) -> Result<()> {
        let steps: Vec<usize> = self.optimizers.iter().map(|o| o.steps).collect();
        let mut state = json!({"step": self.step, "rng": self.rng, "optimizer_steps": steps});
        if let PruneData::Corpus(feed) = data {
            state["loader"] = serde_json::to_value(&feed.loader.state).expect("json");
        }
        checkpoint::save_run(run, self.tensors(), state, model_only, |t| {
            for opt in &self.optimizers {
                opt.save_moments(t, &format!("{}.", opt.name));
            }
        })
    }

    fn restore(&mut self, run: &Path, device: &Device, data: &mut PruneData, steps: usize) -> Result<()> {
        let (t, state) = checkpoint::load(run, device)?;
        for (k, v) in &self.weights {
            checkpoint::restore_var(&t, &format!("weights.{k}"), v, run)?;
        }
        for f in &self.masks.families {
            checkpoint::restore_var(&t, &format!("log_alpha.{}", f.layout.family.name()), &f.log_alpha, run)?;
        }
        for m in &self.lagrangian.multipliers {
            for (k, var) in [("lambda1", &m.lambda1), ("lambda2", &m.lambda2)] {
                checkpoint::restore_var(&t, &format!("{k}.{}", m.family.name()), var, run)?;
            }
        }
        self.step = checkpoint::step_of(&state, run, steps)?;
        let bad = |msg: String| checkpoint::corrupt(run, format!("checkpoint {msg}"));
        // Every optimizer takes one step per pruning step; anything else is a corrupt or foreign state.
        let optimizer_steps: Vec<usize> = serde_json::from_value(state["optimizer_steps"].clone())
            .map_err(|e| bad(format!("optimizer_steps: {e}")))?;
        if optimizer_steps != vec![self.step; self.optimizers.len()] {
            return Err(bad(format!(
                "optimizer_steps {optimizer_steps:?}: expected one count per optimizer ({}), each equal to its step {}",
                self.optimizers.len(),
                self.step
            )));
        }
        for opt in &mut self.optimizers {
            let prefix = format!("{}.", opt.name);
            opt.restore_moments(&t, &prefix, self.step)?;
        }
        self.rng = serde_json::from_value(state["rng"].clone()).map_err(|e| bad(format!("rng: {e}")))?;
        if let PruneData::Corpus(feed) = data {
            let loader: LoaderState =
                serde_json::from_value(state["loader"].clone()).map_err(|e| bad(format!("loader state: {e}")))?;
            feed.restore(loader).map_err(|e| bad(e.to_string()))?;
        }
        Ok(())
    }
}

/// Run (or resume) a pruning run in `run`. `on_step` sees every step; returning `Break` checkpoints and
/// stops early (the run can be resumed).
pub fn prune(
    run: &Path,
    spec: &RunSpec,
    source_cfg: &LlamaConfig,
    source_weights: TensorMap,
    data: &mut PruneData,
    resume: bool,
    mut on_step: impl FnMut(&StepRecord) -> ControlFlow<()>,
) -> Result<RunSummary> {
    let c = &spec.config;
    c.validate()?;
    match data {
        PruneData::Text(t) => t.check_vocab(source_cfg.vocab_size)?,
        PruneData::Corpus(feed) => feed.corpus.check_vocab(source_cfg.vocab_size)?,
    }
    if resume {
        checkpoint::ensure_resumable(run)?;
    }
    let device = source_weights.values().next().map(|t| t.device().clone()).unwrap_or(Device::Cpu);
    let mut st = Pruner::new(source_cfg, source_weights, &spec.target, c)?;
    if resume {
        st.restore(run, &device, data, c.steps)?;
    }
    let mut logs = RunLogs::open(run, spec, resume.then_some(st.step))?;
    if !resume {
        std::fs::create_dir_all(run.join("masks")).map_err(|e| Error::io(run, e))?;
        let toml = toml::to_string(&spec.target).expect("toml");
        std::fs::write(run.join("target.toml"), toml).map_err(|e| Error::io(run, e))?;
    }
    let source_prunable = prunable_params(source_cfg);

    while st.step < c.steps {
        let t0 = Instant::now();
        let micro_batches = (0..c.grad_accum)
            .map(|_| match data {
                PruneData::Text(t) => t.sample_batch(c.batch_size, c.seq_len, &mut st.rng, &device),
                PruneData::Corpus(feed) => Ok(feed.next_batch(c.batch_size, &device)?.0),
            })
            .collect::<Result<Vec<_>>>()?;
        let PruneStep { lm_loss, stats, grad_norm: norm, lr_factor: factor } = st.step(&micro_batches)?;

        let expected_params = st.masks.scores()?.expected_params(source_cfg);
        let mut m = Map::new();
        m.insert("step".into(), st.step.into());
        m.insert("lm_loss".into(), lm_loss.into());
        let lag_total: f64 = stats.iter().map(|s| s.lagrangian).sum();
        m.insert("lagrangian".into(), lag_total.into());
        m.insert("grad_norm".into(), norm.into());
        m.insert("lr_factor".into(), factor.into());
        m.insert("expected_params".into(), expected_params.into());
        m.insert("expected_sparsity".into(), (1.0 - expected_params / source_prunable).into());
        for s in &stats {
            let n = s.family.name();
            m.insert(format!("{n}_expected_sparsity"), s.expected_sparsity.into());
            m.insert(format!("{n}_target_sparsity"), s.target_sparsity.into());
            m.insert(format!("{n}_lambda1"), s.lambda1.into());
            m.insert(format!("{n}_lambda2"), s.lambda2.into());
        }
        // Does materialization keep what the masks chose? (Cheap: host-side over the log-α.)
        for d in st.masks.decisions()? {
            let n = d.family.name();
            m.insert(format!("{n}_kept_below_half"), d.kept_below_half.into());
            m.insert(format!("{n}_dropped_above_half"), d.dropped_above_half.into());
            m.insert(format!("{n}_unbalanced_rows"), d.unbalanced_rows.into());
        }
        let seconds = t0.elapsed().as_secs_f64();
        m.insert("seconds".into(), seconds.into());
        m.insert("tokens".into(), (st.step * c.grad_accum * c.batch_size * c.seq_len).into());
        logs.metrics.write(&Value::Object(m.clone()))?;

        let last = st.step == c.steps;
        let (mut eval_nll, mut eval_nll_expected) = (None, None);
        if c.eval_interval > 0 && (st.step.is_multiple_of(c.eval_interval) || last) {
            // The model `materialize` would produce now (target counts), and beside it the structure the
            // scores currently describe (expected counts), evaluated only where the two differ.
            let det = st.masks.deterministic(Deterministic::Target)?;
            let det_expected = st.masks.deterministic(Deterministic::Expected)?;
            let kept = MaskScores::indicators(source_cfg, &det)?;
            let kept_expected = MaskScores::indicators(source_cfg, &det_expected)?;
            let mut line = eval_masked(&st.model, data, c, &det, true)?;
            let nll_expected = if kept_expected == kept {
                line["eval_nll"].clone()
            } else {
                eval_masked(&st.model, data, c, &det_expected, false)?["eval_nll"].clone()
            };
            save_mask_snapshot(run, st.step, &st.masks, &det, &det_expected)?;
            line["step"] = st.step.into();
            line["deterministic_params"] = kept.expected_params(source_cfg).into();
            line["eval_nll_expected"] = nll_expected;
            line["expected_count_params"] = kept_expected.expected_params(source_cfg).into();
            eval_nll = Some(line["eval_nll"].as_f64().unwrap_or(f64::NAN));
            eval_nll_expected = Some(line["eval_nll_expected"].as_f64().unwrap_or(f64::NAN));
            logs.evals.write(&line)?;
        }
        let record = StepRecord {
            step: st.step,
            lm_loss,
            lagrangian: lag_total,
            expected_params,
            seconds,
            eval_nll,
            eval_nll_expected,
            metrics: m,
        };
        let stop = on_step(&record).is_break();
        if last || stop || (c.checkpoint_interval > 0 && st.step.is_multiple_of(c.checkpoint_interval)) {
            st.save(run, data, c.save_only_model)?;
        }
        if stop {
            break;
        }
    }
    Ok(logs.summary(st.step))
}

/// Held-out NLL of the model under deterministic masks `det`: on the text's held-out part, or on each
/// corpus domain's eval split. With a corpus and `update`, the losses also move the domain proportions.
fn eval_masked(model: &Llama, data: &mut PruneData, c: &PruneConfig, det: &MaskValues, update: bool) -> Result<Value> {
    Ok(match data {
        PruneData::Text(t) => {
            let n = c.eval_tokens.min(t.eval.len());
            let r = evaluate_ids(model, &t.eval[..n], c.seq_len, c.batch_size, Some(det), |_, _| {})?;
            json!({"eval_nll": r.mean_nll, "eval_tokens": r.tokens})
        }
        PruneData::Corpus(feed) => {
            // The eval budget is shared by the domains; each gets at least one sequence.
            let per_domain = (c.eval_tokens / c.seq_len / feed.corpus.domains.len()).max(1);
            let rows = evaluate_corpus(model, &feed.corpus, Some(per_domain), c.batch_size, Some(det), |_, _, _| {})?;
            let losses: Vec<f64> = rows.iter().map(|r| r.mean_nll).collect();
            let tokens: usize = rows.iter().map(|r| r.tokens).sum();
            let mean = rows.iter().map(|r| r.mean_nll * r.tokens as f64).sum::<f64>() / tokens as f64;
            let mut record = if update { feed.update(&losses)? } else { json!({}) };
            record["eval_nll"] = mean.into();
            record["eval_tokens"] = tokens.into();
            record
        }
    })
}

/// `masks/step_NNNNNN.safetensors`: log-α of every family and the deterministic masks, with the target
/// counts (`z_target.*`, what materialization keeps) and the expected counts (`z_expected.*`).
fn save_mask_snapshot(run: &Path, step: usize, masks: &MaskSet, det: &MaskValues, expected: &MaskValues) -> Result<()> {
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
    let path = run.join("masks").join(format!("step_{step:06}.safetensors"));
    let views: Vec<(&str, &Tensor)> = t.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors::serialize_to_file(views, None, &path)
        .map_err(|e| Error::Weights { path: path.clone(), msg: format!("cannot write masks: {e}") })
}

/// The newest mask snapshot of a run (or the one at `step`), as learned log-α per family.
pub fn load_log_alphas(run: &Path, step: Option<usize>) -> Result<(usize, BTreeMap<Family, Tensor>)> {
    let dir = run.join("masks");
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
fn checkpointed(run: &Path) -> Result<(RunSpec, LlamaConfig, TensorMap, MaskSet)> {
    let spec = read_run_spec(run)?;
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
pub fn materialize_run(run: &Path, out: &Path) -> Result<PathBuf> {
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
