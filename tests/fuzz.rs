//! A seeded mutation fuzz of every file kind shear reads (issue #14), through the CLI.
//!
//! Proves that a corrupt, truncated or hostile input — a model directory (safetensors, shard index,
//! config.json, tokenizer.json), a GGUF, a target TOML, a text, a corpus (manifest, shards, the raw
//! documents it is built from), reference losses, a pruning or training run (run.json, checkpoint state and tensors, mask snapshots, metrics and
//! eval logs), an absurd command-line size, or an output that already exists — ends in one of two ways:
//! a valid result, or exit status 1 with one line starting `error: `. Never a panic, an abort, a hang, a
//! half-written output, a changed input, or a success whose output (or accepted input) is invalid.
//!
//! Healthy tiny fixtures are built once per run (with the binary under test); each case copies the
//! fixtures it touches into a fresh directory, applies one mutation and runs every command that reads
//! that kind of file, under a 20 s timeout and a 4 GB address-space limit. Outputs are judged by the
//! harness's own checks (`fuzz/oracle.rs`): finite weights and a sane config in a written model, finite
//! numbers in `--json` output, tables and charts, a resumed run at the step asked for.
//!
//! ```sh
//! cargo test --release --test fuzz -- --nocapture            # the CI run: asserts no failure
//! SHEAR_FUZZ_CASES=100 cargo test --release --test fuzz -- --nocapture   # fewer random inputs
//! SHEAR_FUZZ_SURVEY=1 SHEAR_FUZZ_BIN=/path/to/old/shear cargo test --release --test fuzz -- --nocapture
//! ```
//!
//! `SHEAR_FUZZ_SEED` changes the random mutations (the focused cases, the command-line matrix and the
//! existing-output cases are always present); `SHEAR_FUZZ_KEEP=1` keeps the failing cases' directories;
//! `SHEAR_FUZZ_VERBOSE=1` lists every run with its class.

// Linux only: `ulimit -v` through `sh` and Unix exit signals.
#![cfg(target_os = "linux")]

#[path = "fuzz/cases.rs"]
mod cases;
mod common;
#[path = "fuzz/exec.rs"]
mod exec;
#[path = "fuzz/fixtures.rs"]
mod fixtures;
#[path = "fuzz/mutate.rs"]
mod mutate;
#[path = "fuzz/oracle.rs"]
mod oracle;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cases::{Arg, Case, Cmd, Healthy, Input, Out};
use exec::{Outcome, Shear};
use mutate::Edit;

const DEFAULT_SEED: u64 = 0x5eed_0014;
/// Random mutated inputs, spread over the kinds by weight (the fixed cases come on top).
const DEFAULT_CASES: usize = 1500;
const THREADS: usize = 2;

/// How one command run ended, from best to worst as the table lists them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Class {
    OkValid,
    CleanError,
    MessyError,
    Panic,
    Abort,
    Hang,
    HalfWritten,
    Overwritten,
    SilentlyWrong,
}

const CLASSES: [(Class, &str); 9] = [
    (Class::OkValid, "ok_valid"),
    (Class::CleanError, "clean_error"),
    (Class::MessyError, "messy_error"),
    (Class::Panic, "panic"),
    (Class::Abort, "abort"),
    (Class::Hang, "hang"),
    (Class::HalfWritten, "half_written"),
    (Class::Overwritten, "overwritten"),
    (Class::SilentlyWrong, "silently_wrong"),
];

fn class_name(c: Class) -> &'static str {
    CLASSES.iter().find(|(k, _)| *k == c).unwrap().1
}

struct Record {
    kind: &'static str,
    case: usize,
    desc: String,
    cmd: String,
    class: Class,
    detail: String,
    seconds: f64,
}

/// What every case shares: the binary, the fixtures and what the oracles compare against.
struct Ctx {
    shear: Shear,
    fixtures: PathBuf,
    work: PathBuf,
    /// Tensor names, dtypes and shapes of the healthy checkpoints and newest mask snapshot.
    signatures: BTreeMap<String, oracle::Signature>,
    masks_signature: oracle::Signature,
    vocab: u64,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        let v = v.trim();
        let parsed = match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => v.parse(),
        };
        parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

#[test]
fn mutated_inputs_fail_cleanly_or_give_valid_results() {
    let started = Instant::now();
    let survey = std::env::var("SHEAR_FUZZ_SURVEY").is_ok_and(|v| v == "1");
    let seed = env_u64("SHEAR_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    // Unoptimized, shear's kernels are far slower and 20 s could read as a hang: a debug `cargo test`
    // runs a sample (CI runs in release, the full set).
    let default_cases = if cfg!(debug_assertions) { DEFAULT_CASES / 10 } else { DEFAULT_CASES };
    let total = env_u64("SHEAR_FUZZ_CASES").map_or(default_cases, |n| n as usize);
    let bin =
        std::env::var_os("SHEAR_FUZZ_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_shear")), PathBuf::from);
    let shear = Shear { bin, timeout: Duration::from_secs(20), memory_kib: 4_000_000 };

    let tmp = tempfile::tempdir().unwrap();
    let keep = std::env::var("SHEAR_FUZZ_KEEP").is_ok_and(|v| v == "1");
    let root = if keep { tmp.keep() } else { tmp.path().to_path_buf() };
    if keep {
        println!("SHEAR_FUZZ_KEEP=1: fixtures and failing cases stay in {}", root.display());
    }
    let f = fixtures::build(&root.join("fixtures"), &shear);
    let work = root.join("work");
    std::fs::create_dir(&work).unwrap();
    let healthy =
        Healthy { files: mutate::read_all(&f.root, &cases::healthy_files()), gguf: mutate::Gguf::read(&f.gguf) };
    let signatures = ["prune-run", "prune-corpus-run", "train-run"]
        .iter()
        .map(|r| (r.to_string(), oracle::signature(&f.root.join(r).join("checkpoint/state.safetensors"))))
        .collect();
    let masks_signature =
        oracle::signature(&f.prune_run.join(format!("masks/step_{:06}.safetensors", fixtures::FIXTURE_STEPS)));
    let ctx =
        Ctx { shear, fixtures: f.root.clone(), work, signatures, masks_signature, vocab: common::TINY_VOCAB as u64 };
    self_check(&ctx, &f);

    let mut all: Vec<Case> = cases::focused_cases(&healthy);
    all.extend(cases::random_cases(seed, total, &healthy));
    all.extend(cases::cli_cases());
    all.extend(cases::existing_output_cases());
    let n_runs: usize = all.iter().map(|c| c.cmds.len()).sum();
    let before = tree_hashes(&ctx.fixtures);
    println!(
        "fuzzing {} with {} mutated inputs and {n_runs} command runs (seed {seed:#x}), fixtures in {:.1}s",
        ctx.shear.bin.display(),
        all.len(),
        started.elapsed().as_secs_f64()
    );

    let records = Mutex::new(vec![]);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = all.get(i) else { break };
                for (j, cmd) in case.cmds.iter().enumerate() {
                    let dir = ctx.work.join(format!("case{i:05}-{j}"));
                    let t0 = Instant::now();
                    let (class, detail) = run_case_cmd(&ctx, case, cmd, &dir);
                    let seconds = t0.elapsed().as_secs_f64();
                    if !keep || class <= Class::CleanError {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    let r = Record {
                        kind: case.kind,
                        case: i,
                        desc: case.desc.clone(),
                        cmd: cmd.name.clone(),
                        class,
                        detail,
                        seconds,
                    };
                    records.lock().unwrap().push(r);
                }
            });
        }
    });
    let mut records = records.into_inner().unwrap();
    // The fixtures are shared by every case (run.json points at them): none may have changed.
    let after = tree_hashes(&ctx.fixtures);
    if before != after {
        let changed: Vec<&String> =
            before.keys().chain(after.keys()).filter(|k| before.get(*k) != after.get(*k)).collect();
        records.push(Record {
            kind: "fixtures",
            case: usize::MAX,
            desc: "the shared healthy fixtures".into(),
            cmd: "(all)".into(),
            class: Class::Overwritten,
            detail: format!("changed: {changed:?}"),
            seconds: 0.0,
        });
    }
    records.sort_by_key(|r| r.case);
    if std::env::var("SHEAR_FUZZ_VERBOSE").is_ok_and(|v| v == "1") {
        for r in &records {
            println!("{:>5} [{}] {} | {} | `{}` | {}", r.case, class_name(r.class), r.kind, r.desc, r.cmd, r.detail);
        }
    }
    let failures = print_report(&records, all.len(), started.elapsed());
    if survey {
        println!("SHEAR_FUZZ_SURVEY=1: not asserting");
    } else if failures > 0 && !keep {
        eprintln!("SHEAR_FUZZ_KEEP=1 keeps the failing cases' directories; SHEAR_FUZZ_VERBOSE=1 lists every run.");
    }
    if !survey {
        assert_eq!(failures, 0, "{failures} command runs ended in a failure class (table above)");
    }
}

/// The healthy fixtures must pass the oracles, or every verdict below would be suspect.
fn self_check(ctx: &Ctx, f: &fixtures::Fixtures) {
    for m in [&f.model, &f.sharded, &f.pruned_model] {
        assert_eq!(oracle::model_defect(m, true), None, "{}", m.display());
    }
    let tj = std::fs::read(f.model.join("tokenizer.json")).unwrap();
    assert_eq!(oracle::corpus_defect(&f.corpus, ctx.vocab, &tj), None);
    for (run, kind) in
        [(&f.prune_run, "prune-run"), (&f.prune_corpus_run, "prune-corpus-run"), (&f.train_run, "train-run")]
    {
        oracle::check_run(run, fixtures::FIXTURE_STEPS, Some(&ctx.signatures[kind]), 0).unwrap();
    }
    assert_eq!(oracle::masks_defect(&f.prune_run, None, &ctx.masks_signature), None);
}

// ------------------------------------------------------------------------------------------ one run

fn first_component(rel: &str) -> String {
    rel.split('/').next().unwrap().to_string()
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

/// Hashes of every file under `dir` (relative paths); huge (sparse) files by size only.
fn tree_hashes(dir: &Path) -> BTreeMap<String, u64> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let meta = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(_) => continue,
            };
            if meta.is_dir() {
                out.insert(format!("{rel}/"), 0);
                walk(base, &p, out);
            } else if meta.len() > 64 << 20 {
                out.insert(rel, meta.len());
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                out.insert(rel, shear::data::corpus::fnv1a64(&bytes) ^ bytes.len() as u64);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Copy what the case touches into `dir`, mutate it, run the command and classify the result.
fn run_case_cmd(ctx: &Ctx, case: &Case, cmd: &Cmd, dir: &Path) -> (Class, String) {
    std::fs::create_dir_all(dir).unwrap();
    let copied: BTreeSet<String> =
        case.edits.iter().map(|(p, _)| first_component(p)).chain(case.copies.iter().cloned()).collect();
    for c in &copied {
        copy_tree(&ctx.fixtures.join(c), &dir.join(c));
    }
    for (rel, edit) in &case.edits {
        let p = dir.join(rel);
        match edit {
            Edit::Write(b) => std::fs::write(&p, b).unwrap(),
            Edit::Remove => std::fs::remove_file(&p).unwrap(),
            Edit::SetLen(n) => std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(*n).unwrap(),
        }
    }
    for (rel, bytes) in &case.setup {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let resolve = |rel: &str| -> PathBuf {
        if copied.contains(&first_component(rel)) {
            dir.join(rel)
        } else {
            ctx.fixtures.join(rel)
        }
    };

    // Judge the inputs before the command can change them.
    let defects: Vec<String> = cmd.reads.iter().filter_map(|i| input_defect(ctx, i, &resolve)).collect();
    let before = tree_hashes(dir);
    let args: Vec<String> = cmd
        .args
        .iter()
        .map(|a| match a {
            Arg::Lit(s) => s.clone(),
            Arg::Fix(p) => fixtures::s(&resolve(p)),
            Arg::Work(p) => fixtures::s(&dir.join(p)),
        })
        .collect();
    let r = exec::run(&ctx.shear, &args, Some(dir));
    let after = tree_hashes(dir);

    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let first = lines.first().map_or(String::new(), |l| l.chars().take(200).collect());
    if let Some(p) = r.stderr.lines().find(|l| l.contains("panicked at")) {
        // The message follows the location line.
        let msg = r.stderr.lines().skip_while(|l| !l.contains("panicked at")).nth(1).unwrap_or("");
        return (Class::Panic, format!("{} {}", p.trim(), msg.trim()).chars().take(240).collect());
    }
    assert_ne!(r.outcome, Outcome::Exited(125), "sh could not apply `ulimit -v`: the memory limit would not hold");
    match r.outcome {
        Outcome::TimedOut => return (Class::Hang, format!("no exit within {:?}; {first}", ctx.shear.timeout)),
        Outcome::Signal(s) => return (Class::Abort, format!("killed by signal {s}; {first}")),
        Outcome::Exited(101) => return (Class::Panic, first),
        Outcome::Exited(_) => {}
    }
    let ok = r.outcome == Outcome::Exited(0);

    // Inputs and pre-existing outputs must be as they were; a resumed run's own directory may change.
    let run_dir = match &cmd.out {
        Out::Resume { dir: d, .. } => Some(d.clone()),
        _ => None,
    };
    let may_change = |rel: &str| match &run_dir {
        Some(d) if ok => rel.starts_with(&format!("{d}/")),
        Some(d) => {
            let inner = rel.strip_prefix(&format!("{d}/")).unwrap_or("");
            inner == "metrics.jsonl" || inner == "evals.jsonl" || inner.starts_with("masks/")
        }
        None => false,
    };
    if let Some((rel, _)) = before.iter().find(|(k, h)| !k.ends_with('/') && !may_change(k) && after.get(*k) != Some(h))
    {
        let what = if after.contains_key(rel) { "changed" } else { "removed" };
        return (Class::Overwritten, format!("{rel} {what}; {first}"));
    }
    // Nothing may be written into an existing output, whether the command then succeeds or fails.
    if let Out::Existing(rel) = &cmd.out {
        let inside = format!("{rel}/");
        let touched = after.iter().find(|(k, h)| k.starts_with(&inside) && before.get(*k) != Some(*h));
        if ok || touched.is_some() {
            let what = touched.map_or("exit 0".to_string(), |(k, _)| format!("{k} appeared or changed"));
            return (Class::Overwritten, format!("wrote into the existing {rel}: {what}; {first}"));
        }
    }
    // A case whose input must be refused by name must fail.
    if let (Some(name), true) = (case.must_name, ok) {
        return (Class::SilentlyWrong, format!("exit 0 where the input must be refused naming `{name}`"));
    }

    if ok {
        if let Some(d) = defects.first() {
            return (Class::SilentlyWrong, format!("exit 0 on an invalid input: {d}"));
        }
        return match check_output(ctx, cmd, dir, &r.stdout, &resolve) {
            Ok(()) => (Class::OkValid, String::new()),
            Err(e) => (Class::SilentlyWrong, e),
        };
    }

    // A failure leaves nothing new behind: no output, no staging sibling, no stray file. A run directory
    // is the exception once it holds a checkpoint (it is then resumable), judged below.
    let run_out = match &cmd.out {
        Out::Run { dir: rel, .. } => Some(format!("{rel}/")),
        _ => None,
    };
    let is_run_path = |k: &str| run_out.as_deref().is_some_and(|r| k.starts_with(r));
    if let Some(p) = after.keys().find(|k| !before.contains_key(*k) && !is_run_path(k)) {
        return (Class::HalfWritten, format!("left {p}; {first}"));
    }
    match &cmd.out {
        Out::Model { dir: rel, .. } | Out::Corpus(rel) | Out::Charts(rel) if dir.join(rel).exists() => {
            return (Class::HalfWritten, format!("left its --out {rel}; {first}"));
        }
        Out::Run { dir: rel, .. } if dir.join(rel).exists() && !oracle::usable_checkpoint(&dir.join(rel)) => {
            return (Class::HalfWritten, format!("left a run directory without a usable checkpoint; {first}"));
        }
        _ => {}
    }
    let clean = r.outcome == Outcome::Exited(1) && lines.len() == 1 && lines[0].starts_with("error: ");
    if !clean {
        let shown = lines.iter().take(3).map(|l| l.chars().take(120).collect::<String>()).collect::<Vec<_>>();
        return (Class::MessyError, format!("{:?}, {} stderr lines: {}", r.outcome, lines.len(), shown.join(" | ")));
    }
    if let Some(name) = case.must_name {
        if !lines[0].contains(name) {
            return (Class::MessyError, format!("the error does not name `{name}`: {first}"));
        }
    }
    (Class::CleanError, first)
}

fn input_defect(ctx: &Ctx, input: &Input, resolve: &dyn Fn(&str) -> PathBuf) -> Option<String> {
    match input {
        Input::Model(m) => oracle::model_defect(&resolve(m), true),
        Input::Corpus(c) => {
            let tj = std::fs::read(ctx.fixtures.join("model/tokenizer.json")).unwrap();
            oracle::corpus_defect(&resolve(c), ctx.vocab, &tj)
        }
        Input::Checkpoint(run, prefixes) => oracle::checkpoint_defect(&resolve(run), &ctx.signatures[run], prefixes),
        Input::Masks(run, step) => oracle::masks_defect(&resolve(run), *step, &ctx.masks_signature),
    }
}

fn check_output(
    ctx: &Ctx,
    cmd: &Cmd,
    dir: &Path,
    stdout: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<(), String> {
    match &cmd.out {
        Out::Nothing | Out::Existing(_) => Ok(()),
        Out::Json => oracle::check_eval_json(stdout),
        Out::TaskJson => oracle::check_task_json(stdout),
        Out::Table if stdout.trim().is_empty() => Err("exit 0 with no table".into()),
        Out::Table => match oracle::non_finite_word(stdout) {
            Some(w) => Err(format!("the tables show {w}")),
            None => Ok(()),
        },
        Out::Model { dir: rel, tokenizer } => match oracle::model_defect(&dir.join(rel), *tokenizer) {
            Some(d) => Err(format!("wrote an invalid model: {d}")),
            None => Ok(()),
        },
        Out::Corpus(rel) => {
            // Tokenized with the command's --model: its vocabulary and tokenizer.
            let at = cmd.args.iter().position(|a| matches!(a, Arg::Lit(s) if s == "--model")).unwrap();
            let Arg::Fix(model) = &cmd.args[at + 1] else { unreachable!() };
            let model = resolve(model);
            let tj = oracle::read(model.join("tokenizer.json")).unwrap_or_default();
            let vocab = oracle::read(model.join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|c| c["vocab_size"].as_u64())
                .unwrap_or(ctx.vocab)
                .min(ctx.vocab);
            match oracle::corpus_defect(&dir.join(rel), vocab, &tj) {
                Some(d) => Err(format!("wrote an invalid corpus: {d}")),
                None => Ok(()),
            }
        }
        Out::Charts(rel) => oracle::check_charts(&dir.join(rel)),
        Out::Run { dir: rel, steps, .. } => oracle::check_run(&dir.join(rel), *steps, None, 0),
        Out::Resume { dir: rel, steps } => {
            oracle::check_run(&resolve(rel), *steps, Some(&ctx.signatures[rel]), fixtures::FIXTURE_STEPS)
        }
    }
}

// ------------------------------------------------------------------------------------------- report

/// Print the outcome table and up to 40 example failures; returns the number of failed runs.
fn print_report(records: &[Record], inputs: usize, elapsed: Duration) -> usize {
    let mut kinds: Vec<&str> = vec![];
    for r in records {
        if !kinds.contains(&r.kind) {
            kinds.push(r.kind);
        }
    }
    let order: Vec<&str> =
        cases::kinds().iter().map(|k| k.name).chain(["command line", "existing output", "fixtures"]).collect();
    kinds.sort_by_key(|k| order.iter().position(|o| o == k).unwrap_or(usize::MAX));
    let width = 26;
    let mut header = format!("{:<width$} {:>6} {:>5}", "kind", "inputs", "runs");
    for (_, n) in CLASSES {
        header.push_str(&format!(" {n:>w$}", w = n.len().max(5)));
    }
    println!("\n{header}\n{}", "-".repeat(header.len()));
    let row = |name: &str, rs: &[&Record]| {
        let inputs: BTreeSet<usize> = rs.iter().map(|r| r.case).collect();
        let mut line = format!("{name:<width$} {:>6} {:>5}", inputs.len(), rs.len());
        for (c, n) in CLASSES {
            line.push_str(&format!(" {:>w$}", rs.iter().filter(|r| r.class == c).count(), w = n.len().max(5)));
        }
        println!("{line}");
    };
    for k in &kinds {
        let rs: Vec<&Record> = records.iter().filter(|r| r.kind == *k).collect();
        row(k, &rs);
    }
    println!("{}", "-".repeat(header.len()));
    row("total", &records.iter().collect::<Vec<_>>());

    let failed: Vec<&Record> = records.iter().filter(|r| r.class > Class::CleanError).collect();
    println!(
        "\n{inputs} mutated inputs, {} command runs, {} failures, {:.1}s",
        records.len(),
        failed.len(),
        elapsed.as_secs_f64()
    );
    // What the wall time goes to, so that the run stays within its CI budget.
    let mut slow: Vec<&Record> = records.iter().collect();
    slow.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    println!("slowest runs:");
    for r in slow.iter().take(5) {
        println!("  {:.1}s [{}] {} | {} | `{}`", r.seconds, class_name(r.class), r.kind, r.desc, r.cmd);
    }
    if !failed.is_empty() {
        // Spread the examples: the first few of each (kind, class), then round-robin up to 40.
        let mut groups: BTreeMap<(usize, Class), Vec<&Record>> = BTreeMap::new();
        for r in &failed {
            let k = kinds.iter().position(|k| *k == r.kind).unwrap();
            groups.entry((k, r.class)).or_default().push(r);
        }
        let mut shown = vec![];
        for round in 0.. {
            let before = shown.len();
            for g in groups.values() {
                if let Some(r) = g.get(round) {
                    if shown.len() < 40 {
                        shown.push(*r);
                    }
                }
            }
            if shown.len() == before || shown.len() >= 40 {
                break;
            }
        }
        shown.sort_by_key(|r| (kinds.iter().position(|k| *k == r.kind), r.class, r.case));
        println!("\nexample failures ({} of {}):", shown.len(), failed.len());
        for r in shown {
            println!("- [{}] {} | {} | `{}` | {}", class_name(r.class), r.kind, r.desc, r.cmd, r.detail);
        }
    }
    failed.len()
}
