//! The healthy inputs every case starts from, built once per test run with the binary under test (so a
//! survey of an older binary fuzzes files that binary wrote itself).

use std::path::{Path, PathBuf};

use super::cases::{prune_on, train_on, Arg};
use super::exec::{run, Outcome, Shear};

/// Paths of the healthy fixtures, all under one directory that no case writes to.
pub struct Fixtures {
    pub root: PathBuf,
    pub gguf: PathBuf,
    /// The tiny model: 2 layers, hidden 32, 4 heads over 2 KV heads, intermediate 48, vocabulary 259.
    pub model: PathBuf,
    /// The same weights in two shards with `model.safetensors.index.json`.
    pub sharded: PathBuf,
    pub corpus: PathBuf,
    /// A pruning run on the text file, checkpointed at its last step.
    pub prune_run: PathBuf,
    /// A pruning run on the corpus: its checkpoint also holds the loader state.
    pub prune_corpus_run: PathBuf,
    pub pruned_model: PathBuf,
    pub train_run: PathBuf,
}

/// Steps of the fixture runs; resumes ask for a few more.
pub const FIXTURE_STEPS: usize = 3;
pub const SEQ_LEN: usize = 16;

pub fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp paths").to_string()
}

fn must(shear: &Shear, what: &str, args: Vec<String>) {
    let r = run(shear, &args, None);
    assert!(
        matches!(r.outcome, Outcome::Exited(0)),
        "building the fixture {what} failed ({:?}): {}",
        r.outcome,
        r.stderr
    );
}

/// `args` (as the cases write them) with fixture paths under `root` and the work path `out`.
fn resolved(args: &[Arg], root: &Path, out: &Path) -> Vec<String> {
    args.iter()
        .map(|a| match a {
            Arg::Lit(x) => x.clone(),
            Arg::Fix(rel) => s(&root.join(rel)),
            Arg::Work(_) => s(out),
        })
        .collect()
}

pub fn build(root: &Path, shear: &Shear) -> Fixtures {
    std::fs::create_dir_all(root).unwrap();
    let gguf = root.join("tiny.gguf");
    crate::common::write_tiny_gguf(&gguf, "llama");
    let model = root.join("model");
    must(shear, "model", vec!["convert".into(), "--gguf".into(), s(&gguf), "--out".into(), s(&model)]);

    // `convert --shard-size-mb` counts whole megabytes and the tiny model is 0.1 MB: split it by hand,
    // layer 0 in one file and the rest in the other, named the way HF names shards.
    let sharded = root.join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(model.join(f), sharded.join(f)).unwrap();
    }
    let weights = shear::io::load_weights(&model, None, &candle_core::Device::Cpu).unwrap();
    let (first, second): (Vec<_>, Vec<_>) = weights.into_iter().partition(|(k, _)| k.starts_with("model.layers.0."));
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [first, second].into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        for (k, _) in &part {
            weight_map.insert(k.clone(), file.clone().into());
        }
        let map: std::collections::HashMap<String, candle_core::Tensor> = part.into_iter().collect();
        candle_core::safetensors::save(&map, sharded.join(&file)).unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(sharded.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index).unwrap())
        .unwrap();

    let text = root.join("text.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog; ab ba abab 0123456789\n".repeat(40)).unwrap();
    let target = root.join("target.toml");
    std::fs::write(&target, "layers = 1\nhidden = 16\nheads = 2\nkv_heads = 1\nintermediate = 24\n").unwrap();
    // The materialized model (1 layer, hidden 16, 2 heads / 1 KV head, intermediate 24) pruned once more.
    std::fs::write(
        root.join("target-pruned.toml"),
        "layers = 1\nhidden = 8\nheads = 1\nkv_heads = 1\nintermediate = 12\n",
    )
    .unwrap();

    // Seven small domains with distinct statistics, packed by the CLI.
    let raw = root.join("raw");
    std::fs::create_dir(&raw).unwrap();
    for (k, d) in shear::data::corpus::DOMAINS.iter().enumerate() {
        let lines: Vec<String> = (0..12)
            .map(|i| {
                let text =
                    format!("{d} {i} {}", ["ab ", "ba ", "xyz ", "0 1 2 ", "abab ", "q ", "é "][k].repeat(8 + i));
                serde_json::json!({"id": format!("{d}/{i}"), "source": "synthetic", "text": text}).to_string()
            })
            .collect();
        std::fs::write(raw.join(format!("{d}.jsonl")), lines.join("\n")).unwrap();
    }
    let corpus = root.join("corpus");
    let args = ["corpus", "build", "--raw", &s(&raw), "--model", &s(&model), "--out", &s(&corpus)];
    let mut args: Vec<String> = args.iter().map(|x| x.to_string()).collect();
    args.extend(["--seq-len".into(), SEQ_LEN.to_string(), "--eval-permille".into(), "250".into()]);
    must(shear, "corpus", args);
    let reference = root.join("reference.json");
    let r: serde_json::Map<String, serde_json::Value> =
        shear::data::corpus::DOMAINS.iter().map(|d| (d.to_string(), 5.5.into())).collect();
    std::fs::write(&reference, serde_json::Value::Object(r).to_string()).unwrap();

    // Zero-shot task requests in the layout of scripts/fetch-eval-tasks.sh: six four-choice documents.
    let task_dir = root.join("tasks/arc_easy/rc_0shot");
    std::fs::create_dir_all(&task_dir).unwrap();
    std::fs::write(task_dir.join("config.json"), r#"{"task_config": {"metric_kwargs": {}}}"#).unwrap();
    let choices = [" abab", " ba", " xyz q", " 0 1 2"];
    let lines: Vec<String> = (0..6)
        .flat_map(|doc| {
            choices.iter().enumerate().map(move |(idx, c)| {
                let context = format!("Question: ab ba {doc} xyz?\nAnswer:");
                serde_json::json!({"doc_id": doc, "idx": idx, "label": doc % 4,
                    "request": {"context": context, "continuation": c}})
                .to_string()
            })
        })
        .collect();
    std::fs::write(task_dir.join("requests.jsonl.gz"), gzip((lines.join("\n") + "\n").as_bytes())).unwrap();

    let prune_run = root.join("prune-run");
    let args = prune_on("model", "target.toml", "text.txt", FIXTURE_STEPS);
    must(shear, "prune run", resolved(&args, root, &prune_run));
    let prune_corpus_run = root.join("prune-corpus-run");
    let args = prune_on("model", "target.toml", "corpus", FIXTURE_STEPS);
    must(shear, "prune run on the corpus", resolved(&args, root, &prune_corpus_run));
    let pruned_model = root.join("pruned");
    must(
        shear,
        "materialized model",
        vec!["materialize".into(), "--run".into(), s(&prune_run), "--out".into(), s(&pruned_model)],
    );
    let train_run = root.join("train-run");
    let args = train_on("pruned", "corpus", "reference.json", FIXTURE_STEPS);
    must(shear, "train run", resolved(&args, root, &train_run));

    Fixtures {
        root: root.to_path_buf(),
        gguf,
        model,
        sharded,
        corpus,
        prune_run,
        prune_corpus_run,
        pruned_model,
        train_run,
    }
}

/// `data` gzip-compressed, as the task wheel ships request files.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}
