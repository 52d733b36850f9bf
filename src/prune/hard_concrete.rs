//! The hard-concrete distribution of Louizos et al. (2018) as Sheared-LLaMA uses it (docs/method.md §2).
//!
//! A mask entry is `z = clamp(s·(r − l) + l, 0, 1)` with `s = sigmoid((ln u − ln(1 − u) + log α) / β)`,
//! `u ~ U(ε, 1 − ε)`: stretched past [0, 1] and clamped, so exact zeros and ones have non-zero probability
//! while `z` stays differentiable in `log α`.

use candle_core::{Result, Tensor};

/// Stretch interval (l, r).
pub const LIMIT_L: f64 = -0.1;
pub const LIMIT_R: f64 = 1.1;
/// Temperature β.
pub const BETA: f64 = 2.0 / 3.0;
/// Noise is drawn from U(ε, 1 − ε); probabilities are clamped to [ε, 1 − ε].
pub const EPS: f64 = 1e-6;
/// log α starts at 5 (mask almost surely 1) and is clamped to ±ln 100 before every use.
pub const LOG_ALPHA_INIT: f64 = 5.0;
pub const LOG_ALPHA_LIMIT: f64 = 4.605_170_185_988_091; // ln(100)
/// The deterministic mask sharpens the soft value: sigmoid(log α / β · 0.8) = sigmoid(1.2 · log α).
pub const DETERMINISTIC_SHARPENING: f64 = 0.8;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `β · ln(x_n / (1 − x_n))` with `x_n = (0 − l) / (r − l)`: the CDF's shift at z = 0 (−1.5986).
pub fn zero_logit() -> f64 {
    let xn = (0.0 - LIMIT_L) / (LIMIT_R - LIMIT_L);
    BETA * (xn / (1.0 - xn)).ln()
}

pub fn clamp_log_alpha(la: f64) -> f64 {
    la.clamp(-LOG_ALPHA_LIMIT, LOG_ALPHA_LIMIT)
}

/// P(z > 0) = 1 − Q(0), `Q(0) = clamp(sigmoid(β ln(x_n/(1−x_n)) − log α), ε, 1 − ε)`.
pub fn score(log_alpha: f64) -> f64 {
    1.0 - sigmoid(zero_logit() - clamp_log_alpha(log_alpha)).clamp(EPS, 1.0 - EPS)
}

/// The value a kept entry has in a deterministic mask: sigmoid(1.2 · log α).
pub fn soft_value(log_alpha: f64) -> f64 {
    sigmoid(clamp_log_alpha(log_alpha) / BETA * DETERMINISTIC_SHARPENING)
}

/// One sample of `z` for a given uniform draw `u`.
pub fn sample(log_alpha: f64, u: f64) -> f64 {
    let u = u.clamp(EPS, 1.0 - EPS);
    let s = sigmoid(((u.ln() - (1.0 - u).ln()) + clamp_log_alpha(log_alpha)) / BETA);
    (s * (LIMIT_R - LIMIT_L) + LIMIT_L).clamp(0.0, 1.0)
}

// Tensor versions (differentiable in log α, f32).

/// `clamp(log α)` elementwise.
pub fn clamp_tensor(log_alpha: &Tensor) -> Result<Tensor> {
    log_alpha.clamp(-LOG_ALPHA_LIMIT, LOG_ALPHA_LIMIT)
}

/// Scores P(z > 0) of (already clamped) log α, differentiable.
pub fn score_tensor(log_alpha: &Tensor) -> Result<Tensor> {
    // 1 − clamp(sigmoid(c − la)) = clamp(sigmoid(la − c)) with the clamp mirrored.
    candle_nn::ops::sigmoid(&(log_alpha - zero_logit())?)?.clamp(EPS, 1.0 - EPS)
}

/// Samples of `z` for (already clamped) log α and uniform noise `u` of the same shape, differentiable in log α.
pub fn sample_tensor(log_alpha: &Tensor, u: &Tensor) -> Result<Tensor> {
    let u = u.clamp(EPS, 1.0 - EPS)?;
    let logit = (u.log()? - (u.affine(-1.0, 1.0)?).log()?)?;
    let s = candle_nn::ops::sigmoid(&((logit + log_alpha)? / BETA)?)?;
    s.affine(LIMIT_R - LIMIT_L, LIMIT_L)?.clamp(0.0, 1.0)
}

/// A deterministic mask row: the `n_zero` entries with the smallest soft values become exactly 0, the
/// others keep their soft value sigmoid(1.2 · log α) (not 1: these values are folded into the weights).
/// Ties go to the lower index.
pub fn deterministic_row(log_alpha: &[f32], n_zero: usize) -> Vec<f32> {
    let soft: Vec<f32> = log_alpha.iter().map(|&la| soft_value(la as f64) as f32).collect();
    let mut order: Vec<usize> = (0..soft.len()).collect();
    order.sort_by(|&a, &b| soft[a].total_cmp(&soft[b]).then(a.cmp(&b)));
    let mut out = soft;
    for &i in order.iter().take(n_zero.min(out.len())) {
        out[i] = 0.0;
    }
    out
}

/// The expected number of zeros of a row, `round(n − Σ score)` with ties to even (Python's `round`).
pub fn expected_zeros(log_alpha: &[f32]) -> usize {
    let kept: f64 = log_alpha.iter().map(|&la| score(la as f64)).sum();
    (log_alpha.len() as f64 - kept).round_ties_even().max(0.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A reference table computed independently of this code from the released `l0_module.py` formulas
    /// (docs/method.md §2); its ±4.605 rows are the clamp bounds ±ln 100.
    #[test]
    fn score_and_soft_value_match_the_reference_table() {
        let table = [
            (LOG_ALPHA_LIMIT, 0.99798, 0.99603),
            (2.0, 0.97337, 0.91683),
            (0.0, 0.83182, 0.5),
            (-2.0, 0.40098, 0.08317),
            (-LOG_ALPHA_LIMIT, 0.04713, 0.00397),
        ];
        for (la, p, soft) in table {
            assert!((score(la) - p).abs() < 5e-6, "P(z>0) at {la}: {}", score(la));
            assert!((soft_value(la) - soft).abs() < 5e-6, "soft at {la}: {}", soft_value(la));
        }
        assert!((zero_logit() + 1.59860).abs() < 1e-5);
        // The init of 5 is clamped before use.
        assert_eq!(score(LOG_ALPHA_INIT), score(LOG_ALPHA_LIMIT));
    }

    #[test]
    fn tensor_versions_agree_with_scalars_and_have_gradients() -> Result<()> {
        let las = [4.605f32, 2.0, 0.0, -2.0, -4.605];
        let us = [0.1f32, 0.5, 0.5, 0.8, 0.999];
        let la = Var::new(&las[..], &Device::Cpu)?;
        let u = Tensor::new(&us[..], &Device::Cpu)?;
        let scores: Vec<f32> = score_tensor(la.as_tensor())?.to_vec1()?;
        let samples: Vec<f32> = sample_tensor(la.as_tensor(), &u)?.to_vec1()?;
        for i in 0..5 {
            assert!((scores[i] as f64 - score(las[i] as f64)).abs() < 1e-6);
            assert!((samples[i] as f64 - sample(las[i] as f64, us[i] as f64)).abs() < 1e-6);
        }
        // Saturated samples (z = 1 at la = 4.605, u = 0.5) have zero gradient; interior ones do not.
        let g = sample_tensor(la.as_tensor(), &u)?.sum_all()?.backward()?;
        let g: Vec<f32> = g.get(la.as_tensor()).unwrap().to_vec1()?;
        assert_eq!(g[1], 0.0, "z clamps to 1 at log α = 2, u = 0.5");
        assert!(g[2] > 0.0 && g[3] > 0.0);
        Ok(())
    }

    #[test]
    fn sampling_frequency_of_nonzero_matches_the_score() {
        // P(z > 0) estimated from 20,000 evenly spaced u: matches score() to 1e-3.
        for la in [2.0, 0.0, -2.0] {
            let n = 20_000;
            let nonzero = (0..n).filter(|i| sample(la, (*i as f64 + 0.5) / n as f64) > 0.0).count();
            assert!((nonzero as f64 / n as f64 - score(la)).abs() < 1e-3, "{la}");
        }
    }

    #[test]
    fn deterministic_rows_keep_soft_values() {
        let row = deterministic_row(&[3.0, -1.0, 0.5, -1.0], 2);
        assert_eq!(row[1], 0.0);
        assert_eq!(row[3], 0.0);
        assert!((row[0] as f64 - soft_value(3.0)).abs() < 1e-7);
        assert!((row[2] as f64 - 0.6456563).abs() < 1e-6); // sigmoid(0.6)
        assert_eq!(expected_zeros(&[4.6; 10]), 0);
        assert_eq!(expected_zeros(&[-4.6; 10]), 10); // Σ score = 0.47 → round(9.53) = 10
    }
}
