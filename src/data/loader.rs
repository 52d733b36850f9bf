//! Dynamic batch loading (paper §2.2, Algorithm 1; docs/method.md §6): each sample's domain is drawn
//! i.i.d. from the current proportions with the run's seeded RNG, then the domain's next sequence is taken
//! (per-domain cursors over a seeded permutation). Every eval interval the proportions move by how far each
//! domain's loss is above its reference loss.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// How proportions are updated from per-domain eval losses `ℓ` and reference losses `ℓ_ref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateRule {
    /// The released code: `α = softmax(ln w + (ℓ − ℓ_ref))`, then `w = (1 − c)·α + c/k` with c = 1e-4.
    Doremi,
    /// The paper's Algorithm 1: `α = w ⊙ exp(max(ℓ − ℓ_ref, 0))`, normalized.
    Paper,
    /// Proportions never change (the "original proportions" baseline).
    Constant,
}

impl std::str::FromStr for UpdateRule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "doremi" => Ok(Self::Doremi),
            "paper" => Ok(Self::Paper),
            "constant" => Ok(Self::Constant),
            other => Err(Error::Invalid(format!("unknown update rule `{other}` (doremi, paper, constant)"))),
        }
    }
}

/// The smoothing constant of the `doremi` rule.
pub const DOREMI_SMOOTHING: f64 = 1e-4;

/// New proportions from `w`, losses and reference losses (all in domain order).
pub fn update_proportions(rule: UpdateRule, w: &[f64], loss: &[f64], reference: &[f64]) -> Result<Vec<f64>> {
    let k = w.len();
    if loss.len() != k || reference.len() != k {
        return Err(Error::Invalid(format!(
            "{k} proportions but {} losses and {} references",
            loss.len(),
            reference.len()
        )));
    }
    if let Some(i) = (0..k).find(|&i| !loss[i].is_finite() || !reference[i].is_finite()) {
        return Err(Error::Invalid(format!(
            "non-finite loss or reference for domain {i}: {} / {}",
            loss[i], reference[i]
        )));
    }
    let normalize = |v: Vec<f64>| {
        let s: f64 = v.iter().sum();
        v.into_iter().map(|x| x / s).collect::<Vec<_>>()
    };
    Ok(match rule {
        UpdateRule::Constant => w.to_vec(),
        UpdateRule::Doremi => {
            let logits: Vec<f64> = (0..k).map(|i| w[i].ln() + (loss[i] - reference[i])).collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let alpha = normalize(logits.iter().map(|l| (l - max).exp()).collect());
            normalize(alpha.iter().map(|a| (1.0 - DOREMI_SMOOTHING) * a + DOREMI_SMOOTHING / k as f64).collect())
        }
        UpdateRule::Paper => normalize((0..k).map(|i| w[i] * (loss[i] - reference[i]).max(0.0).exp()).collect()),
    })
}

/// `L(N) = a·N^(−b) + c` through three (N, L) points, solved exactly (docs/method.md §6): `b` by bisection on
/// `(L1 − L2)/(L2 − L3) = (N1^−b − N2^−b)/(N2^−b − N3^−b)`, then `a` and `c`.
pub fn fit_scaling_law(points: [(f64, f64); 3]) -> Result<(f64, f64, f64)> {
    let [(n1, l1), (n2, l2), (n3, l3)] = points;
    if points.iter().any(|&(n, l)| !(n.is_finite() && n > 0.0 && l.is_finite() && l >= 0.0)) {
        return Err(Error::Invalid(format!(
            "scaling-law points {points:?}: sizes must be positive and finite, losses finite and >= 0"
        )));
    }
    if !(n1 < n2 && n2 < n3 && l1 > l2 && l2 > l3) {
        return Err(Error::Invalid("scaling-law points must have increasing sizes and decreasing losses".into()));
    }
    let target = (l1 - l2) / (l2 - l3);
    let ratio = |b: f64| (n1.powf(-b) - n2.powf(-b)) / (n2.powf(-b) - n3.powf(-b));
    let (mut lo, mut hi) = (1e-6, 5.0);
    let f = |b: f64| ratio(b) - target;
    if f(lo).signum() == f(hi).signum() {
        return Err(Error::Invalid(format!("no scaling-law exponent in (0, 5] fits these losses (ratio {target})")));
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if f(lo).signum() == f(mid).signum() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let b = 0.5 * (lo + hi);
    let a = (l1 - l2) / (n1.powf(-b) - n2.powf(-b));
    let c = l1 - a * n1.powf(-b);
    Ok((a, b, c))
}

/// Proportions must be finite, non-negative, one per domain, and sum to a positive finite total (a sum
/// that overflows would normalize every proportion to 0).
fn check_proportions(proportions: &[f64], domains: &[String]) -> Result<()> {
    if proportions.len() != domains.len() {
        return Err(Error::Invalid(format!("{} proportions for {} domains", proportions.len(), domains.len())));
    }
    if let Some((d, p)) = domains.iter().zip(proportions).find(|(_, p)| !(p.is_finite() && **p >= 0.0)) {
        return Err(Error::Invalid(format!("the proportion of domain `{d}` is {p}; it must be finite and >= 0")));
    }
    let total: f64 = proportions.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return Err(Error::Invalid(format!("the proportions sum to {total}; the sum must be positive and finite")));
    }
    Ok(())
}

/// The loader's resumable state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoaderState {
    pub domains: Vec<String>,
    pub proportions: Vec<f64>,
    /// Next position in each domain's permutation.
    pub cursors: Vec<usize>,
    /// Times each domain wrapped around (data repeated).
    pub wraps: Vec<usize>,
    /// Samples drawn from each domain so far.
    pub drawn: Vec<usize>,
    pub rng: Rng,
    pub permutation_seed: u64,
}

#[derive(Debug)]
pub struct DynamicLoader {
    pub state: LoaderState,
    /// Per domain, a seeded permutation of its sequence indices.
    permutations: Vec<Vec<usize>>,
}

/// One batch: sequence indices and the domain of every sample.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    pub samples: Vec<(usize, usize)>,
    /// Domains that wrapped around while drawing this batch.
    pub wrapped: Vec<usize>,
}

fn permutation(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.below(i + 1));
    }
    p
}

impl DynamicLoader {
    /// `sizes[d]` sequences in domain `d`; initial `proportions` (normalized here); seeds for draws and
    /// for the per-domain orders.
    pub fn new(domains: Vec<String>, sizes: &[usize], proportions: &[f64], seed: u64) -> Result<Self> {
        if domains.len() != sizes.len() || domains.len() != proportions.len() {
            return Err(Error::Invalid("domains, sizes and proportions differ in length".into()));
        }
        if let Some(d) = (0..sizes.len()).find(|&d| sizes[d] == 0) {
            return Err(Error::Invalid(format!("domain `{}` has no sequences", domains[d])));
        }
        check_proportions(proportions, &domains)?;
        let total: f64 = proportions.iter().sum();
        let k = domains.len();
        let state = LoaderState {
            domains,
            proportions: proportions.iter().map(|p| p / total).collect(),
            cursors: vec![0; k],
            wraps: vec![0; k],
            drawn: vec![0; k],
            rng: Rng::new(seed),
            permutation_seed: seed ^ 0x5EED_0FD0_0A15,
        };
        Self::from_state(state, sizes)
    }

    /// Rebuild a loader from saved state (the permutations are re-derived from their seed). The state is
    /// checked like [`DynamicLoader::new`]'s arguments: one entry per domain everywhere, proportions that
    /// sum to 1, cursors within their domain; a corrupt checkpoint is refused, never indexed out of range.
    pub fn from_state(state: LoaderState, sizes: &[usize]) -> Result<Self> {
        let k = sizes.len();
        let bad = |msg: String| Err(Error::Invalid(format!("loader state: {msg}")));
        for (name, n) in [
            ("domains", state.domains.len()),
            ("proportions", state.proportions.len()),
            ("cursors", state.cursors.len()),
            ("wraps", state.wraps.len()),
            ("drawn", state.drawn.len()),
        ] {
            if n != k {
                return bad(format!("{n} {name} for {k} domains"));
            }
        }
        check_proportions(&state.proportions, &state.domains)?;
        let sum: f64 = state.proportions.iter().sum();
        if (sum - 1.0).abs() > 1e-6 {
            return bad(format!("proportions sum to {sum}, not 1"));
        }
        if let Some(d) = (0..k).find(|&d| state.cursors[d] > sizes[d]) {
            return bad(format!(
                "cursor {} of domain `{}` is past its {} sequences",
                state.cursors[d], state.domains[d], sizes[d]
            ));
        }
        let mut prng = Rng::new(state.permutation_seed);
        let permutations = sizes.iter().map(|&n| permutation(n, &mut prng)).collect();
        Ok(Self { state, permutations })
    }

    /// Draw the domain of each of `batch` samples, then take each domain's next sequence.
    pub fn next_batch(&mut self, batch: usize) -> BatchPlan {
        let mut samples = Vec::with_capacity(batch);
        let mut wrapped = vec![];
        for _ in 0..batch {
            let d = self.draw_domain();
            let s = &mut self.state;
            if s.cursors[d] == self.permutations[d].len() {
                s.cursors[d] = 0;
                s.wraps[d] += 1;
                wrapped.push(d);
            }
            samples.push((d, self.permutations[d][s.cursors[d]]));
            s.cursors[d] += 1;
            s.drawn[d] += 1;
        }
        BatchPlan { samples, wrapped }
    }

    fn draw_domain(&mut self) -> usize {
        let u = self.state.rng.uniform();
        let mut acc = 0.0;
        let p = &self.state.proportions;
        for (d, w) in p.iter().enumerate() {
            acc += w;
            if u < acc {
                return d;
            }
        }
        // Rounding left u above the last cumulative sum: the last domain with non-zero weight.
        p.iter().rposition(|w| *w > 0.0).unwrap_or(p.len() - 1)
    }

    pub fn update(&mut self, rule: UpdateRule, loss: &[f64], reference: &[f64]) -> Result<()> {
        self.state.proportions = update_proportions(rule, &self.state.proportions, loss, reference)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values computed by hand (the comments show the arithmetic).
    #[test]
    fn update_rules_match_hand_computed_values() {
        let w = [0.5, 0.3, 0.2];
        let loss = [2.0, 1.5, 3.0];
        let reference = [1.8, 1.7, 2.5];
        // paper: w * exp(max(l - ref, 0)) = [0.5 e^0.2, 0.3, 0.2 e^0.5] = [0.610701, 0.3, 0.329744], / 1.240445
        let p = update_proportions(UpdateRule::Paper, &w, &loss, &reference).unwrap();
        for (a, b) in p.iter().zip([0.492324, 0.241849, 0.265827]) {
            assert!((a - b).abs() < 1e-6, "{p:?}");
        }
        // doremi: softmax(ln w + (l - ref)) = [0.610701, 0.3 e^-0.2 = 0.245619, 0.329744] / 1.186064,
        // then 0.9999 * α + 1e-4 / 3.
        let d = update_proportions(UpdateRule::Doremi, &w, &loss, &reference).unwrap();
        for (a, b) in d.iter().zip([0.514879, 0.207100, 0.278021]) {
            assert!((a - b).abs() < 1e-6, "{d:?}");
        }
        assert!((d.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(update_proportions(UpdateRule::Constant, &w, &loss, &reference).unwrap(), w.to_vec());
        // A domain below its reference is down-weighted by doremi but not by paper (it only gains nothing).
        assert!(d[1] < w[1] && p[1] < w[1]);
        assert!(update_proportions(UpdateRule::Doremi, &w, &[f64::NAN, 1.0, 1.0], &reference).is_err());
    }

    /// The released scaling-law notebook's reference losses (docs/method.md §6): LLaMA2 7B/13B/70B losses
    /// fitted, predicted for 1.3B and 2.7B.
    #[test]
    fn scaling_law_reproduces_the_reference_losses() {
        let n = [6_738_415_616.0, 13_015_864_320.0, 68_976_648_192.0];
        let cases = [
            ("cc", [1.7520, 1.6680, 1.4621], 1.9643, 1.8712),
            ("github", [0.6216, 0.5791, 0.4890], 0.7459, 0.6883),
            ("book", [1.9063, 1.8242, 1.6450], 2.1393, 2.0325),
            ("arxiv", [1.2637, 1.2109, 1.1148], 1.4449, 1.3560),
        ];
        for (name, l, ref13, ref27) in cases {
            let (a, b, c) = fit_scaling_law([(n[0], l[0]), (n[1], l[1]), (n[2], l[2])]).unwrap();
            let at = |n: f64| a * n.powf(-b) + c;
            for i in 0..3 {
                assert!((at(n[i]) - l[i]).abs() < 1e-9, "{name}: interpolates");
            }
            assert!((at(1_345_423_360.0) - ref13).abs() < 6e-5, "{name} 1.3B: {}", at(1_345_423_360.0));
            assert!((at(2_701_560_320.0) - ref27).abs() < 6e-5, "{name} 2.7B: {}", at(2_701_560_320.0));
        }
    }

    /// Empirical domain frequencies match the proportions: χ² over 20,000 draws at a fixed seed is below
    /// the 0.999 quantile for 3 degrees of freedom (16.27).
    #[test]
    fn domain_frequencies_match_proportions() {
        let props = [0.67, 0.045, 0.045, 0.24];
        let mut l =
            DynamicLoader::new(vec!["a".into(), "b".into(), "c".into(), "d".into()], &[50, 7, 3, 100], &props, 17)
                .unwrap();
        let n = 20_000;
        let mut counts = [0usize; 4];
        let plan = l.next_batch(n);
        for (d, i) in &plan.samples {
            counts[*d] += 1;
            assert!(*i < [50, 7, 3, 100][*d]);
        }
        let chi2: f64 = (0..4).map(|d| (counts[d] as f64 - n as f64 * props[d]).powi(2) / (n as f64 * props[d])).sum();
        assert!(chi2 < 16.27, "χ² = {chi2}, counts {counts:?}");
        // Small domains wrapped, and it was recorded.
        assert!(l.state.wraps[2] > 100 && plan.wrapped.contains(&2));
        assert_eq!(l.state.drawn.iter().sum::<usize>(), n);
    }

    #[test]
    fn resumed_loader_continues_the_same_stream() {
        let mut a = DynamicLoader::new(vec!["x".into(), "y".into()], &[5, 9], &[0.3, 0.7], 3).unwrap();
        a.next_batch(17);
        let saved = serde_json::to_string(&a.state).unwrap();
        let rest_a = a.next_batch(40).samples;
        let mut b = DynamicLoader::from_state(serde_json::from_str(&saved).unwrap(), &[5, 9]).unwrap();
        assert_eq!(b.next_batch(40).samples, rest_a);
    }

    #[test]
    fn empty_domains_and_bad_proportions_are_rejected() {
        assert!(DynamicLoader::new(vec!["x".into()], &[0], &[1.0], 0).unwrap_err().to_string().contains("`x` has no"));
        assert!(DynamicLoader::new(vec!["x".into()], &[3], &[f64::NAN], 0).is_err());
        // A sum that overflows would normalize every proportion to 0.
        let err = DynamicLoader::new(vec!["x".into(), "y".into()], &[3, 3], &[1e308, 1e308], 0).unwrap_err();
        assert!(err.to_string().contains("sum to inf"), "{err}");
    }

    /// A corrupt checkpoint's loader state is refused with the field at fault, never indexed out of range.
    #[test]
    fn corrupt_loader_states_are_refused() {
        let l = DynamicLoader::new(vec!["x".into(), "y".into()], &[5, 9], &[0.3, 0.7], 3).unwrap();
        type Corrupt = fn(&mut LoaderState);
        let cases: [(Corrupt, &str); 4] = [
            (|s| s.cursors[1] = 10, "cursor 10 of domain `y` is past its 9 sequences"),
            (|s| s.wraps.pop().map(drop).unwrap_or(()), "1 wraps for 2 domains"),
            (|s| s.proportions.push(0.0), "3 proportions for 2 domains"),
            (|s| s.proportions = vec![0.5, 0.6], "proportions sum to 1.1"),
        ];
        for (corrupt, needle) in cases {
            let mut state = l.state.clone();
            corrupt(&mut state);
            let err = DynamicLoader::from_state(state, &[5, 9]).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
