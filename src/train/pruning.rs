//! The pruning stage (docs/method.md §4): the source model trained together with its masks, the
//! Lagrangian pulling each mask family to its target sparsity.
//!
//! One step: clamp log-α → per micro-batch, draw masks → masked LM loss → backward, accumulated; plus the
//! Lagrangian's gradient once → clip the global gradient norm over weights, log-α and λ → AdamW on the
//! three groups (weights, log-α, λ with a negative learning rate), all scaled by one cosine-with-warmup
//! schedule. At each eval the deterministic masks are evaluated on held-out text and saved: with the
//! target counts (the model `materialize` produces) and, labelled `_expected`, with the counts the scores
//! currently describe. The run directory is [`crate::run::pruning`]'s.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};

use super::driver::{drive, Cadence, Stage};
use super::optim::{AdamW, AdamWConfig, CosineSchedule};
use super::step::{accumulate, check_loss, update, Backward};
use crate::config::LlamaConfig;
use crate::data::mixture::ProportionUpdate;
use crate::data::{CorpusFeed, TextData};
use crate::error::{Error, Result};
use crate::eval::{evaluate_corpus, evaluate_ids};
use crate::family::{FamilyMap, MaskScores, MaskValues};
use crate::model::{trainable, ExecPath, Llama, TensorMap};
use crate::prune::masks::{layouts, prunable_params, Deterministic, MaskSet};
use crate::prune::{FamilyStat, Lagrangian, TargetShape};
use crate::rng::Rng;
use crate::run::checkpoint::{self, CheckpointState, OptimizerSteps};
use crate::run::pruning::{save_mask_snapshot, write_target, PruneConfig, PruneSpec};
use crate::run::records::{ConstraintLog, DecisionLog, PruneEvalRecord, PruneStepRecord};
use crate::run::{RunLogs, RunSummary};

/// What a pruning run trains and evaluates on: a text file, or a corpus with dynamic batch loading.
pub enum PruneData {
    Text(TextData),
    Corpus(Box<CorpusFeed>),
}

/// What `on_step` sees: the step's `metrics.jsonl` line, and on eval steps its `evals.jsonl` line.
pub struct PruneProgress {
    pub metrics: PruneStepRecord,
    pub eval: Option<PruneEvalRecord>,
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
    backward: Backward,
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
        let backward = Backward::for_model(&model);
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
            backward,
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
            let micro = if self.backward == Backward::Hand {
                // The model's hand-written backward up to the mask values, then autograd over the small
                // graph from log-α to the masks.
                let out = self.model.lm_loss_grads(batch, n_samples, Some(&z), None)?;
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
                let lm = self.model.lm_loss(batch, ExecPath::Training, Some(&z))?;
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
    pub fn steps_done(&self) -> usize {
        self.step
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

    /// Checkpoint into `run`: weights, log-α, λ, the RNG, a corpus loader's state and (unless
    /// `model_only`) the AdamW moments.
    pub fn save(&self, run: &Path, data: &PruneData, model_only: bool) -> Result<()> {
        let state = CheckpointState {
            step: self.step,
            rng: Some(self.rng.clone()),
            optimizer_steps: OptimizerSteps::PerOptimizer(self.optimizers.iter().map(|o| o.steps).collect()),
            loader: match data {
                PruneData::Corpus(feed) => Some(feed.loader.state.clone()),
                PruneData::Text(_) => None,
            },
            model_only,
        };
        checkpoint::save_run(run, self.tensors(), &state, |t| {
            for opt in &self.optimizers {
                opt.save_moments(t, &format!("{}.", opt.name));
            }
        })
    }

    /// Continue from `run`'s checkpoint, in a run of `steps` steps.
    pub fn restore(&mut self, run: &Path, device: &Device, data: &mut PruneData, steps: usize) -> Result<()> {
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
        self.step = state.checked_step(run, steps, self.optimizers.len())?;
        for opt in &mut self.optimizers {
            let prefix = format!("{}.", opt.name);
            opt.restore_moments(&t, &prefix, self.step)?;
        }
        let bad = |msg: &str| checkpoint::corrupt(run, format!("checkpoint {msg}"));
        self.rng = state.rng.ok_or_else(|| bad("state has no `rng`"))?;
        if let PruneData::Corpus(feed) = data {
            let loader = state.loader.ok_or_else(|| bad("state has no `loader` for a corpus run"))?;
            feed.restore(loader).map_err(|e| bad(&e.to_string()))?;
        }
        Ok(())
    }
}

/// Run (or resume) a pruning run in `run`. `on_step` sees every step; returning `Break` checkpoints and
/// stops early (the run can be resumed).
pub fn prune(
    run: &Path,
    spec: &PruneSpec,
    source_cfg: &LlamaConfig,
    source_weights: TensorMap,
    data: &mut PruneData,
    resume: bool,
    on_step: impl FnMut(&PruneProgress) -> ControlFlow<()>,
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
    let mut pruner = Pruner::new(source_cfg, source_weights, &spec.target, c)?;
    if resume {
        pruner.restore(run, &device, data, c.steps)?;
    }
    let logs = RunLogs::open(run, spec, resume.then_some(pruner.step))?;
    if !resume {
        write_target(run, &spec.target)?;
    }
    let source_prunable = prunable_params(source_cfg);
    let mut stage = PruningStage { pruner, data, c, source_cfg, run, device, source_prunable };
    let cadence =
        Cadence { steps: c.steps, eval_interval: c.eval_interval, checkpoint_interval: c.checkpoint_interval };
    drive(&mut stage, run, logs, cadence, on_step)
}

/// A pruning run in progress: the [`Pruner`] and what it trains on.
struct PruningStage<'a> {
    pruner: Pruner,
    data: &'a mut PruneData,
    c: &'a PruneConfig,
    source_cfg: &'a LlamaConfig,
    run: &'a Path,
    device: Device,
    /// Attention + MLP parameters of the source: the denominator of the expected sparsity.
    source_prunable: f64,
}

impl Stage for PruningStage<'_> {
    type Progress = PruneProgress;

    fn steps_done(&self) -> usize {
        self.pruner.step
    }
    fn backward(&self) -> Backward {
        self.pruner.backward
    }

    fn step(&mut self, logs: &mut RunLogs) -> Result<PruneProgress> {
        let (c, st) = (self.c, &mut self.pruner);
        let t0 = Instant::now();
        let micro_batches = (0..c.grad_accum)
            .map(|_| match &mut *self.data {
                PruneData::Text(t) => t.sample_batch(c.batch_size, c.seq_len, &mut st.rng, &self.device),
                PruneData::Corpus(feed) => Ok(feed.next_batch(c.batch_size, &self.device)?.0),
            })
            .collect::<Result<Vec<_>>>()?;
        let PruneStep { lm_loss, stats, grad_norm, lr_factor } = st.step(&micro_batches)?;

        let expected_params = st.masks.scores()?.expected_params(self.source_cfg);
        let constraints: FamilyMap<ConstraintLog> = stats
            .iter()
            .map(|s| {
                let log = ConstraintLog {
                    expected_sparsity: s.expected_sparsity,
                    target_sparsity: s.target_sparsity,
                    lambda1: s.lambda1,
                    lambda2: s.lambda2,
                };
                (s.family, log)
            })
            .collect();
        // Does materialization keep what the masks chose? (Cheap: host-side over the log-α.)
        let decisions: FamilyMap<DecisionLog> = st
            .masks
            .decisions()?
            .into_iter()
            .map(|d| {
                let log = DecisionLog {
                    kept_below_half: d.kept_below_half,
                    dropped_above_half: d.dropped_above_half,
                    unbalanced_rows: d.unbalanced_rows,
                };
                (d.family, log)
            })
            .collect();
        let metrics = PruneStepRecord {
            step: st.step,
            lm_loss,
            lagrangian: stats.iter().map(|s| s.lagrangian).sum(),
            grad_norm,
            lr_factor,
            expected_params,
            expected_sparsity: 1.0 - expected_params / self.source_prunable,
            constraints,
            decisions,
            seconds: t0.elapsed().as_secs_f64(),
            tokens: st.step * c.grad_accum * c.batch_size * c.seq_len,
        };
        logs.metrics.write(&metrics)?;
        Ok(PruneProgress { metrics, eval: None })
    }

    fn evaluate(&mut self, progress: &mut PruneProgress, logs: &mut RunLogs) -> Result<()> {
        let (c, st, cfg) = (self.c, &self.pruner, self.source_cfg);
        // The model `materialize` would produce now (target counts), and beside it the structure the
        // scores currently describe (expected counts), evaluated only where the two differ.
        let det = st.masks.deterministic(Deterministic::Target)?;
        let det_expected = st.masks.deterministic(Deterministic::Expected)?;
        let kept = MaskScores::indicators(cfg, &det)?;
        let kept_expected = MaskScores::indicators(cfg, &det_expected)?;
        let target = eval_masked(&st.model, self.data, c, &det, true)?;
        let eval_nll_expected = if kept_expected == kept {
            target.nll
        } else {
            eval_masked(&st.model, self.data, c, &det_expected, false)?.nll
        };
        save_mask_snapshot(self.run, st.step, &st.masks, &det, &det_expected)?;
        let record = PruneEvalRecord {
            mixture: target.update,
            eval_nll: target.nll,
            eval_tokens: target.tokens,
            step: st.step,
            deterministic_params: kept.expected_params(cfg),
            eval_nll_expected,
            expected_count_params: kept_expected.expected_params(cfg),
        };
        logs.evals.write(&record)?;
        progress.eval = Some(record);
        Ok(())
    }

    fn checkpoint(&self, run: &Path) -> Result<()> {
        self.pruner.save(run, self.data, self.c.save_only_model)
    }
}

/// One held-out evaluation of the masked model.
struct MaskedEval {
    nll: f64,
    tokens: usize,
    /// With a corpus and `update`: the proportion update the losses made.
    update: Option<ProportionUpdate>,
}

/// Held-out NLL of the model under deterministic masks `det`: on the text's held-out part, or on each
/// corpus domain's eval split. With a corpus and `update`, the losses also move the domain proportions.
fn eval_masked(
    model: &Llama,
    data: &mut PruneData,
    c: &PruneConfig,
    det: &MaskValues,
    update: bool,
) -> Result<MaskedEval> {
    Ok(match data {
        PruneData::Text(t) => {
            let n = c.eval_tokens.min(t.eval.len());
            let r = evaluate_ids(model, &t.eval[..n], c.seq_len, c.batch_size, Some(det), |_, _| {})?;
            MaskedEval { nll: r.mean_nll, tokens: r.tokens, update: None }
        }
        PruneData::Corpus(feed) => {
            // The eval budget is shared by the domains; each gets at least one sequence.
            let per_domain = (c.eval_tokens / c.seq_len / feed.corpus.domains.len()).max(1);
            let rows = evaluate_corpus(model, &feed.corpus, Some(per_domain), c.batch_size, Some(det), |_, _, _| {})?;
            let losses: Vec<f64> = rows.iter().map(|r| r.mean_nll).collect();
            let tokens: usize = rows.iter().map(|r| r.tokens).sum();
            let mean = rows.iter().map(|r| r.mean_nll * r.tokens as f64).sum::<f64>() / tokens as f64;
            let update = if update { Some(feed.update(&losses)?) } else { None };
            MaskedEval { nll: mean, tokens, update }
        }
    })
}
