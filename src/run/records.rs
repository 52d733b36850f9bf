//! The lines of a run's logs as types, shared by the loops that write them and the reports that read
//! them: one per step in `metrics.jsonl`, one per eval in `evals.jsonl`. Field order is the order on disk.
//!
//! A pruning step line spells its per-family values as `<family>_<field>` (`head_lambda1`,
//! `hidden_kept_below_half`), flat, so that polars reads every value as a column.
//!
//! Reading is lenient where runs of older versions differ: a number a line lacks, or holds as `null`
//! (JSON's spelling of a non-finite value), reads as NaN, and a count as 0. A line without its `step`, or
//! with a value of the wrong kind, is an error.

use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::data::mixture::{DomainValues, ProportionUpdate};
use crate::family::{Family, FamilyMap};

/// One pruning step (`metrics.jsonl` of `shear prune`).
#[derive(Debug, Clone, PartialEq)]
pub struct PruneStepRecord {
    pub step: usize,
    /// Mean LM loss under the step's sampled masks.
    pub lm_loss: f64,
    /// The Lagrangian summed over the constrained families.
    pub lagrangian: f64,
    pub grad_norm: f64,
    pub lr_factor: f64,
    /// Expected attention + MLP parameters under the current scores.
    pub expected_params: f64,
    /// `1 − expected_params / the source's`.
    pub expected_sparsity: f64,
    /// Per constrained family: `<family>_expected_sparsity`, `_target_sparsity`, `_lambda1`, `_lambda2`.
    pub constraints: FamilyMap<ConstraintLog>,
    /// Per family: does materialization keep what the masks chose? `<family>_kept_below_half`, ...
    pub decisions: FamilyMap<DecisionLog>,
    /// Wall-clock seconds of the step.
    pub seconds: f64,
    /// Tokens trained on so far.
    pub tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConstraintLog {
    pub expected_sparsity: f64,
    pub target_sparsity: f64,
    pub lambda1: f64,
    pub lambda2: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionLog {
    pub kept_below_half: usize,
    pub dropped_above_half: usize,
    pub unbalanced_rows: usize,
}

impl Serialize for PruneStepRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("step", &self.step)?;
        m.serialize_entry("lm_loss", &self.lm_loss)?;
        m.serialize_entry("lagrangian", &self.lagrangian)?;
        m.serialize_entry("grad_norm", &self.grad_norm)?;
        m.serialize_entry("lr_factor", &self.lr_factor)?;
        m.serialize_entry("expected_params", &self.expected_params)?;
        m.serialize_entry("expected_sparsity", &self.expected_sparsity)?;
        for (f, c) in self.constraints.iter() {
            let n = f.name();
            m.serialize_entry(&format!("{n}_expected_sparsity"), &c.expected_sparsity)?;
            m.serialize_entry(&format!("{n}_target_sparsity"), &c.target_sparsity)?;
            m.serialize_entry(&format!("{n}_lambda1"), &c.lambda1)?;
            m.serialize_entry(&format!("{n}_lambda2"), &c.lambda2)?;
        }
        for (f, d) in self.decisions.iter() {
            let n = f.name();
            m.serialize_entry(&format!("{n}_kept_below_half"), &d.kept_below_half)?;
            m.serialize_entry(&format!("{n}_dropped_above_half"), &d.dropped_above_half)?;
            m.serialize_entry(&format!("{n}_unbalanced_rows"), &d.unbalanced_rows)?;
        }
        m.serialize_entry("seconds", &self.seconds)?;
        m.serialize_entry("tokens", &self.tokens)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for PruneStepRecord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = Map::<String, Value>::deserialize(d)?;
        let num = |k: &str| lenient_number(&m, k).map_err(D::Error::custom);
        let count = |k: &str| lenient_count(&m, k).map_err(D::Error::custom);
        let mut constraints = FamilyMap::new();
        let mut decisions = FamilyMap::new();
        for f in Family::ALL {
            let n = f.name();
            if m.contains_key(&format!("{n}_expected_sparsity")) {
                constraints.insert(
                    f,
                    ConstraintLog {
                        expected_sparsity: num(&format!("{n}_expected_sparsity"))?,
                        target_sparsity: num(&format!("{n}_target_sparsity"))?,
                        lambda1: num(&format!("{n}_lambda1"))?,
                        lambda2: num(&format!("{n}_lambda2"))?,
                    },
                );
            }
            if m.contains_key(&format!("{n}_kept_below_half")) {
                decisions.insert(
                    f,
                    DecisionLog {
                        kept_below_half: count(&format!("{n}_kept_below_half"))?,
                        dropped_above_half: count(&format!("{n}_dropped_above_half"))?,
                        unbalanced_rows: count(&format!("{n}_unbalanced_rows"))?,
                    },
                );
            }
        }
        let step = m.get("step").and_then(Value::as_u64).ok_or_else(|| D::Error::custom("no integer `step`"))?;
        Ok(Self {
            step: step as usize,
            lm_loss: num("lm_loss")?,
            lagrangian: num("lagrangian")?,
            grad_norm: num("grad_norm")?,
            lr_factor: num("lr_factor")?,
            expected_params: num("expected_params")?,
            expected_sparsity: num("expected_sparsity")?,
            constraints,
            decisions,
            seconds: num("seconds")?,
            tokens: count("tokens")?,
        })
    }
}

/// `key`'s number; NaN when it is missing or `null`.
fn lenient_number(m: &Map<String, Value>, key: &str) -> Result<f64, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(f64::NAN),
        Some(v) => v.as_f64().ok_or_else(|| format!("field `{key}` is {v}, not a number")),
    }
}

/// `key`'s count; 0 when it is missing.
fn lenient_count(m: &Map<String, Value>, key: &str) -> Result<usize, String> {
    match m.get(key) {
        None => Ok(0),
        Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| format!("field `{key}` is {v}, not a count")),
    }
}

/// A float that older logs may lack or hold as `null` (serde_json writes NaN so): NaN then.
pub(crate) fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nan() -> f64 {
    f64::NAN
}

/// One evaluation of a pruning run's deterministic masks (`evals.jsonl` of `shear prune`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PruneEvalRecord {
    /// With a corpus: the proportion update made from the target-count evaluation.
    #[serde(flatten)]
    pub mixture: Option<ProportionUpdate>,
    /// Held-out NLL under the target-count masks: the model `materialize` gives.
    pub eval_nll: f64,
    pub eval_tokens: usize,
    pub step: usize,
    /// Attention + MLP parameters the target-count masks keep.
    pub deterministic_params: f64,
    /// The same NLL under the expected-count masks: the structure the scores describe.
    pub eval_nll_expected: f64,
    pub expected_count_params: f64,
}

/// [`PruneEvalRecord`]'s own fields, as read.
#[derive(Deserialize)]
struct PruneEvalFields {
    #[serde(deserialize_with = "nan_if_null")]
    eval_nll: f64,
    #[serde(default)]
    eval_tokens: usize,
    step: usize,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    deterministic_params: f64,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    eval_nll_expected: f64,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    expected_count_params: f64,
}

// By hand: serde's flattened `Option` reads a malformed proportion update as `None`. A line with an
// `eval_loss` holds one, and it must parse.
impl<'de> Deserialize<'de> for PruneEvalRecord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let line = Value::Object(Map::<String, Value>::deserialize(d)?);
        let mixture = match line.get("eval_loss") {
            Some(_) => Some(ProportionUpdate::deserialize(&line).map_err(D::Error::custom)?),
            None => None,
        };
        let f = PruneEvalFields::deserialize(&line).map_err(D::Error::custom)?;
        Ok(Self {
            mixture,
            eval_nll: f.eval_nll,
            eval_tokens: f.eval_tokens,
            step: f.step,
            deterministic_params: f.deterministic_params,
            eval_nll_expected: f.eval_nll_expected,
            expected_count_params: f.expected_count_params,
        })
    }
}

/// One continued pre-training step (`metrics.jsonl` of `shear train`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainStepRecord {
    pub step: usize,
    /// Mean LM loss of the step's batch.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Mean loss of each domain that appeared in the batch (never 0/0).
    #[serde(default)]
    pub domain_loss: DomainValues,
    /// With a teacher: the batch's mean `KL(p_teacher ‖ p_student)` per token (nats, at the distillation
    /// temperature, before the `A·T²` factor); `loss` stays the LM loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill_loss: Option<f64>,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub lr: f64,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    /// Tokens trained on so far.
    #[serde(default)]
    pub tokens: usize,
    /// The proportions the batch was drawn with, in domain order.
    #[serde(default)]
    pub proportions: Vec<f64>,
    /// Cumulative wrap-arounds per domain: repeated data is visible, never silent.
    #[serde(default)]
    pub wraps: Vec<usize>,
    /// Wall-clock seconds of the step, and its throughput.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub seconds: f64,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub tokens_per_s: f64,
}

/// One evaluation of a continued pre-training run (`evals.jsonl` of `shear train`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainEvalRecord {
    #[serde(flatten)]
    pub mixture: ProportionUpdate,
    pub step: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as the loops wrote them before the records had types (real runs: notebook 04's doremi run,
    /// notebook 02's demo pruning run), read and written back byte for byte.
    #[test]
    fn records_write_back_the_lines_they_were_read_from_byte_for_byte() {
        fn round_trip<T: Serialize + serde::de::DeserializeOwned>(line: &str) {
            let record: T = serde_json::from_str(line).unwrap();
            assert_eq!(serde_json::to_string(&record).unwrap(), line);
        }
        round_trip::<TrainStepRecord>(
            r#"{"step":1,"loss":9.030850887298584,"domain_loss":{"c4":9.030850887298584},"lr":0.0,"grad_norm":62.00828591016552,"tokens":512,"proportions":[0.6699999999999999,0.04499999999999999,0.04499999999999999,0.019999999999999997,0.04499999999999999,0.024999999999999994,0.14999999999999997],"wraps":[0,0,0,0,0,0,0],"seconds":4.281881451,"tokens_per_s":119.57360470136939}"#,
        );
        round_trip::<TrainEvalRecord>(
            r#"{"eval_loss":{"cc":7.795409723590402,"github":8.457784461741355,"book":6.8859432451865255,"stackexchange":7.423945017889435,"wiki":7.993537198562248,"arxiv":8.164846515655517,"c4":7.63571375912311},"reference_loss":{"cc":3.7388603253691803,"github":2.6357875826312047,"book":3.662429601538415,"stackexchange":3.054897523393818,"wiki":4.200918433596106,"arxiv":2.909269105686861,"c4":3.2760668290012025},"proportions_before":{"cc":0.6699999999999999,"github":0.04499999999999999,"book":0.04499999999999999,"stackexchange":0.019999999999999997,"wiki":0.04499999999999999,"arxiv":0.024999999999999994,"c4":0.14999999999999997},"proportions":{"cc":0.5151578183726593,"github":0.2022184344381766,"book":0.015055508069485067,"stackexchange":0.021032685270766297,"wiki":0.02658739326765891,"arxiv":0.06377082082049715,"c4":0.15617733976075687},"rule":"doremi","step":10}"#,
        );
        round_trip::<PruneStepRecord>(
            r#"{"step":1,"lm_loss":4.324248552322388,"lagrangian":0.0,"grad_norm":7.2449805101399685,"lr_factor":0.0,"expected_params":105540296.43908274,"expected_sparsity":0.005915357433528778,"layer_expected_sparsity":0.0020178556442260742,"layer_target_sparsity":0.0,"layer_lambda1":0.0,"layer_lambda2":0.0,"head_expected_sparsity":0.0020177364349365234,"head_target_sparsity":0.0,"head_lambda1":0.0,"head_lambda2":0.0,"intermediate_expected_sparsity":0.0020178556442260742,"intermediate_target_sparsity":0.0,"intermediate_lambda1":0.0,"intermediate_lambda2":0.0,"hidden_expected_sparsity":0.0020178556442260742,"hidden_target_sparsity":0.0,"hidden_lambda1":0.0,"hidden_lambda2":0.0,"layer_kept_below_half":0,"layer_dropped_above_half":6,"layer_unbalanced_rows":1,"head_kept_below_half":0,"head_dropped_above_half":72,"head_unbalanced_rows":72,"intermediate_kept_below_half":0,"intermediate_dropped_above_half":12288,"intermediate_unbalanced_rows":24,"hidden_kept_below_half":0,"hidden_dropped_above_half":192,"hidden_unbalanced_rows":1,"seconds":6.757790056,"tokens":256}"#,
        );
        round_trip::<PruneEvalRecord>(
            r#"{"eval_nll":13.525214844801294,"eval_tokens":2032,"step":10,"deterministic_params":38928384.0,"eval_nll_expected":3.7976740196229906,"expected_count_params":105409080.0}"#,
        );
    }

    /// An older line without a later field reads it as NaN; a line without its step, or with a string
    /// where a number belongs, is refused by name; a malformed proportion update is an error, not `None`.
    #[test]
    fn older_lines_read_and_malformed_ones_are_refused_by_name() {
        let line = r#"{"step":1,"lm_loss":4.324248552322388,"lagrangian":0.0,"grad_norm":7.2449805101399685,"lr_factor":0.0,"expected_params":105540296.43908274,"expected_sparsity":0.005915357433528778,"layer_expected_sparsity":0.0020178556442260742,"layer_target_sparsity":0.0,"layer_lambda1":0.0,"layer_lambda2":0.0,"head_expected_sparsity":0.0020177364349365234,"head_target_sparsity":0.0,"head_lambda1":0.0,"head_lambda2":0.0,"intermediate_expected_sparsity":0.0020178556442260742,"intermediate_target_sparsity":0.0,"intermediate_lambda1":0.0,"intermediate_lambda2":0.0,"hidden_expected_sparsity":0.0020178556442260742,"hidden_target_sparsity":0.0,"hidden_lambda1":0.0,"hidden_lambda2":0.0,"layer_kept_below_half":0,"layer_dropped_above_half":6,"layer_unbalanced_rows":1,"head_kept_below_half":0,"head_dropped_above_half":72,"head_unbalanced_rows":72,"intermediate_kept_below_half":0,"intermediate_dropped_above_half":12288,"intermediate_unbalanced_rows":24,"hidden_kept_below_half":0,"hidden_dropped_above_half":192,"hidden_unbalanced_rows":1,"seconds":6.757790056,"tokens":256}"#;
        let older = line.replace(r#""head_lambda2":0.0,"#, "");
        let r: PruneStepRecord = serde_json::from_str(&older).unwrap();
        assert!(r.constraints.get(Family::Head).unwrap().lambda2.is_nan());
        let err = serde_json::from_str::<PruneStepRecord>(&line.replace(r#""step":1,"#, "")).unwrap_err();
        assert!(err.to_string().contains("step"), "{err}");
        let err = serde_json::from_str::<PruneStepRecord>(&line.replace("4.324248552322388", r#""x""#)).unwrap_err();
        assert!(err.to_string().contains("lm_loss"), "{err}");
        let eval = r#"{"eval_loss":{"cc":2.0},"reference_loss":null,"proportions_before":{"cc":1.0},"proportions":{"cc":1.0},"rule":"sideways","eval_nll":2.0,"eval_tokens":8,"step":10,"deterministic_params":1.0,"eval_nll_expected":2.0,"expected_count_params":1.0}"#;
        let err = serde_json::from_str::<PruneEvalRecord>(eval).unwrap_err();
        assert!(err.to_string().contains("sideways"), "{err}");
        let text_eval = r#"{"eval_nll":2.0,"eval_tokens":8,"step":10}"#;
        let r: PruneEvalRecord = serde_json::from_str(text_eval).unwrap();
        assert!(r.mixture.is_none() && r.eval_nll_expected.is_nan(), "an older text-run line");
    }
}
