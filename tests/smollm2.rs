//! Parity of the converted SmolLM2-135M with PyTorch/transformers loading the same GGUF.
//! Fixtures: tests/fixtures/smollm2/*.json, made by scripts/reference/make_fixtures.py.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use shear::io::{self, tokenizer::encode};
use shear::{eval, ExecPath};

#[test]
fn tokenizer_ids_match_transformers() {
    let tok = io::load_tokenizer(&smollm2_dir()).unwrap();
    let fx = fixture("tokenizer.json");
    let cases = fx.as_object().unwrap();
    assert!(cases.len() >= 6);
    for (name, case) in cases {
        let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let ids = encode(&tok, case["text"].as_str().unwrap()).unwrap();
        assert_eq!(ids, expected, "{name}");
        // Byte-level BPE is lossless.
        assert_eq!(tok.decode(&ids, false).unwrap(), case["text"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn logits_match_transformers_f32() {
    let dir = smollm2_dir();
    let loaded = io::load_model(&dir, DType::F32, &Device::Cpu).unwrap();
    let fx = fixture("logits.json");
    assert_eq!(loaded.config.param_counts().total() as u64, fx["num_parameters"].as_u64().unwrap());
    let tok = io::load_tokenizer(&dir).unwrap();
    let ids = encode(&tok, fx["prompt"].as_str().unwrap()).unwrap();
    let expected_ids: Vec<u32> = serde_json::from_value(fx["ids"].clone()).unwrap();
    assert_eq!(ids, expected_ids);

    let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = loaded.model.forward(&input, ExecPath::Inference).unwrap().squeeze(0).unwrap();
    let cols: Vec<u32> = serde_json::from_value(fx["vocab_columns"].clone()).unwrap();
    let sampled = logits.index_select(&Tensor::new(cols.as_slice(), &Device::Cpu).unwrap(), 1).unwrap();
    let expected: Vec<Vec<f32>> = serde_json::from_value(fx["logits"].clone()).unwrap();
    let expected = Tensor::new(expected, &Device::Cpu).unwrap();
    let d = max_abs_diff(&sampled, &expected);
    println!("max |Δ logits| on {} positions x {} columns: {d:e}", ids.len(), cols.len());
    assert!(d <= 1e-3, "max |Δ| = {d}");

    let lse: Vec<f32> = serde_json::from_value(fx["logsumexp"].clone()).unwrap();
    let ours: Vec<f32> = logits.exp().unwrap().sum(1).unwrap().log().unwrap().to_vec1().unwrap();
    for (p, (a, b)) in ours.iter().zip(&lse).enumerate() {
        assert!((a - b).abs() <= 1e-3, "logsumexp at {p}: {a} vs {b}");
    }
    let argmax: Vec<u32> = serde_json::from_value(fx["argmax"].clone()).unwrap();
    assert_eq!(logits.argmax(1).unwrap().to_vec1::<u32>().unwrap(), argmax);

    // The training kernels compute the same logits.
    let diff = loaded.model.forward(&input, ExecPath::Training).unwrap().squeeze(0).unwrap();
    assert!(max_abs_diff(&diff, &logits) < 1e-3);
}

fn sonnet_ids() -> Vec<u32> {
    let tok = io::load_tokenizer(&smollm2_dir()).unwrap();
    let text = io::read_utf8(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/eval/sonnets.txt")).unwrap();
    encode(&tok, &text).unwrap()
}

#[test]
fn eval_nll_matches_transformers() {
    let loaded = io::load_model(&smollm2_dir(), DType::F32, &Device::Cpu).unwrap();
    let ids = sonnet_ids();
    let fx = fixture("nll.json");
    assert_eq!(ids.len() as u64, fx["num_ids"].as_u64().unwrap());
    for run in fx["runs"].as_array().unwrap() {
        let seq_len = run["seq_len"].as_u64().unwrap() as usize;
        let kept = match run["max_tokens"].as_u64() {
            Some(n) => &ids[..n as usize],
            None => &ids[..],
        };
        let r = eval::evaluate_ids(&loaded.model, kept, seq_len, 4, None, |_, _| {}).unwrap();
        let expected = run["mean_nll"].as_f64().unwrap();
        let rel = (r.mean_nll - expected).abs() / expected;
        println!("seq_len {seq_len}: shear {:.7} transformers {expected:.7} (rel {rel:e})", r.mean_nll);
        assert_eq!(r.tokens as u64, run["tokens"].as_u64().unwrap());
        assert!(rel <= 1e-4, "relative NLL difference {rel}");
    }
}

#[test]
fn half_precision_nll_is_within_one_percent_of_f32_reference() {
    let fx = fixture("nll.json");
    let run = &fx["runs"][1]; // seq_len 128, first 1000 tokens: half-precision matmuls are slow on CPU
    let ids = sonnet_ids();
    for dtype in [DType::BF16, DType::F16] {
        let loaded = io::load_model(&smollm2_dir(), dtype, &Device::Cpu).unwrap();
        let n = run["max_tokens"].as_u64().unwrap() as usize;
        let r = eval::evaluate_ids(&loaded.model, &ids[..n], 128, 8, None, |_, _| {}).unwrap();
        let expected = run["mean_nll"].as_f64().unwrap();
        let rel = (r.mean_nll - expected).abs() / expected;
        println!("{dtype:?} NLL {:.5} vs f32 reference {expected:.5} (rel {rel:e})", r.mean_nll);
        assert!(rel < 0.01, "{dtype:?} relative NLL difference {rel}");
    }
}

/// Masked ≡ materialized on the real model: random deterministic masks with the default target's counts.
#[test]
fn masked_equals_materialized_on_smollm2() {
    use shear::prune::materialize::{materialize, random_target_masks};
    use shear::prune::TargetShape;
    let dir = smollm2_dir();
    let cfg = io::hf::load_config(&dir).unwrap();
    let weights = io::load_weights(&dir, Some(DType::F32), &Device::Cpu).unwrap();
    let source = shear::Llama::new(&cfg, &weights).unwrap();
    let target =
        TargetShape::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/targets/default.toml")).unwrap();
    let masks = random_target_masks(&cfg, &target, 7).unwrap();
    let (small_cfg, small_weights) = materialize(&cfg, &weights, &masks, &target).unwrap();
    assert_eq!(small_cfg.param_counts().total(), 57_821_568);
    let small = shear::Llama::new(&small_cfg, &small_weights).unwrap();
    let tok = io::load_tokenizer(&dir).unwrap();
    let ids = encode(&tok, "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.").unwrap();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let a = source.forward_masked(&input, ExecPath::Inference, Some(&masks)).unwrap();
    let b = small.forward(&input, ExecPath::Inference).unwrap();
    let d = max_abs_diff(&a, &b);
    println!("masked vs materialized SmolLM2 -> default target: max |Δ logits| {d:e}");
    assert!(d <= 1e-3, "{d}");
}
