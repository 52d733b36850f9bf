//! Verbs of the pruning stage: prune, materialize, inspect.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tracing::info;

use shear::io::{self, hf};

use crate::data::{parse_domain_map, reference_losses, MixtureArgs};
use crate::interrupt::StopRequest;
use crate::progress::Progress;

#[derive(Args)]
pub struct PruneArgs {
    /// Source model directory (HF layout).
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// Target shape, a TOML file with layers, hidden, heads, kv_heads, intermediate (see data/targets/).
    #[arg(long, required_unless_present = "resume")]
    pub target: Option<PathBuf>,
    /// Training data: a corpus directory (`shear corpus build`, with dynamic batch loading) or a UTF-8 text
    /// file (the last --eval-fraction of its tokens is held out for evals).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// With a corpus: the mixture (default reference losses: the source model's own, evaluated first).
    #[command(flatten)]
    pub mixture: MixtureArgs,
    /// Run directory to create (or, with --resume, to continue).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its latest checkpoint (optionally to a new --steps).
    #[arg(long)]
    pub resume: bool,
    /// Optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sequences per micro-batch (one forward and one mask sample each).
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation; a fresh mask sample for each).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Learning rate of the model weights.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Learning rate of the mask log-alphas.
    #[arg(long, default_value_t = 1.0)]
    pub mask_lr: f64,
    /// Learning rate of the Lagrange multipliers (gradient ascent).
    #[arg(long, default_value_t = 1.0)]
    pub lambda_lr: f64,
    /// LR warm-up steps (default: 10% of --steps, but at least min(50%, 80 steps): the min-max's start-up
    /// transient at full learning rate wrecks the sampled masks of a short run).
    #[arg(long)]
    pub lr_warmup_steps: Option<usize>,
    /// Steps over which the target sparsity rises linearly from 0 (default: max(20%, min(50%, 640 steps)) of
    /// --steps, and at least 100 steps or the whole run; shorter warm-ups let the sparsity oscillate around
    /// the target).
    #[arg(long)]
    pub lagrangian_warmup_steps: Option<usize>,
    /// Evaluate the deterministic masks (target counts, and expected counts beside) and save them every N
    /// steps.
    #[arg(long, default_value_t = 50)]
    pub eval_interval: usize,
    /// Held-out tokens per evaluation.
    #[arg(long, default_value_t = 8192)]
    pub eval_tokens: usize,
    /// Fraction of the data's tokens held out for evaluation.
    #[arg(long, default_value_t = 0.05)]
    pub eval_fraction: f64,
    #[arg(long, default_value_t = 100)]
    pub checkpoint_interval: usize,
    /// Checkpoints without the AdamW moments: a third of the disk (pruning SmolLM2-135M: 0.54 GB instead of
    /// 1.6 GB), but the run can then not be resumed (like transformers' `save_only_model`).
    #[arg(long)]
    pub save_only_model: bool,
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Run on the CPU even when a CUDA GPU is available.
    #[arg(long)]
    pub cpu: bool,
}

#[derive(Args)]
pub struct MaterializeArgs {
    /// Pruning run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Output model directory; must not exist yet.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Pruning run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Mask snapshot step (default: the newest).
    #[arg(long)]
    pub step: Option<usize>,
    /// Also write the run's charts (sparsity, loss, λ, kept heads/dims, mask scores) as SVG files here.
    #[arg(long)]
    pub charts: Option<PathBuf>,
}

#[derive(Args)]
pub struct ReportArgs {
    /// A pruning run (`shear prune`) or continued pre-training run (`shear train`).
    #[arg(long)]
    pub run: PathBuf,
    /// Directory for the SVG charts (created if missing; existing charts are replaced).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn prune_cmd(a: PruneArgs) -> Result<()> {
    use shear::train::pruning::{self, PruneConfig, RunSpec};
    let device = shear::device(a.cpu)?;
    let spec = if a.resume {
        let mut spec = pruning::read_run_spec(&a.out).context("--resume needs an existing run in --out")?;
        shear::train::checkpoint::ensure_resumable(&a.out)?;
        if let Some(s) = a.steps {
            spec.config.steps = s;
        }
        spec
    } else {
        let (model, target, data) = (a.model.unwrap(), a.target.unwrap(), a.data.unwrap());
        io::check_writable_destination(&a.out)?;
        let steps = a.steps.context("--steps is required")?;
        let target = shear::prune::TargetShape::load(&target)?;
        let mut config = PruneConfig::for_steps(steps);
        config.batch_size = a.batch_size;
        config.grad_accum = a.grad_accum;
        config.seq_len = a.seq_len;
        config.lr = a.lr;
        config.mask_lr = a.mask_lr;
        config.lambda_lr = a.lambda_lr;
        config.lr_warmup_steps = a.lr_warmup_steps.unwrap_or(config.lr_warmup_steps);
        config.lagrangian_warmup_steps = a.lagrangian_warmup_steps.unwrap_or(config.lagrangian_warmup_steps);
        config.eval_interval = a.eval_interval;
        config.eval_tokens = a.eval_tokens;
        config.checkpoint_interval = a.checkpoint_interval;
        config.save_only_model = a.save_only_model;
        config.seed = a.seed;
        config.max_grad_norm = a.max_grad_norm;
        config.update_rule = a.mixture.update.parse()?;
        let abs = |p: PathBuf| std::fs::canonicalize(&p).with_context(|| format!("{}", p.display()));
        RunSpec { source_model: abs(model)?, data: abs(data)?, target, config }
    };
    let mut spec = spec;
    // Check everything before any work starts.
    spec.config.validate()?;
    let cfg = hf::load_config(&spec.source_model)?;
    spec.target.validate(&cfg)?;
    let tok = io::load_tokenizer(&spec.source_model)?;
    let weights = hf::load_weights(&spec.source_model, Some(candle_core::DType::F32), &device)?;
    shear::model::check_weights(&cfg, &weights)?;
    let mut data = if spec.data.is_dir() {
        use shear::data::{corpus::Corpus, loader::UpdateRule, CorpusFeed};
        let corpus = Corpus::open(&spec.data)?;
        let tj = std::fs::read(spec.source_model.join("tokenizer.json"))?;
        corpus.check_tokenizer(&tj, &spec.source_model)?;
        anyhow::ensure!(
            corpus.seq_len() == spec.config.seq_len,
            "{} is packed in sequences of {}; pass --seq-len {}",
            spec.data.display(),
            corpus.seq_len(),
            corpus.seq_len()
        );
        let c = &mut spec.config;
        if !a.resume {
            c.proportions = match &a.mixture.proportions {
                Some(p) => parse_domain_map(p, &corpus.domains, "--proportions")?,
                None => shear::train::continued::TrainConfig::for_steps(1, &corpus.domains).proportions,
            };
            if c.update_rule != UpdateRule::Constant {
                let per_domain = (c.eval_tokens / c.seq_len / corpus.domains.len()).max(1);
                c.reference_losses = if a.mixture.any_reference() {
                    reference_losses(&a.mixture, &corpus, &cfg, per_domain, c.batch_size, a.cpu)?
                } else {
                    // The source's own per-domain losses (docs/method.md §6: the alternative to the scaling law).
                    use shear::data::reference::{resolve, EvalBudget, ReferenceSource};
                    let m = shear::Llama::new(&cfg, &weights)?;
                    let budget = EvalBudget { sequences_per_domain: per_domain, batch_size: c.batch_size };
                    resolve(ReferenceSource::Model(&m), &corpus, budget)?
                };
            }
        }
        let feed = CorpusFeed::new(corpus, &c.proportions, c.update_rule, c.reference_losses.clone(), c.seed)?;
        pruning::PruneData::Corpus(Box::new(feed))
    } else {
        pruning::PruneData::Text(shear::data::TextData::from_file(
            &spec.data,
            &tok,
            a.eval_fraction,
            spec.config.seq_len,
        )?)
    };
    let target_cfg = spec.target.config(&cfg);
    info!(
        "pruning {} ({:.1}M parameters) to {} ({:.1}M) on {}, {} steps of {}x{}x{}",
        spec.source_model.display(),
        cfg.param_counts().total() as f64 / 1e6,
        spec.target,
        target_cfg.param_counts().total() as f64 / 1e6,
        spec.data.display(),
        spec.config.steps,
        spec.config.grad_accum,
        spec.config.batch_size,
        spec.config.seq_len
    );
    let pb = Progress::new(spec.config.steps, "prune");
    let stop = StopRequest::install()?;
    let summary = pruning::prune(&a.out, &spec, &cfg, weights, &mut data, a.resume, |r| {
        pb.update(r.step, spec.config.steps, Some(&format_args!("loss {:.3}", r.lm_loss)));
        tracing::debug!(
            "step {} lm {:.4} lag {:.4} E[attention+MLP params] {:.2}M",
            r.step,
            r.lm_loss,
            r.lagrangian,
            r.expected_params / 1e6
        );
        if let (Some(nll), Some(nll_expected)) = (r.eval_nll, r.eval_nll_expected) {
            let count = |k: &str| r.metrics.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            pb.println(format!(
                "step {}: eval NLL {nll:.4} (target counts: what materialize keeps; expected counts {nll_expected:.4}), \
                 E[attention+MLP params] {:.2}M, kept heads with P(z>0) < 0.5: {}, dropped heads with P > 0.5: {}",
                r.step,
                r.expected_params / 1e6,
                count("head_kept_below_half"),
                count("head_dropped_above_half"),
            ));
        }
        stop.control(r.step, "prune", &a.out, spec.config.save_only_model, |m| pb.warn(m))
    })?;
    pb.finish();
    info!(
        "{} steps in {:.1}s/step; run in {} (materialize with `shear materialize --run {} --out DIR`)",
        summary.steps_run,
        summary.mean_step_seconds,
        a.out.display(),
        a.out.display()
    );
    stop.exit_if_stopped_early(summary.final_step, spec.config.steps);
    Ok(())
}

pub fn materialize_cmd(a: MaterializeArgs) -> Result<()> {
    let out = shear::train::pruning::materialize_run(&a.run, &a.out)?;
    let cfg = hf::load_config(&out)?;
    info!(
        "wrote {}: {} layers, hidden {}, {} heads / {} KV heads (head_dim {}), intermediate {}, {:.2}M parameters",
        out.display(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_kv_heads(),
        cfg.head_dim(),
        cfg.intermediate_size,
        cfg.param_counts().total() as f64 / 1e6
    );
    Ok(())
}

pub fn inspect_cmd(a: InspectArgs) -> Result<()> {
    let (step, masks) = shear::report::run_masks(&a.run, a.step)?;
    // Show every row and column of these small tables.
    std::env::set_var("POLARS_FMT_MAX_ROWS", "-1");
    std::env::set_var("POLARS_FMT_MAX_COLS", "-1");
    std::env::set_var("POLARS_TABLE_WIDTH", "250");
    println!("{} at step {step}, target {}", a.run.display(), masks.target());
    println!("{}", shear::report::family_table(&masks)?);
    let layers = shear::report::layer_table(&masks)?;
    let cols = [
        "layer",
        "layer_kept",
        "layer_score",
        "heads_by_group",
        "heads_kept",
        "intermediate_kept",
        "hidden_kept",
        "head_expected_sparsity",
        "intermediate_expected_sparsity",
    ];
    println!("{}", layers.select(cols).map_err(|e| anyhow::anyhow!("{e}"))?);
    print_head_decision(&masks)?;
    if let Some(dir) = &a.charts {
        write_charts(&a.run, a.step, dir)?;
    }
    Ok(())
}

pub fn report_cmd(a: ReportArgs) -> Result<()> {
    if let Ok((step, masks)) = shear::report::run_masks(&a.run, None) {
        println!("{} at step {step}:", a.run.display());
        print_head_decision(&masks)?;
    }
    write_charts(&a.run, None, &a.out)
}

/// Whether materialization keeps the heads the masks chose, in one line.
fn print_head_decision(masks: &shear::prune::masks::MaskSet) -> Result<()> {
    if let Some(d) = masks.decisions()?.into_iter().find(|d| d.family == shear::family::Family::Head) {
        println!(
            "query heads: {} kept in kept layers; kept with P(z>0) < 0.5: {} ({:.1}%); dropped with P(z>0) > 0.5: {}; \
             KV groups whose likely heads are not the target count: {} of {}",
            d.kept,
            d.kept_below_half,
            100.0 * d.kept_below_half as f64 / d.kept.max(1) as f64,
            d.dropped_above_half,
            d.unbalanced_rows,
            d.rows
        );
    }
    Ok(())
}

fn write_charts(run: &std::path::Path, step: Option<usize>, dir: &std::path::Path) -> Result<()> {
    use shear::report::views;
    let charts = views::run_charts(run, step)?;
    let paths = views::save_charts(&charts, dir)?;
    info!("wrote {} charts to {}", paths.len(), dir.display());
    Ok(())
}
