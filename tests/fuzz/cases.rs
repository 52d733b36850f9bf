//! The case list: per file kind, seeded mutations of one healthy file and every command that reads that
//! kind; the command-line sizes; outputs that already exist; and the focused cases present whatever the
//! seed.

use std::collections::{BTreeMap, HashSet};

use super::fixtures::{FIXTURE_STEPS, SEQ_LEN};
use super::mutate::{self, Edit, Gguf, Rng};

/// A command-line argument: literal text, a path into the fixtures (resolved to the case's mutated copy
/// when its first component was copied), or a path in the case's work directory.
#[derive(Clone)]
pub enum Arg {
    Lit(String),
    Fix(String),
    Work(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Prune,
    Train,
}

/// What a successful command must have produced, and what a failed one must not have left behind.
#[derive(Clone)]
pub enum Out {
    /// Nothing but the exit status is checked (generation prints sampled text).
    Nothing,
    /// One JSON object on stdout whose `mean_nll` / `perplexity` values are finite numbers.
    Json,
    /// `shear eval --tasks --json`: every accuracy a number in [0, 1], every document counted.
    TaskJson,
    /// Tables on stdout with no NaN or infinite values.
    Table,
    /// A new model directory (work-relative), with a tokenizer unless `init --config JSON` wrote it.
    Model { dir: String, tokenizer: bool },
    /// A new corpus directory (work-relative).
    Corpus(String),
    /// SVG charts in a new directory (work-relative).
    Charts(String),
    /// A new run directory (work-relative) that must reach `steps`.
    Run { dir: String, steps: usize },
    /// A fixture run continued in place (its copy) to `steps`.
    Resume { dir: String, steps: usize },
    /// An output that exists before the command (work-relative): it must be refused and left as it was.
    Existing(String),
}

/// An input the command reads whose validity the harness judges itself: a command that succeeds on an
/// invalid one is silently wrong.
#[derive(Clone)]
pub enum Input {
    /// A model directory (fixture-relative): config, weights and tokenizer.
    Model(String),
    /// A corpus directory (fixture-relative) read with a model of the fixture vocabulary.
    Corpus(String),
    /// A run's checkpoint tensors (fixture-relative run), those whose names start with one of the prefixes.
    Checkpoint(String, Vec<&'static str>),
    /// The mask snapshot that `inspect` reads (newest, or `--step`).
    Masks(String, Option<usize>),
}

#[derive(Clone)]
pub struct Cmd {
    pub name: String,
    pub args: Vec<Arg>,
    pub out: Out,
    pub reads: Vec<Input>,
}

#[derive(Clone)]
pub struct Case {
    pub kind: &'static str,
    pub desc: String,
    /// Edits of fixture-relative files; their first components are copied into each command's directory.
    pub edits: Vec<(String, Edit)>,
    /// Fixture entries to copy although nothing in them is edited (runs continued in place).
    pub copies: Vec<String>,
    /// Files created in the work directory first (work-relative), e.g. an output that already exists.
    pub setup: Vec<(String, Vec<u8>)>,
    pub cmds: Vec<Cmd>,
    /// A failure must name this in its error line.
    pub must_name: Option<&'static str>,
}

// ------------------------------------------------------------------------------------------- commands

fn lit(s: &str) -> Arg {
    Arg::Lit(s.to_string())
}
fn fix(s: &str) -> Arg {
    Arg::Fix(s.to_string())
}
fn work(s: &str) -> Arg {
    Arg::Work(s.to_string())
}
fn lits(v: &[&str]) -> Vec<Arg> {
    v.iter().map(|s| lit(s)).collect()
}

fn cmd(name: &str, args: Vec<Arg>, out: Out, reads: Vec<Input>) -> Cmd {
    Cmd { name: name.to_string(), args, out, reads }
}

pub fn eval_text(model: &str) -> Cmd {
    let mut a = vec![lit("eval"), lit("--model"), fix(model), lit("--text"), fix("text.txt")];
    a.extend(lits(&["--seq-len", "16", "--json"]));
    cmd("eval --text", a, Out::Json, vec![Input::Model(model.into())])
}

pub fn eval_held_out(model: &str) -> Cmd {
    let mut a = vec![lit("eval"), lit("--model"), fix(model), lit("--text"), fix("text.txt")];
    a.extend(lits(&["--seq-len", "16", "--held-out", "0.1", "--max-tokens", "200", "--json"]));
    cmd("eval --held-out", a, Out::Json, vec![Input::Model(model.into())])
}

pub fn eval_corpus(model: &str, corpus: &str) -> Cmd {
    let mut a = vec![lit("eval"), lit("--model"), fix(model), lit("--data"), fix(corpus)];
    a.extend(lits(&["--max-sequences", "2", "--json"]));
    cmd("eval --data", a, Out::Json, vec![Input::Model(model.into()), Input::Corpus(corpus.into())])
}

pub fn generate(model: &str) -> Cmd {
    let mut a = vec![lit("generate"), lit("--model"), fix(model)];
    a.extend(lits(&["--prompt", "ab ba", "--max-new-tokens", "4"]));
    cmd("generate", a, Out::Nothing, vec![Input::Model(model.into())])
}

pub fn convert_hf(model: &str) -> Cmd {
    let a = vec![lit("convert"), lit("--hf"), fix(model), lit("--out"), work("out")];
    cmd("convert --hf", a, Out::Model { dir: "out".into(), tokenizer: true }, vec![Input::Model(model.into())])
}

pub fn convert_gguf() -> Cmd {
    let a = vec![lit("convert"), lit("--gguf"), fix("tiny.gguf"), lit("--out"), work("out")];
    cmd("convert --gguf", a, Out::Model { dir: "out".into(), tokenizer: true }, vec![])
}

/// A short pruning run of the tiny model (a step takes milliseconds), checkpointed and evaluated every step.
pub fn prune_on(model: &str, target: &str, data: &str, steps: usize) -> Vec<Arg> {
    let mut a = vec![lit("prune"), lit("--model"), fix(model), lit("--target"), fix(target), lit("--data"), fix(data)];
    a.extend([lit("--out"), work("run"), lit("--steps"), Arg::Lit(steps.to_string())]);
    a.extend(lits(&["--batch-size", "2", "--seq-len", &SEQ_LEN.to_string(), "--eval-interval", "1"]));
    a.extend(lits(&["--eval-tokens", "64", "--checkpoint-interval", "1"]));
    a
}

pub fn prune_text(model: &str, target: &str) -> Cmd {
    let out = Out::Run { dir: "run".into(), steps: 2 };
    cmd("prune --data TEXT", prune_on(model, target, "text.txt", 2), out, vec![Input::Model(model.into())])
}

/// One-shot Wanda-sp pruning calibrated on the text (the method that reads model, target and data).
pub fn oneshot_text(model: &str, target: &str) -> Cmd {
    let mut a = vec![lit("oneshot"), lit("--method"), lit("wanda-sp"), lit("--model"), fix(model)];
    a.extend([lit("--target"), fix(target), lit("--data"), fix("text.txt"), lit("--out"), work("out")]);
    a.extend(lits(&["--seq-len", &SEQ_LEN.to_string(), "--calibration-tokens", "64"]));
    cmd("oneshot --data TEXT", a, Out::Model { dir: "out".into(), tokenizer: true }, vec![Input::Model(model.into())])
}

pub fn prune_corpus(model: &str, corpus: &str) -> Cmd {
    let out = Out::Run { dir: "run".into(), steps: 2 };
    let reads = vec![Input::Model(model.into()), Input::Corpus(corpus.into())];
    cmd("prune --data CORPUS", prune_on(model, "target.toml", corpus, 2), out, reads)
}

/// A short continued pre-training run, checkpointed and evaluated every step.
pub fn train_on(model: &str, corpus: &str, reference: &str, steps: usize) -> Vec<Arg> {
    let mut a = vec![lit("train"), lit("--model"), fix(model), lit("--data"), fix(corpus), lit("--out"), work("run")];
    a.extend([lit("--steps"), Arg::Lit(steps.to_string()), lit("--reference-losses"), fix(reference)]);
    a.extend(lits(&[
        "--batch-size",
        "2",
        "--eval-interval",
        "1",
        "--eval-sequences",
        "2",
        "--checkpoint-interval",
        "1",
    ]));
    a
}

pub fn train(model: &str, corpus: &str, reference: &str) -> Cmd {
    let out = Out::Run { dir: "run".into(), steps: 2 };
    let reads = vec![Input::Model(model.into()), Input::Corpus(corpus.into())];
    cmd("train", train_on(model, corpus, reference, 2), out, reads)
}

pub fn init_config(model: &str) -> Cmd {
    let a = vec![lit("init"), lit("--config"), fix(&format!("{model}/config.json")), lit("--out"), work("out")];
    cmd("init --config JSON", a, Out::Model { dir: "out".into(), tokenizer: false }, vec![])
}

pub fn init_like(model: &str, target: &str) -> Cmd {
    let a = vec![lit("init"), lit("--config"), fix(target), lit("--like"), fix(model), lit("--out"), work("out")];
    cmd("init --config TOML --like", a, Out::Model { dir: "out".into(), tokenizer: true }, vec![])
}

pub fn corpus_build(model: &str) -> Cmd {
    let mut a = vec![lit("corpus"), lit("build"), lit("--raw"), fix("raw"), lit("--model"), fix(model)];
    a.extend([lit("--out"), work("corpus"), lit("--seq-len"), Arg::Lit(SEQ_LEN.to_string())]);
    cmd("corpus build", a, Out::Corpus("corpus".into()), vec![])
}

pub fn inspect(run: &str, step: Option<usize>) -> Cmd {
    let mut a = vec![lit("inspect"), lit("--run"), fix(run)];
    let mut name = "inspect".to_string();
    if let Some(s) = step {
        a.extend([lit("--step"), Arg::Lit(s.to_string())]);
        name = format!("inspect --step {s}");
    }
    cmd(&name, a, Out::Table, vec![Input::Masks(run.into(), step)])
}

pub fn report(run: &str) -> Cmd {
    let a = vec![lit("report"), lit("--run"), fix(run), lit("--out"), work("charts")];
    cmd("report", a, Out::Charts("charts".into()), vec![])
}

pub fn materialize(run: &str) -> Cmd {
    let a = vec![lit("materialize"), lit("--run"), fix(run), lit("--out"), work("out")];
    let reads = vec![Input::Checkpoint(run.into(), vec!["weights.", "log_alpha."])];
    cmd("materialize", a, Out::Model { dir: "out".into(), tokenizer: true }, reads)
}

pub fn export(run: &str) -> Cmd {
    let a = vec![lit("export"), lit("--run"), fix(run), lit("--out"), work("out")];
    cmd(
        "export",
        a,
        Out::Model { dir: "out".into(), tokenizer: true },
        vec![Input::Checkpoint(run.into(), vec!["model.", "lm_head."])],
    )
}

/// Continue a fixture run two steps past its checkpoint.
pub fn resume(run: &str, kind: RunKind) -> Cmd {
    let steps = FIXTURE_STEPS + 2;
    let verb = if kind == RunKind::Prune { "prune" } else { "train" };
    let a = vec![lit(verb), lit("--resume"), lit("--out"), fix(run), lit("--steps"), Arg::Lit(steps.to_string())];
    let out = Out::Resume { dir: run.into(), steps };
    cmd(&format!("{verb} --resume"), a, out, vec![Input::Checkpoint(run.into(), vec![""])])
}

// --------------------------------------------------------------------------------------------- kinds

/// The healthy bytes the mutators start from, and the parsed GGUF.
pub struct Healthy {
    pub files: BTreeMap<String, Vec<u8>>,
    pub gguf: Gguf,
}

impl Healthy {
    fn text(&self, f: &str) -> &str {
        std::str::from_utf8(&self.files[f]).unwrap()
    }
    fn bytes(&self, f: &str) -> &[u8] {
        &self.files[f]
    }
}

/// Every fixture file a mutation starts from.
pub fn healthy_files() -> Vec<String> {
    let mut v: Vec<String> = [
        "model/model.safetensors",
        "model/config.json",
        "model/tokenizer.json",
        "sharded/model-00001-of-00002.safetensors",
        "sharded/model-00002-of-00002.safetensors",
        "sharded/model.safetensors.index.json",
        "pruned/model.safetensors",
        "pruned/config.json",
        "target.toml",
        "text.txt",
        "reference.json",
        "corpus/manifest.json",
        "prune-run/run.json",
        "prune-corpus-run/run.json",
        "train-run/run.json",
        "prune-run/checkpoint/state.json",
        "prune-corpus-run/checkpoint/state.json",
        "train-run/checkpoint/state.json",
        "prune-run/checkpoint/state.safetensors",
        "train-run/checkpoint/state.safetensors",
        "prune-run/metrics.jsonl",
        "prune-run/evals.jsonl",
        "prune-corpus-run/evals.jsonl",
        "train-run/metrics.jsonl",
        "train-run/evals.jsonl",
        "tasks/arc_easy/rc_0shot/config.json",
        "tasks/arc_easy/rc_0shot/requests.jsonl.gz",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for s in 1..=FIXTURE_STEPS {
        v.push(format!("prune-run/masks/step_{s:06}.safetensors"));
    }
    for split in ["train", "eval"] {
        for d in shear::data::corpus::DOMAINS {
            v.push(format!("corpus/{split}/{d}.bin"));
        }
    }
    for d in shear::data::corpus::DOMAINS {
        v.push(format!("raw/{d}.jsonl"));
    }
    v
}

/// A file kind: its name in the table, its share of the mutated inputs, and its generator.
pub struct Kind {
    pub name: &'static str,
    pub weight: usize,
    pub gen: fn(&mut Rng, &Healthy) -> Case,
}

fn case(kind: &'static str, desc: String, edits: Vec<(String, Edit)>, cmds: Vec<Cmd>) -> Case {
    Case { kind, desc, edits, copies: vec![], setup: vec![], cmds, must_name: None }
}

fn model_cmds(model: &str) -> Vec<Cmd> {
    let target = if model == "pruned" { "target-pruned.toml" } else { "target.toml" };
    vec![
        eval_text(model),
        generate(model),
        convert_hf(model),
        prune_text(model, target),
        oneshot_text(model, target),
        train(model, "corpus", "reference.json"),
    ]
}

fn gen_safetensors(rng: &mut Rng, h: &Healthy) -> Case {
    let (model, file) = *rng.pick(&[
        ("model", "model/model.safetensors"),
        ("model", "model/model.safetensors"),
        ("sharded", "sharded/model-00001-of-00002.safetensors"),
        ("sharded", "sharded/model-00002-of-00002.safetensors"),
        ("pruned", "pruned/model.safetensors"),
    ]);
    let b = h.bytes(file);
    let (desc, out) = match rng.below(10) {
        0..=2 => mutate::safetensors_nonfinite(rng, b, None),
        3..=6 => mutate::safetensors_header(rng, b),
        _ => mutate::bytes(rng, b, mutate::Safetensors::header_len(b)),
    };
    case("model safetensors", format!("{file}: {desc}"), vec![(file.into(), Edit::Write(out))], model_cmds(model))
}

fn gen_index(rng: &mut Rng, h: &Healthy) -> Case {
    let f = "sharded/model.safetensors.index.json";
    let (desc, out) = mutate::json(rng, h.text(f));
    let cmds = vec![eval_text("sharded"), convert_hf("sharded"), prune_text("sharded", "target.toml")];
    case("safetensors index", format!("{f}: {desc}"), vec![(f.into(), Edit::Write(out))], cmds)
}

fn config_cmds(model: &str) -> Vec<Cmd> {
    let mut c = model_cmds(model);
    let target = if model == "pruned" { "target-pruned.toml" } else { "target.toml" };
    c.extend([init_config(model), init_like(model, target), corpus_build(model)]);
    c
}

fn gen_config(rng: &mut Rng, h: &Healthy) -> Case {
    let model = *rng.pick(&["model", "model", "pruned"]);
    let f = format!("{model}/config.json");
    let (desc, edit) = if rng.chance(8) {
        mutate::text_like(rng, h.text(&f))
    } else {
        let (d, b) = mutate::json(rng, h.text(&f));
        (d, Edit::Write(b))
    };
    case("config.json", format!("{f}: {desc}"), vec![(f.clone(), edit)], config_cmds(model))
}

fn gen_tokenizer(rng: &mut Rng, h: &Healthy) -> Case {
    let f = "model/tokenizer.json";
    let (desc, out) = mutate::json(rng, h.text(f));
    let cmds = vec![
        eval_text("model"),
        generate("model"),
        convert_hf("model"),
        corpus_build("model"),
        prune_text("model", "target.toml"),
        oneshot_text("model", "target.toml"),
        init_like("model", "target.toml"),
    ];
    case("tokenizer.json", format!("{f}: {desc}"), vec![(f.into(), Edit::Write(out))], cmds)
}

fn gen_gguf(rng: &mut Rng, h: &Healthy) -> Case {
    let (desc, out) = if rng.chance(20) {
        let b = &h.gguf.bytes;
        // The metadata and tensor infos end where the data (aligned to 32) starts: about the first 10 kB.
        mutate::bytes(rng, b, b.len().min(12_000))
    } else {
        mutate::gguf(rng, &h.gguf)
    };
    case("gguf", format!("tiny.gguf: {desc}"), vec![("tiny.gguf".into(), Edit::Write(out))], vec![convert_gguf()])
}

fn gen_target(rng: &mut Rng, h: &Healthy) -> Case {
    let (desc, edit) = mutate::toml(rng, h.text("target.toml"));
    let cmds = vec![
        prune_text("model", "target.toml"),
        oneshot_text("model", "target.toml"),
        init_like("model", "target.toml"),
    ];
    case("target toml", format!("target.toml: {desc}"), vec![("target.toml".into(), edit)], cmds)
}

fn gen_text(rng: &mut Rng, h: &Healthy) -> Case {
    let (desc, edit) = mutate::training_text(rng, h.text("text.txt"));
    let cmds = vec![
        eval_text("model"),
        eval_held_out("model"),
        prune_text("model", "target.toml"),
        oneshot_text("model", "target.toml"),
    ];
    case("text", format!("text.txt: {desc}"), vec![("text.txt".into(), edit)], cmds)
}

pub fn eval_tasks(model: &str) -> Cmd {
    let mut a = vec![lit("eval"), lit("--model"), fix(model), lit("--tasks"), lit("arc_easy")];
    a.extend([lit("--tasks-dir"), fix("tasks"), lit("--json")]);
    cmd("eval --tasks", a, Out::TaskJson, vec![Input::Model(model.into())])
}

/// The gzip bytes themselves, or one line of the decompressed requests (recompressed), or the config.
fn gen_task_requests(rng: &mut Rng, h: &Healthy) -> Case {
    let dir = "tasks/arc_easy/rc_0shot";
    let (f, desc, edit) = match rng.below(10) {
        0..=3 => {
            let f = format!("{dir}/requests.jsonl.gz");
            let (desc, out) = mutate::bytes(rng, h.bytes(&f), 32);
            (f, format!("gzip bytes: {desc}"), Edit::Write(out))
        }
        4..=8 => {
            let f = format!("{dir}/requests.jsonl.gz");
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::MultiGzDecoder::new(h.bytes(&f)), &mut text).unwrap();
            let (desc, edit) = if rng.chance(15) {
                let mut b = text.into_bytes();
                let at = rng.below(b.len());
                b[at] = 0xff;
                (format!("byte {at} of the text = 0xff (not UTF-8)"), Edit::Write(b))
            } else {
                mutate::jsonl(rng, &text)
            };
            let edit = match edit {
                Edit::Write(b) => Edit::Write(super::fixtures::gzip(&b)),
                other => other,
            };
            (f, format!("requests: {desc}"), edit)
        }
        _ => {
            let f = format!("{dir}/config.json");
            let (desc, out) = mutate::json(rng, h.text(&f));
            (f, desc, Edit::Write(out))
        }
    };
    case("task requests", format!("{f}: {desc}"), vec![(f, edit)], vec![eval_tasks("model"), eval_tasks("pruned")])
}

fn corpus_cmds() -> Vec<Cmd> {
    vec![train("pruned", "corpus", "reference.json"), prune_corpus("model", "corpus"), eval_corpus("model", "corpus")]
}

fn gen_manifest(rng: &mut Rng, h: &Healthy) -> Case {
    let f = "corpus/manifest.json";
    let (desc, out) = mutate::json(rng, h.text(f));
    case("corpus manifest", format!("{f}: {desc}"), vec![(f.into(), Edit::Write(out))], corpus_cmds())
}

/// A shard edit; half of the time with the manifest's checksum (and sizes) updated to match, so the
/// edit gets past the checksum to whatever reads the tokens.
fn gen_shard(rng: &mut Rng, h: &Healthy) -> Case {
    let split = *rng.pick(&["train", "eval"]);
    let domain = *rng.pick(&shear::data::corpus::DOMAINS);
    let f = format!("corpus/{split}/{domain}.bin");
    let b = h.bytes(&f);
    let mut out = b.to_vec();
    let desc = match rng.below(4) {
        0 => {
            let i = rng.below(out.len() / 2);
            let v = *rng.pick(&[259u16, 0x7fff, 0xffff]);
            out[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
            format!("token {i} = {v} (the vocabulary has 259)")
        }
        1 => {
            let keep = 2 * SEQ_LEN * rng.below(out.len() / (2 * SEQ_LEN));
            out.truncate(keep);
            format!("cut to {} whole sequences", keep / (2 * SEQ_LEN))
        }
        2 => {
            out.extend(&b[..2 * SEQ_LEN]);
            "one more sequence appended".into()
        }
        _ => {
            let (d, o) = mutate::bytes(rng, b, 0);
            out = o;
            d
        }
    };
    let mut edits = vec![];
    let mut desc = format!("{f}: {desc}");
    if rng.chance(50) {
        let mut m: serde_json::Value = serde_json::from_slice(h.bytes("corpus/manifest.json")).unwrap();
        let s = &mut m["domains"][domain][split];
        s["checksum"] = format!("{:016x}", shear::data::corpus::fnv1a64(&out)).into();
        if out.len().is_multiple_of(2 * SEQ_LEN) {
            s["sequences"] = (out.len() / (2 * SEQ_LEN)).into();
            s["tokens"] = (out.len() / 2).into();
        }
        edits.push(("corpus/manifest.json".to_string(), Edit::Write(serde_json::to_vec_pretty(&m).unwrap())));
        desc.push_str(", manifest updated to match");
    }
    edits.push((f, Edit::Write(out)));
    case("corpus shard", desc, edits, corpus_cmds())
}

/// The extracted documents `corpus build --raw` packs (one JSON record per line).
fn gen_raw(rng: &mut Rng, h: &Healthy) -> Case {
    let d = *rng.pick(&shear::data::corpus::DOMAINS);
    let f = format!("raw/{d}.jsonl");
    let (desc, edit) = if rng.chance(15) { mutate::text_like(rng, h.text(&f)) } else { mutate::jsonl(rng, h.text(&f)) };
    case("raw documents", format!("{f}: {desc}"), vec![(f, edit)], vec![corpus_build("model")])
}

fn gen_reference(rng: &mut Rng, h: &Healthy) -> Case {
    let (desc, out) = mutate::json(rng, h.text("reference.json"));
    let cmds = vec![train("pruned", "corpus", "reference.json"), prune_reference()];
    case("reference losses", format!("reference.json: {desc}"), vec![("reference.json".into(), Edit::Write(out))], cmds)
}

fn prune_reference() -> Cmd {
    let mut c = prune_corpus("model", "corpus");
    c.args.extend([lit("--reference-losses"), fix("reference.json")]);
    c.name = "prune --data CORPUS --reference-losses".into();
    c
}

fn prune_run_cmds(run: &str) -> Vec<Cmd> {
    vec![inspect(run, None), report(run), materialize(run), resume(run, RunKind::Prune)]
}

fn train_run_cmds() -> Vec<Cmd> {
    vec![export("train-run"), resume("train-run", RunKind::Train), report("train-run")]
}

fn json_case(rng: &mut Rng, h: &Healthy, kind: &'static str, f: &str, cmds: Vec<Cmd>) -> Case {
    let (desc, out) = mutate::json(rng, h.text(f));
    case(kind, format!("{f}: {desc}"), vec![(f.into(), Edit::Write(out))], cmds)
}

/// Sometimes a checkpoint file is simply gone (a crash between writes, a careless clean-up).
fn maybe_removed(rng: &mut Rng, kind: &'static str, f: &str, cmds: &[Cmd]) -> Option<Case> {
    rng.chance(5).then(|| case(kind, format!("{f}: removed"), vec![(f.into(), Edit::Remove)], cmds.to_vec()))
}

fn gen_prune_spec(rng: &mut Rng, h: &Healthy) -> Case {
    let run = *rng.pick(&["prune-run", "prune-corpus-run"]);
    json_case(rng, h, "prune run.json", &format!("{run}/run.json"), prune_run_cmds(run))
}

fn gen_train_spec(rng: &mut Rng, h: &Healthy) -> Case {
    json_case(rng, h, "train run.json", "train-run/run.json", train_run_cmds())
}

/// The readers of a checkpoint (`inspect` and `report` read the mask snapshots and logs instead).
fn checkpoint_readers(run: &str, kind: RunKind) -> Vec<Cmd> {
    match kind {
        RunKind::Prune => vec![materialize(run), resume(run, kind)],
        RunKind::Train => vec![export(run), resume(run, kind)],
    }
}

fn gen_prune_state(rng: &mut Rng, h: &Healthy) -> Case {
    let run = *rng.pick(&["prune-run", "prune-corpus-run", "prune-corpus-run"]);
    let cmds = checkpoint_readers(run, RunKind::Prune);
    let f = format!("{run}/checkpoint/state.json");
    maybe_removed(rng, "prune state.json", &f, &cmds).unwrap_or_else(|| json_case(rng, h, "prune state.json", &f, cmds))
}

fn gen_train_state(rng: &mut Rng, h: &Healthy) -> Case {
    let cmds = checkpoint_readers("train-run", RunKind::Train);
    let f = "train-run/checkpoint/state.json";
    maybe_removed(rng, "train state.json", f, &cmds).unwrap_or_else(|| json_case(rng, h, "train state.json", f, cmds))
}

fn tensors_case(rng: &mut Rng, h: &Healthy, kind: &'static str, f: &str, cmds: Vec<Cmd>) -> Case {
    if let Some(c) = maybe_removed(rng, kind, f, &cmds) {
        return c;
    }
    let b = h.bytes(f);
    let (desc, out) = match rng.below(10) {
        0..=3 => mutate::safetensors_nonfinite(rng, b, None),
        4..=7 => mutate::safetensors_header(rng, b),
        _ => mutate::bytes(rng, b, mutate::Safetensors::header_len(b)),
    };
    case(kind, format!("{f}: {desc}"), vec![(f.into(), Edit::Write(out))], cmds)
}

fn gen_prune_tensors(rng: &mut Rng, h: &Healthy) -> Case {
    let cmds = checkpoint_readers("prune-run", RunKind::Prune);
    tensors_case(rng, h, "prune checkpoint tensors", "prune-run/checkpoint/state.safetensors", cmds)
}

fn gen_train_tensors(rng: &mut Rng, h: &Healthy) -> Case {
    let cmds = checkpoint_readers("train-run", RunKind::Train);
    tensors_case(rng, h, "train checkpoint tensors", "train-run/checkpoint/state.safetensors", cmds)
}

fn gen_masks(rng: &mut Rng, h: &Healthy) -> Case {
    // Mostly the newest snapshot, the one `inspect` and `report` read by default.
    let step = if rng.chance(70) { FIXTURE_STEPS } else { 1 + rng.below(FIXTURE_STEPS) };
    let f = format!("prune-run/masks/step_{step:06}.safetensors");
    let cmds = vec![inspect("prune-run", None), inspect("prune-run", Some(step)), report("prune-run")];
    if rng.chance(10) {
        let (desc, edit) = if rng.chance(50) {
            ("removed".to_string(), Edit::Remove)
        } else {
            ("emptied".to_string(), Edit::Write(vec![]))
        };
        return case("masks snapshot", format!("{f}: {desc}"), vec![(f, edit)], cmds);
    }
    let b = h.bytes(&f);
    let (desc, out) = match rng.below(10) {
        0..=3 => mutate::safetensors_nonfinite(rng, b, Some(&["log_alpha."])),
        4..=7 => mutate::safetensors_header(rng, b),
        _ => mutate::bytes(rng, b, mutate::Safetensors::header_len(b)),
    };
    case("masks snapshot", format!("{f}: {desc}"), vec![(f, Edit::Write(out))], cmds)
}

fn gen_metrics(rng: &mut Rng, h: &Healthy) -> Case {
    let (run, cmds) = if rng.chance(50) {
        ("prune-run", vec![report("prune-run"), resume("prune-run", RunKind::Prune)])
    } else {
        ("train-run", vec![report("train-run"), resume("train-run", RunKind::Train)])
    };
    let f = format!("{run}/metrics.jsonl");
    let (desc, edit) = mutate::jsonl(rng, h.text(&f));
    case("metrics.jsonl", format!("{f}: {desc}"), vec![(f, edit)], cmds)
}

fn gen_evals(rng: &mut Rng, h: &Healthy) -> Case {
    let (run, cmds) = *rng.pick(&[
        ("prune-run", RunKind::Prune),
        ("prune-corpus-run", RunKind::Prune),
        ("train-run", RunKind::Train),
    ]);
    let cmds = vec![report(run), resume(run, cmds)];
    let f = format!("{run}/evals.jsonl");
    let (desc, edit) = mutate::jsonl(rng, h.text(&f));
    case("evals.jsonl", format!("{f}: {desc}"), vec![(f, edit)], cmds)
}

pub fn kinds() -> Vec<Kind> {
    vec![
        Kind { name: "model safetensors", weight: 60, gen: gen_safetensors },
        Kind { name: "safetensors index", weight: 20, gen: gen_index },
        Kind { name: "config.json", weight: 50, gen: gen_config },
        Kind { name: "tokenizer.json", weight: 30, gen: gen_tokenizer },
        Kind { name: "gguf", weight: 70, gen: gen_gguf },
        Kind { name: "target toml", weight: 30, gen: gen_target },
        Kind { name: "text", weight: 15, gen: gen_text },
        Kind { name: "corpus manifest", weight: 40, gen: gen_manifest },
        Kind { name: "corpus shard", weight: 30, gen: gen_shard },
        Kind { name: "raw documents", weight: 15, gen: gen_raw },
        Kind { name: "reference losses", weight: 10, gen: gen_reference },
        Kind { name: "prune run.json", weight: 30, gen: gen_prune_spec },
        Kind { name: "train run.json", weight: 25, gen: gen_train_spec },
        Kind { name: "prune state.json", weight: 35, gen: gen_prune_state },
        Kind { name: "train state.json", weight: 30, gen: gen_train_state },
        Kind { name: "prune checkpoint tensors", weight: 30, gen: gen_prune_tensors },
        Kind { name: "train checkpoint tensors", weight: 25, gen: gen_train_tensors },
        Kind { name: "masks snapshot", weight: 30, gen: gen_masks },
        Kind { name: "metrics.jsonl", weight: 25, gen: gen_metrics },
        Kind { name: "evals.jsonl", weight: 20, gen: gen_evals },
        Kind { name: "task requests", weight: 30, gen: gen_task_requests },
    ]
}

/// About `total` mutated inputs from `seed`, spread over the kinds by weight; within a kind each is distinct
/// (by description), and each kind draws from its own stream so that one kind's count does not shift another's.
pub fn random_cases(seed: u64, total: usize, h: &Healthy) -> Vec<Case> {
    let kinds = kinds();
    let weights: usize = kinds.iter().map(|k| k.weight).sum();
    let mut out = vec![];
    for (ki, k) in kinds.iter().enumerate() {
        let n = (total * k.weight).div_ceil(weights).max(1);
        let mut seen = HashSet::new();
        let mut rng = Rng::new(seed ^ (0x51ed_270b_a3f1_u64.wrapping_mul(ki as u64 + 1)));
        // Some kinds have few distinct edits: stop after a bounded number of repeats.
        let mut tries = 0;
        while seen.len() < n && tries < 20 * n {
            tries += 1;
            let c = (k.gen)(&mut rng, h);
            if seen.insert(c.desc.clone()) {
                out.push(c);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------- focused

/// Cases present whatever the seed: the GGUF metadata that crashed the converter (head_count = 0,
/// general.alignment = 0), a Llama 3 RoPE-scaled config that must be refused by name, `init` with
/// absurd sizes, and files of 2^31 bytes.
pub fn focused_cases(h: &Healthy) -> Vec<Case> {
    use candle_core::quantized::gguf_file::Value as V;
    let mut out = vec![];
    for (key, v) in [("llama.attention.head_count", V::U32(0)), ("general.alignment", V::U32(0))] {
        let bytes = h.gguf.with_metadata(key, Some(v));
        let desc = format!("tiny.gguf: {key} = 0 (focused)");
        out.push(case("gguf", desc, vec![("tiny.gguf".into(), Edit::Write(bytes))], vec![convert_gguf()]));
    }
    let mut cfg: serde_json::Value = serde_json::from_slice(h.bytes("model/config.json")).unwrap();
    cfg["rope_parameters"] = serde_json::json!({
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
    });
    let edit = Edit::Write(serde_json::to_vec_pretty(&cfg).unwrap());
    let mut c = case(
        "config.json",
        "model/config.json: rope_parameters.rope_type = llama3 (focused)".into(),
        vec![("model/config.json".into(), edit)],
        config_cmds("model"),
    );
    c.must_name = Some("rope_type");
    out.push(c);
    // `init` allocates what the config asks for: absurd sizes must be refused before that.
    for (key, value) in [
        ("hidden_size", 1u64 << 31),
        ("intermediate_size", 1 << 31),
        ("num_hidden_layers", 1 << 31),
        ("vocab_size", 1 << 40),
        ("num_attention_heads", 1 << 31),
        ("head_dim", 1 << 32),
    ] {
        let mut cfg: serde_json::Value = serde_json::from_slice(h.bytes("model/config.json")).unwrap();
        cfg[key] = value.into();
        let edit = Edit::Write(serde_json::to_vec_pretty(&cfg).unwrap());
        let desc = format!("model/config.json: {key} = {value} (focused)");
        out.push(case("config.json", desc, vec![("model/config.json".into(), edit)], vec![init_config("model")]));
    }
    // Files of 2^31 bytes (sparse): refused, not read into memory and parsed for seconds.
    let huge = Edit::SetLen(1 << 31);
    let cmds = vec![eval_text("model"), init_config("model")];
    out.push(case(
        "config.json",
        "model/config.json: 2^31 bytes (focused)".into(),
        vec![("model/config.json".into(), huge.clone())],
        cmds,
    ));
    let cmds = vec![prune_text("model", "target.toml")];
    out.push(case("target toml", "target.toml: 2^31 bytes (focused)".into(), vec![("target.toml".into(), huge)], cmds));
    out
}

// -------------------------------------------------------------------------------------------- CLI

/// `c` with `flag`'s value replaced (or the flag added), as `--flag=value` so that a negative value is a
/// value, not an option.
fn with_flag(mut c: Cmd, flag: &str, value: &str) -> Cmd {
    let at = c.args.iter().position(|a| matches!(a, Arg::Lit(s) if s == flag));
    let joined = lit(&format!("{flag}={value}"));
    match at {
        Some(i) => {
            c.args.remove(i + 1);
            c.args[i] = joined;
        }
        None => c.args.push(joined),
    }
    let shown =
        if value.len() > 24 { format!("{}… ({} chars)", &value[..20], value.len()) } else { value.to_string() };
    c.name = format!("{} {flag}={shown}", c.name);
    c
}

const BIG: &[&str] = &["0", "2147483648", "1099511627776", "18446744073709551615"];
const REAL: &[&str] = &["NaN", "inf", "-inf", "-1", "0", "1e308", "-1e308", "1e-320"];

/// Absurd sizes and rates on the command line, over healthy fixtures: the flag matrix is fixed, not
/// sampled, so every one is tried on every run.
pub fn cli_cases() -> Vec<Case> {
    let mut cmds: Vec<Cmd> = vec![];
    let matrix = |base: &Cmd, flag: &str, values: &[&str], cmds: &mut Vec<Cmd>| {
        for v in values {
            cmds.push(with_flag(base.clone(), flag, v));
        }
    };
    let prune = prune_text("model", "target.toml");
    // --steps: never a huge count (that is a long run, not a bad input).
    matrix(&prune, "--steps", &["0", "-1", "18446744073709551616"], &mut cmds);
    for f in ["--batch-size", "--grad-accum"] {
        matrix(&prune, f, BIG, &mut cmds);
    }
    matrix(&prune, "--seq-len", &["0", "1", "2", "2147483648", "18446744073709551615"], &mut cmds);
    for f in ["--lr", "--mask-lr", "--lambda-lr", "--max-grad-norm"] {
        matrix(&prune, f, REAL, &mut cmds);
    }
    matrix(&prune, "--eval-fraction", &["NaN", "-1", "0", "1", "2", "inf", "1e-320"], &mut cmds);
    for f in
        ["--lr-warmup-steps", "--lagrangian-warmup-steps", "--eval-interval", "--eval-tokens", "--checkpoint-interval"]
    {
        matrix(&prune, f, &["0", "1", "18446744073709551615"], &mut cmds);
    }
    matrix(&prune, "--seed", &["18446744073709551615"], &mut cmds);

    let domains = shear::data::corpus::DOMAINS;
    let props = |f: &dyn Fn(usize) -> String| {
        domains.iter().enumerate().map(|(i, d)| format!("{d}={}", f(i))).collect::<Vec<_>>().join(",")
    };
    let proportions = vec![
        props(&|_| "1e308".into()),
        props(&|_| "0".into()),
        props(&|i| if i == 0 { "-1".into() } else { "0.1".into() }),
        props(&|i| if i == 0 { "NaN".into() } else { "0.1".into() }),
        props(&|i| if i == 0 { "inf".into() } else { "0.1".into() }),
        props(&|_| "1e-320".into()),
        domains[1..].iter().map(|d| format!("{d}=0.2")).collect::<Vec<_>>().join(","),
        format!("{},pile=0.5", props(&|_| "0.1".into())),
        "cc".into(),
        String::new(),
    ];
    let pc = prune_corpus("model", "corpus");
    let props_refs: Vec<&str> = proportions.iter().map(|s| s.as_str()).collect();
    matrix(&pc, "--proportions", &props_refs, &mut cmds);
    matrix(&pc, "--seq-len", &["8", "32"], &mut cmds);
    matrix(&pc, "--update", &["paper", "constant", "x"], &mut cmds);

    let tr = train("pruned", "corpus", "reference.json");
    matrix(&tr, "--steps", &["0", "-1"], &mut cmds);
    for f in ["--batch-size", "--grad-accum", "--eval-sequences"] {
        matrix(&tr, f, BIG, &mut cmds);
    }
    for f in ["--lr", "--weight-decay", "--max-grad-norm"] {
        matrix(&tr, f, REAL, &mut cmds);
    }
    for f in ["--warmup-steps", "--eval-interval", "--checkpoint-interval"] {
        matrix(&tr, f, &["0", "18446744073709551615"], &mut cmds);
    }
    matrix(&tr, "--proportions", &props_refs, &mut cmds);
    matrix(&tr, "--update", &["paper", "constant", "x"], &mut cmds);

    let ev = eval_text("model");
    matrix(&ev, "--seq-len", &["0", "1", "2", "18446744073709551615"], &mut cmds);
    matrix(&ev, "--max-tokens", &["0", "1", "18446744073709551615"], &mut cmds);
    matrix(&ev, "--held-out", &["NaN", "0", "1", "2", "-1", "inf", "1e-320"], &mut cmds);
    matrix(&ev, "--batch-size", BIG, &mut cmds);
    matrix(&ev, "--dtype", &["bf16", "f16", "f64", "x"], &mut cmds);
    let ec = eval_corpus("model", "corpus");
    matrix(&ec, "--max-sequences", &["0", "18446744073709551615"], &mut cmds);
    matrix(&ec, "--batch-size", BIG, &mut cmds);

    let g = generate("model");
    // Past the 256 positions of the tiny model's context.
    matrix(&g, "--max-new-tokens", &["0", "300", "100000", "18446744073709551615"], &mut cmds);
    matrix(&g, "--top-p", &["NaN", "0", "-1", "2", "inf"], &mut cmds);
    let sampled = with_flag(g.clone(), "--top-p", "0.9");
    matrix(&sampled, "--temperature", &["NaN", "0", "-1", "inf", "1e-320", "1e308"], &mut cmds);
    matrix(&g, "--dtype", &["bf16", "f16", "x"], &mut cmds);
    matrix(&g, "--seed", &["18446744073709551615"], &mut cmds);
    matrix(&g, "--prompt", &["", "\u{1}\u{7f}", &"ab ".repeat(400)], &mut cmds);

    let hf = convert_hf("model");
    matrix(&hf, "--shard-size-mb", &["0", "1", "18446744073709", "18446744073709551615"], &mut cmds);
    matrix(&hf, "--dtype", &["bf16", "f16", "f64", "x"], &mut cmds);
    let gg = convert_gguf();
    matrix(&gg, "--shard-size-mb", &["0", "18446744073709551615"], &mut cmds);
    matrix(&gg, "--dtype", &["bf16", "f16", "x"], &mut cmds);

    let cb = corpus_build("model");
    matrix(&cb, "--seq-len", &["0", "1", "2147483648", "18446744073709551615"], &mut cmds);
    matrix(&cb, "--eval-permille", &["0", "1000", "1001", "4294967295"], &mut cmds);
    matrix(&init_like("model", "target.toml"), "--seed", &["18446744073709551615"], &mut cmds);
    let mut bare_toml = init_like("model", "target.toml");
    bare_toml.args.retain(|a| !matches!(a, Arg::Lit(s) if s == "--like"));
    bare_toml.args.retain(|a| !matches!(a, Arg::Fix(s) if s == "model"));
    bare_toml.name = "init --config TOML (no --like)".into();
    cmds.push(bare_toml);

    matrix(&inspect("prune-run", None), "--step", &["0", "99", "18446744073709551615"], &mut cmds);
    for (run, kind) in
        [("prune-run", RunKind::Prune), ("prune-corpus-run", RunKind::Prune), ("train-run", RunKind::Train)]
    {
        for steps in ["0", "1", "3"] {
            let mut c = with_flag(resume(run, kind), "--steps", steps);
            let n: usize = steps.parse().unwrap();
            if let Out::Resume { steps, .. } = &mut c.out {
                *steps = n;
            }
            cmds.push(c);
        }
    }

    cmds.into_iter()
        .map(|c| {
            let copies = match &c.out {
                Out::Resume { dir, .. } => vec![dir.clone()],
                _ => vec![],
            };
            Case {
                kind: "command line",
                desc: c.name.clone(),
                edits: vec![],
                copies,
                setup: vec![],
                cmds: vec![c],
                must_name: None,
            }
        })
        .collect()
}

/// Every writer pointed at an output that already exists (a non-empty directory, or a file).
pub fn existing_output_cases() -> Vec<Case> {
    let writers = vec![
        convert_gguf(),
        convert_hf("model"),
        materialize("prune-run"),
        export("train-run"),
        init_like("model", "target.toml"),
        corpus_build("model"),
        prune_text("model", "target.toml"),
        train("pruned", "corpus", "reference.json"),
    ];
    let mut out = vec![];
    for w in writers {
        for (what, setup) in [
            ("a non-empty directory", ("existing/keep.txt", b"keep me".to_vec())),
            ("a file", ("existing", b"keep me".to_vec())),
        ] {
            let mut c = w.clone();
            for a in &mut c.args {
                if let Arg::Work(p) = a {
                    *p = "existing".into();
                }
            }
            c.out = Out::Existing("existing".into());
            c.reads.clear();
            c.name = format!("{} --out EXISTING", w.name);
            out.push(Case {
                kind: "existing output",
                desc: format!("--out is {what}"),
                edits: vec![],
                copies: vec![],
                setup: vec![(setup.0.to_string(), setup.1)],
                cmds: vec![c],
                must_name: None,
            });
        }
    }
    out
}
