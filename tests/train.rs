//! Continued pre-training through the CLI on a tiny model and corpus: SIGKILL or Ctrl-C + resume ≡
//! uninterrupted, proportions that move under `doremi` and stay under `constant`, and the from-scratch
//! baseline.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use shear::data::corpus::DOMAINS;
use shear::run::jsonl::read_jsonl;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shear"));
    c.env("RUST_LOG", "warn");
    c
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny model and a corpus of seven synthetic domains with distinct statistics.
fn setup(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let model = tiny_hf_model(root);
    let corpus = tiny_corpus(root, &model);
    let reference = root.join("ref.json");
    let r: serde_json::Map<String, serde_json::Value> = DOMAINS.iter().map(|d| (d.to_string(), 4.0.into())).collect();
    std::fs::write(&reference, serde_json::Value::Object(r).to_string()).unwrap();
    (model, corpus, reference)
}

fn train_args<'a>(
    model: &'a Path,
    corpus: &'a Path,
    reference: &'a Path,
    out: &'a Path,
    update: &'a str,
) -> Vec<&'a str> {
    let mut v = vec!["train", "--model", s(model), "--data", s(corpus), "--out", s(out), "--steps", "8"];
    v.extend(["--batch-size", "3", "--grad-accum", "2", "--eval-interval", "2", "--eval-sequences", "2"]);
    v.extend(["--checkpoint-interval", "2", "--lr", "3e-3", "--update", update]);
    if update != "constant" {
        v.extend(["--reference-losses", s(reference)]);
    }
    v
}

fn without_timing(path: &Path) -> Vec<serde_json::Value> {
    read_jsonl(path)
        .unwrap()
        .into_iter()
        .map(|mut v| {
            let o = v.as_object_mut().unwrap();
            o.remove("seconds");
            o.remove("tokens_per_s");
            v
        })
        .collect()
}

fn checkpoint_tensors(run: &Path) -> Vec<(String, Vec<f32>)> {
    let (t, _) = shear::run::checkpoint::load(run, &candle_core::Device::Cpu).unwrap();
    t.into_iter().map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
}

#[test]
fn killed_or_interrupted_then_resumed_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, corpus, reference) = setup(tmp.path());

    let straight = tmp.path().join("straight");
    let out = bin().args(train_args(&model, &corpus, &reference, &straight, "doremi")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The same run, killed with SIGKILL after step 5 (its last checkpoint is step 4's), then resumed.
    let killed = tmp.path().join("killed");
    let mut child = bin()
        .args(train_args(&model, &corpus, &reference, &killed, "doremi"))
        .args(["--step-delay-ms", "400"])
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        // Complete lines only: the fifth may be on its way out.
        let lines = std::fs::read_to_string(killed.join("metrics.jsonl")).map(|t| t.matches('\n').count()).unwrap_or(0);
        if lines >= 5 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "the run did not reach step 5");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(read_jsonl(&killed.join("metrics.jsonl")).unwrap().len() < 8, "killed before the end");
    let out = bin().args(["train", "--resume", "--out", s(&killed)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    assert_eq!(checkpoint_tensors(&straight), checkpoint_tensors(&killed), "weights or optimizer moments differ");
    assert_eq!(without_timing(&straight.join("metrics.jsonl")), without_timing(&killed.join("metrics.jsonl")));
    assert_eq!(read_jsonl(&straight.join("evals.jsonl")).unwrap(), read_jsonl(&killed.join("evals.jsonl")).unwrap());

    // Ctrl-C after step 3 (between checkpoints): the run finishes its step, checkpoints it, exits with 130
    // and says how to go on; resumed, it again ends where the uninterrupted run did.
    let interrupted = tmp.path().join("interrupted");
    let child = bin()
        .args(train_args(&model, &corpus, &reference, &interrupted, "doremi"))
        .args(["--step-delay-ms", "400"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while read_jsonl(&interrupted.join("metrics.jsonl")).map(|m| m.len()).unwrap_or(0) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(120), "the run did not reach step 3");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The shell's built-in `kill`: a minimal machine may have no kill executable.
    let status = Command::new("sh").args(["-c", &format!("kill -INT {}", child.id())]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let logged = read_jsonl(&interrupted.join("metrics.jsonl")).unwrap().len();
    let (_, state) = shear::run::checkpoint::load(&interrupted, &candle_core::Device::Cpu).unwrap();
    assert!(logged < 8, "interrupted before the end");
    assert_eq!(state.step, logged, "the checkpoint holds every logged step");
    assert!(stderr.contains("shear train --resume --out"), "{stderr}");
    let out = bin().args(["train", "--resume", "--out", s(&interrupted)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(checkpoint_tensors(&straight), checkpoint_tensors(&interrupted));
    assert_eq!(without_timing(&straight.join("metrics.jsonl")), without_timing(&interrupted.join("metrics.jsonl")));

    // doremi moved the proportions; every logged loss is finite even for domains absent from a batch.
    let evals = read_jsonl(&straight.join("evals.jsonl")).unwrap();
    assert_eq!(evals.len(), 4);
    assert_ne!(evals[0]["proportions"], evals[0]["proportions_before"]);
    for m in read_jsonl(&straight.join("metrics.jsonl")).unwrap() {
        assert!(m["loss"].as_f64().unwrap().is_finite());
        for (_, v) in m["domain_loss"].as_object().unwrap() {
            assert!(v.as_f64().unwrap().is_finite());
        }
        // 6 samples over 7 domains: at least one domain is missing from every batch, and is simply absent.
        assert!(m["domain_loss"].as_object().unwrap().len() < 7);
    }

    // The trained model exports as an HF directory that loads.
    let exported = tmp.path().join("exported");
    let out = bin().args(["export", "--run", s(&straight), "--out", s(&exported)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    shear::io::load_model(&exported, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
}

/// `--save-only-model`: the same training, a checkpoint without the AdamW moments that exports to the
/// same model, and `--resume` refused with the reason.
#[test]
fn model_only_checkpoint_exports_but_does_not_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, corpus, reference) = setup(tmp.path());
    let (full, lean) = (tmp.path().join("full"), tmp.path().join("lean"));
    let out = bin().args(train_args(&model, &corpus, &reference, &full, "doremi")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut args = train_args(&model, &corpus, &reference, &lean, "doremi");
    args.push("--save-only-model");
    let out = bin().args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let weights: Vec<_> = checkpoint_tensors(&full).into_iter().filter(|(k, _)| k.starts_with("weights.")).collect();
    assert_eq!(checkpoint_tensors(&lean), weights, "the weights and nothing else");
    assert_eq!(without_timing(&full.join("metrics.jsonl")), without_timing(&lean.join("metrics.jsonl")));
    let exported = |run: &Path, name: &str| {
        let dir = tmp.path().join(name);
        let out = bin().args(["export", "--run", s(run), "--out", s(&dir)]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(dir.join("model.safetensors")).unwrap()
    };
    assert_eq!(exported(&full, "full-model"), exported(&lean, "lean-model"));

    // Refused before any loading: with its model gone, the reason given is still the missing optimizer state.
    std::fs::rename(&model, tmp.path().join("model-moved")).unwrap();
    let out = bin().args(["train", "--resume", "--out", s(&lean), "--steps", "10"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--save-only-model") && stderr.contains("cannot be resumed"), "{stderr}");
    // A resumed run keeps its settings and mixture: a flag that would change them is refused, not ignored.
    let out =
        bin().args(["train", "--resume", "--out", s(&lean), "--lr", "1", "--update", "constant"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("only --steps may change"), "{stderr}");
    assert!(stderr.contains("--lr --update"), "{stderr}");
}

#[test]
fn constant_proportions_stay_and_scratch_baseline_has_the_same_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, corpus, reference) = setup(tmp.path());
    let run = tmp.path().join("constant");
    let out = bin().args(train_args(&model, &corpus, &reference, &run, "constant")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for e in read_jsonl(&run.join("evals.jsonl")).unwrap() {
        assert_eq!(e["proportions"], e["proportions_before"]);
    }
    let scratch = tmp.path().join("scratch");
    let out = bin()
        .args(["init", "--config", s(&model.join("config.json")), "--like", s(&model), "--out", s(&scratch)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = shear::io::hf::load_config(&model).unwrap();
    let b = shear::io::hf::load_config(&scratch).unwrap();
    assert_eq!(a.tensor_shapes(), b.tensor_shapes());
    assert!(scratch.join("tokenizer.json").exists());
    // bf16 compute (f32 master weights): the loss stays finite and close to the f32 run's.
    let bf16 = tmp.path().join("bf16");
    let mut args = train_args(&model, &corpus, &reference, &bf16, "constant");
    args.push("--bf16");
    let out = bin().args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (m16, m32) =
        (read_jsonl(&bf16.join("metrics.jsonl")).unwrap(), read_jsonl(&run.join("metrics.jsonl")).unwrap());
    for (a, b) in m16.iter().zip(&m32) {
        let (a, b) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!(a.is_finite() && (a - b).abs() < 0.1, "bf16 {a} vs f32 {b}");
    }
    // Without reference losses a dynamic rule refuses to start.
    let out = bin()
        .args(["train", "--model", s(&model), "--data", s(&corpus), "--out", s(&tmp.path().join("x")), "--steps", "2"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs reference losses"));
    assert!(!tmp.path().join("x").exists());
}

/// Distillation from a teacher (another model with the same tokenizer): every step logs the KL beside the
/// LM loss, the KL falls, the run resumed after SIGKILL ends bit for bit where the uninterrupted one does,
/// and `--resume` refuses a distillation flag rather than ignoring it, and another teacher in its place.
#[test]
fn distillation_logs_its_kl_and_resumes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, corpus, reference) = setup(tmp.path());
    let teacher = tmp.path().join("teacher");
    let config = model.join("config.json");
    let init = ["init", "--config", s(&config), "--like", s(&model), "--out", s(&teacher), "--seed", "3"];
    let out = bin().args(init).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let distill = ["--teacher", s(&teacher), "--distill-temperature", "2"];

    let straight = tmp.path().join("straight");
    let out = bin().args(train_args(&model, &corpus, &reference, &straight, "doremi")).args(distill).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics = read_jsonl(&straight.join("metrics.jsonl")).unwrap();
    let kl: Vec<f64> =
        metrics.iter().map(|m| m["distill_loss"].as_f64().expect("distill_loss on every line")).collect();
    assert!(kl.iter().all(|k| k.is_finite() && *k > 0.0), "{kl:?}");
    assert!(kl[7] < kl[0], "the student moves towards its teacher: {kl:?}");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("run.json")).unwrap()).unwrap();
    assert_eq!(spec["teacher"]["temperature"], 2.0);

    let killed = tmp.path().join("killed");
    let mut child = bin()
        .args(train_args(&model, &corpus, &reference, &killed, "doremi"))
        .args(distill)
        .args(["--step-delay-ms", "400"])
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::fs::read_to_string(killed.join("metrics.jsonl")).map(|t| t.matches('\n').count()).unwrap_or(0) < 5 {
        assert!(t0.elapsed() < Duration::from_secs(120), "the run did not reach step 5");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let resume = ["train", "--resume", "--out", s(&killed), "--teacher", s(&model), "--distill-top-k", "5"];
    let refused = bin().args(resume).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("(given: --teacher --distill-top-k)"), "{stderr}");
    // Another teacher in the same directory is refused on resume, not distilled from.
    let saved = tmp.path().join("teacher-saved");
    std::fs::rename(&teacher, &saved).unwrap();
    let init = ["init", "--config", s(&config), "--like", s(&model), "--out", s(&teacher), "--seed", "4"];
    assert!(bin().args(init).output().unwrap().status.success());
    let refused = bin().args(["train", "--resume", "--out", s(&killed)]).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("is not the model this run started with"), "{stderr}");
    std::fs::remove_dir_all(&teacher).unwrap();
    std::fs::rename(&saved, &teacher).unwrap();

    let out = bin().args(["train", "--resume", "--out", s(&killed)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(checkpoint_tensors(&straight), checkpoint_tensors(&killed), "weights or optimizer moments differ");
    assert_eq!(without_timing(&straight.join("metrics.jsonl")), without_timing(&killed.join("metrics.jsonl")));
    assert_eq!(read_jsonl(&straight.join("evals.jsonl")).unwrap(), read_jsonl(&killed.join("evals.jsonl")).unwrap());
}
