//! Running encoded requests ([`Encoded`]) through the model, fast: the engine under
//! [`super::tasks::evaluate_task`].
//!
//! - **Context sharing.** A document's choices share their context, so the longest token prefix common to
//!   all of them runs once and each choice's remaining tokens continue it from a copy of its KV cache.
//! - **Batching across documents.** The prefixes of many documents run as one batch, left-padded so that
//!   they end in the same column ([`KvCache::left_padded`]: padding is masked out, and RoPE scores depend
//!   only on position differences); then every continuation of every document in the batch runs as a
//!   second batch, right-padded (under the causal mask, padding after a row's last real token changes
//!   nothing before it). A forward pass costs a fixed ~0.2 s on 2 cores for SmolLM2-135M however few
//!   tokens it carries, so packing ~2k tokens per pass instead
//!   of one document's few dozen is where most of the speed comes from.
//!
//! Every mode gives the numbers a request scored alone gives, up to float rounding (`tests/tasks.rs`).

use candle_core::{DType, Tensor, D};
use serde::Serialize;

use super::tasks::Encoded;
use crate::error::{Error, Result};
use crate::model::{nll_from_logits, ExecPath, KvCache, Llama};

/// What the model says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scored {
    /// Sum of the continuation's token log-probabilities (natural log).
    pub loglik: f64,
    /// Every continuation token is the model's argmax.
    pub greedy: bool,
    pub tokens: usize,
}

/// How requests are packed into forward passes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scoring {
    /// Run a document's common prefix once (else every request runs whole).
    pub share_context: bool,
    /// Padded token positions per forward pass, for the prefix batch and the continuation batch each; a
    /// piece (a document's shared prefix with its choices, or one request) larger than that runs alone, and
    /// 0 runs every piece alone.
    pub batch_tokens: usize,
}

impl Default for Scoring {
    fn default() -> Self {
        Self { share_context: true, batch_tokens: 2048 }
    }
}

/// One row of a prefix pass: a prefix, and the requests that continue it (the prefix is the start of each
/// one's input).
struct Piece<'a> {
    doc: usize,
    prefix: &'a [u32],
    /// `(index of the request in its document, the request)`.
    reqs: Vec<(usize, &'a Encoded)>,
}

impl<'a> Piece<'a> {
    /// Request `r`'s tokens after the prefix.
    fn suffix(&self, r: &'a Encoded) -> &'a [u32] {
        &r.input[self.prefix.len()..]
    }
    fn suffix_len(&self) -> usize {
        self.reqs.iter().map(|(_, r)| r.input.len() - self.prefix.len()).max().unwrap_or(0)
    }
    /// Continuation rows: requests with tokens after the prefix (the others are scored by its last logit).
    fn rows(&self) -> usize {
        self.reqs.iter().filter(|(_, r)| r.input.len() > self.prefix.len()).count()
    }
}

/// Check one document's encodings against the model.
fn check(model: &Llama, reqs: &[Encoded]) -> Result<()> {
    if let Some(r) = reqs.iter().find(|r| r.targets.is_empty() || r.start + r.targets.len() != r.input.len()) {
        return Err(Error::Invalid(format!(
            "a request encoding with {} input tokens, {} targets from position {}: the targets must end the input",
            r.input.len(),
            r.targets.len(),
            r.start
        )));
    }
    let vocab = model.config().vocab_size;
    if let Some(&bad) = reqs.iter().flat_map(|r| r.input.iter().chain(&r.targets)).find(|&&t| t as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is out of range for the model's vocabulary of {vocab} (a tokenizer that is not the \
             model's?)"
        )));
    }
    Ok(())
}

/// A document's pieces: one shared prefix for all its requests, or one piece per request. A prefix ends at
/// the earliest first-scored position, so that every logit needed is its last one or a continuation's.
fn pieces_of(doc: usize, reqs: &[Encoded], share_context: bool) -> Vec<Piece<'_>> {
    // Requests that share no first token (a sentence that starts with its blank, or contexts truncated by
    // different amounts) have nothing to share.
    let first = reqs.first().and_then(|r| r.input.first());
    let shareable = reqs.iter().all(|r| r.input.first() == first);
    if !share_context || !shareable || reqs.len() <= 1 {
        return reqs
            .iter()
            .enumerate()
            .map(|(i, r)| Piece { doc, prefix: &r.input[..r.start + 1], reqs: vec![(i, r)] })
            .collect();
    }
    let common = reqs.iter().skip(1).fold(reqs[0].input.len(), |n, r| {
        n.min(r.input.iter().zip(&reqs[0].input).take_while(|(a, b)| a == b).count())
    });
    let p = common.min(reqs.iter().map(|r| r.start + 1).min().unwrap_or(1));
    vec![Piece { doc, prefix: &reqs[0].input[..p], reqs: reqs.iter().enumerate().collect() }]
}

/// Score every document's requests (`docs[d][i]`: document `d`'s choice `i`); `progress(done, total)`
/// counts requests after each forward batch.
pub fn score_documents(
    model: &Llama,
    docs: &[Vec<Encoded>],
    scoring: Scoring,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<Scored>>> {
    for reqs in docs {
        check(model, reqs)?;
    }
    let mut pieces: Vec<Piece> =
        docs.iter().enumerate().flat_map(|(d, reqs)| pieces_of(d, reqs, scoring.share_context)).collect();
    // By continuation length, then prefix length: continuation passes carry most of the tokens, and
    // similar lengths side by side waste little padding. The longest first fail fast on memory.
    pieces.sort_by_key(|p| std::cmp::Reverse((p.suffix_len(), p.prefix.len())));

    let max_len = model.config().max_position_embeddings;
    let total: usize = docs.iter().map(Vec::len).sum();
    let mut out: Vec<Vec<Option<Scored>>> = docs.iter().map(|r| vec![None; r.len()]).collect();
    let (mut done, mut begin) = (0, 0);
    while begin < pieces.len() {
        // Grow the batch while both passes stay within the budget (and the model's context).
        let first = &pieces[begin];
        let (mut end, mut pmax, mut smax, mut rows) = (begin + 1, first.prefix.len(), first.suffix_len(), first.rows());
        while end < pieces.len() && scoring.batch_tokens > 0 {
            let q = &pieces[end];
            let (p, s, r) = (pmax.max(q.prefix.len()), smax.max(q.suffix_len()), rows + q.rows());
            if (end + 1 - begin) * p > scoring.batch_tokens || r * s > scoring.batch_tokens || p + s > max_len {
                break;
            }
            (end, pmax, smax, rows) = (end + 1, p, s, r);
        }
        let batch = &pieces[begin..end];
        for (piece, scored) in batch.iter().zip(score_batch(model, batch)?) {
            for ((i, _), s) in piece.reqs.iter().zip(scored) {
                out[piece.doc][*i] = Some(s);
                done += 1;
            }
        }
        progress(done, total);
        begin = end;
    }
    Ok(out.into_iter().map(|r| r.into_iter().map(|s| s.expect("every request is in one piece")).collect()).collect())
}

/// One batch: the prefixes as one left-padded pass, then every continuation as one right-padded pass on the
/// prefixes' cache rows. Returns each piece's scores in the order of its requests.
fn score_batch(model: &Llama, batch: &[Piece]) -> Result<Vec<Vec<Scored>>> {
    let device = model.device().clone();
    let pmax = batch.iter().map(|p| p.prefix.len()).max().unwrap_or(0);
    let pads: Vec<usize> = batch.iter().map(|p| pmax - p.prefix.len()).collect();
    let mut ids = Vec::with_capacity(batch.len() * pmax);
    for (p, &pad) in batch.iter().zip(&pads) {
        ids.extend(std::iter::repeat_n(0u32, pad));
        ids.extend_from_slice(p.prefix);
    }
    let mut cache = if pads.iter().all(|&p| p == 0) { KvCache::new() } else { KvCache::left_padded(pads) };
    let prefix_last = model.forward_incremental(&Tensor::from_vec(ids, (batch.len(), pmax), &device)?, &mut cache)?;

    // Where each target's logits are: the prefix's last position (prefix row `b`), or a continuation
    // position (flat index `row * smax + column` of the continuation batch, whose row `row` continues
    // prefix row `cache_rows[row]`).
    let smax = batch.iter().map(Piece::suffix_len).max().unwrap_or(0);
    let (mut from_prefix, mut from_suffix) = (vec![], vec![]); // (logits row, target)
    let (mut cache_rows, mut suffix_ids) = (vec![], vec![]);
    let mut sources: Vec<Vec<Vec<Source>>> = vec![]; // per piece, per request, per target
    for (b, piece) in batch.iter().enumerate() {
        let p = piece.prefix.len();
        let mut per_piece = vec![];
        for &(_, r) in &piece.reqs {
            let row = cache_rows.len();
            let per_req = (r.start..r.input.len())
                .zip(&r.targets)
                .map(|(pos, &t)| {
                    if pos + 1 == p {
                        from_prefix.push((b as u32, t));
                        Source::Prefix(from_prefix.len() - 1)
                    } else {
                        from_suffix.push(((row * smax + pos - p) as u32, t));
                        Source::Suffix(from_suffix.len() - 1)
                    }
                })
                .collect();
            per_piece.push(per_req);
            let suffix = piece.suffix(r);
            if !suffix.is_empty() {
                cache_rows.push(b);
                suffix_ids.extend_from_slice(suffix);
                suffix_ids.extend(std::iter::repeat_n(0u32, smax - suffix.len()));
            }
        }
        sources.push(per_piece);
    }
    let index = |picks: &[(u32, u32)]| Tensor::new(picks.iter().map(|(i, _)| *i).collect::<Vec<_>>(), &device);
    let suffix_logits = if from_suffix.is_empty() {
        None
    } else {
        let ids = Tensor::from_vec(suffix_ids, (cache_rows.len(), smax), &device)?;
        Some(model.logits_after(&ids, &mut cache.select_rows(&cache_rows)?, &index(&from_suffix)?)?)
    };
    let picked = [
        (!from_prefix.is_empty()).then(|| prefix_last.index_select(&index(&from_prefix)?, 0)).transpose()?,
        suffix_logits,
    ];
    let logits = Tensor::cat(&picked.into_iter().flatten().collect::<Vec<_>>(), 0)?; // [targets, vocab]
    let targets: Vec<u32> = from_prefix.iter().chain(&from_suffix).map(|(_, t)| *t).collect();
    // In chunks of rows: f32 copies of `[targets, vocab]` would be a GB at a 128k vocabulary.
    let (mut nll, mut argmax) = (Vec::with_capacity(targets.len()), Vec::with_capacity(targets.len()));
    for start in (0..targets.len()).step_by(SCORE_ROWS) {
        let n = SCORE_ROWS.min(targets.len() - start);
        let chunk = logits.narrow(0, start, n)?.to_dtype(DType::F32)?;
        let t = Tensor::new(&targets[start..start + n], &device)?.unsqueeze(0)?;
        nll.extend(nll_from_logits(&chunk.unsqueeze(0)?, &t, ExecPath::Inference)?.squeeze(0)?.to_vec1::<f32>()?);
        argmax.extend(chunk.argmax(D::Minus1)?.to_vec1::<u32>()?);
    }
    let flat = |s: &Source| match *s {
        Source::Prefix(i) => i,
        Source::Suffix(i) => from_prefix.len() + i,
    };
    Ok(sources
        .iter()
        .map(|per_piece| {
            per_piece
                .iter()
                .map(|per_req| Scored {
                    loglik: -per_req.iter().map(|s| nll[flat(s)] as f64).sum::<f64>(),
                    greedy: per_req.iter().all(|s| argmax[flat(s)] == targets[flat(s)]),
                    tokens: per_req.len(),
                })
                .collect()
        })
        .collect())
}

/// Target rows scored (log-softmax and argmax over the vocabulary) at a time.
const SCORE_ROWS: usize = 256;

/// Where a target's logits come from: the `i`-th prefix row or the `i`-th continuation row gathered.
enum Source {
    Prefix(usize),
    Suffix(usize),
}

/// Score one document's requests: its shared prefix once and its choices as one batch (with
/// `share_context`, when they share a first token), or each request alone in a pass of its own.
pub fn score_requests(model: &Llama, reqs: &[Encoded], share_context: bool) -> Result<Vec<Scored>> {
    let scoring = Scoring { share_context, batch_tokens: 0 };
    Ok(score_documents(model, &[reqs.to_vec()], scoring, |_, _| {})?.pop().unwrap_or_default())
}
