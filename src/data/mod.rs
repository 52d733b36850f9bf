//! Training data: the multi-domain corpus ([`corpus`]) with dynamic batch loading ([`loader`]), and a
//! plain-text file split into train and eval token streams.

pub mod corpus;
pub mod loader;
pub mod mixture;
pub mod reference;

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::io::{read_utf8, tokenizer::encode};
use crate::rng::Rng;
use corpus::Corpus;
use loader::{DynamicLoader, LoaderState, UpdateRule};
use mixture::{DomainValues, MixtureConfig, ProportionUpdate};

pub struct TextData {
    pub train: Vec<u32>,
    pub eval: Vec<u32>,
}

impl TextData {
    /// Tokenize `path` (UTF-8, no special tokens) and hold out the last `eval_fraction` of the tokens: a
    /// contiguous split, so no eval window overlaps a training window.
    pub fn from_file(path: &Path, tok: &Tokenizer, eval_fraction: f64, seq_len: usize) -> Result<Self> {
        if path.is_dir() {
            return Err(Error::Invalid(format!("{}: a directory, not a text file", path.display())));
        }
        if !(0.0..1.0).contains(&eval_fraction) {
            return Err(Error::Invalid(format!("the held-out fraction is {eval_fraction}; it must lie in [0, 1)")));
        }
        let ids = encode(tok, &read_utf8(path)?)?;
        let n_eval = ((ids.len() as f64) * eval_fraction) as usize;
        let n_train = ids.len() - n_eval;
        if n_train <= seq_len || n_eval < 2 {
            return Err(Error::Invalid(format!(
                "{}: {} tokens is too little text for sequences of {seq_len} (need > {} for training plus an eval split)",
                path.display(),
                ids.len(),
                seq_len + 1
            )));
        }
        Ok(Self { train: ids[..n_train].to_vec(), eval: ids[n_train..].to_vec() })
    }

    /// Refuse a model whose embedding does not cover the text's ids (a tokenizer and config that disagree).
    pub fn check_vocab(&self, vocab_size: usize) -> Result<()> {
        match self.train.iter().chain(&self.eval).max() {
            Some(&max) if max as usize >= vocab_size => {
                Err(Error::Invalid(format!("the text's token id {max} is beyond the model's vocab_size {vocab_size}")))
            }
            _ => Ok(()),
        }
    }

    /// `batch` windows of `seq_len` tokens at uniformly random offsets of the training stream.
    pub fn sample_batch(&self, batch: usize, seq_len: usize, rng: &mut Rng, device: &Device) -> Result<Tensor> {
        let max_start = self.train.len() - seq_len;
        let mut ids = Vec::with_capacity(batch * seq_len);
        for _ in 0..batch {
            let s = rng.below(max_start + 1);
            ids.extend_from_slice(&self.train[s..s + seq_len]);
        }
        Ok(Tensor::from_vec(ids, (batch, seq_len), device)?)
    }
}

/// A corpus with its dynamic batch loader and the rule that moves the proportions.
pub struct CorpusFeed {
    pub corpus: Corpus,
    pub loader: DynamicLoader,
    pub rule: UpdateRule,
    /// Reference losses in domain order (empty for `constant`).
    pub reference: Vec<f64>,
}

impl CorpusFeed {
    pub fn new(corpus: Corpus, mixture: &MixtureConfig, seed: u64) -> Result<Self> {
        let (rule, reference) = (mixture.update_rule, mixture.reference_losses.clone());
        if rule != UpdateRule::Constant && reference.len() != corpus.domains.len() {
            return Err(Error::Invalid(format!(
                "the `{rule:?}` rule needs one reference loss per domain ({}), got {}",
                corpus.domains.len(),
                reference.len()
            )));
        }
        if let Some((d, r)) = corpus.domains.iter().zip(&reference).find(|(_, r)| !(r.is_finite() && **r >= 0.0)) {
            return Err(Error::Invalid(format!(
                "the reference loss of domain `{d}` is {r}; it must be finite and >= 0"
            )));
        }
        let sizes: Vec<usize> = (0..corpus.domains.len()).map(|d| corpus.sequences(true, d)).collect();
        let loader = DynamicLoader::new(corpus.domains.clone(), &sizes, &mixture.proportions, seed)?;
        Ok(Self { corpus, loader, rule, reference })
    }

    /// The next batch and each sample's domain; wrap-arounds are logged.
    pub fn next_batch(&mut self, batch: usize, device: &Device) -> Result<(Tensor, Vec<usize>)> {
        let plan = self.loader.next_batch(batch);
        for d in &plan.wrapped {
            tracing::warn!(
                "domain `{}` ran out of sequences and wrapped around (data repeats)",
                self.corpus.domains[*d]
            );
        }
        let seq = self.corpus.seq_len();
        let ids: Vec<u32> =
            plan.samples.iter().flat_map(|&(d, i)| self.corpus.sequence(true, d, i).iter().copied()).collect();
        let domains = plan.samples.iter().map(|(d, _)| *d).collect();
        Ok((Tensor::from_vec(ids, (batch, seq), device)?, domains))
    }

    /// Update the proportions from per-domain eval losses; returns the record for `evals.jsonl`.
    pub fn update(&mut self, losses: &[f64]) -> Result<ProportionUpdate> {
        let before = self.loader.state.proportions.clone();
        if self.rule != UpdateRule::Constant {
            self.loader.update(self.rule, losses, &self.reference)?;
        }
        let named = |v: &[f64]| DomainValues::named(&self.corpus.domains, v);
        Ok(ProportionUpdate {
            eval_loss: named(losses),
            reference_loss: (!self.reference.is_empty()).then(|| named(&self.reference)),
            proportions_before: named(&before),
            proportions: named(&self.loader.state.proportions),
            rule: self.rule,
        })
    }

    /// Continue from a checkpoint's loader state, which must be this corpus's (same domains, in order).
    pub fn restore(&mut self, state: LoaderState) -> Result<()> {
        if state.domains != self.corpus.domains {
            return Err(Error::Invalid(format!(
                "loader state: domains {:?} differ from the corpus's {:?}",
                state.domains, self.corpus.domains
            )));
        }
        let sizes: Vec<usize> = (0..self.corpus.domains.len()).map(|d| self.corpus.sequences(true, d)).collect();
        self.loader = DynamicLoader::from_state(state, &sizes)?;
        Ok(())
    }
}
