//! Hyperparameter flags as overrides of a library config: each flag given replaces the config field of
//! the same name, each flag left out keeps the library's default (some of which depend on `--steps`). A
//! new hyperparameter is one line, with its doc, in an `overrides!` list.

use shear::run::pruning::PruneConfig;
use shear::run::training::TrainConfig;

/// `name for Config { /// doc \n field: Type, ... } flags { /// doc \n field, ... }`: a clap argument group
/// with one `--field` per entry (`Option`s; `flags` are switches that set a `bool` field to true), and
/// `apply()`, which writes the given ones into a `Config`.
macro_rules! overrides {
    (
        $(#[$meta:meta])* $name:ident for $config:ty {
            $( $(#[doc = $doc:literal])* $field:ident: $ty:ty, )*
        } flags {
            $( $(#[doc = $fdoc:literal])* $flag:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(clap::Args, Clone, Debug)]
        pub struct $name {
            $( $(#[doc = $doc])* #[arg(long)] pub $field: Option<$ty>, )*
            $( $(#[doc = $fdoc])* #[arg(long)] pub $flag: bool, )*
        }

        impl $name {
            /// Write every flag given into `c`.
            pub fn apply(&self, c: &mut $config) {
                $( if let Some(v) = &self.$field { c.$field = v.clone(); } )*
                $( if self.$flag { c.$flag = true; } )*
            }

            /// The flags given, as typed (`--batch-size`): a resumed run keeps its own settings.
            pub fn given(&self) -> Vec<String> {
                let mut out = vec![];
                $( if self.$field.is_some() { out.push(format!("--{}", stringify!($field).replace('_', "-"))); } )*
                $( if self.$flag { out.push(format!("--{}", stringify!($flag).replace('_', "-"))); } )*
                out
            }
        }
    };
}

overrides! {
    /// The pruning run's hyperparameters (defaults: `PruneConfig::for_steps`, the paper's recipe scaled to
    /// --steps).
    PruneOverrides for PruneConfig {
        /// Sequences per micro-batch, one forward and one mask sample each [default: 4].
        batch_size: usize,
        /// Micro-batches per optimizer step (gradient accumulation; a fresh mask sample for each) [default: 1].
        grad_accum: usize,
        /// Tokens per training sequence [default: 256].
        seq_len: usize,
        /// Learning rate of the model weights [default: 1e-4].
        lr: f64,
        /// Learning rate of the mask log-alphas [default: 1].
        mask_lr: f64,
        /// Learning rate of the Lagrange multipliers (gradient ascent) [default: 1].
        lambda_lr: f64,
        /// LR warm-up steps [default: 10% of --steps, but at least min(50%, 80 steps): the min-max's start-up
        /// transient at full learning rate wrecks the sampled masks of a short run].
        lr_warmup_steps: usize,
        /// Steps over which the target sparsity rises linearly from 0 [default: max(20%, min(50%, 640 steps))
        /// of --steps, and at least 100 steps or the whole run; shorter warm-ups let the sparsity oscillate
        /// around the target].
        lagrangian_warmup_steps: usize,
        /// Final learning rate as a fraction of the peak (cosine schedule) [default: 0.1].
        alpha_f: f64,
        /// Global gradient-norm clip over weights, log-alphas and multipliers [default: 1].
        max_grad_norm: f64,
        /// Evaluate the deterministic masks (target counts, and expected counts beside) and save them every N
        /// steps [default: 50].
        eval_interval: usize,
        /// Held-out tokens per evaluation [default: 8192].
        eval_tokens: usize,
        /// With a text file: the fraction of its tokens held out for evaluation (its last part) [default: 0.05].
        eval_fraction: f64,
        /// Checkpoint every N steps (and at the last) [default: 100].
        checkpoint_interval: usize,
        /// Seed of the mask initialization, mask samples and batches [default: 17].
        seed: u64,
    } flags {
        /// Checkpoints without the AdamW moments: a third of the disk (pruning SmolLM2-135M: 0.54 GB instead of
        /// 1.6 GB), but the run can then not be resumed (like transformers' `save_only_model`).
        save_only_model,
    }
}

overrides! {
    /// The continued pre-training run's hyperparameters (defaults: `TrainConfig::for_steps`, the paper's
    /// recipe scaled to --steps).
    TrainOverrides for TrainConfig {
        /// Sequences per micro-batch [default: 4].
        batch_size: usize,
        /// Micro-batches per optimizer step [default: 1].
        grad_accum: usize,
        /// Peak learning rate [default: 1e-4].
        lr: f64,
        /// LR warm-up steps [default: 3% of --steps].
        warmup_steps: usize,
        /// Final learning rate as a fraction of the peak (cosine schedule) [default: 0.1].
        alpha_f: f64,
        /// AdamW weight decay [default: 0].
        weight_decay: f64,
        /// Global gradient-norm clip [default: 1].
        max_grad_norm: f64,
        /// Evaluate every domain and update the proportions every N steps [default: 50].
        eval_interval: usize,
        /// Eval sequences per domain at each evaluation [default: 16].
        eval_sequences: usize,
        /// Checkpoint every N steps (and at the last) [default: 50].
        checkpoint_interval: usize,
        /// Seed of the loader's permutations and draws [default: 17].
        seed: u64,
    } flags {
        /// Checkpoints without the AdamW moments: a third of the disk (the pruned 57.8M model: 0.23 GB instead
        /// of 0.69 GB), but the run can then not be resumed (like transformers' `save_only_model`).
        save_only_model,
        /// Compute in bf16 (weights and AdamW state stay f32).
        bf16,
    }
}

/// The path flags given, as typed.
pub fn given_paths(flags: &[(&str, bool)]) -> Vec<String> {
    flags.iter().filter(|(_, given)| *given).map(|(f, _)| f.to_string()).collect()
}

/// A resumed run continues with the model, data, mixture and settings in its `run.json`: any flag that
/// would change them is refused rather than ignored (only `--steps` may change).
pub fn refuse_on_resume(given: Vec<String>) -> anyhow::Result<()> {
    anyhow::ensure!(
        given.is_empty(),
        "--resume continues the run with the settings in its run.json; only --steps may change (given: {})",
        given.join(" ")
    );
    Ok(())
}
