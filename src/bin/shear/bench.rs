//! `shear bench`: the training step, the pruning step, inference and generation, timed after warm-up,
//! printed as a table or as JSON.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::{Args, Subcommand};

use shear::bench::{self, BenchRow, Repeats};
use shear::io::hf;
use shear::model::TensorMap;
use shear::LlamaConfig;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Training step (forward, cross-entropy, backward, clipping, AdamW), as in `shear train`; with
    /// --teacher the distillation step, the teacher's forward included.
    Train(BenchTrainArgs),
    /// Pruning step (mask sampling, masked forward/backward, Lagrangian, three AdamW groups), as in `shear prune`.
    Prune(BenchPruneArgs),
    /// Inference: full-sequence forward (logits for every position).
    Forward(BenchArgs),
    /// Greedy generation with the KV cache: time per new token after a prompt of SEQ tokens (batch 1).
    Generate(BenchArgs),
}

#[derive(Args)]
pub struct BenchArgs {
    /// A model directory (its weights are loaded).
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    pub model: Option<PathBuf>,
    /// A config.json: random weights of that shape (speed does not depend on the values).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Settings as BATCHxSEQ, comma-separated (for `generate`, the batch must be 1 and SEQ is the prompt).
    #[arg(long, default_value = "4x256")]
    pub shapes: String,
    /// Compute dtype: f32, bf16 or f16 (`train` and `prune` run in f32, as the training loops do).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// CPU threads (default: RAYON_NUM_THREADS, else every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Untimed repetitions first (steps, passes, or whole generations).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed repetitions (for `generate`: new tokens); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run on the CPU even when a CUDA GPU is available.
    #[arg(long)]
    pub cpu: bool,
}

#[derive(Args)]
pub struct BenchTrainArgs {
    #[command(flatten)]
    pub common: BenchArgs,
    #[command(flatten)]
    pub distill: crate::train::DistillArgs,
}

#[derive(Args)]
pub struct BenchPruneArgs {
    #[command(flatten)]
    pub common: BenchArgs,
    /// The target shape the masks prune towards.
    #[arg(long, default_value = "data/targets/default.toml")]
    pub target: PathBuf,
}

pub fn bench_cmd(cmd: BenchCommand) -> Result<()> {
    let (name, a, target, teacher) = match cmd {
        BenchCommand::Train(t) => ("train", t.common, None, t.distill.spec()?),
        BenchCommand::Prune(p) => ("prune", p.common, Some(p.target), None),
        BenchCommand::Forward(a) => ("forward", a, None, None),
        BenchCommand::Generate(a) => ("generate", a, None, None),
    };
    if let Some(n) = a.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // candle's CPU kernels and its matmuls read this (once per call), as rayon does at start-up.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let dtype = hf::parse_dtype(&a.dtype)?;
    if matches!(name, "train" | "prune") && dtype != DType::F32 {
        bail!("`bench {name}` runs in f32 (the training loops keep f32 weights); got --dtype {}", a.dtype);
    }
    let shapes = parse_shapes(&a.shapes)?;
    if name == "generate" && shapes.iter().any(|&(b, _)| b != 1) {
        bail!("`bench generate` decodes one sequence: use shapes 1xPROMPT");
    }
    let device = shear::device(a.cpu)?;
    let (cfg, source) = match (&a.model, &a.config) {
        (Some(dir), _) => (hf::load_config(dir)?, dir.display().to_string()),
        (None, Some(path)) => (LlamaConfig::load(path)?, format!("{} (random weights)", path.display())),
        (None, None) => unreachable!("clap requires --model or --config"),
    };
    // The training benchmarks take the weights over (their vars are copies, and the peak RSS should not
    // count a second model), so each row loads them afresh.
    let load = || -> Result<TensorMap> {
        Ok(match &a.model {
            Some(dir) => {
                hf::load_weights(dir, Some(dtype), &device).with_context(|| format!("loading {}", dir.display()))?
            }
            None => shear::model::random_weights(&cfg, 0, dtype, &device)?,
        })
    };
    let target = target.map(|t| -> Result<_> {
        let t = shear::prune::TargetShape::load(&t)?;
        t.validate(&cfg)?;
        Ok(t)
    });
    let target = target.transpose()?;
    let model = match name {
        "forward" | "generate" => Some(shear::model::Llama::new(&cfg, &load()?)?),
        _ => None,
    };
    let teacher = match (&teacher, &a.model) {
        (None, _) => None,
        (Some(t), Some(dir)) => Some(t.load(&cfg, dir, dtype, &device)?),
        (Some(_), None) => bail!("--teacher needs the student's --model (its tokenizer), not --config"),
    };
    let reps = Repeats { warmup: a.warmup, runs: a.runs };
    let threads = candle_core::utils::get_num_threads();
    let params = cfg.param_counts().total();
    let mut rows: Vec<BenchRow> = vec![];
    for (b, l) in shapes {
        let row = match name {
            "train" => bench::bench_train(&cfg, load()?, teacher.as_ref(), b, l, reps)?,
            "prune" => bench::bench_prune(&cfg, load()?, target.as_ref().expect("prune has a target"), b, l, reps)?,
            "forward" => bench::bench_forward(model.as_ref().expect("model"), b, l, reps)?,
            _ => bench::bench_generate(model.as_ref().expect("model"), l, reps)?,
        };
        if !a.json {
            if rows.is_empty() {
                let with = teacher.as_ref().map_or(String::new(), |t| {
                    let l = t.loss();
                    format!(
                        ", distilling from a {:.1}M-parameter teacher (A {}, T {}, top-k {:?})",
                        t.model().config().param_counts().total() as f64 / 1e6,
                        l.weight,
                        l.temperature,
                        l.top_k
                    )
                });
                println!(
                    "bench {name}: {source}, {:.1}M parameters, {} on {:?}, {threads} threads{with}",
                    params as f64 / 1e6,
                    a.dtype,
                    device.location()
                );
                let unit = if name == "generate" { "ms/token" } else { "median ms" };
                println!(
                    "{:>6} {:>8} {:>6} {:>12} {:>12} {:>14}",
                    "batch", "seq_len", "runs", unit, "tokens/s", "peak RSS MiB"
                );
            }
            println!(
                "{:>6} {:>8} {:>6} {:>12.1} {:>12.1} {:>14.0}",
                row.batch, row.seq_len, row.runs, row.median_ms, row.tokens_per_s, row.peak_rss_mib
            );
        }
        rows.push(row);
    }
    if a.json {
        let v = serde_json::json!({
            "bench": name, "model": source, "parameters": params, "dtype": a.dtype, "threads": threads,
            "warmup": a.warmup, "rows": rows,
            "teacher": teacher.as_ref().map(|t| t.model().config().param_counts().total()),
        });
        println!("{v}");
    }
    Ok(())
}

fn parse_shapes(s: &str) -> Result<Vec<(usize, usize)>> {
    s.split(',')
        .map(|s| {
            let (b, l) = s.trim().split_once('x').with_context(|| format!("shape `{s}` is not BATCHxSEQ"))?;
            let (b, l): (usize, usize) = (b.parse().context("batch")?, l.parse().context("seq len")?);
            if b == 0 || l == 0 {
                bail!("shape `{s}`: batch and sequence length must be positive");
            }
            Ok((b, l))
        })
        .collect()
}
