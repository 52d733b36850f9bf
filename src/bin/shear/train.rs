//! Continued pre-training, export of a training run, and from-scratch initialization.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tracing::info;

use shear::io::{self, hf, SaveOptions};

use crate::data::MixtureArgs;
use crate::interrupt::StopRequest;
use crate::overrides::{given_paths, refuse_on_resume, TrainOverrides};
use crate::progress::Progress;

#[derive(Args)]
pub struct TrainArgs {
    /// Model directory to continue training (HF layout).
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// Corpus directory (`shear corpus build`).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// Run directory to create (or, with --resume, to continue).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its latest checkpoint (optionally to a new --steps).
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub steps: Option<usize>,
    #[command(flatten)]
    pub hyper: TrainOverrides,
    #[command(flatten)]
    pub mixture: MixtureArgs,
    #[command(flatten)]
    pub distill: DistillArgs,
    /// Testing aid: sleep after every step (lets a test kill the process mid-run).
    #[arg(long, hide = true, default_value_t = 0)]
    pub step_delay_ms: u64,
    #[arg(long)]
    pub cpu: bool,
}

/// Logit distillation from a frozen teacher (docs/method.md §10).
#[derive(Args, Clone, Debug)]
pub struct DistillArgs {
    /// Distil from this teacher (an HF directory with the student's tokenizer, e.g. the unpruned source):
    /// the loss per token becomes A·T²·KL(teacher_T ‖ student_T) + (1 − A)·LM loss.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// A, the KL term's weight; the LM loss gets 1 − A [default: 1, Minitron's: no LM loss].
    #[arg(long, requires = "teacher")]
    pub distill_weight: Option<f64>,
    /// T, the temperature of both distributions [default: 1].
    #[arg(long, requires = "teacher")]
    pub distill_temperature: Option<f64>,
    /// Only the teacher's K largest logits, renormalized (the student's distribution stays the full
    /// softmax); CPU only [default: the full vocabulary].
    #[arg(long, requires = "teacher")]
    pub distill_top_k: Option<usize>,
}

impl DistillArgs {
    /// The teacher and loss these flags ask for (the teacher's path made absolute, its fingerprint taken),
    /// the loss checked before anything is loaded.
    pub fn spec(&self) -> Result<Option<shear::run::training::TeacherSpec>> {
        let Some(dir) = &self.teacher else { return Ok(None) };
        let d = shear::model::DistillLoss::MINITRON;
        let loss = shear::model::DistillLoss {
            weight: self.distill_weight.unwrap_or(d.weight),
            temperature: self.distill_temperature.unwrap_or(d.temperature),
            top_k: self.distill_top_k.or(d.top_k),
        };
        loss.validate().map_err(anyhow::Error::msg)?;
        let model = std::fs::canonicalize(dir).with_context(|| format!("--teacher {}", dir.display()))?;
        let fingerprint = Some(shear::run::training::teacher_fingerprint(&model)?);
        Ok(Some(shear::run::training::TeacherSpec { model, loss, fingerprint }))
    }

    /// The flags given, as typed.
    pub fn given(&self) -> Vec<String> {
        given_paths(&[
            ("--teacher", self.teacher.is_some()),
            ("--distill-weight", self.distill_weight.is_some()),
            ("--distill-temperature", self.distill_temperature.is_some()),
            ("--distill-top-k", self.distill_top_k.is_some()),
        ])
    }
}

#[derive(Args)]
pub struct ExportArgs {
    /// Training run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Output model directory; must not exist yet.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct InitArgs {
    /// The architecture: an HF config.json, or a target .toml (then --like supplies vocabulary, head_dim, RoPE).
    #[arg(long)]
    pub config: PathBuf,
    /// A model directory whose config fills in what a target leaves open and whose tokenizer is copied.
    #[arg(long)]
    pub like: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn train_cmd(a: TrainArgs) -> Result<()> {
    use shear::run::training::{self as run, TrainConfig, TrainSpec};
    use shear::train::continued;
    let device = shear::device(a.cpu)?;
    let spec = if a.resume {
        let paths = [("--model", a.model.is_some()), ("--data", a.data.is_some())];
        refuse_on_resume([a.hyper.given(), a.mixture.given(), a.distill.given(), given_paths(&paths)].concat())?;
        let mut spec = run::read_spec(&a.out).context("--resume needs an existing run in --out")?;
        shear::run::checkpoint::ensure_resumable(&a.out)?;
        if let Some(s) = a.steps {
            spec.config.steps = s;
        }
        spec
    } else {
        let (model, data) = (a.model.clone().unwrap(), a.data.clone().unwrap());
        io::check_writable_destination(&a.out)?;
        let corpus = shear::data::corpus::Corpus::open(&data)?;
        let cfg = hf::load_config(&model)?;
        let mut c = TrainConfig::for_steps(a.steps.context("--steps is required")?, &corpus.domains);
        a.hyper.apply(&mut c);
        let budget =
            shear::data::reference::EvalBudget { sequences_per_domain: c.eval_sequences, batch_size: c.batch_size };
        let update = a.mixture.update.as_deref().unwrap_or("doremi");
        c.mixture = a.mixture.resolve(&corpus, &cfg, budget, a.cpu, || {
            anyhow::bail!(
                "the `{update}` update needs reference losses: --reference-model, --reference-losses or \
                 --reference-scaling"
            )
        })?;
        let abs = |p: PathBuf| std::fs::canonicalize(&p).with_context(|| format!("{}", p.display()));
        let teacher = a.distill.spec()?;
        TrainSpec { model: abs(model)?, data: abs(data)?, domains: corpus.domains.clone(), config: c, teacher }
    };
    let corpus = shear::data::corpus::Corpus::open(&spec.data)?;
    let tj = std::fs::read(spec.model.join("tokenizer.json")).with_context(|| format!("{}", spec.model.display()))?;
    corpus.check_tokenizer(&tj, &spec.model)?;
    let cfg = hf::load_config(&spec.model)?;
    let weights = hf::load_weights(&spec.model, Some(candle_core::DType::F32), &device)?;
    shear::model::check_weights(&cfg, &weights)?;
    if let Some(t) = &spec.teacher {
        let l = t.loss;
        info!(
            "distilling from {}: weight {}, temperature {}, {}",
            t.model.display(),
            l.weight,
            l.temperature,
            l.top_k.map_or("full vocabulary".to_string(), |k| format!("the teacher's top {k} logits"))
        );
    }
    info!(
        "training {} ({:.1}M parameters) on {} for {} steps of {}x{}x{} tokens, {:?} proportion updates",
        spec.model.display(),
        cfg.param_counts().total() as f64 / 1e6,
        spec.data.display(),
        spec.config.steps,
        spec.config.grad_accum,
        spec.config.batch_size,
        corpus.seq_len(),
        spec.config.mixture.update_rule
    );
    let pb = Progress::new(spec.config.steps, "train");
    let delay = std::time::Duration::from_millis(a.step_delay_ms);
    let stop = StopRequest::install()?;
    let summary = continued::train(&a.out, &spec, &cfg, weights, corpus, a.resume, |r| {
        let step = r.metrics.step;
        let kl = r.metrics.distill_loss.map(|k| format!(", KL {k:.3}")).unwrap_or_default();
        pb.update(step, spec.config.steps, Some(&format_args!("loss {:.3}{kl}", r.metrics.loss)));
        if let Some(e) = &r.eval {
            let fmt = |v: &shear::data::mixture::DomainValues| {
                v.0.iter().map(|(d, x)| format!("{d} {x:.3}")).collect::<Vec<_>>().join(", ")
            };
            pb.println(format!("step {step}: eval loss {}", fmt(&e.mixture.eval_loss)));
            pb.println(format!("step {step}: proportions {}", fmt(&e.mixture.proportions)));
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        stop.control(step, "train", &a.out, spec.config.save_only_model, |m| pb.warn(m))
    })?;
    pb.finish();
    info!("{} steps at {:.2}s/step; run in {}", summary.steps_run, summary.mean_step_seconds, a.out.display());
    stop.exit_if_stopped_early(summary.final_step, spec.config.steps);
    Ok(())
}

pub fn init_cmd(a: InitArgs) -> Result<()> {
    let like = a.like.as_ref().map(|d| hf::load_config(d)).transpose()?;
    let cfg = if a.config.extension().is_some_and(|e| e == "toml") {
        let base = like.context("a target .toml needs --like MODEL to supply vocabulary, head_dim and RoPE")?;
        let target = shear::prune::TargetShape::load(&a.config)?;
        target.validate(&base)?;
        target.config(&base)
    } else {
        shear::LlamaConfig::load(&a.config)?
    };
    let weights = shear::model::random_weights(&cfg, a.seed, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let opts = SaveOptions { companions_from: a.like.clone(), ..Default::default() };
    let out = hf::save_model(&a.out, &cfg, &weights, &opts)?;
    info!(
        "wrote {}: randomly initialized (seed {}), {} layers, hidden {}, {:.2}M parameters",
        out.display(),
        a.seed,
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.param_counts().total() as f64 / 1e6
    );
    Ok(())
}
