//! Text generation with a KV cache: greedy decoding or nucleus (top-p) sampling.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::model::{KvCache, Llama};
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub enum Sampling {
    Greedy,
    /// Sample from the smallest set of tokens whose probability reaches `top_p`, at `temperature`.
    TopP {
        top_p: f64,
        temperature: f64,
        seed: u64,
    },
}

/// Generate up to `max_new_tokens` after `prompt`, stopping at any of `stop_ids`. `on_token` sees each new
/// id as it is produced (for streaming output). Returns the new ids.
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    max_new_tokens: usize,
    sampling: &Sampling,
    stop_ids: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(crate::invalid!("the prompt encodes to no tokens"));
    }
    let window = model.config().max_position_embeddings;
    if prompt.len().saturating_add(max_new_tokens) > window {
        return Err(crate::invalid!(
            "a prompt of {} tokens plus {max_new_tokens} new ones exceeds the model's context of {window} \
             (max_position_embeddings)",
            prompt.len()
        ));
    }
    if let Sampling::TopP { top_p, temperature, .. } = sampling {
        if !(*top_p > 0.0 && *top_p <= 1.0 && temperature.is_finite() && *temperature >= 0.0) {
            return Err(crate::invalid!(
                "top-p {top_p} and temperature {temperature}: top-p must lie in (0, 1], the temperature be finite \
                 and >= 0"
            ));
        }
    }
    let mut rng = match sampling {
        Sampling::TopP { seed, .. } => Rng::new(*seed),
        Sampling::Greedy => Rng::new(0),
    };
    let mut cache = KvCache::new();
    let mut out = Vec::with_capacity(max_new_tokens);
    let mut input = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    for _ in 0..max_new_tokens {
        let logits = model.forward_incremental(&input, &mut cache)?.squeeze(0)?.to_dtype(DType::F32)?;
        let logits: Vec<f32> = logits.to_vec1()?;
        let next = match sampling {
            Sampling::Greedy => argmax(&logits),
            Sampling::TopP { top_p, temperature, .. } => sample_top_p(&logits, *top_p, *temperature, &mut rng),
        };
        out.push(next);
        on_token(next);
        if stop_ids.contains(&next) {
            break;
        }
        input = Tensor::new(&[next], model.device())?.unsqueeze(0)?;
    }
    Ok(out)
}

pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// Nucleus sampling: softmax at `temperature`, keep the most probable tokens until their mass reaches
/// `top_p`, renormalize, draw one.
pub fn sample_top_p(logits: &[f32], top_p: f64, temperature: f64, rng: &mut Rng) -> u32 {
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> =
        logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l as f64 - max) / temperature).exp())).collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0;
    let mut mass = 0.0;
    for (_, p) in &probs {
        kept += 1;
        mass += p / z;
        if mass >= top_p {
            break;
        }
    }
    let probs = &probs[..kept];
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.uniform() * total;
    for (id, p) in probs {
        if u < *p {
            return *id;
        }
        u -= p;
    }
    probs[kept - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let logits = [3.0f32, 2.9, -5.0, -6.0];
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            let t = sample_top_p(&logits, 0.9, 1.0, &mut rng);
            assert!(t < 2, "sampled {t} outside the nucleus");
        }
        assert_eq!(sample_top_p(&logits, 0.9, 0.0, &mut rng), 0);
    }
}
