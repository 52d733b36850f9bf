//! One-shot pruning: every method's importance scores against an independent PyTorch computation
//! (`scripts/reference/make_oneshot_fixture.py`, frozen in `tests/fixtures/oneshot/`), the structures each
//! keeps, the output's exact shape and function (the 0/1-masked source ≡ the pruned model), its snapshot
//! read by `shear inspect`, and the errors refused before any work.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use common::*;
use shear::family::Family;
use shear::prune::oneshot::{self, Calibration, Method};
use shear::prune::TargetShape;
use shear::{ExecPath, Llama};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shear"));
    c.env("RUST_LOG", "warn");
    c
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oneshot")
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    match v.as_array() {
        Some(a) => a.iter().flat_map(floats).collect(),
        None => vec![v.as_f64().unwrap()],
    }
}

fn indices(v: &serde_json::Value) -> Vec<Vec<usize>> {
    let a = v.as_array().unwrap();
    if a.first().is_some_and(|x| x.is_array()) {
        a.iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()).collect()
    } else {
        vec![a.iter().map(|x| x.as_u64().unwrap() as usize).collect()]
    }
}

/// Per mask row, the indices a 0/1 mask keeps.
fn kept_rows(z: &Tensor, row_len: usize) -> Vec<Vec<usize>> {
    let v: Vec<f32> = z.flatten_all().unwrap().to_vec1().unwrap();
    v.chunks(row_len).map(|r| r.iter().enumerate().filter(|(_, x)| **x != 0.0).map(|(i, _)| i).collect()).collect()
}

/// The tied fixture (`tests/fixtures/oneshot/`) and the untied one (`untied/`), whose LM head is its own
/// matrix in the magnitude and Wanda-sp hidden scores.
#[test]
fn importance_scores_and_kept_structures_match_the_pytorch_reference() {
    for dir in [fixture_dir(), fixture_dir().join("untied")] {
        scores_match_the_reference(&dir);
    }
}

fn scores_match_the_reference(dir: &Path) {
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("scores.json")).unwrap()).unwrap();
    let cfg = shear::io::hf::load_config(&dir.join("model")).unwrap();
    let weights = shear::io::hf::load_weights(&dir.join("model"), Some(DType::F32), &Device::Cpu).unwrap();
    let model = Llama::new(&cfg, &weights).unwrap();
    let ids: Vec<u32> = floats(&f["calibration"]).iter().map(|&x| x as u32).collect();
    let batch = Tensor::from_vec(ids, (3, 16), &Device::Cpu).unwrap();
    let cal = Calibration::collect(&model, &[batch], |_, _| {}).unwrap();
    assert_eq!(cal.tokens, 48);
    let target: TargetShape = serde_json::from_value(f["target"].clone()).unwrap();
    let (l, kv, g) = (cfg.num_hidden_layers, cfg.num_kv_heads(), cfg.group_size());
    for (method, key) in [
        (Method::Magnitude, "magnitude"),
        (Method::WandaSp, "wanda_sp"),
        (Method::Activation, "activation"),
        (Method::BlockInfluence, "block_influence"),
    ] {
        let want = &f[key];
        let imp = oneshot::importance(method, &cfg, &weights, Some(&cal)).unwrap();
        for family in Family::ALL {
            let Some(reference) = want.get(family.name()) else {
                assert!(imp.get(family).is_none(), "{key}: scores `{}` it should not", family.name());
                continue;
            };
            let (got, reference) = (imp.get(family).unwrap(), floats(reference));
            assert_eq!(got.len(), reference.len(), "{key} {}", family.name());
            let worst = got.iter().zip(&reference).map(|(a, b)| (a - b).abs() / b.abs().max(1e-3)).fold(0f64, f64::max);
            assert!(worst < 2e-5, "{} {key} {}: relative difference {worst:.2e}", dir.display(), family.name());
        }
        // What a one-shot pruning to the fixture's target keeps.
        let shape = method.shape(&cfg, &target);
        let masks = oneshot::keep_masks(&cfg, &shape, &imp).unwrap();
        let kept = &want["kept"];
        assert_eq!(kept_rows(masks.get(Family::Layer).unwrap(), l), indices(&kept["layer"]), "{key}: layers");
        if method == Method::BlockInfluence {
            assert_eq!(masks.iter().count(), 1, "block-influence keeps the width");
            continue;
        }
        let groups = kept_rows(masks.get(Family::KvGroup).unwrap(), kv);
        assert_eq!(groups, indices(&kept["kv_group"]), "{key}: KV groups");
        // Heads: those of kept groups that the head mask (if any) keeps, per layer.
        let head_rows = masks.get(Family::Head).map(|z| kept_rows(z, g));
        let heads: Vec<Vec<usize>> = (0..l)
            .map(|li| {
                groups[li]
                    .iter()
                    .flat_map(|&gg| {
                        let within = head_rows.as_ref().map_or((0..g).collect(), |r| r[li * kv + gg].clone());
                        within.into_iter().map(move |h| gg * g + h)
                    })
                    .collect()
            })
            .collect();
        assert_eq!(heads, indices(&kept["head"]), "{key}: heads");
        let m = cfg.intermediate_size;
        assert_eq!(kept_rows(masks.get(Family::Intermediate).unwrap(), m), indices(&kept["intermediate"]), "{key}");
        let d = cfg.hidden_size;
        assert_eq!(kept_rows(masks.get(Family::Hidden).unwrap(), d), indices(&kept["hidden"]), "{key}: hidden");
    }
}

/// The tiny byte-level model, a text to calibrate on and a target, in `root`.
fn setup(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let model = tiny_hf_model(root);
    let text = root.join("text.txt");
    let words = ["ab ", "ba ", "xyz ", "0 1 2 ", "abab ", "q "];
    let body: String = (0..400).map(|i| words[(i * 7 + i / 3) % words.len()]).collect();
    std::fs::write(&text, body).unwrap();
    let target = root.join("t.toml");
    std::fs::write(&target, "layers = 1\nhidden = 16\nheads = 2\nkv_heads = 1\nintermediate = 24\n").unwrap();
    (model, text, target)
}

#[test]
fn each_method_writes_the_target_shape_computing_what_the_masked_source_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text, target_file) = setup(tmp.path());
    let source_cfg = shear::io::hf::load_config(&model).unwrap();
    let weights = shear::io::hf::load_weights(&model, Some(DType::F32), &Device::Cpu).unwrap();
    let source = Llama::new(&source_cfg, &weights).unwrap();
    let target = TargetShape::load(&target_file).unwrap();
    let ids = random_ids(2, 12, source_cfg.vocab_size, 5);
    for method in Method::ALL {
        let out = tmp.path().join(method.name());
        let mut args = vec!["oneshot", "--method", method.name(), "--model", s(&model), "--target", s(&target_file)];
        args.extend(["--out", s(&out), "--seq-len", "32", "--calibration-tokens", "256"]);
        if method.needs_calibration() {
            args.extend(["--data", s(&text)]);
        }
        let run = bin().args(&args).output().unwrap();
        assert!(run.status.success(), "{}: {}", method.name(), String::from_utf8_lossy(&run.stderr));

        // Exactly the shape materialization gives (block-influence: the target's depth, the source's width).
        let cfg = shear::io::hf::load_config(&out).unwrap();
        assert_eq!(TargetShape::of(&cfg), method.shape(&source_cfg, &target), "{}", method.name());
        // The pruned model computes what the source computes under the snapshot's 0/1 masks.
        let (_, masks) = shear::report::run_masks(&out.join("oneshot"), None).unwrap();
        let z = masks.deterministic(shear::prune::Deterministic::Target).unwrap();
        let sharp = |t: &Tensor| t.ne(0f64).unwrap().to_dtype(DType::F32).unwrap();
        let mut binary = shear::family::MaskValues::default();
        for (f, v) in z.iter() {
            binary.insert(f, sharp(v));
        }
        let masked = source.forward_masked(&ids, ExecPath::Inference, Some(&binary)).unwrap();
        let pruned = shear::io::load_model(&out, DType::F32, &Device::Cpu).unwrap().model;
        let small = pruned.forward(&ids, ExecPath::Inference).unwrap();
        let d = max_abs_diff(&masked, &small);
        assert!(d < 1e-4, "{}: masked source and pruned model differ by {d}", method.name());
        assert!(out.join("tokenizer.json").exists());

        // `shear inspect` reads the snapshot like a pruning run's.
        let inspect = bin().args(["inspect", "--run", s(&out.join("oneshot"))]).output().unwrap();
        let stdout = String::from_utf8_lossy(&inspect.stdout);
        assert!(inspect.status.success(), "{}: {}", method.name(), String::from_utf8_lossy(&inspect.stderr));
        assert!(stdout.contains("layer_kept"), "{stdout}");
    }

    // What two prunings share: each one's own counts on the diagonal, at most the smaller off it.
    let snapshot = |m: Method| shear::report::run_masks(&tmp.path().join(m.name()).join("oneshot"), None).unwrap().1;
    let runs = vec![
        ("magnitude".to_string(), snapshot(Method::Magnitude)),
        ("bi".to_string(), snapshot(Method::BlockInfluence)),
    ];
    let t = shear::report::overlap_table(&runs).unwrap();
    let col = |c: &str| -> Vec<u32> { t.column(c).unwrap().u32().unwrap().into_no_null_iter().collect() };
    // Rows: (magnitude, magnitude), (magnitude, bi), (bi, bi). The block-influence model keeps the width.
    assert_eq!(col("layers_shared"), [1, col("layers_shared")[1], 1]);
    assert_eq!((col("heads_shared")[0], col("heads_shared")[2]), (2, 4));
    assert_eq!((col("intermediate_shared")[0], col("intermediate_shared")[2]), (24, 48));
    assert_eq!(col("hidden_shared"), [16, 16, 32], "every hidden channel magnitude keeps, bi keeps");
    assert!(col("heads_shared")[1] <= 2 && col("intermediate_shared")[1] <= 24);
}

#[test]
fn impossible_requests_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text, target) = setup(tmp.path());
    let big = tmp.path().join("big.toml");
    std::fs::write(&big, "layers = 3\nhidden = 16\nheads = 2\nkv_heads = 1\nintermediate = 24\n").unwrap();
    let out = tmp.path().join("out");
    let missing = tmp.path().join("none.txt");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--method", "wanda-sp", "--target", s(&big), "--data", s(&text)],
            "layers = 3 is larger than the source's 2",
        ),
        (vec!["--method", "activation", "--target", s(&target)], "needs calibration data: --data TEXT|CORPUS"),
        (vec!["--method", "block-influence", "--target", s(&target)], "needs calibration data"),
        (vec!["--method", "magnitude", "--target", s(&target), "--data", s(&text)], "--data would be ignored"),
        (vec!["--method", "taylor", "--target", s(&target)], "unknown one-shot method `taylor`"),
        (vec!["--method", "activation", "--target", s(&target), "--data", s(&missing)], "none.txt"),
    ];
    for (extra, needle) in cases {
        let run = bin().args(["oneshot", "--model", s(&model), "--out", s(&out)]).args(&extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && stderr.contains(needle), "{extra:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(!out.exists(), "{extra:?} left {}", out.display());
    }
}
