//! Masked ≡ materialized: the masked source model with deterministic target-count masks and the dense
//! model materialized from it compute the same logits.

mod common;

use common::*;
use shear::io::{hf, SaveOptions};
use shear::prune::materialize::{materialize, random_target_masks};
use shear::prune::TargetShape;
use shear::{ExecPath, Llama};

fn targets() -> Vec<TargetShape> {
    let t =
        |layers, hidden, heads, kv_heads, intermediate| TargetShape { layers, hidden, heads, kv_heads, intermediate };
    vec![
        t(1, 24, 2, 2, 30), // mha_tied: a layer, hidden dims and heads (= KV groups) removed
        t(2, 20, 2, 2, 20), // mha_untied
        t(2, 36, 4, 2, 40), // gqa_tied: one query head per group of 3 removed
        t(2, 24, 4, 2, 30), // gqa_untied: a whole KV group removed, no layer removed
    ]
}

#[test]
fn masked_equals_materialized_on_tiny_configs() {
    for ((name, cfg), target) in tiny_configs().into_iter().zip(targets()) {
        target.validate(&cfg).unwrap();
        let weights = random_model(&cfg, 21);
        let source = Llama::new(&cfg, &weights).unwrap();
        for seed in 0..3 {
            let masks = random_target_masks(&cfg, &target, seed).unwrap();
            let (small_cfg, small_weights) = materialize(&cfg, &weights, &masks, &target).unwrap();
            assert_eq!(
                (small_cfg.num_hidden_layers, small_cfg.hidden_size, small_cfg.num_attention_heads),
                (target.layers, target.hidden, target.heads)
            );
            assert_eq!((small_cfg.num_kv_heads(), small_cfg.intermediate_size), (target.kv_heads, target.intermediate));
            assert_eq!(small_cfg.head_dim(), cfg.head_dim(), "head_dim is inherited");
            assert_eq!(small_cfg.tie_word_embeddings, cfg.tie_word_embeddings, "{name}");
            assert_eq!(small_weights.contains_key("lm_head.weight"), !cfg.tie_word_embeddings);

            let small = Llama::new(&small_cfg, &small_weights).unwrap();
            let ids = random_ids(2, 11, cfg.vocab_size, seed);
            let a = source.forward_masked(&ids, ExecPath::Inference, Some(&masks)).unwrap();
            let b = small.forward(&ids, ExecPath::Inference).unwrap();
            let d = max_abs_diff(&a, &b);
            assert!(d <= 1e-5, "{name} seed {seed}: max |Δ| {d}");
            // The training kernels agree too.
            let c = source.forward_masked(&ids, ExecPath::Training, Some(&masks)).unwrap();
            assert!(max_abs_diff(&c, &b) <= 1e-5, "{name}: the training path, masked");
        }
    }
}

/// The pitfall the reference code has: folding the hidden mask into the LM head as well as into the final
/// norm applies it twice. Our materialization must not; this shows the test above would catch it.
#[test]
fn folding_the_hidden_mask_twice_is_detected() {
    let (_, cfg) = tiny_configs().into_iter().find(|(n, _)| *n == "mha_untied").unwrap();
    let target = targets()[1];
    let weights = random_model(&cfg, 5);
    let masks = random_target_masks(&cfg, &target, 1).unwrap();
    let (small_cfg, mut small) = materialize(&cfg, &weights, &masks, &target).unwrap();
    let z: Vec<f32> = masks.get(shear::family::Family::Hidden).unwrap().to_vec1().unwrap();
    let kept: Vec<f32> = z.into_iter().filter(|v| *v != 0.0).collect();
    let zt = candle_core::Tensor::new(kept.as_slice(), &candle_core::Device::Cpu).unwrap();
    let head = small["lm_head.weight"].broadcast_mul(&zt.unsqueeze(0).unwrap()).unwrap();
    small.insert("lm_head.weight".into(), head);
    let ids = random_ids(1, 7, cfg.vocab_size, 2);
    let a = Llama::new(&cfg, &weights).unwrap().forward_masked(&ids, ExecPath::Inference, Some(&masks)).unwrap();
    let b = Llama::new(&small_cfg, &small).unwrap().forward(&ids, ExecPath::Inference).unwrap();
    assert!(max_abs_diff(&a, &b) > 1e-3);
}

/// A materialized model saves and loads like any other, with its explicit head_dim.
#[test]
fn materialized_model_round_trips_through_hf_format() {
    let (_, cfg) = tiny_configs().into_iter().find(|(n, _)| *n == "gqa_tied").unwrap();
    let target = targets()[2];
    let weights = random_model(&cfg, 3);
    let masks = random_target_masks(&cfg, &target, 0).unwrap();
    let (small_cfg, small) = materialize(&cfg, &weights, &masks, &target).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("small");
    hf::save_model(&dir, &small_cfg, &small, &SaveOptions::default()).unwrap();
    let back = shear::io::load_model(&dir, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    assert_eq!(back.config.head_dim(), 10);
    assert_eq!(back.config.hidden_size, 36);
    let ids = random_ids(1, 5, cfg.vocab_size, 1);
    let a = Llama::new(&small_cfg, &small).unwrap().forward(&ids, ExecPath::Inference).unwrap();
    let b = back.model.forward(&ids, ExecPath::Inference).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

/// Gradient accumulation (docs/method.md §4): one step over the micro-batches [a, b] has the mean of the
/// gradients of two one-micro-batch steps that draw the same masks in turn. So each micro-batch gets a
/// fresh mask sample, the loss is normalized over all sequences, and the Lagrangian counts once.
#[test]
fn accumulated_pruning_gradients_average_the_micro_batches() {
    use shear::run::pruning::PruneConfig;
    use shear::train::pruning::Pruner;
    let (_, cfg) = tiny_configs().into_iter().find(|(n, _)| *n == "gqa_tied").unwrap();
    let target = targets()[2];
    let weights = random_model(&cfg, 8);
    // No warm-ups: the first step moves λ away from 0, so that the Lagrangian reaches log-α as well.
    let config = PruneConfig { lr_warmup_steps: 0, lagrangian_warmup_steps: 0, ..PruneConfig::for_steps(10) };
    let (mut accumulated, mut separate) = (
        Pruner::new(&cfg, weights.clone(), &target, &config).unwrap(),
        Pruner::new(&cfg, weights, &target, &config).unwrap(),
    );
    let first = random_ids(2, 9, cfg.vocab_size, 1);
    for p in [&mut accumulated, &mut separate] {
        p.step(std::slice::from_ref(&first)).unwrap();
    }
    let (a, b) = (random_ids(2, 9, cfg.vocab_size, 2), random_ids(2, 9, cfg.vocab_size, 3));
    let (loss, _, g) = accumulated.gradients(&[a.clone(), b.clone()]).unwrap();
    let (loss_a, _, ga) = separate.gradients(&[a]).unwrap();
    let (loss_b, _, gb) = separate.gradients(&[b]).unwrap();
    assert!((loss - (loss_a + loss_b) / 2.0).abs() < 1e-6, "{loss} vs {loss_a}, {loss_b}");
    // Vars in order: weights, log-α (one per family), λ1 and λ2 per family.
    let families = accumulated.masks().vars().len();
    let n = accumulated.vars().len();
    let mut checked = [0; 3];
    for (i, (v, w)) in accumulated.vars().iter().zip(separate.vars()).enumerate() {
        let got = g.get(v.as_tensor()).unwrap();
        let want = ((ga.get(w.as_tensor()).unwrap() + gb.get(w.as_tensor()).unwrap()).unwrap() / 2.0).unwrap();
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let d = max_abs_diff(got, &want);
        assert!(d <= 1e-5 * scale + 1e-7, "var {i}: max |Δ| {d} at scale {scale}");
        let group = [n - 3 * families, n - 2 * families].iter().filter(|&&start| i >= start).count();
        checked[group] += (scale > 0.0) as usize;
    }
    assert!(checked.iter().all(|&n| n > 0), "non-zero gradients in every group: {checked:?}");
}

mod run {
    use super::*;
    use shear::data::TextData;
    use shear::run::pruning::{PruneConfig, PruneSpec};
    use shear::train::pruning::{prune, PruneData};
    use std::ops::ControlFlow;

    fn setup(root: &std::path::Path) -> (PruneSpec, shear::LlamaConfig, shear::TensorMap, PruneData) {
        let model = tiny_hf_model(root);
        let text = root.join("text.txt");
        std::fs::write(&text, "the quick brown fox jumps over the lazy dog; ab ba abab 0123456789\n".repeat(60))
            .unwrap();
        let cfg = hf::load_config(&model).unwrap();
        let weights = hf::load_weights(&model, Some(candle_core::DType::F32), &candle_core::Device::Cpu).unwrap();
        let tok = shear::io::load_tokenizer(&model).unwrap();
        let mut config = PruneConfig::for_steps(12);
        config.batch_size = 2;
        config.seq_len = 16;
        config.eval_interval = 4;
        config.eval_tokens = 64;
        config.checkpoint_interval = 5;
        let target = TargetShape { layers: 1, hidden: 16, heads: 2, kv_heads: 1, intermediate: 24 };
        let data = PruneData::Text(TextData::from_file(&text, &tok, 0.1, config.seq_len).unwrap());
        (PruneSpec { source_model: model, data: text, target, config }, cfg, weights, data)
    }

    fn final_state(run: &std::path::Path) -> (Vec<(String, Vec<f32>)>, String, String) {
        let (t, _) = shear::run::checkpoint::load(run, &candle_core::Device::Cpu).unwrap();
        let tensors = t.iter().map(|(k, v)| (k.clone(), v.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
        let read = |f: &str| std::fs::read_to_string(run.join(f)).unwrap();
        // Drop the wall-clock field: everything else must match exactly.
        let metrics: Vec<String> = read("metrics.jsonl")
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("seconds");
                v.to_string()
            })
            .collect();
        (tensors, metrics.join("\n"), read("evals.jsonl"))
    }

    /// Crashed at step 7 (between checkpoints 5 and 10) and resumed ≡ uninterrupted: the same weights,
    /// masks, multipliers, optimizer moments, metrics and evals.
    #[test]
    fn resumed_pruning_run_equals_uninterrupted() {
        let tmp = tempfile::tempdir().unwrap();
        let (spec, cfg, weights, mut data) = setup(tmp.path());
        let straight = tmp.path().join("straight");
        std::fs::create_dir(&straight).unwrap();
        let s =
            prune(&straight, &spec, &cfg, weights.clone(), &mut data, false, |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(s.final_step, 12);

        // Stopping on request checkpoints the current step, and resuming continues from there.
        let stopped = tmp.path().join("stopped");
        std::fs::create_dir(&stopped).unwrap();
        prune(&stopped, &spec, &cfg, weights.clone(), &mut data, false, |r| {
            if r.metrics.step == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        let r = prune(&stopped, &spec, &cfg, weights.clone(), &mut data, true, |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(r.steps_run, 9);
        assert_eq!(final_state(&stopped).0, final_state(&straight).0);

        // A run that dies at step 7, after checkpoint 5: metrics of steps 6-7 are on disk, their state is not.
        let resumed = tmp.path().join("resumed");
        std::fs::create_dir(&resumed).unwrap();
        let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            prune(&resumed, &spec, &cfg, weights.clone(), &mut data, false, |r| {
                assert!(r.metrics.step < 7, "simulated crash at step 7");
                ControlFlow::Continue(())
            })
        }));
        assert!(crashed.is_err());
        assert_eq!(std::fs::read_to_string(resumed.join("metrics.jsonl")).unwrap().lines().count(), 7);
        let r = prune(&resumed, &spec, &cfg, weights.clone(), &mut data, true, |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(r.steps_run, 7, "resumes from the step-5 checkpoint");
        let (a, b) = (final_state(&straight), final_state(&resumed));
        assert_eq!(a.0.len(), b.0.len());
        for ((ka, va), (kb, vb)) in a.0.iter().zip(&b.0) {
            assert_eq!(ka, kb);
            assert_eq!(va, vb, "{ka} differs after resume");
        }
        assert_eq!(a.1, b.1, "metrics differ");
        assert_eq!(a.2, b.2, "evals differ");
        // The learned masks moved toward the target and materialize to its exact shape.
        let out = tmp.path().join("pruned");
        shear::run::pruning::materialize(&straight, &out).unwrap();
        let small = hf::load_config(&out).unwrap();
        assert_eq!((small.num_hidden_layers, small.hidden_size, small.num_attention_heads), (1, 16, 2));
        assert_eq!((small.num_kv_heads(), small.intermediate_size), (1, 24));
        assert!(out.join("tokenizer.json").exists());
    }

    /// The pruning-time eval reports the model `materialize` produces: its `eval_nll` (target-count masks)
    /// is the NLL of the materialized directory on the same held-out tokens; `eval_nll_expected` (the
    /// expected counts) is logged beside it.
    #[test]
    fn pruning_evals_are_the_materialized_model() {
        let tmp = tempfile::tempdir().unwrap();
        let (spec, cfg, weights, mut data) = setup(tmp.path());
        let run = tmp.path().join("run");
        std::fs::create_dir(&run).unwrap();
        prune(&run, &spec, &cfg, weights, &mut data, false, |_| ControlFlow::Continue(())).unwrap();
        let evals = std::fs::read_to_string(run.join("evals.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(evals.lines().last().unwrap()).unwrap();
        assert_eq!(last["step"], 12);
        assert!(last["eval_nll_expected"].as_f64().unwrap().is_finite());
        let out = tmp.path().join("pruned");
        shear::run::pruning::materialize(&run, &out).unwrap();
        let small = shear::io::load_model(&out, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let PruneData::Text(text) = &data else { unreachable!() };
        let c = &spec.config;
        let ids = &text.eval[..c.eval_tokens.min(text.eval.len())];
        let r = shear::eval::evaluate_ids(&small.model, ids, c.seq_len, c.batch_size, None, |_, _| {}).unwrap();
        let logged = last["eval_nll"].as_f64().unwrap();
        assert_eq!(r.tokens as u64, last["eval_tokens"].as_u64().unwrap());
        assert!((r.mean_nll - logged).abs() <= 1e-5 * logged.abs(), "materialized {} vs logged {logged}", r.mean_nll);
    }

    /// `save_only_model`: the same training, a checkpoint without the AdamW moments that materializes to
    /// the same model, and a clear refusal to resume.
    #[test]
    fn model_only_checkpoint_materializes_but_does_not_resume() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut spec, cfg, weights, mut data) = setup(tmp.path());
        let full = tmp.path().join("full");
        std::fs::create_dir(&full).unwrap();
        prune(&full, &spec, &cfg, weights.clone(), &mut data, false, |_| ControlFlow::Continue(())).unwrap();
        spec.config.save_only_model = true;
        let lean = tmp.path().join("lean");
        std::fs::create_dir(&lean).unwrap();
        prune(&lean, &spec, &cfg, weights.clone(), &mut data, false, |_| ControlFlow::Continue(())).unwrap();

        let (full_t, lean_t) = (final_state(&full).0, final_state(&lean).0);
        let model_part: Vec<_> = full_t.iter().filter(|(k, _)| !k.starts_with("adam_")).cloned().collect();
        assert!(model_part.len() < full_t.len(), "the full checkpoint has moments");
        assert_eq!(lean_t, model_part, "same weights, log-α and λ; nothing else");
        let size = |run: &std::path::Path| std::fs::metadata(run.join("checkpoint/state.safetensors")).unwrap().len();
        assert!(size(&lean) * 2 < size(&full), "{} vs {} bytes", size(&lean), size(&full));

        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        shear::run::pruning::materialize(&full, &a).unwrap();
        shear::run::pruning::materialize(&lean, &b).unwrap();
        assert_eq!(
            std::fs::read(a.join("model.safetensors")).unwrap(),
            std::fs::read(b.join("model.safetensors")).unwrap()
        );

        spec.config.steps += 2;
        let err = prune(&lean, &spec, &cfg, weights, &mut data, true, |_| ControlFlow::Continue(())).unwrap_err();
        assert!(err.to_string().contains("save_only_model") && err.to_string().contains("cannot be resumed"), "{err}");
    }
}

/// Pruning on a corpus: the loader's proportions move under `doremi` with the source's own losses as
/// reference, and a stopped-and-resumed run matches the straight one (loader state included).
#[test]
fn pruning_on_a_corpus_with_dynamic_loading_resumes_exactly() {
    use shear::data::corpus::{build, BuildOptions, Corpus};
    use shear::data::{loader::UpdateRule, CorpusFeed};
    use shear::run::pruning::{PruneConfig, PruneSpec};
    use shear::train::pruning::{prune, PruneData};
    use std::ops::ControlFlow;
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_model(tmp.path());
    let raw = write_synthetic_domains(tmp.path(), 30, 15);
    let tok = shear::io::load_tokenizer(&model).unwrap();
    let tj = std::fs::read(model.join("tokenizer.json")).unwrap();
    let corpus_dir = tmp.path().join("corpus");
    build(
        &raw,
        &corpus_dir,
        &tok,
        &tj,
        (0, 0),
        &BuildOptions { seq_len: 16, eval_permille: 150, ..Default::default() },
        |_, _| {},
    )
    .unwrap();
    let cfg = hf::load_config(&model).unwrap();
    let weights = hf::load_weights(&model, Some(candle_core::DType::F32), &candle_core::Device::Cpu).unwrap();
    let mut config = PruneConfig::for_steps(8);
    config.batch_size = 3;
    config.seq_len = 16;
    config.eval_interval = 2;
    config.eval_tokens = 7 * 32;
    config.checkpoint_interval = 4;
    config.mixture.update_rule = UpdateRule::Doremi;
    config.mixture.proportions = vec![1.0; 7];
    // The source's own losses as reference, as `shear prune` does by default.
    let corpus = Corpus::open(&corpus_dir).unwrap();
    let source = Llama::new(&cfg, &weights).unwrap();
    config.mixture.reference_losses = shear::eval::evaluate_corpus(&source, &corpus, Some(2), 3, None, |_, _, _| {})
        .unwrap()
        .iter()
        .map(|r| r.mean_nll)
        .collect();
    let target = TargetShape { layers: 1, hidden: 16, heads: 2, kv_heads: 1, intermediate: 24 };
    let spec = PruneSpec { source_model: model.clone(), data: corpus_dir.clone(), target, config: config.clone() };
    let feed = || {
        let c = Corpus::open(&corpus_dir).unwrap();
        let feed = CorpusFeed::new(c, &config.mixture, 17);
        PruneData::Corpus(Box::new(feed.unwrap()))
    };
    let a = tmp.path().join("a");
    prune(&a, &spec, &cfg, weights.clone(), &mut feed(), false, |_| ControlFlow::Continue(())).unwrap();
    let b = tmp.path().join("b");
    prune(&b, &spec, &cfg, weights.clone(), &mut feed(), false, |r| {
        if r.metrics.step == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    prune(&b, &spec, &cfg, weights.clone(), &mut feed(), true, |_| ControlFlow::Continue(())).unwrap();
    let read = |run: &std::path::Path| shear::run::jsonl::read_jsonl(&run.join("evals.jsonl")).unwrap();
    assert_eq!(read(&a), read(&b));
    let (ta, _) = shear::run::checkpoint::load(&a, &candle_core::Device::Cpu).unwrap();
    let (tb, sb) = shear::run::checkpoint::load(&b, &candle_core::Device::Cpu).unwrap();
    for (k, v) in &ta {
        assert_eq!(
            v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            tb[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{k}"
        );
    }
    assert_eq!(sb.loader.expect("a corpus run checkpoints its loader").proportions.len(), 7);
    let evals = read(&a);
    assert_eq!(evals.len(), 4);
    assert_ne!(evals[3]["proportions"], evals[0]["proportions_before"], "doremi moved the mixture");
}
