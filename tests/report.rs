//! The report views on the real pruning run shipped in data/runs/ (needs models/smollm2-135m for its config):
//! what materialization keeps must be exactly the target, per layer, and every chart must draw.

use std::path::Path;

use shear::report::{self, runs, views};

const RUN: &str = "data/runs/prune-smollm2-default";

#[test]
fn shipped_run_keeps_exactly_the_target_in_every_layer() {
    let (step, masks) = report::run_masks(Path::new(RUN), None).unwrap();
    assert_eq!(step, 800);
    let t = *masks.target();
    let layers = report::layer_table(&masks).unwrap();
    let kept: Vec<bool> = runs::floats(&layers, "layer_value").unwrap().iter().map(|v| *v != 0.0).collect();
    assert_eq!(kept.iter().filter(|k| **k).count(), t.layers);
    // Every layer keeps heads/kv_heads query heads in each of its KV groups (uniform GQA) and the same
    // number of intermediate dims, whether or not the layer itself is removed.
    let per_group = t.heads / t.kv_heads;
    for (l, groups) in report::kept_heads_by_group(&masks).unwrap().iter().enumerate() {
        assert_eq!(groups, &vec![per_group; t.kv_heads], "layer {l}");
    }
    for (l, n) in runs::floats(&layers, "intermediate_kept").unwrap().iter().enumerate() {
        assert_eq!(*n as usize, t.intermediate, "layer {l}");
    }
    assert!(runs::floats(&layers, "hidden_kept").unwrap().iter().all(|n| *n as usize == t.hidden));
    // The same run's expected sparsity ended within 0.003 of every family's target (layer: −0.0028).
    let families = report::family_table(&masks).unwrap();
    let (e, g) =
        (runs::floats(&families, "expected_sparsity").unwrap(), runs::floats(&families, "target_sparsity").unwrap());
    for (a, b) in e.iter().zip(&g) {
        assert!((a - b).abs() < 0.003, "expected {a} vs target {b}");
    }
    // GQA: materialization keeps the heads the masks chose (the per-(layer, KV group) constraint), at most
    // 2% of the kept heads below P(z>0) = 0.5 and every kept group with exactly its count of likely heads.
    // The first 800-step run, with the per-layer head term, had 23 of 144 and 42 of 72 groups unbalanced.
    let head = masks.decisions().unwrap().into_iter().find(|d| d.family == shear::family::Family::Head).unwrap();
    assert_eq!((head.rows, head.kept), (t.layers * t.kv_heads, t.layers * t.heads));
    assert!(head.kept_below_half * 50 <= head.kept, "{head:?}");
    assert_eq!(head.unbalanced_rows, 0, "{head:?}");
    assert_eq!(runs::floats(&families, "kept_p_below_half").unwrap()[1] as usize, head.kept_below_half);
    // The logged expected size is the attention + MLP count, so it ends at the target's same count (the
    // params chart's target line), not at the target's total.
    let metrics = runs::prune_metrics(Path::new(RUN)).unwrap();
    let last = *runs::floats(&metrics, "expected_params").unwrap().last().unwrap();
    let target = shear::prune::masks::prunable_params(&t.config(masks.source()));
    assert!((last / target - 1.0).abs() < 0.005, "expected_params {last} vs the target's {target}");
}

#[test]
fn every_chart_of_the_shipped_run_draws() {
    let charts = views::run_charts(Path::new(RUN), None).unwrap();
    let names: Vec<&str> = charts.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["sparsity", "loss", "lagrangian", "lambdas", "params", "heads", "intermediate", "layers", "hidden"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for (name, svg) in &charts {
        assert!(svg.0.starts_with("<svg") && svg.0.len() > 2000, "{name}: {} bytes", svg.0.len());
    }
    let metrics = runs::prune_metrics(Path::new(RUN)).unwrap();
    assert_eq!(runs::floats(&metrics, "step").unwrap().last().copied(), Some(800.0));
}

/// The shipped run's logs read as the typed records every writer and reader shares, and nothing is lost:
/// each record written back gives the line's every key and value (the writers' order, not the file's
/// spacing).
#[test]
fn the_shipped_run_logs_read_as_typed_records_without_loss() {
    use shear::run::jsonl::{read_jsonl, read_records};
    use shear::run::records::{PruneEvalRecord, PruneStepRecord};
    let run = Path::new(RUN);
    let metrics: Vec<PruneStepRecord> = read_records(&run.join("metrics.jsonl")).unwrap();
    let evals: Vec<PruneEvalRecord> = read_records(&run.join("evals.jsonl")).unwrap();
    assert_eq!((metrics.len(), evals.len()), (201, 8));
    let (first, last) = (&metrics[0], metrics.last().unwrap());
    assert_eq!((first.step, first.lm_loss, first.tokens), (1, 4.18265, 512));
    assert_eq!(last.step, 800);
    let head = last.decisions.get(shear::family::Family::Head).unwrap();
    assert_eq!((head.kept_below_half, head.unbalanced_rows), (0, 0), "README: 0 of 144, every group balanced");
    assert_eq!(evals.last().unwrap().step, 800);
    for (file, typed) in [
        ("metrics.jsonl", metrics.iter().map(|r| serde_json::to_value(r).unwrap()).collect::<Vec<_>>()),
        ("evals.jsonl", evals.iter().map(|r| serde_json::to_value(r).unwrap()).collect()),
    ] {
        let raw = read_jsonl(&run.join(file)).unwrap();
        assert_eq!(typed.len(), raw.len());
        for (t, r) in typed.iter().zip(&raw) {
            assert_eq!(t, r, "{file}: a record does not give back its line");
        }
    }
    // And the run's settings: `run.json` with its mixture fields flat beside the others.
    let spec = shear::run::pruning::read_spec(run).unwrap();
    assert_eq!((spec.config.steps, spec.config.mixture.update_rule), (800, shear::data::loader::UpdateRule::Doremi));
}

/// `shear eval --tasks --json` output of one model on ARC-Easy and ARC-Challenge (the paper reports
/// acc_norm on the latter).
fn task_report(model: &str, docs: usize, easy: (f64, f64), challenge: (f64, f64)) -> shear::eval::tasks::TaskReport {
    let task = |name: &str, metric: &str, (acc, norm): (f64, f64)| {
        let paper = if metric == "acc" { acc } else { norm };
        serde_json::json!({"task": name, "variant": "rc_0shot", "docs": docs, "requests": 4 * docs, "acc": acc,
            "acc_stderr": null, "acc_norm": norm, "acc_norm_stderr": 0.01, "paper_metric": metric,
            "paper_value": paper, "chance": 0.25, "seconds": 1.0, "requests_per_s": 4.0})
    };
    let v = serde_json::json!({"model": model, "shots": 0, "limit": null, "average": 0.0, "tasks": {
        "arc_easy": task("arc_easy", "acc", easy), "arc_challenge": task("arc_challenge", "acc_norm", challenge)}});
    serde_json::from_value(v).unwrap()
}

#[test]
fn accuracy_reports_compare_the_papers_metric_and_refuse_unequal_sets() {
    use shear::report::accuracy::{accuracy_chart, accuracy_table};
    let models = vec![
        ("source".to_string(), task_report("a", 570, (0.52, 0.43), (0.23, 0.31))),
        ("pruned".to_string(), task_report("b", 570, (0.40, 0.35), (0.21, 0.27))),
    ];
    let t = accuracy_table(&models).unwrap();
    // Table order (arc_easy before arc_challenge), the paper's metric per task, then the average.
    assert_eq!(runs::strings(&t, "task").unwrap(), ["arc_easy", "arc_challenge", "average"]);
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
    assert!(close(&runs::floats(&t, "source").unwrap(), &[0.52, 0.31, 0.415]));
    assert!(close(&runs::floats(&t, "pruned").unwrap(), &[0.40, 0.27, 0.335]));
    assert!(close(&runs::floats(&t, "chance").unwrap(), &[0.25, 0.25, 0.25]));
    let svg = accuracy_chart(&models, "Downstream accuracy").unwrap().0;
    assert!(svg.contains("arc_challenge") && svg.contains("chance") && svg.contains("pruned"));

    let mut fewer = models.clone();
    fewer[1].1 = task_report("b", 100, (0.4, 0.3), (0.2, 0.3));
    let err = accuracy_table(&fewer).unwrap_err().to_string();
    assert!(err.contains("`pruned` has 100 arc_easy documents, `source` 570"), "{err}");
    let mut shots = models.clone();
    shots[1].1.shots = 5;
    assert!(accuracy_chart(&shots, "x").unwrap_err().to_string().contains("5 shots"));
    // A task missing from one report would change what the averages average.
    let mut missing = models.clone();
    missing[1].1.tasks.remove("arc_challenge");
    assert!(accuracy_table(&missing).unwrap_err().to_string().contains(r#"`pruned` holds the tasks ["arc_easy"]"#));
    let mut same = models.clone();
    same[1].0 = "source".into();
    assert!(accuracy_table(&same).unwrap_err().to_string().contains("labels must be distinct"));
}
