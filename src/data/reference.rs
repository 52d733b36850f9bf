//! Reference losses for dynamic batch loading (docs/method.md §6): per domain, the loss a model of the
//! target's size should reach. Every source the CLI offers resolves here, in one place.

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::Value;

use super::corpus::Corpus;
use super::loader::fit_scaling_law;
use crate::error::{Error, Result};
use crate::eval::evaluate_corpus;
use crate::model::Llama;

/// Where a run's reference losses come from.
pub enum ReferenceSource<'a> {
    /// A JSON file `{"cc": 2.1, ...}` with one loss per corpus domain.
    File(&'a Path),
    /// The paper's scaling law `L(N) = a·N^(−b) + c`, fitted per domain through three sizes and evaluated at
    /// `params` (the trained model's total parameter count): JSON
    /// `{"sizes": [N1, N2, N3], "losses": {"cc": [L1, L2, L3], ...}}`.
    ScalingLaw { file: &'a Path, params: usize },
    /// The per-domain eval losses of the model directory `dir` (e.g. the unpruned source), whose tokenizer
    /// must be the corpus's.
    ModelDir { dir: &'a Path, device: &'a Device },
    /// The per-domain eval losses of a loaded model (the source of a pruning run: the released code's
    /// maintainers report that it works about as well as the scaling law).
    Model(&'a Llama),
}

/// How much of each domain's eval split a model-based reference is measured on.
#[derive(Debug, Clone, Copy)]
pub struct EvalBudget {
    pub sequences_per_domain: usize,
    pub batch_size: usize,
}

/// The reference losses in the corpus's domain order, each finite and non-negative.
pub fn resolve(source: ReferenceSource, corpus: &Corpus, budget: EvalBudget) -> Result<Vec<f64>> {
    let losses = match source {
        ReferenceSource::File(path) => {
            let v = read_json(path)?;
            corpus
                .domains
                .iter()
                .map(|d| v[d].as_f64().ok_or_else(|| invalid_at(path, format!("no reference loss for `{d}`"))))
                .collect::<Result<Vec<f64>>>()?
        }
        ReferenceSource::ScalingLaw { file, params } => {
            let v = read_json(file)?;
            let sizes: Vec<f64> =
                serde_json::from_value(v["sizes"].clone()).map_err(|e| invalid_at(file, format!("sizes: {e}")))?;
            let sizes: [f64; 3] =
                sizes.try_into().map_err(|_| invalid_at(file, "need exactly three sizes".to_string()))?;
            let n = params as f64;
            corpus
                .domains
                .iter()
                .map(|d| {
                    let l: Vec<f64> = serde_json::from_value(v["losses"][d].clone())
                        .map_err(|e| invalid_at(file, format!("losses of `{d}`: {e}")))?;
                    let l: [f64; 3] =
                        l.try_into().map_err(|_| invalid_at(file, format!("`{d}` needs three losses")))?;
                    let (a, b, c) = fit_scaling_law([(sizes[0], l[0]), (sizes[1], l[1]), (sizes[2], l[2])])
                        .map_err(|e| invalid_at(file, format!("`{d}`: {e}")))?;
                    Ok(a * n.powf(-b) + c)
                })
                .collect::<Result<Vec<f64>>>()?
        }
        ReferenceSource::ModelDir { dir, device } => {
            let path = dir.join(crate::io::tokenizer::TOKENIZER_FILE);
            let tokenizer_json = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            corpus.check_tokenizer(&tokenizer_json, dir)?;
            let loaded = crate::io::load_model(dir, DType::F32, device)?;
            tracing::info!(
                "reference losses: evaluating {} on {} eval sequences per domain",
                dir.display(),
                budget.sequences_per_domain
            );
            model_losses(&loaded.model, corpus, budget)?
        }
        ReferenceSource::Model(model) => {
            tracing::info!(
                "reference losses: the source model on {} eval sequences per domain",
                budget.sequences_per_domain
            );
            model_losses(model, corpus, budget)?
        }
    };
    if let Some((d, l)) = corpus.domains.iter().zip(&losses).find(|(_, l)| !(l.is_finite() && **l >= 0.0)) {
        return Err(Error::Invalid(format!("the reference loss of domain `{d}` is {l}; it must be finite and >= 0")));
    }
    Ok(losses)
}

fn model_losses(model: &Llama, corpus: &Corpus, budget: EvalBudget) -> Result<Vec<f64>> {
    let rows =
        evaluate_corpus(model, corpus, Some(budget.sequences_per_domain), budget.batch_size, None, |_, _, _| {})?;
    Ok(rows.iter().map(|r| r.mean_nll).collect())
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(&crate::io::read_metadata(path)?).map_err(|e| invalid_at(path, format!("invalid JSON: {e}")))
}

fn invalid_at(path: &Path, msg: String) -> Error {
    Error::Invalid(format!("{}: {msg}", path.display()))
}
