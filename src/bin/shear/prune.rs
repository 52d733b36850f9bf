//! Verbs of the pruning stage: prune, materialize, oneshot, inspect.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tracing::info;

use shear::io::{self, hf};

use crate::data::MixtureArgs;
use crate::interrupt::StopRequest;
use crate::overrides::{given_paths, refuse_on_resume, PruneOverrides};
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
    #[command(flatten)]
    pub hyper: PruneOverrides,
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
pub struct OneShotArgs {
    /// magnitude, wanda-sp, activation or block-influence (docs/method.md §11).
    #[arg(long)]
    pub method: String,
    /// Source model directory (HF layout).
    #[arg(long)]
    pub model: PathBuf,
    /// Target shape (see data/targets/); block-influence keeps its layer count at the source's width.
    #[arg(long)]
    pub target: PathBuf,
    /// Calibration data (all methods but magnitude): a corpus directory (its training sequences, domain by
    /// domain in turn) or a UTF-8 text file (its first 95%, the part `shear prune --data` trains on).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Calibration tokens.
    #[arg(long, default_value_t = 65_536)]
    pub calibration_tokens: usize,
    /// Tokens per calibration sequence of a text file (a corpus has its own).
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Calibration sequences per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Output model directory (must not exist yet); its `oneshot/` holds the mask snapshot for
    /// `shear inspect --run DIR/oneshot`.
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
    #[arg(long, required_unless_present_any = ["accuracy", "overlap"])]
    pub run: Option<PathBuf>,
    /// LABEL=FILE: a model's `shear eval --tasks --json` output; repeat it to compare models (e.g.
    /// source, pruned, pruned + continued) in a table and in `accuracy.svg`.
    #[arg(long, value_name = "LABEL=FILE")]
    pub accuracy: Vec<String>,
    /// LABEL=RUN: a pruning run, or a one-shot pruning's `DIR/oneshot`, of the same source; repeat it to
    /// print, for every pair, the layers, heads, MLP channels and hidden channels both keep.
    #[arg(long, value_name = "LABEL=RUN")]
    pub overlap: Vec<String>,
    /// Directory for the SVG charts (created if missing; existing charts are replaced); needed with --run
    /// and --accuracy.
    #[arg(long, required_unless_present = "overlap")]
    pub out: Option<PathBuf>,
}

pub fn prune_cmd(a: PruneArgs) -> Result<()> {
    use shear::run::pruning::{self as run, PruneConfig, PruneSpec};
    use shear::train::pruning::{self, PruneData};
    let device = shear::device(a.cpu)?;
    let mut spec = if a.resume {
        let paths = [("--model", a.model.is_some()), ("--target", a.target.is_some()), ("--data", a.data.is_some())];
        refuse_on_resume([a.hyper.given(), a.mixture.given(), given_paths(&paths)].concat())?;
        let mut spec = run::read_spec(&a.out).context("--resume needs an existing run in --out")?;
        shear::run::checkpoint::ensure_resumable(&a.out)?;
        if let Some(s) = a.steps {
            spec.config.steps = s;
        }
        spec
    } else {
        let (model, target, data) = (a.model.clone().unwrap(), a.target.clone().unwrap(), a.data.clone().unwrap());
        io::check_writable_destination(&a.out)?;
        let mut config = PruneConfig::for_steps(a.steps.context("--steps is required")?);
        a.hyper.apply(&mut config);
        let target = shear::prune::TargetShape::load(&target)?;
        let abs = |p: PathBuf| std::fs::canonicalize(&p).with_context(|| format!("{}", p.display()));
        PruneSpec { source_model: abs(model)?, data: abs(data)?, target, config }
    };
    // Check everything before any work starts.
    spec.config.validate()?;
    let cfg = hf::load_config(&spec.source_model)?;
    spec.target.validate(&cfg)?;
    let tok = io::load_tokenizer(&spec.source_model)?;
    let weights = hf::load_weights(&spec.source_model, Some(candle_core::DType::F32), &device)?;
    shear::model::check_weights(&cfg, &weights)?;
    let mut data = if spec.data.is_dir() {
        use shear::data::{corpus::Corpus, reference, CorpusFeed};
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
            // The eval budget is shared by the domains, as at the run's own evals.
            let per_domain = (c.eval_tokens / c.seq_len / corpus.domains.len()).max(1);
            let budget = reference::EvalBudget { sequences_per_domain: per_domain, batch_size: c.batch_size };
            // By default the source's own per-domain losses (docs/method.md §6: the alternative to the
            // scaling law).
            let source_losses = || {
                let m = shear::Llama::new(&cfg, &weights)?;
                Ok(reference::resolve(reference::ReferenceSource::Model(&m), &corpus, budget)?)
            };
            c.mixture = a.mixture.resolve(&corpus, &cfg, budget, a.cpu, source_losses)?;
        }
        PruneData::Corpus(Box::new(CorpusFeed::new(corpus, &c.mixture, c.seed)?))
    } else {
        PruneData::Text(shear::data::TextData::from_file(
            &spec.data,
            &tok,
            spec.config.eval_fraction,
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
        let m = &r.metrics;
        pb.update(m.step, spec.config.steps, Some(&format_args!("loss {:.3}", m.lm_loss)));
        tracing::debug!(
            "step {} lm {:.4} lag {:.4} E[attention+MLP params] {:.2}M",
            m.step,
            m.lm_loss,
            m.lagrangian,
            m.expected_params / 1e6
        );
        if let Some(e) = &r.eval {
            let heads = m.decisions.get(shear::family::Family::Head);
            pb.println(format!(
                "step {}: eval NLL {:.4} (target counts: what materialize keeps; expected counts {:.4}), \
                 E[attention+MLP params] {:.2}M, kept heads with P(z>0) < 0.5: {}, dropped heads with P > 0.5: {}",
                m.step,
                e.eval_nll,
                e.eval_nll_expected,
                m.expected_params / 1e6,
                heads.map_or(0, |d| d.kept_below_half),
                heads.map_or(0, |d| d.dropped_above_half),
            ));
        }
        stop.control(m.step, "prune", &a.out, spec.config.save_only_model, |m| pb.warn(m))
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
    let out = shear::run::pruning::materialize(&a.run, &a.out)?;
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

pub fn oneshot_cmd(a: OneShotArgs) -> Result<()> {
    use shear::prune::oneshot::{self, Calibration, Method, OneShotSpec};
    // Everything that can be refused is refused before any weight is read.
    let method = Method::parse(&a.method)?;
    io::check_writable_destination(&a.out)?;
    let source = hf::load_config(&a.model)?;
    let target = shear::prune::TargetShape::load(&a.target)?;
    target.validate(&source)?;
    oneshot::check_data(method, a.data.as_deref())?;
    let batches = match &a.data {
        Some(d) => Some(oneshot::calibration_batches(d, &a.model, a.calibration_tokens, a.seq_len, a.batch_size)?),
        None => None,
    };
    let device = candle_core::Device::Cpu;
    let weights = hf::load_weights(&a.model, Some(candle_core::DType::F32), &device)?;
    shear::model::check_weights(&source, &weights)?;
    let calibration = match &batches {
        Some(b) => {
            let tokens: usize = b.iter().map(|t| t.elem_count()).sum();
            info!("calibrating on {tokens} tokens of {} ({} passes)", a.data.as_ref().unwrap().display(), b.len());
            let model = shear::Llama::new(&source, &weights)?;
            let pb = Progress::new(b.len(), "calibrate");
            let c = Calibration::collect(&model, b, |done, total| pb.update(done, total, None))?;
            pb.finish();
            Some(c)
        }
        None => None,
    };
    let (shot, cfg, small) = oneshot::prune(method, &source, &weights, &target, calibration.as_ref())?;
    drop(weights);
    let spec = OneShotSpec {
        source_model: std::fs::canonicalize(&a.model)?,
        target: shot.shape,
        requested_target: target,
        method,
        data: a.data.as_ref().map(std::fs::canonicalize).transpose()?,
        calibration_tokens: calibration.as_ref().map_or(0, |c| c.tokens),
    };
    let opts = io::SaveOptions {
        companions_from: Some(a.model.clone()),
        extra_files: shot.snapshot_files(&spec)?,
        ..Default::default()
    };
    let out = hf::save_model(&a.out, &cfg, &small, &opts)?;
    info!(
        "wrote {} ({}): {} layers, hidden {}, {} heads / {} KV heads, intermediate {}, {:.2}M parameters; masks in {}",
        out.display(),
        method.name(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_kv_heads(),
        cfg.intermediate_size,
        cfg.param_counts().total() as f64 / 1e6,
        out.join(oneshot::SNAPSHOT_DIR).display()
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
    let labelled = |spec: &String, what: &str| -> Result<(String, std::path::PathBuf)> {
        let (label, path) = spec.split_once('=').with_context(|| format!("--{what} {spec}: expected LABEL=PATH"))?;
        Ok((label.to_string(), path.into()))
    };
    // Every input is read before anything is written.
    let models = a
        .accuracy
        .iter()
        .map(|spec| {
            let (label, file) = labelled(spec, "accuracy")?;
            Ok((label, shear::eval::tasks::TaskReport::read(&file)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let prunings = a
        .overlap
        .iter()
        .map(|spec| {
            let (label, run) = labelled(spec, "overlap")?;
            Ok((label, shear::report::run_masks(&run, None)?.1))
        })
        .collect::<Result<Vec<_>>>()?;
    let out = || a.out.as_deref().context("--out DIR is needed for the charts");
    // Every column of these tables: a model per column in the accuracy table.
    std::env::set_var("POLARS_FMT_MAX_ROWS", "-1");
    std::env::set_var("POLARS_FMT_MAX_COLS", "-1");
    std::env::set_var("POLARS_TABLE_WIDTH", "250");
    let accuracy = if models.is_empty() {
        None
    } else {
        let table = shear::report::accuracy::accuracy_table(&models)?;
        Some((table, shear::report::accuracy::accuracy_chart(&models, "Downstream accuracy")?))
    };
    if !prunings.is_empty() {
        println!("{}", shear::report::overlap_table(&prunings)?);
    }
    if let Some(run) = &a.run {
        if let Ok((step, masks)) = shear::report::run_masks(run, None) {
            println!("{} at step {step}:", run.display());
            print_head_decision(&masks)?;
        }
        write_charts(run, None, out()?)?;
    }
    if let Some((table, chart)) = accuracy {
        println!("{table}");
        for p in shear::report::views::save_charts(&[("accuracy".to_string(), chart)], out()?)? {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
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
