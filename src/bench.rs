//! Benchmarks that print figures (never asserted in tests): inference throughput and memory.

use std::time::Instant;

use candle_core::Tensor;
use serde::Serialize;

use crate::error::Result;
use crate::model::{Kernels, Llama};

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub batch: usize,
    pub seq_len: usize,
    pub runs: usize,
    pub median_ms: f64,
    pub tokens_per_s: f64,
    /// Peak resident set size of the process so far (VmHWM), MiB.
    pub peak_rss_mib: f64,
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

/// Time full-sequence forward passes (logits for every position) after one warm-up pass.
pub fn bench_forward(model: &Llama, batch: usize, seq_len: usize, runs: usize) -> Result<BenchRow> {
    let vocab = model.config().vocab_size as u32;
    // Deterministic, vocabulary-spread ids: the speed of a forward pass does not depend on their values.
    let ids: Vec<u32> = (0..batch * seq_len).map(|i| (i as u32).wrapping_mul(2_654_435_761) % vocab).collect();
    let ids = Tensor::from_vec(ids, (batch, seq_len), model.device())?;
    model.forward(&ids, Kernels::Fused)?; // warm-up
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let logits = model.forward(&ids, Kernels::Fused)?;
        logits.device().synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let med = median(&mut times);
    Ok(BenchRow {
        batch,
        seq_len,
        runs: runs.max(1),
        median_ms: med * 1e3,
        tokens_per_s: (batch * seq_len) as f64 / med,
        peak_rss_mib: peak_rss_mib().unwrap_or(f64::NAN),
    })
}
