//! The mask families: the five structures a target can prune, and the one map type that holds a value per
//! family (mask values, scores, shapes). Adding a family means one variant here, its row in the tables
//! below, and its insertion point in the model's forward and backward.
//!
//! | family | mask shape | where it multiplies (docs/method.md §1) |
//! |---|---|---|
//! | `layer` | `[L]` | the attention and the MLP output of the whole block |
//! | `kv_group` | `[L, KV]` | each query head's context before `o_proj`, for every head of the group |
//! | `head` | `[L, H]` | its query head's context before `o_proj` (a head of group `g` is scaled by `head[l, h] * kv_group[l, g]`) |
//! | `intermediate` | `[L, m]` | the `up_proj` activations (not `gate_proj`) |
//! | `hidden` | `[d]` | the embeddings, every RMSNorm output (which also normalizes over the kept dims only) and both residual contributions of every block |
//!
//! How the masks are learned, split into rows and constrained is [`crate::prune::masks`]'s business.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::LlamaConfig;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Layer,
    KvGroup,
    Head,
    Intermediate,
    Hidden,
}

impl Family {
    /// Every family, in the order maps, logs and snapshots list them.
    pub const ALL: [Family; 5] = [Family::Layer, Family::KvGroup, Family::Head, Family::Intermediate, Family::Hidden];

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Layer => "layer",
            Family::KvGroup => "kv_group",
            Family::Head => "head",
            Family::Intermediate => "intermediate",
            Family::Hidden => "hidden",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The shape of this family's mask (and log-α) for a model of config `cfg`.
    pub fn shape(self, cfg: &LlamaConfig) -> Vec<usize> {
        let l = cfg.num_hidden_layers;
        match self {
            Family::Layer => vec![l],
            Family::KvGroup => vec![l, cfg.num_kv_heads()],
            Family::Head => vec![l, cfg.num_attention_heads],
            Family::Intermediate => vec![l, cfg.intermediate_size],
            Family::Hidden => vec![cfg.hidden_size],
        }
    }
}

/// One optional value per family, iterated in [`Family::ALL`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyMap<T> {
    slots: [Option<T>; 5],
}

impl<T> Default for FamilyMap<T> {
    fn default() -> Self {
        Self { slots: [None, None, None, None, None] }
    }
}

impl<T> FamilyMap<T> {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn get(&self, family: Family) -> Option<&T> {
        self.slots[family.index()].as_ref()
    }
    pub fn insert(&mut self, family: Family, value: T) {
        self.slots[family.index()] = Some(value);
    }
    /// The families that have a value, with it.
    pub fn iter(&self) -> impl Iterator<Item = (Family, &T)> {
        Family::ALL.into_iter().filter_map(|f| self.get(f).map(|v| (f, v)))
    }
}

impl<T> FromIterator<(Family, T)> for FamilyMap<T> {
    fn from_iter<I: IntoIterator<Item = (Family, T)>>(iter: I) -> Self {
        let mut out = Self::new();
        for (f, v) in iter {
            out.insert(f, v);
        }
        out
    }
}

/// Mask values for one forward pass (Sheared-LLaMA's `zs`), each family shaped like its log-alphas
/// ([`Family::shape`]); an absent family is all ones. The table at the top of this module says where each
/// one multiplies.
pub type MaskValues = FamilyMap<Tensor>;

impl MaskValues {
    /// The same values cut from the graph that produced them.
    pub fn detach(&self) -> MaskValues {
        self.iter().map(|(f, t)| (f, t.detach())).collect()
    }

    /// Every mask present has its family's shape for a model of config `cfg`.
    pub fn check_shapes(&self, cfg: &LlamaConfig) -> Result<()> {
        for (family, t) in self.iter() {
            let expected = family.shape(cfg);
            if t.dims() != expected.as_slice() {
                return Err(Error::Shape {
                    name: format!("{} mask", family.name()),
                    expected,
                    found: t.dims().to_vec(),
                });
            }
        }
        Ok(())
    }

    /// A family's values flattened row-major, or `n` ones when it is absent.
    pub fn values_or_ones(&self, family: Family, n: usize) -> Result<Vec<f32>> {
        match self.get(family) {
            Some(t) => Ok(t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?),
            None => Ok(vec![1.0; n]),
        }
    }
}

/// Per-entry keep probabilities (or 0/1 indicators) of every family, flattened row-major; a family the
/// masks do not prune is all ones. Feeds the GQA-aware parameter accounting
/// ([`MaskScores::expected_params`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MaskScores {
    values: FamilyMap<Vec<f64>>,
}

impl MaskScores {
    /// All ones: the unpruned model.
    pub fn ones(cfg: &LlamaConfig) -> Self {
        let values = Family::ALL.into_iter().map(|f| (f, vec![1.0; f.shape(cfg).iter().product()])).collect();
        Self { values }
    }

    /// A family's scores (every family has them).
    pub fn of(&self, family: Family) -> &[f64] {
        self.values.get(family).expect("MaskScores holds every family")
    }

    /// Replace a family's scores (`v` has the family's element count).
    pub fn set(&mut self, family: Family, v: Vec<f64>) {
        debug_assert_eq!(v.len(), self.of(family).len(), "{} scores", family.name());
        self.values.insert(family, v);
    }

    /// 0/1 indicators of the non-zero entries of deterministic masks.
    pub fn indicators(cfg: &LlamaConfig, m: &MaskValues) -> Result<Self> {
        let mut s = Self::ones(cfg);
        for (family, t) in m.iter() {
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            s.set(family, v.iter().map(|&x| if x != 0.0 { 1.0 } else { 0.0 }).collect());
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_map_keeps_the_family_order_whatever_the_insertion_order() {
        let mut m = FamilyMap::new();
        for f in Family::ALL.into_iter().rev() {
            m.insert(f, f.name());
        }
        let order: Vec<Family> = m.iter().map(|(f, _)| f).collect();
        assert_eq!(order, Family::ALL);
        assert!(Family::ALL.iter().all(|&f| Family::from_name(f.name()) == Some(f)));
    }

    #[test]
    fn a_mask_of_the_wrong_shape_is_refused_by_family() {
        let cfg = LlamaConfig::new(64, 48, 32, 2, 6, 3, 8, true);
        let mut m = MaskValues::new();
        for f in Family::ALL {
            m.insert(f, Tensor::ones(f.shape(&cfg), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap());
        }
        m.check_shapes(&cfg).unwrap();
        m.insert(Family::Head, Tensor::ones((2, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap());
        let err = m.check_shapes(&cfg).unwrap_err().to_string();
        assert!(err.contains("head mask"), "{err}");
    }
}
