//! The HF-shaped LLaMA configuration (`config.json`) and parameter counting.
//!
//! The struct mirrors `transformers.LlamaConfig`: it reads what HF writes (including the 5.x
//! `rope_parameters` block), keeps every field it does not use in `extra` so a load → save round trip loses
//! nothing, and always writes `num_key_value_heads` and `head_dim` explicitly: after pruning,
//! `head_dim != hidden_size / num_attention_heads` in general.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Filled with `num_attention_heads` (plain MHA) when absent.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Filled with `hidden_size / num_attention_heads` when absent.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Filled from `rope_parameters.rope_theta` (transformers 5.x) or 10000 when absent.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Everything else (`architectures`, `bos_token_id`, `torch_dtype`, ...), kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Upper bounds on a config's sizes, far above any released model (Llama 3.1 405B: 126 layers, hidden
/// 16,384, intermediate 53,248, 128 heads; the largest vocabularies are ~256k; contexts reach 10M), so
/// that a corrupt or hostile size is refused by name before anything is allocated from it.
pub struct Limits {
    pub vocab_size: usize,
    /// `hidden_size` and `intermediate_size`.
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub positions: usize,
}

pub const LIMITS: Limits = Limits {
    vocab_size: 1 << 22,
    width: 1 << 20,
    layers: 1 << 12,
    heads: 1 << 12,
    head_dim: 1 << 12,
    positions: 1 << 26,
};

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_position_embeddings() -> usize {
    2048
}

impl LlamaConfig {
    /// A config with the usual HF boilerplate, for tests, `shear init` and materialization.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        head_dim: usize,
        tie_word_embeddings: bool,
    ) -> Self {
        let mut extra = Map::new();
        extra.insert("architectures".into(), Value::from(vec!["LlamaForCausalLM"]));
        extra.insert("model_type".into(), "llama".into());
        extra.insert("hidden_act".into(), "silu".into());
        extra.insert("attention_bias".into(), false.into());
        extra.insert("mlp_bias".into(), false.into());
        Self {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim: Some(head_dim),
            rms_norm_eps: 1e-5,
            rope_theta: Some(10_000.0),
            max_position_embeddings: 2048,
            tie_word_embeddings,
            extra,
        }
    }

    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let cfg: LlamaConfig =
            serde_json::from_str(text).map_err(|e| Error::Config { path: path.into(), msg: e.to_string() })?;
        cfg.checked(path)
    }

    /// This config with its optional fields filled, or the first thing in it that shear cannot compute or
    /// that no real model has, as an error naming `path` and the field. Every config shear reads or builds
    /// (`config.json`, GGUF metadata, `shear init`'s flags) passes through here before anything is allocated.
    pub fn checked(mut self, path: &Path) -> Result<Self> {
        self.normalize().map_err(|msg| Error::Config { path: path.into(), msg })?;
        Ok(self)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::io::read_metadata(path)?;
        Self::from_json_str(&text, path)
    }

    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config always serializes")
    }

    /// Fill the optional fields and reject what this implementation does not compute.
    fn normalize(&mut self) -> std::result::Result<(), String> {
        // Present and not null: a field that is there with another type is refused like another value.
        let field = |key: &str| self.extra.get(key).filter(|v| !v.is_null());
        if let Some(mt) = field("model_type").filter(|v| v.as_str() != Some("llama")) {
            return Err(format!("model_type is {mt}, only \"llama\" is supported"));
        }
        if let Some(act) = field("hidden_act").filter(|v| v.as_str() != Some("silu")) {
            return Err(format!("hidden_act is {act}, only \"silu\" (SwiGLU) is supported"));
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if let Some(v) = field(flag).filter(|v| v.as_bool() != Some(false)) {
                return Err(format!("`{flag}: {v}` is not supported (LLaMA has no biases)"));
            }
        }
        if let Some(scaling) = field("rope_scaling") {
            return Err(format!("rope_scaling {scaling} is not supported"));
        }
        // transformers 5 writes RoPE scaling (Llama 3.1/3.2's `llama3`, `linear`, `yarn`, ...) and partial
        // rotary embeddings into `rope_parameters`; shear computes plain RoPE over the whole head only, so
        // anything else would give a silently different function.
        if let Some(params) = field("rope_parameters") {
            let params = params.as_object().ok_or_else(|| format!("rope_parameters is {params}, not an object"))?;
            let get = |key: &str| params.get(key).filter(|v| !v.is_null());
            if let Some(t) = get("rope_type").filter(|t| t.as_str() != Some("default")) {
                return Err(format!("rope_parameters.rope_type {t} is not supported (only \"default\" RoPE)"));
            }
            if let Some(f) = get("partial_rotary_factor").filter(|f| f.as_f64() != Some(1.0)) {
                return Err(format!("rope_parameters.partial_rotary_factor {f} is not supported (only 1.0)"));
            }
            if let Some(theta) = get("rope_theta").filter(|t| !t.is_number()) {
                return Err(format!("rope_parameters.rope_theta is {theta}, not a number"));
            }
        }
        // Sliding-window attention (Mistral, Qwen2 configs) masks keys beyond the window; shear attends to the
        // whole causal prefix, which is the same function only when the window covers every position.
        if let Some(v) = field("use_sliding_window").filter(|v| v.as_bool() != Some(false)) {
            return Err(format!("use_sliding_window: {v} is not supported (full causal attention only)"));
        }
        if let Some(w) = field("sliding_window") {
            if w.as_u64().is_none_or(|w| (w as usize) < self.max_position_embeddings) {
                return Err(format!(
                    "sliding_window {w} is smaller than max_position_embeddings ({}): not supported (full causal \
                     attention only)",
                    self.max_position_embeddings
                ));
            }
        }
        if self.rope_theta.is_none() {
            let from_params =
                self.extra.get("rope_parameters").and_then(|p| p.get("rope_theta")).and_then(Value::as_f64);
            self.rope_theta = Some(from_params.unwrap_or(10_000.0));
        }
        if self.num_attention_heads == 0 {
            return Err("num_attention_heads is 0".into());
        }
        let kv = *self.num_key_value_heads.get_or_insert(self.num_attention_heads);
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return Err(format!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({kv})",
                self.num_attention_heads
            ));
        }
        if self.head_dim.is_none() {
            if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
                return Err(format!(
                    "no head_dim given and hidden_size ({}) is not divisible by num_attention_heads ({})",
                    self.hidden_size, self.num_attention_heads
                ));
            }
            self.head_dim = Some(self.hidden_size / self.num_attention_heads);
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!("head_dim ({}) must be even for RoPE", self.head_dim()));
        }
        for (name, v, max) in [
            ("vocab_size", self.vocab_size, LIMITS.vocab_size),
            ("hidden_size", self.hidden_size, LIMITS.width),
            ("intermediate_size", self.intermediate_size, LIMITS.width),
            ("num_hidden_layers", self.num_hidden_layers, LIMITS.layers),
            ("num_attention_heads", self.num_attention_heads, LIMITS.heads),
            ("head_dim", self.head_dim(), LIMITS.head_dim),
            ("max_position_embeddings", self.max_position_embeddings, LIMITS.positions),
        ] {
            if v == 0 {
                return Err(format!("{name} is 0"));
            }
            if v > max {
                return Err(format!("{name} is {v}, more than any model shear can hold (at most {max})"));
            }
        }
        // Special-token ids index the vocabulary (generation stops on EOS; the corpus packs BOS/EOS).
        // BOS is one id; EOS is one id or a non-empty list of them (generation stops on any).
        for key in ["bos_token_id", "eos_token_id"] {
            let Some(v) = field(key) else { continue };
            let ids: Vec<&Value> = match v {
                Value::Array(a) if key == "eos_token_id" && !a.is_empty() => a.iter().collect(),
                one => vec![one],
            };
            if let Some(bad) = ids.iter().find(|id| id.as_u64().is_none_or(|id| id >= self.vocab_size as u64)) {
                return Err(format!("{key} {bad} is not a token id below vocab_size ({})", self.vocab_size));
            }
        }
        let theta = self.rope_theta();
        if !(theta.is_finite() && theta > 1.0) {
            return Err(format!("rope_theta is {theta:?}; RoPE needs a finite base above 1"));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(format!("rms_norm_eps is {:?}; it must lie in (0, 1)", self.rms_norm_eps));
        }
        Ok(())
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta.unwrap_or(10_000.0)
    }
    /// Query heads per KV group (GQA); 1 for MHA.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_kv_heads()
    }
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match self.extra.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)).collect(),
            _ => vec![],
        }
    }

    /// Tensor names and shapes this config implies, in HF naming (`[out, in]` for linear weights).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, hd, m) = (self.hidden_size, self.head_dim(), self.intermediate_size);
        let (h, kv) = (self.num_attention_heads, self.num_kv_heads());
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, d])];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), vec![d]));
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![h * hd, d]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv * hd, d]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv * hd, d]));
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, h * hd]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![m, d]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![m, d]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![d, m]));
        }
        out.push(("model.norm.weight".to_string(), vec![d]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, d]));
        }
        out
    }

    pub fn param_counts(&self) -> ParamCounts {
        let (d, hd, m) = (self.hidden_size, self.head_dim(), self.intermediate_size);
        let (h, kv) = (self.num_attention_heads, self.num_kv_heads());
        let attention = d * h * hd * 2 + d * kv * hd * 2;
        let mlp = 3 * d * m;
        let norms = 2 * d;
        ParamCounts {
            embedding: self.vocab_size * d,
            lm_head: if self.tie_word_embeddings { 0 } else { self.vocab_size * d },
            per_layer_attention: attention,
            per_layer_mlp: mlp,
            per_layer_norms: norms,
            layers: self.num_hidden_layers,
            final_norm: d,
        }
    }
}

/// Parameter counts by module. "Non-embedding" follows the paper: everything but the embedding and
/// the LM head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    pub embedding: usize,
    pub lm_head: usize,
    pub per_layer_attention: usize,
    pub per_layer_mlp: usize,
    pub per_layer_norms: usize,
    pub layers: usize,
    pub final_norm: usize,
}

impl ParamCounts {
    pub fn per_layer(&self) -> usize {
        self.per_layer_attention + self.per_layer_mlp + self.per_layer_norms
    }
    pub fn non_embedding(&self) -> usize {
        self.layers * self.per_layer() + self.final_norm
    }
    pub fn total(&self) -> usize {
        self.embedding + self.lm_head + self.non_embedding()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hf_config_and_keeps_unknown_fields() {
        let text = r#"{
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
            "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": [2, 0],
            "some_future_field": {"a": 1}
        }"#;
        let cfg = LlamaConfig::from_json_str(text, Path::new("config.json")).unwrap();
        assert_eq!(cfg.head_dim(), 64);
        assert_eq!(cfg.rope_theta(), 100000.0);
        assert_eq!(cfg.group_size(), 3);
        assert_eq!(cfg.eos_token_ids(), vec![2, 0]);
        let back: Value = serde_json::from_str(&cfg.to_json_string()).unwrap();
        assert_eq!(back["some_future_field"]["a"], 1);
        assert_eq!(back["head_dim"], 64);
        assert_eq!(back["num_key_value_heads"], 3);
        // SmolLM2-135M: transformers' `sum(p.numel())` is 134,515,008 (embedding tied).
        let pc = cfg.param_counts();
        assert_eq!(pc.total(), 134_515_008);
        assert_eq!(pc.non_embedding(), 134_515_008 - 49152 * 576);
    }

    #[test]
    fn rejects_what_it_cannot_compute() {
        let base = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                      "num_hidden_layers": 1, "num_attention_heads": 2"#;
        for (extra, needle) in [
            (r#", "num_key_value_heads": 3"#, "multiple of num_key_value_heads"),
            (r#", "hidden_act": "gelu""#, "hidden_act"),
            (r#", "attention_bias": true"#, "attention_bias"),
            (r#", "model_type": "mistral""#, "model_type"),
            // Llama 3.1/3.2 as transformers 5 writes it: refused by name, not computed as plain RoPE.
            (
                r#", "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0}"#,
                "rope_type \"llama3\"",
            ),
            (r#", "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}"#, "partial_rotary_factor"),
            (r#", "sliding_window": 4096, "max_position_embeddings": 32768"#, "sliding_window 4096"),
            (r#", "use_sliding_window": true"#, "use_sliding_window"),
            // Present with another type is refused like another value, never skipped.
            (r#", "hidden_act": ["silu"]"#, "hidden_act"),
            (r#", "rope_parameters": {"rope_type": 3}"#, "rope_type 3"),
            // Sizes no model has are refused before anything is allocated from them.
            (r#", "head_dim": 8192"#, "head_dim is 8192"),
            (r#", "max_position_embeddings": 2147483648"#, "max_position_embeddings is 2147483648"),
            (r#", "rope_theta": 0.0"#, "rope_theta is 0"),
            (r#", "rms_norm_eps": -1.0"#, "rms_norm_eps is -1"),
            (r#", "eos_token_id": [2, 10]"#, "eos_token_id 10 is not a token id below vocab_size (10)"),
        ] {
            let text = format!("{{{base}{extra}}}");
            let err = LlamaConfig::from_json_str(&text, Path::new("c.json")).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let err = LlamaConfig::from_json_str("{\"vocab_size\": 3}", Path::new("c.json")).unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
    }
}
