//! The data mixture of a run on a corpus (docs/method.md §6): how the domain proportions start and move,
//! shared by pruning and continued pre-training, and the record each proportion update leaves in
//! `evals.jsonl`.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::loader::UpdateRule;

/// RedPajama's proportions, the reference's initial mixture (docs/method.md §6).
pub const REDPAJAMA_PROPORTIONS: [(&str, f64); 7] = [
    ("cc", 0.67),
    ("github", 0.045),
    ("book", 0.045),
    ("stackexchange", 0.02),
    ("wiki", 0.045),
    ("arxiv", 0.025),
    ("c4", 0.15),
];

/// How a run mixes its corpus's domains. In `run.json` its fields sit beside the run's other settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MixtureConfig {
    /// How the proportions move at each eval.
    #[serde(default = "constant_rule")]
    pub update_rule: UpdateRule,
    /// Initial proportions, in the corpus's domain order (empty for a run on a text file).
    #[serde(default)]
    pub proportions: Vec<f64>,
    /// Reference losses, in the corpus's domain order (unused by `constant`).
    #[serde(default)]
    pub reference_losses: Vec<f64>,
}

fn constant_rule() -> UpdateRule {
    UpdateRule::Constant
}

impl MixtureConfig {
    /// A fixed mixture of nothing: a run on a text file.
    pub fn none() -> Self {
        Self { update_rule: UpdateRule::Constant, proportions: vec![], reference_losses: vec![] }
    }

    /// RedPajama's proportions for the domains it names (`1/7` for any other), moved by `rule`; the
    /// reference losses are still to be filled in for a dynamic rule.
    pub fn redpajama(domains: &[String], rule: UpdateRule) -> Self {
        let proportions = domains
            .iter()
            .map(|d| REDPAJAMA_PROPORTIONS.iter().find(|(n, _)| n == d).map(|(_, p)| *p).unwrap_or(1.0 / 7.0))
            .collect();
        Self { update_rule: rule, proportions, reference_losses: vec![] }
    }
}

/// One value per domain, in the corpus's domain order; a JSON object `{"cc": 2.1, ...}` in the logs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DomainValues(pub Vec<(String, f64)>);

impl DomainValues {
    pub fn named(domains: &[String], values: &[f64]) -> Self {
        Self(domains.iter().cloned().zip(values.iter().copied()).collect())
    }
    pub fn get(&self, domain: &str) -> Option<f64> {
        self.0.iter().find(|(d, _)| d == domain).map(|(_, v)| *v)
    }
}

impl Serialize for DomainValues {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (d, v) in &self.0 {
            m.serialize_entry(d, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for DomainValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = DomainValues;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of per-domain numbers")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DomainValues, A::Error> {
                let mut out = vec![];
                while let Some(entry) = map.next_entry::<String, f64>()? {
                    out.push(entry);
                }
                Ok(DomainValues(out))
            }
        }
        d.deserialize_map(Ordered)
    }
}

/// What one proportion update saw and did (a line of `evals.jsonl`, with the run's own fields beside).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProportionUpdate {
    pub eval_loss: DomainValues,
    /// `null` for a rule without references.
    pub reference_loss: Option<DomainValues>,
    pub proportions_before: DomainValues,
    pub proportions: DomainValues,
    pub rule: UpdateRule,
}
