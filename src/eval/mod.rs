//! Language-model evaluation: mean negative log-likelihood and perplexity.
//!
//! The protocol (also in `shear eval --help` and the README): encode the whole text with the model's
//! tokenizer **without special tokens**, keep the first `max_tokens` ids, cut them into consecutive,
//! non-overlapping windows of `seq_len` (a last window of at least 2 tokens is kept), and predict every
//! token but the first of each window from the tokens before it in the same window. The mean is over all
//! predicted tokens; NLL is in nats.

pub mod scoring;
pub mod tasks;

use candle_core::Tensor;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{nll_from_logits, ExecPath, Llama, MaskValues};

pub const PROTOCOL: &str = "Encode the whole text with the model's tokenizer without special tokens, keep \
the first N ids (--max-tokens), cut them into consecutive non-overlapping windows of --seq-len tokens (a last \
window of >= 2 tokens is kept), and predict every token but the first of each window from the tokens before it \
in that window. mean_nll is the mean natural-log negative log-likelihood over all predicted tokens; perplexity \
is exp(mean_nll).";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalResult {
    /// Number of predicted tokens.
    pub tokens: usize,
    pub windows: usize,
    pub seq_len: usize,
    pub mean_nll: f64,
    pub perplexity: f64,
}

/// Split `ids` into the protocol's windows.
pub fn windows(ids: &[u32], seq_len: usize) -> Vec<&[u32]> {
    ids.chunks(seq_len).filter(|w| w.len() >= 2).collect()
}

/// Evaluate `model` (with `masks`, for a model being pruned) on `ids` with the protocol above.
/// `batch_size` full windows go through the model at once; `progress(done, total)` is called after each batch.
pub fn evaluate_ids(
    model: &Llama,
    ids: &[u32],
    seq_len: usize,
    batch_size: usize,
    masks: Option<&MaskValues>,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalResult> {
    if seq_len < 2 {
        return Err(Error::Invalid(format!("seq_len must be at least 2, got {seq_len}")));
    }
    let wins = windows(ids, seq_len);
    if wins.is_empty() {
        return Err(Error::Invalid(format!("nothing to evaluate: {} token(s), need at least 2", ids.len())));
    }
    let vocab = model.config().vocab_size as u32;
    if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
        return Err(Error::Invalid(format!("token id {bad} is outside the model's vocabulary of {vocab}")));
    }
    let mut total = 0f64;
    let mut count = 0usize;
    let mut done = 0usize;
    // Windows of equal length batch together; only the last one can be shorter.
    let mut i = 0;
    while i < wins.len() {
        let len = wins[i].len();
        let mut j = i;
        while j < wins.len() && j - i < batch_size.max(1) && wins[j].len() == len {
            j += 1;
        }
        let flat: Vec<u32> = wins[i..j].iter().flat_map(|w| w.iter().copied()).collect();
        let batch = Tensor::from_vec(flat, (j - i, len), model.device())?;
        let inputs = batch.narrow(1, 0, len - 1)?;
        let targets = batch.narrow(1, 1, len - 1)?;
        let path = ExecPath::Inference;
        let nll = nll_from_logits(&model.forward_masked(&inputs, path, masks)?, &targets, path)?;
        let nll: Vec<f32> = nll.flatten_all()?.to_vec1()?;
        if let Some(bad) = nll.iter().find(|x| !x.is_finite()) {
            return Err(Error::Invalid(format!("non-finite NLL ({bad}) in window {i}: the model produces NaN/inf")));
        }
        total += nll.iter().map(|&x| x as f64).sum::<f64>();
        count += nll.len();
        done += j - i;
        progress(done, wins.len());
        i = j;
    }
    let mean_nll = total / count as f64;
    let perplexity = mean_nll.exp();
    if !perplexity.is_finite() {
        // Above ln(f64::MAX) ≈ 709.8 nats a token; a random model scores ln(vocab), about 11.
        return Err(Error::Invalid(format!(
            "mean NLL {mean_nll:.1} nats per token: the perplexity overflows (are the weights corrupt?)"
        )));
    }
    Ok(EvalResult { tokens: count, windows: wins.len(), seq_len, mean_nll, perplexity })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_protocol() {
        let ids: Vec<u32> = (0..11).collect();
        let w = windows(&ids, 4);
        assert_eq!(w, vec![&[0, 1, 2, 3][..], &[4, 5, 6, 7][..], &[8, 9, 10][..]]);
        // A last window of one token predicts nothing and is dropped.
        assert_eq!(windows(&ids[..9], 4).len(), 2);
        // Predicted tokens: 3 + 3 + 2.
        assert_eq!(w.iter().map(|w| w.len() - 1).sum::<usize>(), 8);
    }
}

/// Per-domain result of [`evaluate_corpus`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DomainEval {
    pub domain: String,
    pub sequences: usize,
    pub tokens: usize,
    pub mean_nll: f64,
    pub perplexity: f64,
}

/// Mean NLL of every domain's eval split: each packed sequence is one window of the protocol above (its
/// first token is not predicted). At most `max_sequences` per domain (all when `None`).
pub fn evaluate_corpus(
    model: &Llama,
    corpus: &crate::data::corpus::Corpus,
    max_sequences: Option<usize>,
    batch_size: usize,
    masks: Option<&MaskValues>,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<Vec<DomainEval>> {
    corpus.check_vocab(model.config().vocab_size)?;
    let mut out = vec![];
    for (d, name) in corpus.domains.iter().enumerate() {
        let n = corpus.sequences(false, d).min(max_sequences.unwrap_or(usize::MAX));
        let ids: Vec<u32> = (0..n).flat_map(|i| corpus.sequence(false, d, i).iter().copied()).collect();
        let r =
            evaluate_ids(model, &ids, corpus.seq_len(), batch_size, masks, |done, total| progress(name, done, total))?;
        out.push(DomainEval {
            domain: name.clone(),
            sequences: n,
            tokens: r.tokens,
            mean_nll: r.mean_nll,
            perplexity: r.perplexity,
        });
    }
    Ok(out)
}

/// How a model's logits compare with a frozen reference (`tests/fixtures/smollm2/logits.json`, written by
/// `scripts/reference/make_fixtures.py` from PyTorch/`transformers`).
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceCheck {
    /// The tokenizer gave the reference's ids for the reference prompt.
    pub ids_match: bool,
    pub positions: usize,
    /// Vocabulary columns compared at every position.
    pub columns: usize,
    pub max_abs_diff: f64,
    /// Positions whose argmax over the full vocabulary equals the reference's.
    pub argmax_agree: usize,
}

/// Run the reference prompt through `model` and compare with the fixture at `fixture`.
pub fn check_reference_logits(
    model: &Llama,
    tok: &tokenizers::Tokenizer,
    fixture: &std::path::Path,
) -> Result<ReferenceCheck> {
    let text = std::fs::read_to_string(fixture).map_err(|e| Error::io(fixture, e))?;
    let fx: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: invalid JSON: {e}", fixture.display())))?;
    let field = |k: &str| -> Result<serde_json::Value> {
        fx.get(k).cloned().ok_or_else(|| Error::Invalid(format!("{}: no `{k}`", fixture.display())))
    };
    let parse = |k: &str, v: String| Error::Invalid(format!("{}: `{k}`: {v}", fixture.display()));
    let prompt = field("prompt")?.as_str().map(str::to_string).ok_or_else(|| parse("prompt", "not a string".into()))?;
    let ref_ids: Vec<u32> = serde_json::from_value(field("ids")?).map_err(|e| parse("ids", e.to_string()))?;
    let cols: Vec<u32> =
        serde_json::from_value(field("vocab_columns")?).map_err(|e| parse("vocab_columns", e.to_string()))?;
    let expected: Vec<Vec<f32>> =
        serde_json::from_value(field("logits")?).map_err(|e| parse("logits", e.to_string()))?;
    let argmax: Vec<u32> = serde_json::from_value(field("argmax")?).map_err(|e| parse("argmax", e.to_string()))?;
    let ids = crate::io::tokenizer::encode(tok, &prompt)?;
    let device = model.device();
    let input = Tensor::new(ref_ids.as_slice(), device)?.unsqueeze(0)?;
    let logits = model.forward(&input, ExecPath::Inference)?.squeeze(0)?.to_dtype(candle_core::DType::F32)?;
    let sampled = logits.index_select(&Tensor::new(cols.as_slice(), device)?, 1)?;
    let diff = (sampled - Tensor::new(expected, device)?)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    let ours: Vec<u32> = logits.argmax(1)?.to_vec1()?;
    Ok(ReferenceCheck {
        ids_match: ids == ref_ids,
        positions: ref_ids.len(),
        columns: cols.len(),
        max_abs_diff: diff,
        argmax_agree: ours.iter().zip(&argmax).filter(|(a, b)| a == b).count(),
    })
}
