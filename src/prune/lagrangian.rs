//! The Lagrangian constraint (paper §2.1; docs/method.md §3): per family a pair of scalar multipliers λ1, λ2 (start at 0,
//! maximized by gradient ascent) and a target sparsity warmed up linearly from 0.
//!
//! `Lag_M = mean_elements[ λ1 (s − t) + λ2 (s − t)² ]`, `lag = Σ_M Lag_M`, where `s` is the expected
//! sparsity per constraint element (per layer for kv_group / intermediate, per (layer, KV group) for head:
//! see [`super::masks`]). Minimizing over log-α pulls `s` toward `t`; ascending over λ makes λ2 a growing
//! quadratic penalty.

use candle_core::{Device, Tensor, Var};
use serde::Serialize;

use super::masks::{weighted_mean, ExpectedSparsity, FamilyLayout};
use crate::error::Result;
use crate::family::Family;

pub struct Multipliers {
    pub family: Family,
    pub final_target: f64,
    pub lambda1: Var,
    pub lambda2: Var,
}

pub struct Lagrangian {
    pub multipliers: Vec<Multipliers>,
    /// Steps over which the target sparsity grows linearly from 0 to its final value (0: no warm-up).
    pub warmup_steps: usize,
}

/// What one family contributes at one step (for the metrics file).
#[derive(Debug, Clone, Serialize)]
pub struct FamilyStat {
    pub family: Family,
    /// Mean expected sparsity over the family's constraint elements.
    pub expected_sparsity: f64,
    /// The warmed-up target at this step.
    pub target_sparsity: f64,
    pub final_target: f64,
    pub lambda1: f64,
    pub lambda2: f64,
    pub lagrangian: f64,
}

impl Lagrangian {
    pub fn new(layouts: &[FamilyLayout], warmup_steps: usize, device: &Device) -> Result<Self> {
        let multipliers = layouts
            .iter()
            .map(|l| {
                Ok(Multipliers {
                    family: l.family,
                    final_target: l.target_sparsity(),
                    lambda1: Var::new(0f32, device)?,
                    lambda2: Var::new(0f32, device)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { multipliers, warmup_steps })
    }

    pub fn vars(&self) -> Vec<Var> {
        self.multipliers.iter().flat_map(|m| [m.lambda1.clone(), m.lambda2.clone()]).collect()
    }

    /// `t(step) = t_final · min(1, step / W)`, with the global optimizer step.
    pub fn target_at(&self, final_target: f64, step: usize) -> f64 {
        if self.warmup_steps == 0 {
            final_target
        } else {
            final_target * (step as f64 / self.warmup_steps as f64).min(1.0)
        }
    }

    /// The Lagrangian term at `step` and per-family statistics.
    pub fn loss(&self, expected: &[ExpectedSparsity], step: usize) -> Result<(Tensor, Vec<FamilyStat>)> {
        let mut total: Option<Tensor> = None;
        let mut stats = vec![];
        for m in &self.multipliers {
            let e = expected.iter().find(|e| e.family == m.family).expect("one expectation per family");
            let t = self.target_at(m.final_target, step);
            let gap = (&e.sparsity - t)?;
            let per_element =
                (gap.broadcast_mul(m.lambda1.as_tensor())? + gap.sqr()?.broadcast_mul(m.lambda2.as_tensor())?)?;
            let term = weighted_mean(&per_element, e.weights.as_ref())?;
            stats.push(FamilyStat {
                family: m.family,
                expected_sparsity: e.mean()?,
                target_sparsity: t,
                final_target: m.final_target,
                lambda1: m.lambda1.as_tensor().to_scalar::<f32>()? as f64,
                lambda2: m.lambda2.as_tensor().to_scalar::<f32>()? as f64,
                lagrangian: term.to_scalar::<f32>()? as f64,
            });
            total = Some(match total {
                Some(t) => (t + term)?,
                None => term,
            });
        }
        let total = match total {
            Some(t) => t,
            None => Tensor::new(0f32, &Device::Cpu)?,
        };
        Ok((total, stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LlamaConfig;
    use crate::prune::hard_concrete as hc;
    use crate::prune::masks::{layouts, MaskSet};
    use crate::prune::target::TargetShape;
    use crate::rng::Rng;

    #[test]
    fn warmup_is_linear() {
        let lag = Lagrangian { multipliers: vec![], warmup_steps: 100 };
        assert_eq!(lag.target_at(0.5, 0), 0.0);
        assert_eq!(lag.target_at(0.5, 50), 0.25);
        assert_eq!(lag.target_at(0.5, 500), 0.5);
    }

    /// Gradient signs of docs/method.md §3: ∂/∂λ1 = s − t, ∂/∂λ2 = (s − t)² ≥ 0, and once λ1 has been ascended
    /// against a sparsity deficit, the log-α gradient drives sparsity up.
    #[test]
    fn gradient_signs() {
        let src = LlamaConfig::new(64, 32, 48, 4, 4, 2, 8, true);
        let target = TargetShape { layers: 3, hidden: 16, heads: 2, kv_heads: 2, intermediate: 24 };
        let masks = MaskSet::new(&src, &target, &mut Rng::new(0), &Device::Cpu).unwrap();
        masks.clamp_in_place().unwrap();
        let lag = Lagrangian::new(&layouts(&src, &target), 0, &Device::Cpu).unwrap();
        let (loss, stats) = lag.loss(&masks.expected_sparsity().unwrap(), 10).unwrap();
        assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0, "λ start at 0");
        let grads = loss.backward().unwrap();
        for (m, st) in lag.multipliers.iter().zip(&stats) {
            let gap = st.expected_sparsity - st.target_sparsity;
            assert!(gap < 0.0, "fresh masks are denser than the target");
            let g1 = grads.get(m.lambda1.as_tensor()).unwrap().to_scalar::<f32>().unwrap() as f64;
            let g2 = grads.get(m.lambda2.as_tensor()).unwrap().to_scalar::<f32>().unwrap() as f64;
            assert!((g1 - gap).abs() < 1e-5, "{:?}: ∂/∂λ1 {g1} vs s − t {gap}", m.family);
            assert!(g2 > 0.0 && (g2 - gap * gap).abs() < 0.05, "{:?}: ∂/∂λ2 {g2}", m.family);
            // Gradient ascent on λ1: λ1 ← λ1 + η·(s − t) < 0.
            m.lambda1.set(&Tensor::new(gap as f32, &Device::Cpu).unwrap()).unwrap();
        }
        // Now ∂lag/∂s = λ1 < 0, so descent raises s: log-α gradients are positive (log-α will fall).
        let (loss, _) = lag.loss(&masks.expected_sparsity().unwrap(), 10).unwrap();
        let grads = loss.backward().unwrap();
        for f in &masks.families {
            let g: Vec<f32> = grads.get(f.log_alpha.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert!(g.iter().all(|&x| x > 0.0), "{:?}", f.layout.family);
        }
    }

    /// With GQA the materialized config keeps `heads / kv_heads` query heads in *every* kept group. A stand-in
    /// LM loss that prefers both heads of group 0 (and one head of group 1, none of group 2) pulls a
    /// per-layer constraint to 2 + 1 + 0 heads where materialization needs 1 + 1 + 1; the per-(layer, group)
    /// constraint ends with exactly one likely head per group, and materialization keeps exactly those.
    #[test]
    fn head_constraint_balances_every_kv_group() {
        use crate::prune::masks::Decision;
        use crate::train::optim::{AdamW, AdamWConfig};
        let dev = Device::Cpu;
        // 2 layers, 6 query heads in 3 KV groups of 2; the target keeps 1 head per group.
        let src = LlamaConfig::new(64, 48, 32, 2, 6, 3, 8, true);
        let target = TargetShape { layers: 2, hidden: 48, heads: 3, kv_heads: 3, intermediate: 32 };
        let masks = MaskSet::new(&src, &target, &mut Rng::new(0), &dev).unwrap();
        let lag = Lagrangian::new(&layouts(&src, &target), 100, &dev).unwrap();
        let head = masks.get(Family::Head).unwrap();
        let preference =
            Tensor::new(&[[1.0f32, 0.9, 0.8, 0.1, 0.05, 0.0], [0.9, 1.0, 0.1, 0.8, 0.0, 0.05]], &dev).unwrap();
        let named = |v: &Var| vec![("x".to_string(), v.clone())];
        let mut opt_masks = AdamW::new("log_alpha", AdamWConfig::sheared(1.0), named(&head.log_alpha)).unwrap();
        let lambdas = lag.vars();
        let mut opt_lambda = AdamW::new(
            "lambda",
            AdamWConfig::sheared(-1.0),
            lambdas.iter().enumerate().map(|(i, v)| (i.to_string(), v.clone())).collect(),
        )
        .unwrap();
        for step in 0..300 {
            masks.clamp_in_place().unwrap();
            let (constraint, _) = lag.loss(&masks.expected_sparsity().unwrap(), step).unwrap();
            let lm = (hc::score_tensor(head.log_alpha.as_tensor()).unwrap() * &preference)
                .unwrap()
                .mean_all()
                .unwrap()
                .affine(-1.0, 0.0)
                .unwrap();
            let grads = (constraint + lm).unwrap().backward().unwrap();
            opt_masks.step(&grads, 1.0, 1.0).unwrap();
            opt_lambda.step(&grads, 1.0, 1.0).unwrap();
        }
        masks.clamp_in_place().unwrap();
        let d: Decision = masks.decisions().unwrap().into_iter().find(|d| d.family == Family::Head).unwrap();
        let scores: Vec<f64> = head
            .log_alpha
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&x| hc::score(x as f64))
            .collect();
        assert_eq!((d.rows, d.kept), (6, 6));
        assert_eq!(d.unbalanced_rows, 0, "every group holds exactly one likely head: scores {scores:.3?}");
        assert_eq!((d.kept_below_half, d.dropped_above_half), (0, 0), "scores {scores:.3?}");
    }
}
