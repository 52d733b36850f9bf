//! Benchmarks that print figures (never asserted in tests): the training step, the pruning step,
//! inference and generation, each timed after warm-up, with the process's peak RSS.
//!
//! Every benchmark runs the library's own code path (the same step function the training loops call), on
//! deterministic, vocabulary-spread token ids: speed does not depend on their values.

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::generate::{generate, Sampling};
use crate::model::{trainable, ExecPath, Llama, Teacher, TensorMap};
use crate::prune::TargetShape;
use crate::run::pruning::PruneConfig;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::pruning::Pruner;
use crate::train::step::{micro_batch, update, Backward};

/// What was timed: one row of the benchmark table.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// `train`, `prune`, `forward` or `generate`.
    pub bench: &'static str,
    pub batch: usize,
    pub seq_len: usize,
    /// Timed repetitions (after the warm-up ones); the median is reported.
    pub runs: usize,
    /// Median time of one repetition: an optimizer step, a forward pass, or one generated token.
    pub median_ms: f64,
    /// Tokens processed per second at the median (for `generate`: new tokens per second).
    pub tokens_per_s: f64,
    /// Peak resident set size of the process so far (VmHWM), MiB.
    pub peak_rss_mib: f64,
}

/// How long to run: warm-up repetitions (untimed) and timed ones.
#[derive(Debug, Clone, Copy)]
pub struct Repeats {
    pub warmup: usize,
    pub runs: usize,
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if available.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// `[batch, seq_len]` token ids spread over the vocabulary (a fixed multiplicative hash of the position).
pub fn bench_ids(vocab: usize, batch: usize, seq_len: usize, device: &Device) -> Result<Tensor> {
    let ids: Vec<u32> = (0..batch * seq_len).map(|i| (i as u32).wrapping_mul(2_654_435_761) % vocab as u32).collect();
    Ok(Tensor::from_vec(ids, (batch, seq_len), device)?)
}

/// Run `f` `warmup` times untimed, then `runs` times timed; the median seconds.
fn time(reps: Repeats, mut f: impl FnMut() -> Result<()>) -> Result<(usize, f64)> {
    for _ in 0..reps.warmup {
        f()?;
    }
    let runs = reps.runs.max(1);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((runs, median(&mut times)))
}

fn row(bench: &'static str, batch: usize, seq_len: usize, runs: usize, secs: f64, tokens: usize) -> BenchRow {
    BenchRow {
        bench,
        batch,
        seq_len,
        runs,
        median_ms: secs * 1e3,
        tokens_per_s: tokens as f64 / secs,
        peak_rss_mib: peak_rss_mib().unwrap_or(f64::NAN),
    }
}

/// Full-sequence forward passes (logits for every position), inference kernels.
pub fn bench_forward(model: &Llama, batch: usize, seq_len: usize, reps: Repeats) -> Result<BenchRow> {
    let ids = bench_ids(model.config().vocab_size, batch, seq_len, model.device())?;
    let (runs, secs) = time(reps, || {
        let logits = model.forward(&ids, ExecPath::Inference)?;
        logits.device().synchronize()?;
        Ok(())
    })?;
    Ok(row("forward", batch, seq_len, runs, secs, batch * seq_len))
}

/// The plain training step of continued pre-training: forward, cross-entropy, backward, global-norm
/// clipping and AdamW over every weight (f32 master weights, compute in the weights' dtype).
/// `seq_len` tokens per sequence, of which `seq_len - 1` are predicted; tokens/s counts `batch × seq_len`.
/// With a `teacher`, the distillation step (the teacher's forward included).
pub fn bench_train(
    cfg: &LlamaConfig,
    weights: TensorMap,
    teacher: Option<&Teacher>,
    batch: usize,
    seq_len: usize,
    reps: Repeats,
) -> Result<BenchRow> {
    let (vars, tensors) = trainable(weights)?;
    let model = Llama::new(cfg, &tensors)?;
    let all: Vec<_> = vars.values().cloned().collect();
    let params = vars.into_iter().collect();
    let mut opt = [AdamW::new("weights", AdamWConfig::sheared(1e-5), params)?];
    let ids = bench_ids(cfg.vocab_size, batch, seq_len, model.device())?;
    let backward = Backward::for_model(&model);
    let (runs, secs) = time(reps, || {
        let out = micro_batch(&model, backward, &ids, batch, teacher)?;
        update(&mut opt, &out.grads, &all, 1.0, 1.0)?;
        Ok(())
    })?;
    Ok(row("train", batch, seq_len, runs, secs, batch * seq_len))
}

/// The pruning step ([`Pruner::step`]): mask sampling, masked forward and backward, the Lagrangian, and
/// AdamW over weights, log-α and λ, pruning towards `target`.
pub fn bench_prune(
    cfg: &LlamaConfig,
    weights: TensorMap,
    target: &TargetShape,
    batch: usize,
    seq_len: usize,
    reps: Repeats,
) -> Result<BenchRow> {
    let config = PruneConfig { batch_size: batch, seq_len, ..PruneConfig::for_steps(1000) };
    let mut pruner = Pruner::new(cfg, weights, target, &config)?;
    let ids = bench_ids(cfg.vocab_size, batch, seq_len, pruner.model().device())?;
    let (runs, secs) = time(reps, || pruner.step(std::slice::from_ref(&ids)).map(|_| ()))?;
    Ok(row("prune", batch, seq_len, runs, secs, batch * seq_len))
}

/// Greedy decoding with the KV cache after a `prompt_len`-token prompt: the median time per new token
/// over `reps.runs` tokens (the prompt's prefill is excluded; warm-up repetitions are whole generations).
pub fn bench_generate(model: &Llama, prompt_len: usize, reps: Repeats) -> Result<BenchRow> {
    if prompt_len == 0 {
        return Err(Error::Invalid("generate needs a prompt of at least one token".into()));
    }
    let prompt: Vec<u32> =
        bench_ids(model.config().vocab_size, 1, prompt_len, &Device::Cpu)?.flatten_all()?.to_vec1()?;
    let new_tokens = reps.runs.max(1);
    // No stop ids: always `new_tokens` tokens.
    for _ in 0..reps.warmup {
        generate(model, &prompt, new_tokens, &Sampling::Greedy, &[], |_| {})?;
    }
    let mut stamps = Vec::with_capacity(new_tokens);
    let mut last = Instant::now();
    generate(model, &prompt, new_tokens, &Sampling::Greedy, &[], |_| {
        let now = Instant::now();
        stamps.push(now.duration_since(last).as_secs_f64());
        last = now;
    })?;
    // The first token's time is the prefill of the whole prompt; the rest are one-token decode steps.
    let mut decode: Vec<f64> = stamps.into_iter().skip(1).collect();
    if decode.is_empty() {
        return Err(Error::Invalid("generate needs at least 2 new tokens to time decoding".into()));
    }
    let runs = decode.len();
    let secs = median(&mut decode);
    Ok(row("generate", 1, prompt_len, runs, secs, 1))
}
