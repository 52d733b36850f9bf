//! An equal-token comparison of pruned models and their baselines (paper §4, docs/experiments.md): a
//! plan names the arms — where each starts and how it continues pre-training — and every arm runs the
//! same CLI stages on the same corpus, token budget, schedule, seed, batch shape, eval set and reference
//! losses. Each stage is one `shear` command line, so an arm can be reproduced by hand and a
//! killed one picks up where it stopped.
//!
//! | stage | command | done when |
//! |---|---|---|
//! | reference (once) | `eval --model SOURCE --data CORPUS --json` | `OUT/reference.json` exists |
//! | start | `materialize`, `oneshot` or `init` | `WORK/ARM/start/config.json` exists |
//! | step 0 | `eval --model start --data CORPUS --json` | `OUT/ARM/eval-step0.json` exists |
//! | train | `train … --out WORK/ARM/train` (`--resume` if a checkpoint is there) | its checkpoint is at the last step |
//! | export | `export --run WORK/ARM/train` | `WORK/ARM/final/config.json` exists |
//! | held-out | `eval --model final --data CORPUS --json` (more sequences) | `OUT/ARM/heldout.json` exists |
//! | tasks | `eval --model final --tasks … --json` | `OUT/ARM/tasks.json` exists |
//! | logs | copy `run.json`, `metrics.jsonl`, `evals.jsonl`; write `arm.json` | `OUT/ARM/arm.json` exists |
//!
//! `WORK` holds weights and checkpoints (never committed); `OUT` holds only small logs, from which
//! [`summary`] derives `summary.json`.

pub mod summary;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::loader::UpdateRule;
use crate::error::{Error, Result};

/// `OUT/reference.json`: the source's per-domain eval, the reference losses of every arm.
pub const REFERENCE_EVAL: &str = "reference.json";
/// `OUT/reference_losses.json`: the same losses as `{domain: loss}`, the form `train --reference-losses` reads.
pub const REFERENCE_LOSSES: &str = "reference_losses.json";
pub const STEP0_EVAL: &str = "eval-step0.json";
pub const HELDOUT_EVAL: &str = "heldout.json";
pub const TASKS_EVAL: &str = "tasks.json";
pub const ARM_RECORD: &str = "arm.json";
pub const SUMMARY: &str = "summary.json";

/// A plan file (TOML). Paths are relative to the directory the driver runs in (the repository root).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The unpruned model: the one-shot methods' input, the reference losses' model, `init`'s vocabulary.
    pub source: PathBuf,
    /// The target shape (`data/targets/*.toml`).
    pub target: PathBuf,
    /// The corpus every arm trains and is evaluated on.
    pub corpus: PathBuf,
    /// Small logs, committed: `OUT/ARM/*`, `OUT/summary.json`.
    pub out: PathBuf,
    /// Weights and checkpoints, never committed.
    pub work: PathBuf,
    pub train: TrainPlan,
    #[serde(default)]
    pub eval: EvalPlan,
    #[serde(rename = "arm")]
    pub arms: Vec<ArmPlan>,
    /// Which arms "compute to match" compares: tokens `scratch` needs to reach `pruned`'s first eval.
    #[serde(default)]
    pub compute_to_match: Option<MatchPlan>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchPlan {
    pub pruned: String,
    pub scratch: String,
}

/// The continued pre-training every arm shares; what is not named takes `shear train`'s defaults
/// (warm-up 3% of the steps, cosine to 10%, AdamW without weight decay, clip 1.0).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainPlan {
    pub steps: usize,
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    pub eval_interval: usize,
    pub eval_sequences: usize,
    pub checkpoint_interval: usize,
    pub seed: u64,
}

fn default_lr() -> f64 {
    1e-4
}

/// The evaluations of each arm's final model.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalPlan {
    /// Eval sequences per domain of the final held-out eval (more than training's, for a tighter number).
    #[serde(default = "default_heldout")]
    pub heldout_sequences: usize,
    /// Downstream tasks (`shear eval --tasks`), none to skip the stage.
    #[serde(default = "default_tasks")]
    pub tasks: Vec<String>,
    /// The first N documents of each task.
    #[serde(default)]
    pub task_limit: Option<usize>,
}

fn default_heldout() -> usize {
    64
}

fn default_tasks() -> Vec<String> {
    vec!["paper".into()]
}

impl Default for EvalPlan {
    fn default() -> Self {
        Self { heldout_sequences: default_heldout(), tasks: default_tasks(), task_limit: None }
    }
}

/// One arm: a starting model of the target shape (or, for depth-only pruning, the target's depth) and
/// how it continues pre-training.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArmPlan {
    pub name: String,
    pub start: Start,
    /// `doremi`, `paper` or `constant` (`shear train --update`).
    pub update: UpdateRule,
    /// Distil from this model (`shear train --teacher`).
    #[serde(default)]
    pub teacher: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "from", rename_all = "snake_case", deny_unknown_fields)]
pub enum Start {
    /// The learned masks of a `shear prune` run, folded into its weights.
    Materialize { run: PathBuf },
    /// `shear oneshot --method METHOD` of the source, calibrated on `data` where the method needs it.
    Oneshot {
        method: String,
        #[serde(default)]
        data: Option<PathBuf>,
        #[serde(default)]
        calibration_tokens: Option<usize>,
    },
    /// `shear init` of the target shape: the from-scratch baseline.
    Init { seed: u64 },
}

impl Plan {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::io::read_metadata(path)?;
        let plan: Plan = toml::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        plan.validate().map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        Ok(plan)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.train;
        for (name, v) in [
            ("train.steps", t.steps),
            ("train.batch_size", t.batch_size),
            ("train.eval_interval", t.eval_interval),
            ("train.eval_sequences", t.eval_sequences),
            ("train.checkpoint_interval", t.checkpoint_interval),
            ("eval.heldout_sequences", self.eval.heldout_sequences),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if !t.steps.is_multiple_of(t.eval_interval) {
            return Err(format!(
                "train.steps ({}) must be a multiple of train.eval_interval ({}), so that every arm is evaluated at its last step",
                t.steps, t.eval_interval
            ));
        }
        if self.arms.is_empty() {
            return Err("the plan has no [[arm]]".into());
        }
        let mut names = BTreeSet::new();
        for a in &self.arms {
            let ok = !a.name.is_empty() && a.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(format!("arm name {:?}: use letters, digits, '-' and '_' (it names a directory)", a.name));
            }
            if !names.insert(a.name.as_str()) {
                return Err(format!("two arms are named {:?}", a.name));
            }
            if let Start::Oneshot { method, .. } = &a.start {
                crate::prune::oneshot::Method::parse(method).map_err(|e| format!("arm {:?}: {e}", a.name))?;
            }
        }
        if let Some(m) = &self.compute_to_match {
            for n in [&m.pruned, &m.scratch] {
                if !names.contains(n.as_str()) {
                    return Err(format!("compute_to_match names arm {n:?}, which the plan does not have"));
                }
            }
        }
        Ok(())
    }

    /// The arms named in `only` (all when empty), in plan order; an unknown name is an error.
    pub fn select(&self, only: &[String]) -> Result<Vec<&ArmPlan>> {
        for n in only {
            if !self.arms.iter().any(|a| &a.name == n) {
                let names: Vec<&str> = self.arms.iter().map(|a| a.name.as_str()).collect();
                return Err(Error::Invalid(format!("no arm {n:?} in the plan (it has {})", names.join(", "))));
            }
        }
        Ok(self.arms.iter().filter(|a| only.is_empty() || only.contains(&a.name)).collect())
    }

    /// Tokens each arm trains on: steps × batch × the corpus's sequence length.
    pub fn tokens_per_arm(&self, seq_len: usize) -> usize {
        self.train.steps * self.train.batch_size * seq_len
    }

    pub fn arm_out(&self, arm: &ArmPlan) -> PathBuf {
        self.out.join(&arm.name)
    }

    pub fn arm_work(&self, arm: &ArmPlan) -> PathBuf {
        self.work.join(&arm.name)
    }

    /// The source's eval on the training eval set: the same reference losses for every arm.
    pub fn reference_stage(&self) -> Stage {
        Stage {
            name: "reference",
            args: args(["eval", "--model"]).path(&self.source).corpus_eval(self, self.train.eval_sequences),
            stdout: Some(self.out.join(REFERENCE_EVAL)),
            done: Some(self.out.join(REFERENCE_EVAL)),
        }
    }

    /// The stages of one arm, in order (see the module's table). `train` is decided at run time
    /// ([`Plan::train_stage`]): fresh or resumed.
    pub fn arm_stages(&self, arm: &ArmPlan) -> Vec<Stage> {
        let (out, work) = (self.arm_out(arm), self.arm_work(arm));
        let start = work.join("start");
        let final_model = work.join("final");
        let start_args = match &arm.start {
            Start::Materialize { run } => args(["materialize", "--run"]).path(run).flag("--out").path(&start),
            Start::Oneshot { method, data, calibration_tokens } => {
                let mut a = args(["oneshot", "--method", method.as_str(), "--model"])
                    .path(&self.source)
                    .flag("--target")
                    .path(&self.target);
                if let Some(d) = data {
                    a = a.flag("--data").path(d);
                }
                if let Some(n) = calibration_tokens {
                    a = a.flag("--calibration-tokens").flag(&n.to_string());
                }
                a.flag("--out").path(&start)
            }
            Start::Init { seed } => args(["init", "--config"])
                .path(&self.target)
                .flag("--like")
                .path(&self.source)
                .flag("--seed")
                .flag(&seed.to_string())
                .flag("--out")
                .path(&start),
        };
        let mut stages = vec![
            Stage { name: "start", args: start_args, stdout: None, done: Some(start.join(crate::io::hf::CONFIG_FILE)) },
            Stage {
                name: "step0",
                args: args(["eval", "--model"]).path(&start).corpus_eval(self, self.train.eval_sequences),
                stdout: Some(out.join(STEP0_EVAL)),
                done: Some(out.join(STEP0_EVAL)),
            },
            Stage {
                name: "export",
                args: args(["export", "--run"]).path(&work.join("train")).flag("--out").path(&final_model),
                stdout: None,
                done: Some(final_model.join(crate::io::hf::CONFIG_FILE)),
            },
            Stage {
                name: "heldout",
                args: args(["eval", "--model"]).path(&final_model).corpus_eval(self, self.eval.heldout_sequences),
                stdout: Some(out.join(HELDOUT_EVAL)),
                done: Some(out.join(HELDOUT_EVAL)),
            },
        ];
        if !self.eval.tasks.is_empty() {
            let mut a = args(["eval", "--model"]).path(&final_model).flag("--tasks").flag(&self.eval.tasks.join(","));
            if let Some(n) = self.eval.task_limit {
                a = a.flag("--limit").flag(&n.to_string());
            }
            stages.push(Stage {
                name: "tasks",
                args: a.flag("--json"),
                stdout: Some(out.join(TASKS_EVAL)),
                done: Some(out.join(TASKS_EVAL)),
            });
        }
        stages
    }

    /// `shear train` for an arm: fresh, or `--resume` when its run directory holds a checkpoint;
    /// `None` when the run is complete. A run directory made with other settings is refused by name.
    pub fn train_stage(&self, arm: &ArmPlan) -> Result<Option<Stage>> {
        let run = self.arm_work(arm).join("train");
        let done = None;
        if let Some(state) = crate::run::checkpoint::latest_state(&run)? {
            self.check_train_spec(arm, &run)?;
            if state.step >= self.train.steps {
                return Ok(None);
            }
            let a = args(["train", "--resume", "--out"]).path(&run);
            return Ok(Some(Stage { name: "train", args: a, stdout: None, done }));
        }
        let t = &self.train;
        let mut a = args(["train", "--model"])
            .path(&self.arm_work(arm).join("start"))
            .flag("--data")
            .path(&self.corpus)
            .flag("--steps")
            .flag(&t.steps.to_string())
            .flag("--batch-size")
            .flag(&t.batch_size.to_string())
            .flag("--lr")
            .flag(&t.lr.to_string())
            .flag("--eval-interval")
            .flag(&t.eval_interval.to_string())
            .flag("--eval-sequences")
            .flag(&t.eval_sequences.to_string())
            .flag("--checkpoint-interval")
            .flag(&t.checkpoint_interval.to_string())
            .flag("--seed")
            .flag(&t.seed.to_string())
            .flag("--update")
            .flag(update_name(arm.update))
            .flag("--reference-losses")
            .path(&self.out.join(REFERENCE_LOSSES));
        if let Some(teacher) = &arm.teacher {
            a = a.flag("--teacher").path(teacher);
        }
        Ok(Some(Stage { name: "train", args: a.flag("--out").path(&run), stdout: None, done }))
    }

    /// An existing run must be the one this plan asks for: same start, corpus, schedule, mixture rule,
    /// reference losses and teacher.
    pub fn check_train_spec(&self, arm: &ArmPlan, run: &Path) -> Result<()> {
        let spec = crate::run::training::read_spec(run)?;
        let c = &spec.config;
        let t = &self.train;
        let reference = summary::domain_losses(&self.out.join(REFERENCE_EVAL))?;
        let want_ref: Vec<f64> = spec.domains.iter().map(|d| reference.get(d).copied().unwrap_or(f64::NAN)).collect();
        let same_path = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        let teacher_ok = match (&spec.teacher, &arm.teacher) {
            (None, None) => true,
            (Some(s), Some(p)) => same_path(&s.model, p),
            _ => false,
        };
        let checks = [
            ("model", same_path(&spec.model, &self.arm_work(arm).join("start"))),
            ("data", same_path(&spec.data, &self.corpus)),
            ("steps", c.steps == t.steps),
            ("batch_size", c.batch_size == t.batch_size && c.grad_accum == 1),
            ("lr", c.lr == t.lr),
            ("eval_interval", c.eval_interval == t.eval_interval),
            ("eval_sequences", c.eval_sequences == t.eval_sequences),
            ("seed", c.seed == t.seed),
            ("update_rule", c.mixture.update_rule == arm.update),
            // `train` keeps no reference losses for the constant rule, which never reads them.
            (
                "reference_losses",
                c.mixture.reference_losses == want_ref
                    || (arm.update == UpdateRule::Constant && c.mixture.reference_losses.is_empty()),
            ),
            ("teacher", teacher_ok),
            ("bf16", !c.bf16),
        ];
        match checks.iter().find(|(_, ok)| !ok) {
            Some((field, _)) => Err(Error::Invalid(format!(
                "{}: its run.json differs from the plan in `{field}`; move the directory away to start arm {:?} afresh",
                run.display(),
                arm.name
            ))),
            None => Ok(()),
        }
    }
}

pub fn update_name(rule: UpdateRule) -> &'static str {
    match rule {
        UpdateRule::Doremi => "doremi",
        UpdateRule::Paper => "paper",
        UpdateRule::Constant => "constant",
    }
}

/// One `shear` command line of an experiment.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: &'static str,
    pub args: Args,
    /// Where its standard output goes (a `--json` eval), written only when the command succeeds.
    pub stdout: Option<PathBuf>,
    /// The file whose existence means the stage is done (none for `train`, whose checkpoint decides).
    pub done: Option<PathBuf>,
}

impl Stage {
    pub fn is_done(&self) -> bool {
        self.done.as_ref().is_some_and(|p| p.exists())
    }
}

/// A command line being built: `args(["eval", "--model"]).path(dir)`.
#[derive(Debug, Clone, Default)]
pub struct Args(pub Vec<OsString>);

fn args<const N: usize>(words: [&str; N]) -> Args {
    Args(words.iter().map(OsString::from).collect())
}

impl Args {
    fn flag(mut self, word: &str) -> Self {
        self.0.push(word.into());
        self
    }

    fn path(mut self, p: &Path) -> Self {
        self.0.push(p.as_os_str().to_owned());
        self
    }

    /// `--data CORPUS --max-sequences N --batch-size B --json`: the training evals' protocol
    /// (`train` evaluates the first N sequences of each domain, `batch_size` at a time).
    fn corpus_eval(self, plan: &Plan, sequences: usize) -> Self {
        self.flag("--data")
            .path(&plan.corpus)
            .flag("--max-sequences")
            .flag(&sequences.to_string())
            .flag("--batch-size")
            .flag(&plan.train.batch_size.to_string())
            .flag("--json")
    }

    /// The command as a shell would take it (for logs).
    pub fn display(&self) -> String {
        let words: Vec<String> = self.0.iter().map(|w| w.to_string_lossy().into_owned()).collect();
        format!("shear {}", words.join(" "))
    }
}

/// `OUT/ARM/arm.json`: what an arm is, from the plan and the logs of its start (never typed in).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmRecord {
    pub name: String,
    pub start: Start,
    pub update: UpdateRule,
    pub teacher: Option<PathBuf>,
    /// Parameters of the model that trains (from its `config.json`).
    pub params: usize,
    pub layers: usize,
    /// Tokens seen before continued pre-training: the pruning run's (steps × batch × sequence length) or
    /// the one-shot calibration's; 0 from scratch.
    pub prior_tokens: usize,
    /// What `prior_tokens` counts.
    pub prior_tokens_are: String,
}

impl ArmRecord {
    pub fn new(plan: &Plan, arm: &ArmPlan) -> Result<Self> {
        let start = plan.arm_work(arm).join("start");
        let cfg = crate::config::LlamaConfig::load(&start.join(crate::io::hf::CONFIG_FILE))?;
        let (prior_tokens, what) = match &arm.start {
            Start::Materialize { run } => {
                let spec = crate::run::pruning::read_spec(run)?;
                let c = &spec.config;
                (c.steps * c.batch_size * c.grad_accum * c.seq_len, format!("pruning ({} steps)", c.steps))
            }
            Start::Oneshot { .. } => {
                let snapshot = start.join(crate::prune::oneshot::SNAPSHOT_DIR);
                let spec: crate::prune::oneshot::OneShotSpec = crate::run::read_spec(&snapshot)?;
                let n = if spec.method.needs_calibration() { spec.calibration_tokens } else { 0 };
                (n, if n > 0 { "calibration".into() } else { "none (weights only)".into() })
            }
            Start::Init { .. } => (0, "none (random initialization)".into()),
        };
        Ok(Self {
            name: arm.name.clone(),
            start: arm.start.clone(),
            update: arm.update,
            teacher: arm.teacher.clone(),
            params: cfg.param_counts().total(),
            layers: cfg.num_hidden_layers,
            prior_tokens,
            prior_tokens_are: what,
        })
    }
}
