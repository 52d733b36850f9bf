//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use shear::{LlamaConfig, TensorMap};

/// Tiny configs covering MHA and GQA, tied and untied embeddings, 2-3 layers, and a `head_dim` that is not
/// `hidden_size / num_attention_heads` (as after pruning).
pub fn tiny_configs() -> Vec<(&'static str, LlamaConfig)> {
    vec![
        ("mha_tied", LlamaConfig::new(97, 32, 48, 2, 4, 4, 8, true)),
        ("mha_untied", LlamaConfig::new(97, 32, 40, 3, 4, 4, 8, false)),
        ("gqa_tied", LlamaConfig::new(101, 48, 64, 3, 6, 2, 10, true)),
        ("gqa_untied", LlamaConfig::new(101, 36, 56, 2, 6, 3, 6, false)),
    ]
}

pub fn random_model(cfg: &LlamaConfig, seed: u64) -> TensorMap {
    shear::model::random_weights(cfg, seed, DType::F32, &Device::Cpu).unwrap()
}

pub fn random_ids(batch: usize, seq: usize, vocab: usize, seed: u64) -> Tensor {
    let ids: Vec<u32> =
        (0..batch * seq).map(|i| ((i as u64 * 2_654_435_761 + seed * 97) % vocab as u64) as u32).collect();
    Tensor::from_vec(ids, (batch, seq), &Device::Cpu).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// The converted SmolLM2-135M (`scripts/fetch-default-model.sh`), or `SHEAR_MODEL_DIR`. Tests that need
/// it fail rather than skip when it is missing: the README's test command fetches it first.
pub fn smollm2_dir() -> PathBuf {
    let dir = std::env::var_os("SHEAR_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m"));
    assert!(
        dir.join("config.json").exists(),
        "{} not found: run scripts/fetch-default-model.sh (the README's test command does)",
        dir.display()
    );
    dir
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// GPT-2's byte-to-unicode table: the alphabet byte-level BPE vocabularies are spelled in.
pub fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in printable.iter().zip(chars) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

/// A tiny LLaMA written as GGUF the way llama.cpp lays it out: GGUF tensor names, Q/K rows permuted for
/// interleaved RoPE, the embedding quantized to Q8_0, a byte-level BPE vocabulary of 256 byte tokens, two
/// merges and one control token. Returns the config and the original (unpermuted, unquantized) weights.
pub struct TinyGguf {
    pub cfg: LlamaConfig,
    pub weights: TensorMap,
}

pub const TINY_VOCAB: usize = 1 + 256 + 2;

pub fn tiny_gguf_tokens() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let table = bytes_to_unicode();
    let mut tokens = vec!["<|endoftext|>".to_string()];
    tokens.extend(table.iter().map(|c| c.to_string()));
    tokens.push("ab".into());
    tokens.push("Ġab".into());
    let merges = vec!["a b".to_string(), "Ġ ab".to_string()];
    let mut types = vec![1; tokens.len()];
    types[0] = 3;
    (tokens, merges, types)
}

pub fn write_tiny_gguf(path: &std::path::Path, architecture: &str) -> TinyGguf {
    use candle_core::quantized::GgmlDType;
    let cfg = LlamaConfig::new(TINY_VOCAB, 32, 48, 2, 4, 2, 8, false);
    write_gguf(path, architecture, &cfg, |name| {
        if name == "model.embed_tokens.weight" {
            GgmlDType::Q8_0
        } else {
            GgmlDType::F32
        }
    })
}

/// The tiny GGUF model converted to an HF directory, `root/model` (its GGUF at `root/tiny.gguf`).
pub fn tiny_hf_model(root: &std::path::Path) -> PathBuf {
    let g = root.join("tiny.gguf");
    write_tiny_gguf(&g, "llama");
    let model = root.join("model");
    shear::io::gguf::convert_gguf(&g, &model, Default::default(), |_, _| {}).unwrap();
    model
}

/// A LLaMA of shape `cfg` with the tiny byte-level vocabulary, each tensor stored as `quant(hf_name)`.
pub fn write_gguf(
    path: &std::path::Path,
    architecture: &str,
    cfg: &LlamaConfig,
    quant: impl Fn(&str) -> candle_core::quantized::GgmlDType,
) -> TinyGguf {
    use candle_core::quantized::{gguf_file, QTensor};
    let cfg = cfg.clone();
    let weights = random_model(&cfg, 11);
    let u32v = |x: usize| gguf_file::Value::U32(x as u32);
    let (tokens, merges, types) = tiny_gguf_tokens();
    let s = |x: &str| gguf_file::Value::String(x.to_string());
    let arr = |v: Vec<gguf_file::Value>| gguf_file::Value::Array(v);
    let md: Vec<(&str, gguf_file::Value)> = vec![
        ("general.architecture", s(architecture)),
        ("general.name", s("tiny")),
        ("llama.block_count", u32v(cfg.num_hidden_layers)),
        ("llama.context_length", u32v(256)),
        ("llama.embedding_length", u32v(cfg.hidden_size)),
        ("llama.feed_forward_length", u32v(cfg.intermediate_size)),
        ("llama.attention.head_count", u32v(cfg.num_attention_heads)),
        ("llama.attention.head_count_kv", u32v(cfg.num_kv_heads())),
        ("llama.attention.key_length", u32v(cfg.head_dim())),
        ("llama.rope.freq_base", gguf_file::Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", gguf_file::Value::F32(1e-5)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("smollm")),
        ("tokenizer.ggml.tokens", arr(tokens.iter().map(|t| s(t)).collect())),
        ("tokenizer.ggml.merges", arr(merges.iter().map(|t| s(t)).collect())),
        ("tokenizer.ggml.token_type", arr(types.iter().map(|&t| gguf_file::Value::I32(t)).collect())),
        ("tokenizer.ggml.bos_token_id", gguf_file::Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", gguf_file::Value::U32(0)),
    ];
    let gguf_name = |hf: &str| -> String {
        let fixed = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ];
        if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
            return g.to_string();
        }
        let rest = hf.strip_prefix("model.layers.").unwrap();
        let (layer, part) = rest.split_once('.').unwrap();
        let g = match part {
            "input_layernorm.weight" => "attn_norm",
            "self_attn.q_proj.weight" => "attn_q",
            "self_attn.k_proj.weight" => "attn_k",
            "self_attn.v_proj.weight" => "attn_v",
            "self_attn.o_proj.weight" => "attn_output",
            "post_attention_layernorm.weight" => "ffn_norm",
            "mlp.gate_proj.weight" => "ffn_gate",
            "mlp.up_proj.weight" => "ffn_up",
            "mlp.down_proj.weight" => "ffn_down",
            other => panic!("{other}"),
        };
        format!("blk.{layer}.{g}.weight")
    };
    let mut qtensors = vec![];
    for (name, t) in &weights {
        let t = if name.ends_with("q_proj.weight") {
            shear::io::gguf::permute_rope_rows(t, cfg.num_attention_heads).unwrap()
        } else if name.ends_with("k_proj.weight") {
            shear::io::gguf::permute_rope_rows(t, cfg.num_kv_heads()).unwrap()
        } else {
            t.clone()
        };
        let q = QTensor::quantize(&t, quant(name)).unwrap();
        qtensors.push((gguf_name(name), q));
    }
    let mut f = std::fs::File::create(path).unwrap();
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
    TinyGguf { cfg, weights }
}

/// A corpus of seven synthetic domains with distinct statistics, tokenized by `model`'s tokenizer, at
/// `root/corpus` (24-token sequences, 15% held out).
pub fn tiny_corpus(root: &std::path::Path, model: &std::path::Path) -> PathBuf {
    use shear::data::corpus::{build, BuildOptions};
    let raw = write_synthetic_domains(root, 40, 20);
    let tok = shear::io::load_tokenizer(model).unwrap();
    let tj = std::fs::read(model.join("tokenizer.json")).unwrap();
    let corpus = root.join("corpus");
    build(
        &raw,
        &corpus,
        &tok,
        &tj,
        (0, 0),
        &BuildOptions { seq_len: 24, eval_permille: 150, ..Default::default() },
        |_, _| {},
    )
    .unwrap();
    corpus
}

/// `root/raw/<domain>.jsonl` for the seven domains: `docs` documents each, document `i` repeating its
/// domain's pattern `base + i` times (distinct statistics per domain).
pub fn write_synthetic_domains(root: &std::path::Path, docs: usize, base: usize) -> PathBuf {
    let raw = root.join("raw");
    std::fs::create_dir(&raw).unwrap();
    for (k, d) in shear::data::corpus::DOMAINS.iter().enumerate() {
        let lines: Vec<String> = (0..docs)
            .map(|i| {
                let text =
                    format!("{d} {i} {}", ["ab ", "ba ", "xyz ", "0 1 2 ", "abab ", "q ", "é "][k].repeat(base + i));
                serde_json::json!({"id": format!("{d}/{i}"), "source": "synthetic", "text": text}).to_string()
            })
            .collect();
        std::fs::write(raw.join(format!("{d}.jsonl")), lines.join("\n")).unwrap();
    }
    raw
}
