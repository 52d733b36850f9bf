//! `tokenizer.json`: loading, and building one from a GGUF vocabulary.
//!
//! GGUF (llama.cpp) stores a byte-level BPE tokenizer as metadata: `tokenizer.ggml.tokens` (already
//! spelled in GPT-2's byte-to-unicode alphabet), `tokenizer.ggml.merges` ("a b" strings, best first),
//! `tokenizer.ggml.token_type` (3 = control, 4 = user-defined) and `tokenizer.ggml.pre`, the name of the
//! pre-tokenizer the merges were learned with. We write the HF `tokenizer.json` that the model's own
//! repository carries for these pre-tokenizers.

use std::path::Path;

use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

pub const TOKENIZER_FILE: &str = "tokenizer.json";

pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join(TOKENIZER_FILE);
    if !path.exists() {
        return Err(Error::Tokenizer { path, msg: "file not found: the model directory has no tokenizer".into() });
    }
    let len = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
    if len > super::MAX_METADATA_BYTES {
        return Err(Error::Tokenizer { path, msg: format!("{len} bytes, far more than a tokenizer holds; corrupt?") });
    }
    let tok = Tokenizer::from_file(&path)
        .map_err(|e| Error::Tokenizer { path: path.clone(), msg: format!("cannot parse: {e}") })?;
    // A tokenizer that emits ids the embedding does not have would fail (or, stored narrower, alias) later.
    if let Ok(cfg) = crate::io::hf::load_config(dir) {
        let bound = id_bound(&tok);
        if bound > cfg.vocab_size {
            return Err(Error::Tokenizer {
                path,
                msg: format!("has token ids up to {}, beyond config.json's vocab_size {}", bound - 1, cfg.vocab_size),
            });
        }
    }
    Ok(tok)
}

/// One past the largest id `tok` can produce (added tokens included): what a token store must hold.
pub fn id_bound(tok: &Tokenizer) -> usize {
    tok.get_vocab(true).values().max().map_or(0, |&m| m as usize + 1)
}

/// Encode without special tokens (no BOS/EOS added), as the eval protocol and the corpus builder need.
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tok.encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| Error::Invalid(format!("tokenizer failed: {e}")))
}

/// What a GGUF says about its tokenizer.
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: only `gpt2` (byte-level BPE) is supported.
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    pub token_types: Vec<i32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub chat_template: Option<String>,
}

/// LLaMA-3's split regex (digits in runs of up to three), applied before a regex-free ByteLevel.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The HF pre-tokenizer for llama.cpp's pre-tokenizer name.
fn pre_tokenizer(pre: Option<&str>) -> std::result::Result<Value, String> {
    match pre.unwrap_or("default") {
        // GPT-2 regex only.
        "default" | "gpt-2" | "gpt2" => Ok(byte_level(true)),
        // SmolLM / StarCoder: every digit is its own piece, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" => Ok(json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]
        })),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" => Ok(json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                byte_level(false)
            ]
        })),
        other => Err(format!(
            "pre-tokenizer `{other}` is not supported (supported: default/gpt-2, smollm/starcoder, llama3/llama-bpe)"
        )),
    }
}

/// Build `tokenizer.json` (and a matching `tokenizer_config.json`) from a GGUF vocabulary.
pub fn tokenizer_files_from_gguf(v: &GgufVocab, path: &Path) -> Result<(String, String)> {
    let err = |msg: String| Error::Tokenizer { path: path.into(), msg };
    if v.model != "gpt2" {
        return Err(err(format!(
            "tokenizer model `{}` is not supported; only byte-level BPE (`gpt2`) GGUF vocabularies convert",
            v.model
        )));
    }
    if v.tokens.is_empty() || v.merges.is_empty() {
        return Err(err("GGUF has no tokenizer.ggml.tokens or tokenizer.ggml.merges".into()));
    }
    let pre = pre_tokenizer(v.pre.as_deref()).map_err(err)?;

    let mut vocab = Map::new();
    for (id, tok) in v.tokens.iter().enumerate() {
        vocab.insert(tok.clone(), Value::from(id));
    }
    let mut added = vec![];
    for (id, (tok, ty)) in v.tokens.iter().zip(&v.token_types).enumerate() {
        // 3 = CONTROL (special, never split), 4 = USER_DEFINED (matched whole, not special).
        if *ty == 3 || *ty == 4 {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": *ty == 3
            }));
        }
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": v.merges,
        }
    });
    let text = serde_json::to_string(&tokenizer).expect("json");
    // Parse it back: a file we cannot load ourselves must not be written.
    Tokenizer::from_bytes(text.as_bytes()).map_err(|e| err(format!("built tokenizer does not load: {e}")))?;

    let name = |id: Option<u32>| id.and_then(|i| v.tokens.get(i as usize)).cloned();
    let mut cfg = Map::new();
    // `PreTrainedTokenizerFast` loads tokenizer.json as written, instead of rebuilding a pipeline.
    cfg.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    cfg.insert("add_bos_token".into(), false.into());
    cfg.insert("add_eos_token".into(), false.into());
    cfg.insert("clean_up_tokenization_spaces".into(), false.into());
    if let Some(b) = name(v.bos_token_id) {
        cfg.insert("bos_token".into(), b.into());
    }
    if let Some(e) = name(v.eos_token_id) {
        cfg.insert("eos_token".into(), e.into());
    }
    if let Some(t) = &v.chat_template {
        cfg.insert("chat_template".into(), t.clone().into());
    }
    cfg.insert("model_max_length".into(), Value::from(1_000_000_000u64));
    Ok((text, serde_json::to_string_pretty(&Value::Object(cfg)).expect("json")))
}
