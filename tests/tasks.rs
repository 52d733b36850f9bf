//! Downstream-task scoring against transformers (tests/fixtures/tasks/smollm2.json, written once by
//! scripts/reference/make_task_fixtures.py from the GGUF through transformers' own loader and tokenizer):
//! the same tokens for every request, the same log-likelihood within 1e-4 relative, the same greedy flags
//! and the same predictions; every packing of requests into passes gives what each request alone gives; bad inputs get
//! a one-line error. Needs models/smollm2-135m (scripts/fetch-default-model.sh), not the task wheel: the
//! fixture carries the requests it was made from.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Deserialize;
use shear::eval::tasks::{self, Encoded, Request};

const MODEL: &str = "models/smollm2-135m";
const FIXTURE: &str = "tests/fixtures/tasks/smollm2.json";

#[derive(Deserialize)]
struct Fixture {
    tasks: BTreeMap<String, FixtureTask>,
}

#[derive(Deserialize)]
struct FixtureTask {
    requests: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    doc_id: u64,
    label: serde_json::Value,
    context: String,
    continuation: String,
    input: Vec<u32>,
    targets: Vec<u32>,
    loglik: f64,
    greedy: bool,
}

fn model() -> (shear::Llama, tokenizers::Tokenizer) {
    let loaded = shear::io::load_model(Path::new(MODEL), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let tok = shear::io::load_tokenizer(Path::new(MODEL)).unwrap();
    (loaded.model, tok)
}

/// A fixture task's documents in fixture order, each with its rows.
fn fixture_docs(t: &FixtureTask) -> Vec<(u64, Vec<&Row>)> {
    let mut docs: Vec<(u64, Vec<&Row>)> = vec![];
    for r in &t.requests {
        match docs.last_mut() {
            Some((id, rows)) if *id == r.doc_id => rows.push(r),
            _ => docs.push((r.doc_id, vec![r])),
        }
    }
    docs
}

fn encode(tok: &tokenizers::Tokenizer, rows: &[&Row]) -> Vec<Encoded> {
    rows.iter()
        .map(|r| {
            let req = Request { context: r.context.clone(), continuation: r.continuation.clone() };
            tasks::encode_request(tok, &req, 8192).unwrap()
        })
        .collect()
}

/// Through the default scoring (shared contexts, documents batched together), as `shear eval --tasks` runs.
#[test]
fn task_log_likelihoods_and_predictions_match_transformers() {
    let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let (model, tok) = model();
    let (mut requests, mut worst) = (0, 0f64);
    for (task, t) in &fixture.tasks {
        let docs = fixture_docs(t);
        let encoded: Vec<Vec<Encoded>> = docs.iter().map(|(_, rows)| encode(&tok, rows)).collect();
        for ((doc_id, rows), e) in docs.iter().zip(&encoded) {
            for (e, r) in e.iter().zip(rows) {
                assert_eq!((&e.input, &e.targets), (&r.input, &r.targets), "{task} doc {doc_id}: tokens differ");
            }
        }
        let scored = tasks::score_documents(&model, &encoded, tasks::Scoring::default(), |_, _| {}).unwrap();
        for ((doc_id, rows), scored) in docs.iter().zip(&scored) {
            for (s, r) in scored.iter().zip(rows) {
                let rel = (s.loglik - r.loglik).abs() / r.loglik.abs().max(1.0);
                worst = worst.max(rel);
                assert!(rel <= 1e-4, "{task} doc {doc_id}: loglik {} vs transformers {}", s.loglik, r.loglik);
                assert_eq!(s.greedy, r.greedy, "{task} doc {doc_id}: greedy flag");
            }
            // The same prediction: the argmax of the log-likelihoods (first on ties).
            let argmax = |v: Vec<f64>| v.iter().enumerate().fold(0, |b, (i, x)| if *x > v[b] { i } else { b });
            let ours = argmax(scored.iter().map(|s| s.loglik).collect());
            let theirs = argmax(rows.iter().map(|r| r.loglik).collect());
            assert_eq!(ours, theirs, "{task} doc {doc_id}: prediction (gold {})", rows[0].label);
            requests += rows.len();
        }
    }
    assert!(requests >= 250, "{requests} requests compared");
    eprintln!("{requests} requests: worst relative log-likelihood difference {worst:.2e}");
}

/// Every way of packing requests into forward passes (a document's shared prefix once or not; one
/// document per pass, or many, left-padded to a common prefix column, under small and large budgets)
/// gives what each request scored alone gives.
#[test]
fn every_packing_scores_what_each_request_alone_scores() {
    let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let (model, tok) = model();
    let mut docs: Vec<Vec<Encoded>> = vec![];
    for task in ["hellaswag", "winogrande", "lambada"] {
        docs.extend(fixture_docs(&fixture.tasks[task]).iter().take(6).map(|(_, rows)| encode(&tok, rows)));
    }
    // And a document whose requests share no first token (a sentence that starts with its blank).
    let mut differing = docs[0].clone();
    differing[1].input[0] = if differing[0].input[0] == 13 { 14 } else { 13 };
    docs.push(differing);
    let score = |share_context, batch_tokens| {
        tasks::score_documents(&model, &docs, tasks::Scoring { share_context, batch_tokens }, |_, _| {}).unwrap()
    };
    let alone = score(false, 0);
    let mut worst = 0f64;
    for (share, budget) in [(true, 0), (true, 2048), (false, 2048), (true, 160)] {
        for (d, (a, b)) in score(share, budget).iter().zip(&alone).enumerate() {
            for (a, b) in a.iter().zip(b) {
                let rel = (a.loglik - b.loglik).abs() / b.loglik.abs().max(1.0);
                worst = worst.max(rel);
                assert!(rel <= 2e-5, "shared {share}, budget {budget}, document {d}: {a:?} vs alone {b:?}");
                assert_eq!((a.greedy, a.tokens), (b.greedy, b.tokens), "shared {share}, budget {budget}, doc {d}");
            }
        }
    }
    eprintln!("{} documents: worst relative difference to scoring alone {worst:.2e}", docs.len());
}

#[test]
fn bad_task_inputs_get_one_line_errors() {
    let msg = |e: shear::Error| {
        let s = e.to_string();
        assert!(!s.contains('\n'), "one line: {s}");
        s
    };
    let err = msg(tasks::parse_task_list("arc_easy,mmlu").unwrap_err());
    assert!(err.contains("unknown task `mmlu`") && err.contains("hellaswag"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let info = tasks::parse_task_list("piqa").unwrap()[0];
    let err = msg(tasks::load_task(tmp.path(), info, 0, None).unwrap_err());
    assert!(err.contains("scripts/fetch-eval-tasks.sh"), "{err}");
    // A request file whose second line is not a request names the file and the line.
    let dir = tmp.path().join("piqa").join("rc_0shot");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"task_config": {}}"#).unwrap();
    let good = r#"{"doc_id": 0, "idx": 0, "label": 0, "request": {"context": "Q:", "continuation": " a"}}"#;
    let gz_bytes = |bytes: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    };
    let gz = |text: &str| gz_bytes(text.as_bytes());
    std::fs::write(dir.join("requests.jsonl.gz"), gz(&format!("{good}\n{{\"doc_id\": 0, \"idx\"\n"))).unwrap();
    let err = msg(tasks::load_task(tmp.path(), info, 0, None).unwrap_err());
    assert!(err.contains("requests.jsonl.gz:2:"), "{err}");
    // Text that is not UTF-8 says so, with its line.
    let mut bytes = format!("{good}\n{good}\n").into_bytes();
    bytes[good.len() + 60] = 0xff;
    std::fs::write(dir.join("requests.jsonl.gz"), gz_bytes(&bytes)).unwrap();
    let err = msg(tasks::load_task(tmp.path(), info, 0, None).unwrap_err());
    assert!(err.contains("requests.jsonl.gz:2: not valid UTF-8"), "{err}");
    // A gzip cut short is an error, not a shorter task.
    let lines: String = (0..400).map(|i| good.replace(r#""doc_id": 0"#, &format!(r#""doc_id": {i}"#)) + "\n").collect();
    let whole = gz(&lines);
    std::fs::write(dir.join("requests.jsonl.gz"), &whole[..whole.len() / 2]).unwrap();
    let err = msg(tasks::load_task(tmp.path(), info, 0, None).unwrap_err());
    assert!(err.contains("truncated or corrupt gzip"), "{err}");
    // Two gzip members read as one file, as Python's gzip module reads them.
    let (a, b) = lines.split_at(lines.len() / 2);
    std::fs::write(dir.join("requests.jsonl.gz"), [gz(a), gz(b)].concat()).unwrap();
    assert_eq!(tasks::load_task(tmp.path(), info, 0, None).unwrap().docs.len(), 400);
    // A model whose vocabulary does not cover the requests' tokens.
    let (model, _) = model();
    let e = Encoded { input: vec![1, 2, 60_000], targets: vec![3], start: 2, chars: 1 };
    let err = msg(tasks::score_requests(&model, &[e], true).unwrap_err());
    assert!(err.contains("60000") && err.contains("vocabulary"), "{err}");
    // A document without requests scores nothing, in every packing.
    for share in [true, false] {
        assert!(tasks::score_requests(&model, &[], share).unwrap().is_empty());
    }
    assert!(msg(tasks::load_task(tmp.path(), info, 3, None).unwrap_err()).contains("--shots"));
}
