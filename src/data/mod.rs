//! Training data: the multi-domain corpus ([`corpus`]) with dynamic batch loading ([`loader`]), and a
//! plain-text file split into train and eval token streams.

pub mod corpus;
pub mod loader;

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::io::{read_utf8, tokenizer::encode};
use crate::rng::Rng;

pub struct TextData {
    pub train: Vec<u32>,
    pub eval: Vec<u32>,
}

impl TextData {
    /// Tokenize `path` (UTF-8, no special tokens) and hold out the last `eval_fraction` of the tokens: a
    /// contiguous split, so no eval window overlaps a training window.
    pub fn from_file(path: &Path, tok: &Tokenizer, eval_fraction: f64, seq_len: usize) -> Result<Self> {
        if path.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: corpus directories are not supported yet; pass a UTF-8 text file",
                path.display()
            )));
        }
        let ids = encode(tok, &read_utf8(path)?)?;
        let n_eval = ((ids.len() as f64) * eval_fraction) as usize;
        let n_train = ids.len() - n_eval;
        if n_train < seq_len + 1 || n_eval < 2 {
            return Err(Error::Invalid(format!(
                "{}: {} tokens is too little text for sequences of {seq_len} (need > {} for training plus an eval split)",
                path.display(),
                ids.len(),
                seq_len + 1
            )));
        }
        Ok(Self { train: ids[..n_train].to_vec(), eval: ids[n_train..].to_vec() })
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
