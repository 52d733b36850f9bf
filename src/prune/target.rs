//! Target architectures: what the pruned model must be, exactly. A TOML file with `layers`, `hidden`,
//! `heads`, `kv_heads` and `intermediate`; the head dimension is inherited from the source.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::LlamaConfig;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetShape {
    pub layers: usize,
    pub hidden: usize,
    /// Query heads per layer.
    pub heads: usize,
    /// KV heads (groups) per layer; each keeps `heads / kv_heads` query heads.
    pub kv_heads: usize,
    pub intermediate: usize,
}

impl TargetShape {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::io::read_metadata(path)?;
        toml::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: invalid target: {}", path.display(), e.message())))
    }

    pub fn of(cfg: &LlamaConfig) -> Self {
        Self {
            layers: cfg.num_hidden_layers,
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_kv_heads(),
            intermediate: cfg.intermediate_size,
        }
    }

    /// Check that `self` can be cut out of `source`; every message says which dimension is wrong.
    pub fn validate(&self, source: &LlamaConfig) -> Result<()> {
        let src = Self::of(source);
        let bad = |msg: String| Err(Error::Invalid(format!("target {self}: {msg}")));
        for (name, t, s) in [
            ("layers", self.layers, src.layers),
            ("hidden", self.hidden, src.hidden),
            ("heads", self.heads, src.heads),
            ("kv_heads", self.kv_heads, src.kv_heads),
            ("intermediate", self.intermediate, src.intermediate),
        ] {
            if t == 0 {
                return bad(format!("{name} is 0"));
            }
            if t > s {
                return bad(format!("{name} = {t} is larger than the source's {s}"));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "{} query heads cannot be spread evenly over {} kept KV groups",
                self.heads, self.kv_heads
            ));
        }
        let (group, src_group) = (self.heads / self.kv_heads, source.group_size());
        if group > src_group {
            return bad(format!(
                "{group} query heads per KV group, but the source's groups have only {src_group} \
                 (with {} KV heads keep at most {} query heads)",
                self.kv_heads,
                self.kv_heads * src_group
            ));
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return bad(format!(
                "hidden = {} is not a multiple of the {} query heads (choose e.g. {} or {})",
                self.hidden,
                self.heads,
                self.hidden / self.heads * self.heads,
                (self.hidden / self.heads + 1) * self.heads
            ));
        }
        Ok(())
    }

    /// The HF config of the target: the source's with the pruned dimensions and the inherited `head_dim`.
    pub fn config(&self, source: &LlamaConfig) -> LlamaConfig {
        let mut cfg = source.clone();
        cfg.num_hidden_layers = self.layers;
        cfg.hidden_size = self.hidden;
        cfg.num_attention_heads = self.heads;
        cfg.num_key_value_heads = Some(self.kv_heads);
        cfg.head_dim = Some(source.head_dim());
        cfg.intermediate_size = self.intermediate;
        cfg
    }
}

impl std::fmt::Display for TargetShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "(layers {}, hidden {}, heads {}, kv_heads {}, intermediate {})",
            self.layers, self.hidden, self.heads, self.kv_heads, self.intermediate
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> LlamaConfig {
        LlamaConfig::new(49152, 576, 1536, 30, 9, 3, 64, true)
    }

    #[test]
    fn shipped_targets_are_valid() {
        for file in ["default.toml", "small.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/targets").join(file);
            let t = TargetShape::load(&path).unwrap();
            t.validate(&smollm2()).unwrap();
        }
    }

    #[test]
    fn bad_targets_are_rejected_with_the_reason() {
        let ok = TargetShape { layers: 24, hidden: 384, heads: 6, kv_heads: 3, intermediate: 1024 };
        ok.validate(&smollm2()).unwrap();
        let cases = [
            (TargetShape { intermediate: 2048, ..ok }, "intermediate = 2048 is larger than the source's 1536"),
            (TargetShape { layers: 31, ..ok }, "layers = 31 is larger"),
            (TargetShape { layers: 0, ..ok }, "layers is 0"),
            (TargetShape { heads: 5, ..ok }, "5 query heads cannot be spread evenly over 3"),
            (TargetShape { heads: 8, kv_heads: 2, hidden: 512, ..ok }, "4 query heads per KV group"),
            (TargetShape { hidden: 380, ..ok }, "hidden = 380 is not a multiple of the 6 query heads"),
            (TargetShape { kv_heads: 4, heads: 8, hidden: 384, ..ok }, "kv_heads = 4 is larger"),
        ];
        for (t, needle) in cases {
            let err = t.validate(&smollm2()).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let err = toml::from_str::<TargetShape>(
            "layers = 2\nhidden = 8\nheads = 1\nkv_heads = 1\nintermediate = 4\nextra = 1",
        )
        .unwrap_err();
        assert!(err.to_string().contains("extra"));
    }
}
