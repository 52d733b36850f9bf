//! `shear experiment` on a tiny model and corpus: every arm's stages run, a killed arm resumes to what an
//! uninterrupted twin computes, a finished arm is never rerun, a run made with other settings is refused,
//! and `summary.json` holds what the logs and independent `shear eval` runs say.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use shear::experiment::{summary::Summary, Plan};
use shear::run::jsonl::read_jsonl;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shear"));
    c.env("RUST_LOG", "info");
    c
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

/// The tiny model, its corpus, a target, and a two-step pruning run to materialize.
fn setup(root: &Path) -> (PathBuf, PathBuf) {
    let model = tiny_hf_model(root);
    let corpus = tiny_corpus(root, &model);
    let target = root.join("target.toml");
    std::fs::write(&target, "layers = 1\nhidden = 16\nheads = 2\nkv_heads = 1\nintermediate = 24\n").unwrap();
    let prune = root.join("prune");
    run_ok(bin().args(["prune", "--model", s(&model), "--target", s(&target), "--data", s(&corpus)]).args([
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--eval-interval",
        "2",
        "--eval-tokens",
        "96",
        "--seq-len",
        "24",
        "--update",
        "constant",
        "--out",
        s(&prune),
    ]));
    let plan = root.join("plan.toml");
    let text = format!(
        r#"source = "{model}"
target = "{target}"
corpus = "{corpus}"
out = "{out}"
work = "{work}"

[train]
steps = 6
batch_size = 2
lr = 3e-3
eval_interval = 2
eval_sequences = 2
checkpoint_interval = 2
seed = 3

[eval]
heldout_sequences = 3
tasks = []

[compute_to_match]
pruned = "learned"
scratch = "scratch"

[[arm]]
name = "learned"
start = {{ from = "materialize", run = "{prune}" }}
update = "doremi"

[[arm]]
name = "twin"
start = {{ from = "materialize", run = "{prune}" }}
update = "doremi"

[[arm]]
name = "magnitude"
start = {{ from = "oneshot", method = "magnitude" }}
update = "constant"

[[arm]]
name = "scratch"
start = {{ from = "init", seed = 1 }}
update = "doremi"
"#,
        model = s(&model),
        target = s(&target),
        corpus = s(&corpus),
        out = s(&root.join("out")),
        work = s(&root.join("work")),
        prune = s(&prune),
    );
    std::fs::write(&plan, text).unwrap();
    (plan, model)
}

fn without_timing(path: &Path) -> Vec<serde_json::Value> {
    let mut lines = read_jsonl(path).unwrap();
    for v in &mut lines {
        let o = v.as_object_mut().unwrap();
        o.remove("seconds");
        o.remove("tokens_per_s");
    }
    lines
}

fn eval_json(model: &Path, corpus: &Path, sequences: usize) -> serde_json::Value {
    let out = bin()
        .args(["eval", "--model", s(model), "--data", s(corpus), "--max-sequences", &sequences.to_string()])
        .args(["--batch-size", "2", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn domain_means(v: &serde_json::Value) -> Vec<(String, f64)> {
    v["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["domain"].as_str().unwrap().into(), r["mean_nll"].as_f64().unwrap()))
        .collect()
}

#[test]
fn arms_run_resume_and_summarize_from_their_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let (plan_path, model) = setup(tmp.path());
    let plan = Plan::load(&plan_path).unwrap();
    let driver = |arms: &str| {
        let mut c = bin();
        c.args(["experiment", "--plan", s(&plan_path), "--arms", arms]);
        c
    };
    // A dry run says what it would run and touches nothing.
    let dry = run_ok(bin().args(["experiment", "--plan", s(&plan_path), "--dry-run"]));
    for cmd in ["shear eval --model", "shear materialize", "shear oneshot --method magnitude", "shear init"] {
        assert!(dry.contains(cmd), "{cmd}: {dry}");
    }
    assert!(!tmp.path().join("out").exists() && !tmp.path().join("work").exists());

    run_ok(&mut driver("learned,magnitude,scratch"));

    // The twin, killed (with its child `shear train`) after its first checkpoint, then resumed.
    let mut killed = driver("twin");
    let child = killed.args(["--step-delay-ms", "300"]).process_group(0).spawn().unwrap();
    let state = tmp.path().join("work/twin/train/checkpoint/state.json");
    let t0 = Instant::now();
    while !state.exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "the twin never checkpointed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL to the driver's process group: the driver and its `shear train` die mid-run.
    let kill = Command::new("kill").args(["-9", "--", &format!("-{}", child.id())]).status().unwrap();
    assert!(kill.success());
    let _ = child.wait_with_output();
    assert!(!tmp.path().join("out/twin/arm.json").exists());
    let log = run_ok(&mut driver("twin"));
    assert!(log.contains("train --resume"), "{log}");

    // Resumed ≡ uninterrupted: the same logs (but timing) and the same exported weights.
    let (a, b) = (tmp.path().join("out/learned"), tmp.path().join("out/twin"));
    for f in ["metrics.jsonl", "evals.jsonl"] {
        assert_eq!(without_timing(&a.join(f)), without_timing(&b.join(f)), "{f}");
    }
    let weights = |arm: &str| std::fs::read(tmp.path().join(format!("work/{arm}/final/model.safetensors"))).unwrap();
    assert!(weights("learned") == weights("twin"), "exported weights differ");

    // A finished experiment reruns nothing.
    let again = run_ok(bin().args(["experiment", "--plan", s(&plan_path)]));
    for arm in ["learned", "twin", "magnitude", "scratch"] {
        assert!(again.contains(&format!("{arm}: done")), "{again}");
    }
    assert!(!again.contains("shear "), "a stage ran again: {again}");

    // The summary against the logs and against `shear eval` run here.
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("out/summary.json")).unwrap()).unwrap();
    let corpus = &plan.corpus;
    assert_eq!(summary.tokens_per_arm, 6 * 2 * 24);
    assert!(summary.pending.is_empty());
    let reference = domain_means(&eval_json(&model, corpus, 2));
    assert_eq!(reference.len(), 7);
    for (d, x) in &reference {
        assert_eq!(summary.reference_losses[d], *x, "reference {d}");
    }
    for (name, arm) in &summary.arms {
        let out = tmp.path().join("out").join(name);
        let evals = read_jsonl(&out.join("evals.jsonl")).unwrap();
        assert_eq!(evals.len(), 3, "{name}: evals at steps 2, 4, 6");
        let last = evals.last().unwrap()["eval_loss"].as_object().unwrap().clone();
        let mean = last.values().map(|v| v.as_f64().unwrap()).sum::<f64>() / last.len() as f64;
        assert!((arm.mean_eval_loss - mean).abs() < 1e-12, "{name}");
        assert_eq!(arm.tokens, summary.tokens_per_arm, "{name}");
        // Training's eval at its last step is `shear eval` of the exported model on the same sequences.
        let final_model = tmp.path().join("work").join(name).join("final");
        for (d, x) in domain_means(&eval_json(&final_model, corpus, 2)) {
            assert!((last[&d].as_f64().unwrap() - x).abs() < 1e-5, "{name} {d}: {} vs {x}", last[&d]);
            assert!((arm.excess_loss[&d] - (last[&d].as_f64().unwrap() - summary.reference_losses[&d])).abs() < 1e-12);
        }
        for (d, x) in domain_means(&eval_json(&final_model, corpus, 3)) {
            assert_eq!(arm.heldout_loss[&d], x, "{name} held-out {d}");
        }
        let start = tmp.path().join("work").join(name).join("start");
        let step0 = domain_means(&eval_json(&start, corpus, 2));
        let step0_mean = step0.iter().map(|p| p.1).sum::<f64>() / step0.len() as f64;
        assert_eq!(arm.curve.len(), 4, "{name}: step 0 and three evals");
        assert_eq!((arm.curve[0].tokens, arm.curve[0].mean_eval_loss), (0, step0_mean), "{name}");
        assert_eq!(arm.curve[3].tokens, summary.tokens_per_arm);
        // The notebooks' per-domain curves: step 0 from the start model's eval, then the training evals.
        let step0_map: std::collections::BTreeMap<String, f64> = step0.into_iter().collect();
        let curves =
            shear::report::views::domain_curves(&shear::report::runs::train_evals(&out).unwrap(), Some(&step0_map))
                .unwrap();
        assert_eq!(curves.len(), 7, "{name}");
        for (d, pts) in &curves {
            let steps: Vec<f64> = pts.iter().map(|p| p.0).collect();
            assert_eq!(steps, [0.0, 2.0, 4.0, 6.0], "{name} {d}");
            assert_eq!(pts[0].1, step0_map[d]);
            assert_eq!(pts[3].1, last[d].as_f64().unwrap(), "{name} {d}");
        }
    }
    assert_eq!(summary.arms["learned"].record.prior_tokens, 2 * 2 * 24, "pruning tokens: steps × batch × seq");
    assert_eq!(summary.arms["scratch"].record.prior_tokens, 0);
    let m = summary.compute_to_match.as_ref().unwrap();
    assert_eq!((m.pruned.as_str(), m.scratch.as_str(), m.pruned_tokens), ("learned", "scratch", 2 * 2 * 24));
    assert_eq!(m.target_loss, summary.arms["learned"].curve[1].mean_eval_loss);

    // `--summary-only` rewrites the same summary and prints it as a table, a row per arm.
    let before = std::fs::read_to_string(tmp.path().join("out/summary.json")).unwrap();
    let out = bin().args(["experiment", "--plan", s(&plan_path), "--summary-only"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(tmp.path().join("out/summary.json")).unwrap(), before);
    let table = String::from_utf8(out.stdout).unwrap();
    for arm in ["learned", "twin", "magnitude", "scratch"] {
        assert!(table.lines().any(|l| l.starts_with(&format!("| {arm} | "))), "{table}");
    }

    // A finished run is adopted, not retrained, when an arm's logs are gone (a constant-rule run keeps no
    // reference losses in its run.json; that is the plan's setting too).
    let metrics = std::fs::read(tmp.path().join("out/magnitude/metrics.jsonl")).unwrap();
    for f in ["arm.json", "heldout.json", "metrics.jsonl"] {
        std::fs::remove_file(tmp.path().join("out/magnitude").join(f)).unwrap();
    }
    let log = run_ok(&mut driver("magnitude"));
    assert!(log.contains("magnitude: training complete") && !log.contains("shear train"), "{log}");
    assert_eq!(std::fs::read(tmp.path().join("out/magnitude/metrics.jsonl")).unwrap(), metrics);

    // A run directory made with other settings is refused by name, not adopted.
    std::fs::remove_file(tmp.path().join("out/learned/arm.json")).unwrap();
    let changed = std::fs::read_to_string(&plan_path).unwrap().replace("lr = 3e-3", "lr = 1e-3");
    std::fs::write(&plan_path, changed).unwrap();
    let out = driver("learned").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("differs from the plan in `lr`"), "{err}");
}

#[test]
fn plans_that_define_no_experiment_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let base = r#"source = "m"
target = "t.toml"
corpus = "c"
out = "o"
work = "w"
[train]
steps = 4
batch_size = 2
eval_interval = 2
eval_sequences = 2
checkpoint_interval = 2
seed = 0
"#;
    let arm = "[[arm]]\nname = \"a\"\nstart = { from = \"init\", seed = 0 }\nupdate = \"doremi\"\n";
    let cases = [
        (format!("{base}{arm}"), None),
        (base.to_string(), Some("missing field `arm`")),
        (format!("{base}bogus = 1\n{arm}"), Some("unknown field `bogus`")),
        (format!("{base}{arm}{arm}"), Some("two arms are named \"a\"")),
        (base.replace("steps = 4", "steps = 5") + arm, Some("must be a multiple of train.eval_interval")),
        (base.replace("seed = 0", "seed = 0\nwarmup = 3") + arm, Some("unknown field `warmup`")),
        (format!("{base}{}", arm.replace("\"init\", seed = 0", "\"oneshot\", method = \"random\"")), Some("random")),
        (format!("{base}{}", arm.replace("\"init\"", "\"scratch\"")), Some("unknown variant `scratch`")),
        (format!("{base}{}", arm.replace("doremi", "greedy")), Some("unknown variant `greedy`")),
        (format!("{base}{}", arm.replace("\"a\"", "\"../a\"")), Some("it names a directory")),
        (format!("{base}[compute_to_match]\npruned = \"a\"\nscratch = \"b\"\n{arm}"), Some("names arm \"b\"")),
        (base.replace("batch_size = 2", "batch_size = 0") + arm, Some("train.batch_size must be at least 1")),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = tmp.path().join(format!("plan{i}.toml"));
        std::fs::write(&p, text).unwrap();
        match (Plan::load(&p), want) {
            (Ok(_), None) => {}
            (Err(e), Some(w)) => assert!(e.to_string().contains(w), "case {i}: {e}"),
            (r, w) => panic!("case {i}: {:?} but expected {w:?}", r.map(|_| ())),
        }
    }
}
