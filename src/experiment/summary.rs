//! `summary.json` of an experiment, derived from its committed logs alone (never typed in): per arm the
//! final eval losses, their excess over the shared reference losses, the held-out and downstream
//! results, the loss curve against tokens, and the tokens the from-scratch arm needs to match a pruned
//! one ("compute to match", paper §4.1 Figure 1).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ArmRecord, Plan, ARM_RECORD, HELDOUT_EVAL, REFERENCE_EVAL, STEP0_EVAL, TASKS_EVAL};
use crate::error::{Error, Result};
use crate::run::jsonl::read_jsonl;
use crate::run::{EVALS, METRICS};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Continued pre-training tokens the plan gives every arm.
    pub tokens_per_arm: usize,
    pub reference_losses: BTreeMap<String, f64>,
    pub arms: BTreeMap<String, ArmSummary>,
    /// Arms of the plan whose logs are not complete yet.
    pub pending: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compute_to_match: Option<ComputeToMatch>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmSummary {
    #[serde(flatten)]
    pub record: ArmRecord,
    /// Continued pre-training tokens (the last step's count in `metrics.jsonl`).
    pub tokens: usize,
    /// The last training eval (the reference losses' protocol and sequences), per domain.
    pub eval_loss: BTreeMap<String, f64>,
    /// Unweighted mean over the domains.
    pub mean_eval_loss: f64,
    /// `eval_loss − reference`, per domain, and its range (max − min) over the domains.
    pub excess_loss: BTreeMap<String, f64>,
    pub excess_range: f64,
    /// The final model on more held-out sequences per domain (`heldout.json`).
    pub heldout_loss: BTreeMap<String, f64>,
    pub mean_heldout_loss: f64,
    /// Downstream tasks: the paper's metric per task, its chance level, and their means.
    pub tasks: BTreeMap<String, f64>,
    pub task_chance: BTreeMap<String, f64>,
    pub tasks_mean: Option<f64>,
    /// Mean eval loss against continued pre-training tokens, from step 0.
    pub curve: Vec<CurvePoint>,
    /// Sum of the training steps' wall-clock seconds (evaluations excluded).
    pub train_step_seconds: f64,
    pub final_proportions: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct CurvePoint {
    pub tokens: usize,
    pub mean_eval_loss: f64,
}

/// How many tokens the from-scratch arm needs to reach the pruned arm's loss at its first eval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComputeToMatch {
    pub pruned: String,
    pub scratch: String,
    /// The pruned arm's mean eval loss at its first eval after step 0.
    pub target_loss: f64,
    /// Continued pre-training tokens of the pruned arm at that eval, and the tokens before it (pruning).
    pub pruned_tokens: usize,
    pub pruned_prior_tokens: usize,
    /// Tokens the scratch arm needs: interpolated between its evals when it got there, else from the
    /// fitted power law (`extrapolated`); `None` when the fit's floor is above the target.
    pub scratch_tokens: Option<f64>,
    pub extrapolated: bool,
    pub fit: Option<PowerLaw>,
    /// `scratch_tokens / pruned_tokens`, and the same counting the pruning stage's tokens too.
    pub ratio: Option<f64>,
    pub ratio_with_pruning: Option<f64>,
}

/// `L(t) = a·t^(−b) + c`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PowerLaw {
    pub a: f64,
    pub b: f64,
    pub c: f64,
}

impl PowerLaw {
    pub fn at(&self, t: f64) -> f64 {
        self.a * t.powf(-self.b) + self.c
    }

    /// The `t` where the curve reaches `loss`, if it ever does (`loss > c`).
    pub fn tokens_to(&self, loss: f64) -> Option<f64> {
        (loss > self.c).then(|| (self.a / (loss - self.c)).powf(1.0 / self.b))
    }

    /// Least squares in loss over a grid of floors `c` below the smallest loss, each with the exact
    /// log-log line through `ln(L − c)`; `None` with fewer than three points or no decreasing fit.
    pub fn fit(points: &[(f64, f64)]) -> Option<Self> {
        let pts: Vec<(f64, f64)> = points.iter().copied().filter(|(t, l)| *t > 0.0 && l.is_finite()).collect();
        if pts.len() < 3 {
            return None;
        }
        let lowest = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let mut best: Option<(f64, PowerLaw)> = None;
        let grid = 2000;
        for i in 0..grid {
            let c = lowest * i as f64 / grid as f64;
            let xy: Vec<(f64, f64)> = pts.iter().map(|(t, l)| (t.ln(), (l - c).ln())).collect();
            let n = xy.len() as f64;
            let (mx, my) = (xy.iter().map(|p| p.0).sum::<f64>() / n, xy.iter().map(|p| p.1).sum::<f64>() / n);
            let sxx: f64 = xy.iter().map(|p| (p.0 - mx).powi(2)).sum();
            let sxy: f64 = xy.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
            let slope = sxy / sxx;
            if slope >= 0.0 || slope.is_nan() {
                continue;
            }
            let law = PowerLaw { a: (my - slope * mx).exp(), b: -slope, c };
            let sse: f64 = pts.iter().map(|(t, l)| (law.at(*t) - l).powi(2)).sum();
            if best.as_ref().is_none_or(|(s, _)| sse < *s) {
                best = Some((sse, law));
            }
        }
        best.map(|(_, law)| law)
    }
}

/// The summary of every arm of `plan` whose logs are complete under `plan.out`.
pub fn summarize(plan: &Plan, seq_len: usize) -> Result<Summary> {
    let reference = domain_losses(&plan.out.join(REFERENCE_EVAL))?;
    let mut arms = BTreeMap::new();
    let mut pending = vec![];
    for arm in &plan.arms {
        let dir = plan.arm_out(arm);
        if !dir.join(ARM_RECORD).exists() {
            pending.push(arm.name.clone());
            continue;
        }
        arms.insert(arm.name.clone(), arm_summary(&dir, &reference)?);
    }
    let compute_to_match = match &plan.compute_to_match {
        Some(m) => match (arms.get(&m.pruned), arms.get(&m.scratch)) {
            (Some(p), Some(s)) => Some(compute_to_match(&m.pruned, p, &m.scratch, s)?),
            _ => None,
        },
        None => None,
    };
    Ok(Summary {
        tokens_per_arm: plan.tokens_per_arm(seq_len),
        reference_losses: reference,
        arms,
        pending,
        compute_to_match,
    })
}

/// Read a committed `summary.json` (e.g. `data/experiments/equal-tokens/summary.json`).
pub fn read(path: &Path) -> Result<Summary> {
    let text = crate::io::read_metadata(path)?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// Write `OUT/summary.json` (through a temporary file, so a reader never sees half of it).
pub fn write(plan: &Plan, summary: &Summary) -> Result<()> {
    let path = plan.out.join(super::SUMMARY);
    let tmp = plan.out.join(format!(".{}.tmp-{}", super::SUMMARY, std::process::id()));
    let text = serde_json::to_string_pretty(summary).expect("a summary serializes") + "\n";
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// The summary as two Markdown tables (losses, then downstream accuracy), one row per complete arm, as
/// the README shows them.
pub fn markdown(s: &Summary) -> String {
    let domains: Vec<&String> = s.reference_losses.keys().collect();
    let mut out = String::new();
    out += "| arm | parameters | tokens before CPT | CPT tokens | mean held-out loss |";
    for d in &domains {
        out += &format!(" {d} |");
    }
    out += " mean eval loss (training evals) | range of loss − reference | training time (h) |\n|---|";
    out += &"---|".repeat(domains.len() + 7);
    out += "\n";
    for (name, a) in &s.arms {
        out += &format!(
            "| {name} | {:.1}M | {} | {} | {:.3} |",
            a.record.params as f64 / 1e6,
            crate::report::charts::thousands(a.record.prior_tokens as f64),
            crate::report::charts::thousands(a.tokens as f64),
            a.mean_heldout_loss
        );
        for d in &domains {
            out += &a.heldout_loss.get(*d).map_or(" – |".into(), |x| format!(" {x:.3} |"));
        }
        out += &format!(" {:.3} | {:.3} | {:.2} |\n", a.mean_eval_loss, a.excess_range, a.train_step_seconds / 3600.0);
    }
    let tasks: Vec<&String> =
        s.arms.values().flat_map(|a| a.tasks.keys()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    if !tasks.is_empty() {
        out += "\n| arm |";
        for t in &tasks {
            out += &format!(" {t} |");
        }
        out += " average |\n|---|";
        out += &"---|".repeat(tasks.len() + 1);
        out += "\n| chance |";
        let chance = s.arms.values().find(|a| !a.task_chance.is_empty()).map(|a| &a.task_chance);
        for t in &tasks {
            out += &chance.and_then(|c| c.get(*t)).map_or(" – |".into(), |x| format!(" {x:.3} |"));
        }
        out += &chance.map_or(" – |\n".into(), |c| format!(" {:.3} |\n", mean(c)));
        for (name, a) in s.arms.iter().filter(|(_, a)| !a.tasks.is_empty()) {
            out += &format!("| {name} |");
            for t in &tasks {
                out += &a.tasks.get(*t).map_or(" – |".into(), |x| format!(" {x:.3} |"));
            }
            out += &format!(" {:.4} |\n", a.tasks_mean.unwrap_or(f64::NAN));
        }
    }
    out
}

fn read_json(path: &Path) -> Result<Value> {
    let text = crate::io::read_metadata(path)?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

fn bad(path: &Path, what: &str) -> Error {
    Error::Invalid(format!("{}: {what}", path.display()))
}

/// `{domain: mean_nll}` of a `shear eval --data … --json` output.
pub fn domain_losses(path: &Path) -> Result<BTreeMap<String, f64>> {
    let v = read_json(path)?;
    let rows = v["domains"].as_array().ok_or_else(|| bad(path, "no `domains` list"))?;
    rows.iter()
        .map(|r| match (r["domain"].as_str(), r["mean_nll"].as_f64()) {
            (Some(d), Some(x)) => Ok((d.to_string(), x)),
            _ => Err(bad(path, "a domain row without `domain` and `mean_nll`")),
        })
        .collect()
}

fn float_map(v: &Value, path: &Path, field: &str) -> Result<BTreeMap<String, f64>> {
    let m = v[field].as_object().ok_or_else(|| bad(path, &format!("a line without `{field}`")))?;
    m.iter()
        .map(|(k, x)| {
            x.as_f64().map(|x| (k.clone(), x)).ok_or_else(|| bad(path, &format!("`{field}.{k}` is not a number")))
        })
        .collect()
}

fn mean(m: &BTreeMap<String, f64>) -> f64 {
    m.values().sum::<f64>() / m.len() as f64
}

fn arm_summary(dir: &Path, reference: &BTreeMap<String, f64>) -> Result<ArmSummary> {
    let record_path = dir.join(ARM_RECORD);
    let record: ArmRecord = serde_json::from_value(read_json(&record_path)?)
        .map_err(|e| Error::Invalid(format!("{}: {e}", record_path.display())))?;
    let metrics_path = dir.join(METRICS);
    let metrics = read_jsonl(&metrics_path)?;
    let evals_path = dir.join(EVALS);
    let evals = read_jsonl(&evals_path)?;
    let last_metrics = metrics.last().ok_or_else(|| bad(&metrics_path, "empty"))?;
    let last_eval = evals.last().ok_or_else(|| bad(&evals_path, "empty"))?;
    let tokens_at: BTreeMap<u64, usize> =
        metrics.iter().filter_map(|m| Some((m["step"].as_u64()?, m["tokens"].as_u64()? as usize))).collect();

    let eval_loss = float_map(last_eval, &evals_path, "eval_loss")?;
    let excess_loss: BTreeMap<String, f64> = eval_loss
        .iter()
        .map(|(d, l)| {
            let r = reference.get(d).ok_or_else(|| bad(&evals_path, &format!("domain {d} has no reference loss")))?;
            Ok((d.clone(), l - r))
        })
        .collect::<Result<_>>()?;
    let (lo, hi) = excess_loss.values().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(*x), b.max(*x)));

    let mut curve = vec![CurvePoint { tokens: 0, mean_eval_loss: mean(&domain_losses(&dir.join(STEP0_EVAL))?) }];
    for e in &evals {
        let step = e["step"].as_u64().ok_or_else(|| bad(&evals_path, "a line without `step`"))?;
        let tokens = *tokens_at.get(&step).ok_or_else(|| bad(&metrics_path, &format!("no line for step {step}")))?;
        curve.push(CurvePoint { tokens, mean_eval_loss: mean(&float_map(e, &evals_path, "eval_loss")?) });
    }

    let heldout_loss = domain_losses(&dir.join(HELDOUT_EVAL))?;
    let (mut tasks, mut task_chance) = (BTreeMap::new(), BTreeMap::new());
    let tasks_path = dir.join(TASKS_EVAL);
    if tasks_path.exists() {
        let v = read_json(&tasks_path)?;
        let m = v["tasks"].as_object().ok_or_else(|| bad(&tasks_path, "no `tasks` object"))?;
        for (name, t) in m {
            match (t["paper_value"].as_f64(), t["chance"].as_f64()) {
                (Some(x), Some(c)) => {
                    tasks.insert(name.clone(), x);
                    task_chance.insert(name.clone(), c);
                }
                _ => return Err(bad(&tasks_path, &format!("task {name} lacks `paper_value` or `chance`"))),
            }
        }
    }
    Ok(ArmSummary {
        record,
        tokens: last_metrics["tokens"].as_u64().ok_or_else(|| bad(&metrics_path, "no `tokens`"))? as usize,
        mean_eval_loss: mean(&eval_loss),
        eval_loss,
        excess_range: hi - lo,
        excess_loss,
        mean_heldout_loss: mean(&heldout_loss),
        heldout_loss,
        tasks_mean: (!tasks.is_empty()).then(|| mean(&tasks)),
        tasks,
        task_chance,
        curve,
        train_step_seconds: metrics.iter().filter_map(|m| m["seconds"].as_f64()).sum(),
        final_proportions: float_map(last_eval, &evals_path, "proportions")?,
    })
}

fn compute_to_match(
    pruned_name: &str,
    pruned: &ArmSummary,
    scratch_name: &str,
    scratch: &ArmSummary,
) -> Result<ComputeToMatch> {
    let first = pruned
        .curve
        .iter()
        .find(|p| p.tokens > 0)
        .ok_or_else(|| Error::Invalid(format!("arm {pruned_name} has no eval after step 0")))?;
    let target = first.mean_eval_loss;
    let pts: Vec<(f64, f64)> = scratch.curve.iter().map(|p| (p.tokens as f64, p.mean_eval_loss)).collect();
    // The first crossing of the target, interpolated linearly in tokens between the evals around it.
    let crossing = pts.windows(2).find(|w| w[1].1 <= target).map(|w| {
        let ((t0, l0), (t1, l1)) = (w[0], w[1]);
        if l0 <= target || l0 == l1 {
            t1
        } else {
            t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
        }
    });
    let fit = PowerLaw::fit(&pts);
    let (scratch_tokens, extrapolated) = match crossing {
        Some(t) => (Some(t), false),
        None => (fit.and_then(|f| f.tokens_to(target)), true),
    };
    let ratio = scratch_tokens.map(|t| t / first.tokens as f64);
    let with_pruning = scratch_tokens.map(|t| t / (first.tokens + pruned.record.prior_tokens) as f64);
    Ok(ComputeToMatch {
        pruned: pruned_name.into(),
        scratch: scratch_name.into(),
        target_loss: target,
        pruned_tokens: first.tokens,
        pruned_prior_tokens: pruned.record.prior_tokens,
        scratch_tokens,
        extrapolated,
        fit,
        ratio,
        ratio_with_pruning: with_pruning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_law_fit_recovers_the_law_it_samples() {
        let law = PowerLaw { a: 40.0, b: 0.3, c: 2.5 };
        let pts: Vec<(f64, f64)> = (1..=20).map(|i| (i as f64 * 51_200.0, law.at(i as f64 * 51_200.0))).collect();
        let fit = PowerLaw::fit(&pts).unwrap();
        // The floor grid steps by lowest/2000 ≈ 0.0017; the curve between the samples is what must agree.
        for t in [60_000.0, 300_000.0, 1_000_000.0] {
            assert!((fit.at(t) - law.at(t)).abs() < 2e-3, "{t}: {} vs {}", fit.at(t), law.at(t));
        }
        let t = fit.tokens_to(law.at(2e6)).unwrap();
        assert!((t / 2e6 - 1.0).abs() < 0.05, "{t}");
        assert_eq!(PowerLaw { a: 1.0, b: 0.5, c: 3.0 }.tokens_to(2.9), None);
    }
}
