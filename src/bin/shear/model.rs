//! Verbs on a model directory: convert, eval, generate, bench.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use tracing::info;

use shear::eval::{self, EvalResult};
use shear::generate::{self, Sampling};
use shear::io::{self, hf, SaveOptions};

use crate::load;
use crate::progress::Progress;

#[derive(Args)]
pub struct DeviceArgs {
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Run on the CPU even when a CUDA GPU is available.
    #[arg(long)]
    pub cpu: bool,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// A llama.cpp GGUF file (LLaMA architecture, byte-level BPE vocabulary).
    #[arg(long, conflicts_with = "hf", required_unless_present = "hf")]
    pub gguf: Option<PathBuf>,
    /// An HF model directory to re-save (e.g. to change dtype or shard size).
    #[arg(long)]
    pub hf: Option<PathBuf>,
    /// Output directory; must not exist yet (or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Dtype of the written weights: f32, bf16 or f16 (default: f32 for GGUF, unchanged for HF).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Largest safetensors shard in MB; larger models are split into model-0000i-of-0000n.safetensors.
    #[arg(long)]
    pub shard_size_mb: Option<u64>,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Model directory (HF layout).
    #[arg(long)]
    pub model: PathBuf,
    /// UTF-8 text file to evaluate on.
    #[arg(long, conflicts_with_all = ["data", "tasks"], required_unless_present_any = ["data", "tasks"])]
    pub text: Option<PathBuf>,
    /// A corpus directory (`shear corpus build`): per-domain NLL on its eval split.
    #[arg(long, conflicts_with = "tasks")]
    pub data: Option<PathBuf>,
    /// Downstream accuracy on zero- or few-shot tasks, comma-separated (arc_easy, arc_challenge, hellaswag, piqa,
    /// winogrande, sciq, boolq, lambada, openbookqa, csqa, socialiqa), or `paper` for the paper's list.
    #[arg(long)]
    pub tasks: Option<String>,
    /// With --tasks: few-shot examples in each context, 0 or 5 (the package's variants) [default: 0].
    #[arg(long)]
    pub shots: Option<usize>,
    /// With --tasks: the first N documents of each task only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// With --tasks: where scripts/fetch-eval-tasks.sh put the requests [default: data/cache/eval/tasks].
    #[arg(long)]
    pub tasks_dir: Option<PathBuf>,
    /// With --tasks: run every request whole instead of running a document's shared context once (the
    /// baseline the sharing's speed-up is measured against; the same numbers). Requests are still packed
    /// across documents unless --batch-tokens 0.
    #[arg(long)]
    pub no_shared_context: bool,
    /// With --tasks: padded token positions per forward pass, across documents; 0 runs one document (or,
    /// when its choices share nothing, one request) per pass. Peak memory grows with it times the
    /// vocabulary [default: 2048].
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// With --data: at most N eval sequences per domain.
    #[arg(long, conflicts_with = "tasks")]
    pub max_sequences: Option<usize>,
    /// Window length in tokens.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Keep only the first N token ids of the encoded text (of the held-out part with --held-out).
    #[arg(long, conflicts_with = "tasks")]
    pub max_tokens: Option<usize>,
    /// With --text: evaluate only the last FRACTION of its tokens, the split `shear prune --data TEXT`
    /// holds out (its --eval-fraction, default 0.05), so a materialized model can be compared with the
    /// pruning run's evals on the same tokens.
    #[arg(long, conflicts_with_all = ["data", "tasks"])]
    pub held_out: Option<f64>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Nucleus sampling with this top-p (greedy decoding when absent).
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    let t = Instant::now();
    let opts = SaveOptions {
        dtype: a.dtype.as_deref().map(hf::parse_dtype).transpose()?,
        max_shard_bytes: a.shard_size_mb.map(|mb| mb * 1_000_000),
        ..Default::default()
    };
    let out = if let Some(gguf) = &a.gguf {
        let pb = Progress::new(0, "dequantize");
        let out = io::gguf::convert_gguf(gguf, &a.out, opts, |done, total| pb.update(done, total, None))?;
        pb.finish();
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

pub fn eval_cmd(a: EvalArgs) -> Result<()> {
    if a.tasks.is_none() {
        let task_flags = [
            ("--shots", a.shots.is_some()),
            ("--limit", a.limit.is_some()),
            ("--tasks-dir", a.tasks_dir.is_some()),
            ("--no-shared-context", a.no_shared_context),
            ("--batch-tokens", a.batch_tokens.is_some()),
        ];
        if let Some((flag, _)) = task_flags.iter().find(|(_, given)| *given) {
            bail!("{flag} applies to --tasks only");
        }
    }
    if let Some(dir) = &a.data {
        return eval_corpus_cmd(&a, dir);
    }
    if let Some(list) = &a.tasks {
        return eval_tasks_cmd(&a, list);
    }
    let text_path = a.text.clone().expect("clap enforces --text or --data");
    let (loaded, tok) = load(&a.model, &a.device)?;
    let mut ids = match a.held_out {
        Some(f) if !(f > 0.0 && f < 1.0) => bail!("--held-out must be a fraction in (0, 1), got {f}"),
        Some(f) => shear::data::TextData::from_file(&text_path, &tok, f, a.seq_len)?.eval,
        None => io::tokenizer::encode(&tok, &io::read_utf8(&text_path)?)?,
    };
    if let Some(n) = a.max_tokens {
        ids.truncate(n);
    }
    let pb = Progress::new(0, "eval");
    let t = Instant::now();
    let r: EvalResult = eval::evaluate_ids(&loaded.model, &ids, a.seq_len, a.batch_size, None, |done, total| {
        pb.update(done, total, None)
    })?;
    pb.finish();
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["model"] = a.model.display().to_string().into();
        v["text"] = text_path.display().to_string().into();
        v["held_out"] = a.held_out.into();
        v["seconds"] = secs.into();
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("model       {}", a.model.display());
        match a.held_out {
            Some(f) => {
                println!("text        {} (the last {f} of its tokens, as `shear prune` holds out)", text_path.display())
            }
            None => println!("text        {}", text_path.display()),
        }
        println!("tokens      {} predicted in {} windows of <= {}", r.tokens, r.windows, r.seq_len);
        println!("mean NLL    {:.6} nats", r.mean_nll);
        println!("perplexity  {:.4}", r.perplexity);
        println!("time        {:.1}s ({:.0} tokens/s)", secs, r.tokens as f64 / secs);
    }
    Ok(())
}

/// `shear eval --tasks`: accuracy per task, the paper's metric and their average.
pub fn eval_tasks_cmd(a: &EvalArgs, list: &str) -> Result<()> {
    use shear::eval::tasks;
    let infos = tasks::parse_task_list(list)?;
    let shots = a.shots.unwrap_or(0);
    let dir = a.tasks_dir.clone().unwrap_or_else(|| PathBuf::from(tasks::DEFAULT_DIR));
    // Every task's requests are read (and checked) before the model is loaded.
    let loaded_tasks =
        infos.iter().map(|i| tasks::load_task(&dir, *i, shots, a.limit)).collect::<shear::Result<Vec<_>>>()?;
    let (loaded, tok) = load(&a.model, &a.device)?;
    let defaults = tasks::Scoring::default();
    let scoring = tasks::Scoring {
        share_context: !a.no_shared_context,
        batch_tokens: a.batch_tokens.unwrap_or(defaults.batch_tokens),
    };
    let mut results = vec![];
    for task in &loaded_tasks {
        let requests = task.docs.iter().map(|d| d.choices.len()).sum();
        let pb = Progress::new(requests, task.info.name);
        let (r, _) =
            tasks::evaluate_task(&loaded.model, &tok, task, scoring, |done, total| pb.update(done, total, None))?;
        pb.finish();
        results.push(r);
    }
    let report = tasks::TaskReport::new(a.model.display().to_string(), shots, a.limit, results.clone());
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let average = report.average;
    println!(
        "model {} ({shots} shots{})",
        a.model.display(),
        a.limit.map(|n| format!(", first {n} documents")).unwrap_or_default()
    );
    println!(
        "{:<14} {:>6} {:>15} {:>15} {:>9} {:>14} {:>6} {:>8} {:>7}",
        "task", "docs", "acc", "acc_norm", "ppl", "paper", "chance", "seconds", "req/s"
    );
    let pm = |x: f64, e: f64| format!("{x:.4} ± {e:.4}");
    for r in &results {
        let norm = match (r.acc_norm, r.acc_norm_stderr) {
            (Some(x), Some(e)) => pm(x, e),
            _ => "-".into(),
        };
        let metric = r.paper_metric.name();
        println!(
            "{:<14} {:>6} {:>15} {:>15} {:>9} {:>14} {:>6.3} {:>8.1} {:>7.1}",
            r.task,
            r.docs,
            pm(r.acc, r.acc_stderr),
            norm,
            r.perplexity.map(|p| format!("{p:.2}")).unwrap_or_else(|| "-".into()),
            format!("{:.4} {metric}", r.paper_value),
            r.chance,
            r.seconds,
            r.requests_per_s
        );
    }
    println!("average of the paper's metric over {} tasks: {average:.4}", results.len());
    Ok(())
}

pub fn eval_corpus_cmd(a: &EvalArgs, dir: &Path) -> Result<()> {
    let corpus = shear::data::corpus::Corpus::open(dir)?;
    let tokenizer_json =
        std::fs::read(a.model.join("tokenizer.json")).with_context(|| format!("{}", a.model.display()))?;
    corpus.check_tokenizer(&tokenizer_json, &a.model)?;
    let (loaded, _) = load(&a.model, &a.device)?;
    let pb = Progress::new(0, "eval");
    let t = Instant::now();
    let rows = eval::evaluate_corpus(&loaded.model, &corpus, a.max_sequences, a.batch_size, None, |d, done, total| {
        pb.update(done, total, Some(&d))
    })?;
    pb.finish();
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

pub fn generate_cmd(a: GenerateArgs) -> Result<()> {
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
