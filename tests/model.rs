//! The model on tiny random configs: save → load round trips, execution-path equivalence, the KV cache, and
//! gradient coverage of the training forward.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use shear::io::{hf, SaveOptions};
use shear::model::{trainable, KvCache};
use shear::{ExecPath, Llama};

fn bits(t: &Tensor) -> Vec<u32> {
    match t.dtype() {
        DType::F32 => t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect(),
        DType::BF16 => {
            t.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap().iter().map(|x| x.to_bits() as u32).collect()
        }
        dt => panic!("unexpected dtype {dt:?}"),
    }
}

#[test]
fn save_load_round_trip_is_bit_identical_sharded_and_unsharded() {
    for (name, cfg) in tiny_configs() {
        let weights = random_model(&cfg, 7);
        for (dtype, shard) in [(DType::F32, None), (DType::F32, Some(20_000u64)), (DType::BF16, Some(8_000))] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("m");
            let opts = SaveOptions { dtype: Some(dtype), max_shard_bytes: shard, ..Default::default() };
            hf::save_model(&dir, &cfg, &weights, &opts).unwrap();
            let files = hf::weight_files(&dir).unwrap();
            match shard {
                None => assert_eq!(files, vec![dir.join("model.safetensors")], "{name}"),
                Some(_) => assert!(files.len() >= 3, "{name}: expected >= 3 shards, got {files:?}"),
            }
            assert!(!dir.join("model.safetensors.index.json").exists() || shard.is_some());
            let back_cfg = hf::load_config(&dir).unwrap();
            assert_eq!(back_cfg.tensor_shapes(), cfg.tensor_shapes(), "{name}");
            assert_eq!(back_cfg.head_dim(), cfg.head_dim());
            let back = hf::load_weights(&dir, None, &Device::Cpu).unwrap();
            assert_eq!(back.len(), weights.len(), "{name}");
            for (k, t) in &weights {
                let expected = t.to_dtype(dtype).unwrap();
                assert_eq!(back[k].dtype(), dtype);
                assert_eq!(bits(&back[k]), bits(&expected), "{name} {k} {dtype:?} {shard:?}");
            }
            // Nothing but the finished directory is left next to it.
            let siblings: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(siblings, vec![std::ffi::OsString::from("m")]);
        }
    }
}

#[test]
fn inference_and_training_forward_agree() {
    for (name, cfg) in tiny_configs() {
        let model = Llama::new(&cfg, &random_model(&cfg, 1)).unwrap();
        let ids = random_ids(2, 9, cfg.vocab_size, 3);
        let a = model.forward(&ids, ExecPath::Inference).unwrap();
        let b = model.forward(&ids, ExecPath::Training).unwrap();
        assert_eq!(a.dims(), &[2, 9, cfg.vocab_size]);
        let d = max_abs_diff(&a, &b);
        assert!(d < 1e-5, "{name}: {d}");
    }
}

#[test]
fn kv_cache_decoding_matches_full_forward() {
    for (name, cfg) in tiny_configs() {
        let model = Llama::new(&cfg, &random_model(&cfg, 2)).unwrap();
        let ids = random_ids(1, 8, cfg.vocab_size, 5);
        let full = model.forward(&ids, ExecPath::Inference).unwrap().squeeze(0).unwrap();
        let mut cache = KvCache::new();
        // A 5-token prompt, then one token at a time.
        let mut last = model.forward_incremental(&ids.narrow(1, 0, 5).unwrap(), &mut cache).unwrap();
        assert!(max_abs_diff(&last.squeeze(0).unwrap(), &full.get(4).unwrap()) < 1e-5, "{name}");
        for pos in 5..8 {
            last = model.forward_incremental(&ids.narrow(1, pos, 1).unwrap(), &mut cache).unwrap();
            let d = max_abs_diff(&last.squeeze(0).unwrap(), &full.get(pos).unwrap());
            assert!(d < 1e-5, "{name} position {pos}: {d}");
        }
        assert_eq!(cache.len(), 8);
    }
}

/// Prompts of different lengths left-padded into one batch end in the same column; each row's last logits
/// are those it gets alone, and continuations run on rows of that cache (a row may repeat, rows may be
/// right-padded) get the logits of the whole sequence alone.
#[test]
fn a_left_padded_batch_gives_each_row_what_it_gets_alone() {
    for (name, cfg) in tiny_configs() {
        let model = Llama::new(&cfg, &random_model(&cfg, 3)).unwrap();
        let all = random_ids(3, 10, cfg.vocab_size, 11);
        let lens = [7usize, 3, 5];
        let row = |r: usize, n: usize| all.get(r).unwrap().narrow(0, 0, n).unwrap().to_vec1::<u32>().unwrap();
        let mut padded = vec![];
        for (r, &n) in lens.iter().enumerate() {
            padded.extend(std::iter::repeat_n(0u32, 7 - n));
            padded.extend(row(r, n));
        }
        let mut cache = KvCache::left_padded(lens.iter().map(|n| 7 - n).collect());
        let batch = Tensor::from_vec(padded, (3, 7), &Device::Cpu).unwrap();
        let last = model.forward_incremental(&batch, &mut cache).unwrap();
        let alone = |r: usize, n: usize| {
            let ids = Tensor::new(row(r, n).as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            model.forward(&ids, ExecPath::Inference).unwrap().squeeze(0).unwrap()
        };
        for (r, &n) in lens.iter().enumerate() {
            let d = max_abs_diff(&last.get(r).unwrap(), &alone(r, n).get(n - 1).unwrap());
            assert!(d < 1e-5, "{name} row {r}: {d}");
        }
        // Continuations: prompt 2 twice (3 and 1 more tokens), prompt 0 once (2 more); right-padded to 3.
        let (rows, more) = ([2usize, 2, 0], [3usize, 1, 2]);
        let mut ids = vec![];
        for (&r, &m) in rows.iter().zip(&more) {
            ids.extend(row(r, lens[r] + m)[lens[r]..].iter().copied());
            ids.extend(std::iter::repeat_n(0u32, 3 - m));
        }
        let positions: Vec<u32> =
            (0..3u32).flat_map(|i| (0..more[i as usize] as u32).map(move |j| i * 3 + j)).collect();
        let ids = Tensor::from_vec(ids, (3, 3), &Device::Cpu).unwrap();
        let got = model
            .logits_after(&ids, &mut cache.select_rows(&rows).unwrap(), &Tensor::new(positions, &Device::Cpu).unwrap())
            .unwrap();
        let mut k = 0;
        for (&r, &m) in rows.iter().zip(&more) {
            let full = alone(r, lens[r] + m);
            for j in 0..m {
                let d = max_abs_diff(&got.get(k).unwrap(), &full.get(lens[r] + j).unwrap());
                assert!(d < 1e-5, "{name} continuation of row {r}, token {j}: {d}");
                k += 1;
            }
        }
    }
}

/// One training forward + backward gives every parameter a finite, non-zero gradient.
#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    for (name, cfg) in tiny_configs() {
        let (vars, tensors) = trainable(random_model(&cfg, 4)).unwrap();
        let model = Llama::new(&cfg, &tensors).unwrap();
        let ids = random_ids(2, 12, cfg.vocab_size, 9);
        let loss = model.lm_loss(&ids, ExecPath::Training, None).unwrap();
        let l = loss.to_scalar::<f32>().unwrap();
        // Random init: the loss is close to ln(vocab).
        assert!((l - (cfg.vocab_size as f32).ln()).abs() < 0.5, "{name}: loss {l}");
        let grads = loss.backward().unwrap();
        for (pname, var) in &vars {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
            let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(g.iter().all(|x| x.is_finite()), "{name}: non-finite gradient for {pname}");
            let max = g.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(max > 0.0, "{name}: zero gradient for {pname}");
        }
    }
}

/// The control for the test above: on the inference path gradients silently stop at candle-nn's fused
/// kernels, and the coverage check notices.
#[test]
fn the_inference_path_loses_gradients() {
    let (_, cfg) = &tiny_configs()[0];
    let (vars, tensors) = trainable(random_model(cfg, 4)).unwrap();
    let model = Llama::new(cfg, &tensors).unwrap();
    let loss = model.lm_loss(&random_ids(2, 12, cfg.vocab_size, 9), ExecPath::Inference, None).unwrap();
    let grads = loss.backward().unwrap();
    let missing = vars.values().filter(|v| grads.get(v.as_tensor()).is_none()).count();
    assert!(missing > 0, "the inference path unexpectedly propagated every gradient");
}

/// The training path's CPU kernels compute the same loss and the same gradient for every parameter and
/// every mask family as the reference path's composed candle ops (what training runs on CUDA and in
/// bf16), with pruning masks in place: soft values, exact zeros (removed heads, dims, a removed hidden
/// dim) and a layer mask.
#[test]
fn training_kernels_match_the_reference() {
    for (name, cfg) in tiny_configs() {
        let (vars, tensors) = trainable(random_model(&cfg, 11)).unwrap();
        let model = Llama::new(&cfg, &tensors).unwrap();
        let ids = random_ids(2, 12, cfg.vocab_size, 3);
        let (z, masks) = mask_vars(&cfg);
        let run = |kernels| {
            let loss = model.lm_loss(&ids, kernels, Some(&masks)).unwrap();
            (loss.to_scalar::<f32>().unwrap(), loss.backward().unwrap())
        };
        let (training_loss, training) = run(ExecPath::Training);
        let (reference_loss, reference) = run(ExecPath::Reference);
        assert!((training_loss - reference_loss).abs() < 1e-5, "{name}: loss {training_loss} vs {reference_loss}");
        let named = vars
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .chain(z.iter().enumerate().map(|(i, v)| (format!("mask {i}"), v.clone())));
        for (pname, var) in named {
            let (a, b) = (training.get(var.as_tensor()), reference.get(var.as_tensor()));
            let (a, b) = (a.unwrap_or_else(|| panic!("{name}: training lost {pname}")), b.expect("reference gradient"));
            let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-3);
            let d = max_abs_diff(a, b);
            assert!(d < 1e-4 * scale.max(1.0), "{name}: gradient of {pname} differs by {d} (scale {scale})");
        }
    }
}

/// The hand-written backward of the plain training step gives the per-sample losses and every
/// parameter's gradient that candle's autograd gives through the composed ops.
#[test]
fn hand_written_backward_matches_autograd() {
    for (name, cfg) in tiny_configs() {
        let (vars, tensors) = trainable(random_model(&cfg, 12)).unwrap();
        let model = Llama::new(&cfg, &tensors).unwrap();
        let ids = random_ids(3, 10, cfg.vocab_size, 4);
        let out = model.lm_loss_grads(&ids, 5, None, None).unwrap();
        let (per_sample, hand) = (out.per_sample, out.weights);
        // The same objective through autograd: Σ per-sample mean NLL / n_samples, composed ops.
        let logits = model.forward(&ids.narrow(1, 0, 9).unwrap(), ExecPath::Reference).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap();
        let targets = ids.narrow(1, 1, 9).unwrap().contiguous().unwrap().unsqueeze(2).unwrap();
        let nll = logp.gather(&targets, 2).unwrap().squeeze(2).unwrap().neg().unwrap().mean(1).unwrap();
        let expected: Vec<f32> = nll.to_vec1().unwrap();
        for (a, b) in per_sample.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5, "{name}: per-sample loss {a} vs {b}");
        }
        let auto = (nll.sum_all().unwrap() / 5.0).unwrap().backward().unwrap();
        for (pname, var) in &vars {
            let a = hand.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no hand gradient for {pname}"));
            let b = auto.get(var.as_tensor()).expect("autograd gradient");
            let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            let d = max_abs_diff(a, b);
            assert!(d <= 1e-4 * scale.max(1e-3), "{name}: gradient of {pname} differs by {d} (scale {scale})");
        }
    }
}

/// With a teacher, the hand-written backward (the distillation kernel over teacher logit chunks) gives
/// the per-sample NLL and KL and every parameter's gradient that autograd gives through the composed
/// loss (`Teacher::composed`), at T = 1 and 2, with and without the LM term and the top-k teacher. The
/// 3 × 100 predicted positions span two of the teacher's 256-row logit chunks.
#[test]
fn hand_written_distillation_backward_matches_autograd() {
    use shear::model::{DistillLoss, Teacher};
    use shear::train::step::{micro_batch, Backward};
    for (name, cfg) in tiny_configs() {
        let teacher_model = Llama::new(&cfg, &random_model(&cfg, 99)).unwrap();
        let (vars, tensors) = trainable(random_model(&cfg, 12)).unwrap();
        let model = Llama::new(&cfg, &tensors).unwrap();
        let ids = random_ids(3, 101, cfg.vocab_size, 4);
        let losses = [
            DistillLoss::MINITRON,
            DistillLoss { weight: 0.5, temperature: 2.0, top_k: None },
            DistillLoss { weight: 0.8, temperature: 1.0, top_k: Some(7) },
        ];
        let mut teacher = Teacher::new(teacher_model, losses[0], &cfg).unwrap();
        for loss in losses {
            teacher = Teacher::new(teacher.into_model(), loss, &cfg).unwrap();
            let hand = micro_batch(&model, Backward::Hand, &ids, 5, Some(&teacher)).unwrap();
            let auto = micro_batch(&model, Backward::Autograd, &ids, 5, Some(&teacher)).unwrap();
            let (hk, ak) = (hand.kl.unwrap(), auto.kl.unwrap());
            for ((a, b), (c, d)) in hand.lm.iter().zip(&auto.lm).zip(hk.iter().zip(&ak)) {
                assert!((a - b).abs() < 1e-5 && (c - d).abs() < 1e-5, "{name} {loss:?}: {a}/{b}, KL {c}/{d}");
            }
            assert!(ak.iter().all(|&k| k > 1e-4), "{name}: a different teacher has KL > 0 ({ak:?})");
            for (pname, var) in &vars {
                let a =
                    hand.grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no hand gradient for {pname}"));
                let b = auto.grads.get(var.as_tensor()).expect("autograd gradient");
                let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                let d = max_abs_diff(a, b);
                assert!(
                    d <= 1e-4 * scale.max(1e-3),
                    "{name} {loss:?}: gradient of {pname} differs by {d} (scale {scale})"
                );
            }
        }
    }
}

/// A teacher equal to the student, with the KL alone: every position's KL is exactly 0 and so is every
/// weight's gradient, on both backward paths.
#[test]
fn a_teacher_equal_to_the_student_gives_zero_kl_and_zero_gradients() {
    use shear::model::{DistillLoss, Teacher};
    use shear::train::step::{micro_batch, Backward};
    for (name, cfg) in tiny_configs() {
        let (vars, tensors) = trainable(random_model(&cfg, 12)).unwrap();
        let model = Llama::new(&cfg, &tensors).unwrap();
        let frozen: shear::TensorMap = tensors.iter().map(|(k, v)| (k.clone(), v.detach().copy().unwrap())).collect();
        let teacher = Teacher::new(Llama::new(&cfg, &frozen).unwrap(), DistillLoss::MINITRON, &cfg).unwrap();
        let ids = random_ids(3, 10, cfg.vocab_size, 4);
        for backward in [Backward::Hand, Backward::Autograd] {
            let out = micro_batch(&model, backward, &ids, 3, Some(&teacher)).unwrap();
            let kl = out.kl.unwrap();
            // The inference and training paths round differently, so "exactly" is up to f32 noise there.
            let tol = if backward == Backward::Hand { 1e-6 } else { 1e-5 };
            assert!(kl.iter().all(|k| k.abs() <= tol), "{name} {backward}: KL {kl:?}");
            for (pname, var) in &vars {
                let g = out.grads.get(var.as_tensor()).unwrap();
                let m = g.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                assert!(m <= 1e-4, "{name} {backward}: gradient of {pname} is {m}");
            }
        }
    }
}

/// With pruning masks, the hand-written backward gives the per-sample losses, every parameter's gradient
/// and (through `mask_surrogate`) every mask's gradient that autograd gives through the composed ops, for
/// every combination of mask families the pruning step can use: all five, and two partial sets (so the
/// layer-only and hidden-only output scales are both exercised). Masks carry exact zeros.
#[test]
fn hand_written_masked_backward_matches_autograd() {
    use shear::family::{Family, MaskValues};
    for (name, cfg) in tiny_configs() {
        let (vars, tensors) = trainable(random_model(&cfg, 13)).unwrap();
        let model = Llama::new(&cfg, &tensors).unwrap();
        let ids = random_ids(3, 10, cfg.vocab_size, 5);
        let (z, all) = mask_vars(&cfg);
        let subset = |families: [Family; 2]| -> MaskValues {
            all.iter().filter(|(f, _)| families.contains(f)).map(|(f, t)| (f, t.clone())).collect()
        };
        let layer_and_intermediate = subset([Family::Layer, Family::Intermediate]);
        let hidden_and_head = subset([Family::Hidden, Family::Head]);
        for (set, masks) in
            [("all", &all), ("layer+intermediate", &layer_and_intermediate), ("hidden+head", &hidden_and_head)]
        {
            let out = model.lm_loss_grads(&ids, 4, Some(masks), None).unwrap();
            let mut hand = model.mask_surrogate(masks, &out.masks).unwrap().backward().unwrap();
            for var in vars.values() {
                hand.insert(var.as_tensor(), out.weights.get(var.as_tensor()).unwrap().clone());
            }
            let logits = model.forward_masked(&ids.narrow(1, 0, 9).unwrap(), ExecPath::Reference, Some(masks)).unwrap();
            let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap();
            let targets = ids.narrow(1, 1, 9).unwrap().contiguous().unwrap().unsqueeze(2).unwrap();
            let nll = logp.gather(&targets, 2).unwrap().squeeze(2).unwrap().neg().unwrap().mean(1).unwrap();
            for (a, b) in out.per_sample.iter().zip(nll.to_vec1::<f32>().unwrap()) {
                assert!((a - b).abs() < 1e-5, "{name}/{set}: per-sample loss {a} vs {b}");
            }
            let auto = (nll.sum_all().unwrap() / 4.0).unwrap().backward().unwrap();
            let named = vars
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .chain(z.iter().enumerate().map(|(i, v)| (format!("mask {i}"), v.clone())));
            for (pname, var) in named {
                let (a, b) = (hand.get(var.as_tensor()), auto.get(var.as_tensor()));
                let (a, b) = match (a, b) {
                    (Some(a), Some(b)) => (a, b),
                    (None, None) => continue, // a mask family not in this set
                    (a, b) => panic!(
                        "{name}/{set}: {pname} has a gradient in only one of hand {} / autograd {}",
                        a.is_some(),
                        b.is_some()
                    ),
                };
                let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                let diff = max_abs_diff(a, b);
                assert!(scale > 0.0, "{name}/{set}: zero gradient for {pname}");
                assert!(
                    diff <= 1e-4 * scale.max(1e-3),
                    "{name}/{set}: gradient of {pname} differs by {diff} (scale {scale})"
                );
            }
        }
    }
}

/// Every mask family of `cfg` as a var (layer, kv_group, head, intermediate, hidden, flattened) and the
/// `MaskValues` built from them: deterministic values in [0, 1.3) with every 5th entry exactly 0 (a removed
/// head, dim or layer), the rest not 1, so that a mask dropped or misplaced changes the numbers.
fn mask_vars(cfg: &shear::LlamaConfig) -> ([candle_core::Var; 5], shear::model::MaskValues) {
    let (l, h, kv, m, d) =
        (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_kv_heads(), cfg.intermediate_size, cfg.hidden_size);
    let mask = |n: usize, seed: usize| {
        let v: Vec<f32> = (0..n)
            .map(|i| if (i + seed).is_multiple_of(5) { 0.0 } else { 0.2 + ((i * 7 + seed) % 11) as f32 / 10.0 })
            .collect();
        candle_core::Var::from_vec(v, n, &Device::Cpu).unwrap()
    };
    let z = [mask(l, 1), mask(l * kv, 2), mask(l * h, 3), mask(l * m, 4), mask(d, 5)];
    use shear::family::Family;
    let masks =
        Family::ALL.into_iter().zip(&z).map(|(f, v)| (f, v.as_tensor().reshape(f.shape(cfg)).unwrap())).collect();
    (z, masks)
}
