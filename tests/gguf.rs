//! GGUF import on a synthetic tiny LLaMA laid out as llama.cpp writes it.

mod common;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use common::*;
use shear::io::{self, gguf, tokenizer::encode};

#[test]
fn gguf_import_undoes_permutation_and_dequantizes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny.gguf");
    let tiny = write_tiny_gguf(&path, "llama");
    let imp = gguf::read_gguf(&path, |_, _| {}).unwrap();

    assert_eq!(imp.config.tensor_shapes(), tiny.cfg.tensor_shapes());
    assert_eq!((imp.config.num_attention_heads, imp.config.num_kv_heads(), imp.config.head_dim()), (4, 2, 8));
    assert_eq!(imp.config.rms_norm_eps, 1e-5);
    assert_eq!(imp.config.max_position_embeddings, 256);
    assert!(!imp.config.tie_word_embeddings);
    for (name, original) in &tiny.weights {
        let got = &imp.weights[name];
        if name == "model.embed_tokens.weight" {
            // Q8_0: exactly what candle's dequantizer gives for the quantized original, and close to it.
            let expected = QTensor::quantize(original, GgmlDType::Q8_0).unwrap().dequantize(&Device::Cpu).unwrap();
            assert_eq!(max_abs_diff(got, &expected), 0.0, "{name}");
            assert!(max_abs_diff(got, original) < 1e-3, "{name}");
        } else {
            // F32, Q and K rows back in HF order: bit-exact.
            assert_eq!(max_abs_diff(got, original), 0.0, "{name}");
        }
    }
}

#[test]
fn gguf_tokenizer_applies_merges_and_keeps_control_tokens_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny.gguf");
    write_tiny_gguf(&path, "llama");
    let out = tmp.path().join("hf");
    gguf::convert_gguf(&path, &out, Default::default(), |_, _| {}).unwrap();
    let tok = io::load_tokenizer(&out).unwrap();
    let byte = |b: u8| 1 + b as u32;
    // "ab" merges; " ab" merges with its space; digits split one by one; the control token stays whole.
    assert_eq!(encode(&tok, "ab").unwrap(), vec![257]);
    assert_eq!(encode(&tok, "x ab").unwrap(), vec![byte(b'x'), 258]);
    assert_eq!(encode(&tok, "12").unwrap(), vec![byte(b'1'), byte(b'2')]);
    assert_eq!(encode(&tok, "a<|endoftext|>").unwrap(), vec![byte(b'a'), 0]);
    assert_eq!(encode(&tok, "é").unwrap(), vec![byte(0xC3), byte(0xA9)]);
    // And the written directory is a loadable model.
    let loaded = io::load_model(&out, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(loaded.config.vocab_size, TINY_VOCAB);
}

/// Every quantization the issue names, one per tensor of a model whose rows are long enough for the
/// K-quants (256): each tensor comes back exactly as candle dequantizes its quantized original, with Q and
/// K rows back in HF order.
#[test]
fn gguf_import_dequantizes_every_supported_type() {
    use candle_core::quantized::GgmlDType::*;
    let cfg = shear::LlamaConfig::new(TINY_VOCAB, 256, 512, 1, 4, 2, 64, false);
    let plan = |name: &str| match name {
        "model.embed_tokens.weight" => F16,
        "lm_head.weight" => Q8_0,
        n if n.ends_with("q_proj.weight") => Q4_0,
        n if n.ends_with("k_proj.weight") => Q4_1,
        n if n.ends_with("v_proj.weight") => Q5_0,
        n if n.ends_with("o_proj.weight") => Q4K,
        n if n.ends_with("gate_proj.weight") => Q6K,
        n if n.ends_with("up_proj.weight") => Q5K,
        n if n.ends_with("down_proj.weight") => Q3K,
        _ => F32,
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("quants.gguf");
    let orig = write_gguf(&path, "llama", &cfg, plan);
    let imp = gguf::read_gguf(&path, |_, _| {}).unwrap();
    let kinds: Vec<String> = imp.tensor_types.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(kinds.len(), 10, "{kinds:?}");
    for (name, original) in &orig.weights {
        let heads = if name.ends_with("q_proj.weight") {
            Some(4)
        } else if name.ends_with("k_proj.weight") {
            Some(2)
        } else {
            None
        };
        // What llama.cpp stores (permuted), quantized, dequantized by candle, un-permuted.
        let stored = match heads {
            Some(h) => gguf::permute_rope_rows(original, h).unwrap(),
            None => original.clone(),
        };
        let mut expected = QTensor::quantize(&stored, plan(name)).unwrap().dequantize(&Device::Cpu).unwrap();
        if let Some(h) = heads {
            expected = gguf::unpermute_rope_rows(&expected, h).unwrap();
        }
        assert_eq!(max_abs_diff(&imp.weights[name], &expected), 0.0, "{name} ({:?})", plan(name));
        // And every type approximates the original weights (std 0.02) reasonably.
        assert!(max_abs_diff(&imp.weights[name], original) < 0.02, "{name}");
    }
}
