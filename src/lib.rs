//! # shear
//!
//! Sheared-LLaMA (Xia et al., 2023) on candle: prune a pretrained LLaMA to an exact smaller architecture
//! with learned hard-concrete masks under a Lagrangian constraint, then continue pre-training it with
//! dynamic batch loading.
//!
//! | module | holds |
//! |---|---|
//! | [`config`] | the HF-shaped `LlamaConfig` and parameter counting |
//! | [`family`] | the five mask families, a map with a value per family, mask values and scores |
//! | [`model`] | the LLaMA (RMSNorm, RoPE, GQA, SwiGLU), its three execution paths, CPU kernels with a backward |
//! | [`io`] | HF directories (sharded safetensors, config, tokenizer), GGUF import |
//! | [`prune`] | hard-concrete masks, the Lagrangian constraint, materialization |
//! | [`data`] | training text, the corpus, the dynamic loader, the mixture both stages share, reference losses |
//! | [`train`] | AdamW and schedules, the pruning and continued pre-training stages, the loop that drives them |
//! | [`run`] | a run's directory: settings (`run.json`), typed log records, checkpoints, mask snapshots, materialize and export |
//! | [`report`] | polars tables and SVG charts of what pruning kept and how runs went |
//! | [`notebook`] | quick mode and paths for the evcxr notebooks |
//! | [`experiment`] | an equal-token comparison of arms: the plan, each arm's CLI stages, `summary.json` |
//! | [`eval`] | the NLL / perplexity protocol; downstream zero-shot tasks ([`eval::tasks`]) |
//! | [`generate`] | greedy and top-p decoding with a KV cache |
//! | [`bench`] | throughput and memory figures |

pub mod bench;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod family;
pub mod generate;
pub mod io;
pub mod model;
pub mod notebook;
pub mod prune;
pub mod report;
pub mod rng;
pub mod run;
pub mod train;

pub use config::LlamaConfig;
pub use error::{Error, Result};
pub use model::{ExecPath, Llama, TensorMap};

// Re-exported so that a notebook needs one `:dep` and never builds a second version of these crates.
pub use candle_core;
pub use polars;
pub use serde_json;

/// The device shear runs on: the first CUDA GPU when built with `--features cuda` and one is present
/// (unless `cpu` is requested), otherwise the CPU (with a warning when a CUDA build finds no GPU).
pub fn device(cpu: bool) -> Result<candle_core::Device> {
    if cpu || !candle_core::utils::cuda_is_available() {
        return Ok(candle_core::Device::Cpu);
    }
    match candle_core::Device::new_cuda(0) {
        Ok(d) => Ok(d),
        Err(e) => {
            tracing::warn!("no usable CUDA device ({e}); running on the CPU");
            Ok(candle_core::Device::Cpu)
        }
    }
}
