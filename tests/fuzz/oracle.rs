//! The harness's own judgement of inputs and outputs, independent of shear's checks: what a valid model,
//! corpus, checkpoint, run or chart is. A command that succeeds on an input judged invalid here, or
//! produces an output judged invalid, is silently wrong.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

/// Sizes above this are absurd for any model shear could hold (2^24: 16M heads, layers, dims or positions).
const MAX_SIZE: u64 = 1 << 24;

/// Name → (dtype, shape) of a safetensors file: what a checkpoint or snapshot must keep.
pub type Signature = BTreeMap<String, (DType, Vec<usize>)>;

thread_local! {
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run a parser of a hostile file; its panic (a bug of that crate, which the binary under test meets too)
/// makes the file unreadable rather than crashing the harness, and is not printed.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                default(info);
            }
        }));
    });
    GUARDED.with(|g| g.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(false));
    r.unwrap_or_else(|_| Err("the parser panicked".into()))
}

fn load_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>, String> {
    let bytes = read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    guarded(|| candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| e.to_string()))
        .map(|m| m.into_iter().collect())
        .map_err(|e| format!("{}: unreadable safetensors: {e}", name_of(path)))
}

/// Read a file the oracles judge; one past 64 MB (a sparse 2^31-byte mutation) is invalid unread.
pub fn read(path: impl AsRef<Path>) -> std::io::Result<Vec<u8>> {
    let path = path.as_ref();
    if std::fs::metadata(path)?.len() > 64 << 20 {
        return Err(std::io::Error::other("larger than 64 MB"));
    }
    std::fs::read(path)
}

/// A JSON value as shown in a message: at most 40 characters.
pub fn brief(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

fn name_of(p: &Path) -> String {
    let parts: Vec<String> = p.iter().rev().take(2).map(|s| s.to_string_lossy().into_owned()).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

pub fn signature(path: &Path) -> Signature {
    load_safetensors(path).unwrap().into_iter().map(|(k, t)| (k, (t.dtype(), t.dims().to_vec()))).collect()
}

fn non_finite(name: &str, t: &Tensor) -> Option<String> {
    if !t.dtype().is_float() {
        return None;
    }
    let v: Vec<f32> = t.to_dtype(DType::F32).ok()?.flatten_all().ok()?.to_vec1().ok()?;
    let bad = v.iter().filter(|x| !x.is_finite()).count();
    (bad > 0).then(|| format!("`{name}` holds {bad} non-finite values"))
}

/// `expected` BF16 stands for any of the dtypes a model may be saved in (`convert --dtype`).
const ANY_FLOAT: DType = DType::BF16;

fn same_dtype(got: DType, expected: DType) -> bool {
    got == expected || (expected == ANY_FLOAT && matches!(got, DType::F32 | DType::F16 | DType::BF16))
}

/// Tensors (of those whose names start with one of `prefixes`) that are missing, extra, of another dtype
/// or shape than `expected`, or not finite.
fn tensors_defect(
    tensors: &BTreeMap<String, Tensor>,
    expected: &Signature,
    prefixes: &[&str],
    what: &str,
) -> Option<String> {
    let used = |k: &str| prefixes.iter().any(|p| k.starts_with(p));
    for (k, (dt, shape)) in expected.iter().filter(|(k, _)| used(k)) {
        match tensors.get(k) {
            None => return Some(format!("{what} lacks `{k}`")),
            Some(t) if !same_dtype(t.dtype(), *dt) || t.dims() != shape.as_slice() => {
                let want = if *dt == ANY_FLOAT { "a float".to_string() } else { format!("{dt:?}") };
                return Some(format!("{what}: `{k}` is {:?} {:?}, not {want} {shape:?}", t.dtype(), t.dims()));
            }
            _ => {}
        }
    }
    if let Some(k) = tensors.keys().find(|k| used(k) && !expected.contains_key(*k)) {
        return Some(format!("{what} holds an unexpected tensor `{k}`"));
    }
    tensors.iter().filter(|(k, _)| used(k)).find_map(|(k, t)| non_finite(k, t)).map(|m| format!("{what}: {m}"))
}

// ----------------------------------------------------------------------------------------------- models

fn size(cfg: &Value, key: &str) -> Result<Option<u64>, String> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_SIZE).contains(&n) => Ok(Some(n)),
            _ => Err(format!("config.json: {key} = {} is not a size in 1..=2^24", brief(v))),
        },
    }
}

/// The tensors a LLaMA config describes, with their shapes, from the config's JSON alone.
fn expected_tensors(cfg: &Value) -> Result<Signature, String> {
    let req = |k: &str| size(cfg, k)?.ok_or_else(|| format!("config.json: no {k}"));
    let (vocab, hidden, inter) = (req("vocab_size")?, req("hidden_size")?, req("intermediate_size")?);
    let (layers, heads) = (req("num_hidden_layers")?, req("num_attention_heads")?);
    let kv = size(cfg, "num_key_value_heads")?.unwrap_or(heads);
    let head_dim = match size(cfg, "head_dim")? {
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => return Err("config.json: no head_dim and hidden_size is not a multiple of the heads".into()),
    };
    size(cfg, "max_position_embeddings")?;
    if heads % kv != 0 {
        return Err(format!("config.json: {heads} heads are not a multiple of {kv} KV heads"));
    }
    let tied = match cfg.get("tie_word_embeddings") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(format!("config.json: tie_word_embeddings = {}", brief(v))),
    };
    let u = |x: u64| x as usize;
    let mut s = Signature::new();
    let mut put = |k: String, shape: Vec<u64>| s.insert(k, (ANY_FLOAT, shape.into_iter().map(u).collect()));
    put("model.embed_tokens.weight".into(), vec![vocab, hidden]);
    put("model.norm.weight".into(), vec![hidden]);
    if !tied {
        put("lm_head.weight".into(), vec![vocab, hidden]);
    }
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), vec![hidden]);
        put(format!("{p}.post_attention_layernorm.weight"), vec![hidden]);
        put(format!("{p}.self_attn.q_proj.weight"), vec![heads * head_dim, hidden]);
        put(format!("{p}.self_attn.k_proj.weight"), vec![kv * head_dim, hidden]);
        put(format!("{p}.self_attn.v_proj.weight"), vec![kv * head_dim, hidden]);
        put(format!("{p}.self_attn.o_proj.weight"), vec![hidden, heads * head_dim]);
        put(format!("{p}.mlp.gate_proj.weight"), vec![inter, hidden]);
        put(format!("{p}.mlp.up_proj.weight"), vec![inter, hidden]);
        put(format!("{p}.mlp.down_proj.weight"), vec![hidden, inter]);
    }
    Ok(s)
}

/// What makes a config describe another function than plain LLaMA, or no sensible model at all.
pub fn config_defect(cfg: &Value) -> Option<String> {
    if !cfg.is_object() {
        return Some("config.json is not an object".into());
    }
    if let Err(e) = expected_tensors(cfg) {
        return Some(e);
    }
    // JSON null is "not set" (HF writes unset options as null): the defaults apply.
    let set = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    if let Some(v) = set("rms_norm_eps") {
        if !v.as_f64().is_some_and(|x| x.is_finite() && x > 0.0 && x < 1.0) {
            return Some(format!("config.json: rms_norm_eps = {} is not in (0, 1)", brief(v)));
        }
    }
    let theta = set("rope_theta").or_else(|| cfg.get("rope_parameters").and_then(|p| p.get("rope_theta")));
    if let Some(v) = theta.filter(|v| !v.is_null()) {
        if !v.as_f64().is_some_and(|x| x.is_finite() && x >= 1.0) {
            return Some(format!("config.json: rope_theta = {} is not a finite base >= 1", brief(v)));
        }
    }
    if let Some(t) = cfg.get("rope_parameters").and_then(|p| p.get("rope_type")) {
        if t != "default" {
            return Some(format!("config.json: rope_parameters.rope_type = {} (not plain RoPE)", brief(t)));
        }
    }
    if set("rope_scaling").is_some() {
        return Some("config.json: rope_scaling is set (not plain RoPE)".into());
    }
    for (k, want) in [("hidden_act", "silu"), ("model_type", "llama")] {
        if let Some(v) = set(k) {
            if v != want {
                return Some(format!("config.json: {k} = {}, not {want:?}", brief(v)));
            }
        }
    }
    // Token ids: null, or ids inside the vocabulary (eos may list several).
    let vocab = cfg["vocab_size"].as_u64().unwrap();
    for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        let ids: Vec<&Value> = match set(k) {
            None => vec![],
            Some(Value::Array(a)) if k == "eos_token_id" => a.iter().collect(),
            Some(v) => vec![v],
        };
        if let Some(bad) = ids.iter().find(|v| v.as_u64().is_none_or(|i| i >= vocab)) {
            return Some(format!("config.json: {k} = {} is not a token id below {vocab}", brief(bad)));
        }
    }
    for k in ["attention_bias", "mlp_bias"] {
        if set(k).is_some_and(|v| v != false) {
            return Some(format!("config.json: {k} = {}", brief(&cfg[k])));
        }
    }
    None
}

/// A model directory that is not a valid LLaMA: its config (above), weights that are unreadable,
/// duplicated, missing, extra, mis-shaped or not finite, or a tokenizer that does not load or names ids
/// outside the vocabulary.
pub fn model_defect(dir: &Path, tokenizer: bool) -> Option<String> {
    let text = match read(dir.join("config.json")) {
        Ok(t) => t,
        Err(e) => return Some(format!("config.json: {e}")),
    };
    let cfg: Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => return Some(format!("config.json: {e}")),
    };
    if let Some(d) = config_defect(&cfg) {
        return Some(d);
    }
    let expected = expected_tensors(&cfg).unwrap();
    let files: Vec<String> = match read(dir.join("model.safetensors.index.json")) {
        Ok(t) => match serde_json::from_slice::<Value>(&t).ok().and_then(|v| v.get("weight_map").cloned()) {
            // Entries that name no file name no shard; a shard they leave out shows as missing tensors.
            Some(Value::Object(m)) => {
                let mut f: Vec<String> = m.values().filter_map(|v| v.as_str().map(String::from)).collect();
                f.sort();
                f.dedup();
                f
            }
            _ => return Some("index: no weight_map object".into()),
        },
        Err(_) => vec!["model.safetensors".into()],
    };
    let mut tensors = BTreeMap::new();
    for f in &files {
        if f.contains('/') || f.contains("..") {
            return Some(format!("index names a file outside the directory: {f}"));
        }
        match load_safetensors(&dir.join(f)) {
            Ok(m) => {
                for (k, t) in m {
                    if tensors.insert(k.clone(), t).is_some() {
                        return Some(format!("`{k}` is in two shards"));
                    }
                }
            }
            Err(e) => return Some(e),
        }
    }
    if let Some(d) = tensors_defect(&tensors, &expected, &[""], "weights") {
        return Some(d);
    }
    if !tokenizer {
        return None;
    }
    tokenizer_defect(dir, cfg["vocab_size"].as_u64().unwrap())
}

fn tokenizer_defect(dir: &Path, vocab: u64) -> Option<String> {
    let bytes = match read(dir.join("tokenizer.json")) {
        Ok(b) => b,
        Err(e) => return Some(format!("tokenizer.json: {e}")),
    };
    if let Err(e) = guarded(|| tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| e.to_string())) {
        return Some(format!("tokenizer.json does not load: {e}"));
    }
    let tj: Value = serde_json::from_slice(&bytes).ok()?;
    let ids = tj["model"]["vocab"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .chain(tj["added_tokens"].as_array().into_iter().flatten().map(|t| &t["id"]));
    for id in ids {
        if id.as_u64().is_none_or(|i| i >= vocab) {
            return Some(format!("tokenizer.json: token id {} outside the vocabulary of {vocab}", brief(id)));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------- corpus

/// A corpus that cannot be read as packed sequences of the model's tokens: a shard whose size, checksum
/// or token ids disagree with the manifest, an empty split, another tokenizer.
pub fn corpus_defect(dir: &Path, vocab: u64, tokenizer_json: &[u8]) -> Option<String> {
    let m: Value = match read(dir.join("manifest.json")).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(v)) => v,
        _ => return Some("manifest.json unreadable".into()),
    };
    let (seq_len, token_bytes) = (m["seq_len"].as_u64(), m["token_bytes"].as_u64());
    let (Some(seq_len), Some(tb @ (2 | 4))) = (seq_len, token_bytes) else {
        return Some(format!("manifest: seq_len {} / token_bytes {}", m["seq_len"], m["token_bytes"]));
    };
    if !(2..=MAX_SIZE).contains(&seq_len) {
        return Some(format!("manifest: seq_len {seq_len}"));
    }
    let sum = format!("{:016x}", shear::data::corpus::fnv1a64(tokenizer_json));
    if m["tokenizer_checksum"] != sum.as_str() {
        return Some("manifest: another tokenizer's checksum".into());
    }
    let Some(domains) = m["domains"].as_object() else { return Some("manifest: no domains".into()) };
    let known: Vec<&String> = domains.keys().filter(|d| shear::data::corpus::DOMAINS.contains(&d.as_str())).collect();
    if known.is_empty() {
        return Some("manifest: no known domain".into());
    }
    for d in known {
        for split in ["train", "eval"] {
            let s = &domains[d][split];
            let (Some(file), Some(seqs)) = (s["file"].as_str(), s["sequences"].as_u64()) else {
                return Some(format!("manifest: {d}.{split} has no file or sequence count"));
            };
            if seqs == 0 {
                return Some(format!("manifest: {d}.{split} has no sequences"));
            }
            let Ok(bytes) = read(dir.join(file)) else { return Some(format!("{file} unreadable")) };
            if bytes.len() as u64 != seqs.saturating_mul(seq_len).saturating_mul(tb) {
                return Some(format!("{file}: {} bytes for {seqs} sequences", bytes.len()));
            }
            if s["checksum"] != format!("{:016x}", shear::data::corpus::fnv1a64(&bytes)).as_str() {
                return Some(format!("{file}: checksum mismatch"));
            }
            let ids = bytes.chunks(tb as usize).map(|c| {
                if tb == 2 {
                    u16::from_le_bytes([c[0], c[1]]) as u64
                } else {
                    u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64
                }
            });
            if let Some(id) = ids.into_iter().find(|&i| i >= vocab) {
                return Some(format!("{file}: token id {id} outside the vocabulary of {vocab}"));
            }
        }
    }
    None
}

// ------------------------------------------------------------------------------------------------ runs

/// The checkpoint a run resumes from: `checkpoint/`, else `checkpoint.old/`, with both files.
fn checkpoint_dir(run: &Path) -> Option<std::path::PathBuf> {
    ["checkpoint", "checkpoint.old"]
        .iter()
        .map(|d| run.join(d))
        .find(|d| d.join("state.safetensors").exists() && d.join("state.json").exists())
}

pub fn checkpoint_defect(run: &Path, expected: &Signature, prefixes: &[&str]) -> Option<String> {
    let Some(dir) = checkpoint_dir(run) else { return Some("no checkpoint".into()) };
    match load_safetensors(&dir.join("state.safetensors")) {
        Ok(t) => tensors_defect(&t, expected, prefixes, "checkpoint"),
        Err(e) => Some(e),
    }
}

/// A resumable checkpoint: both files readable (what a failed run may leave behind).
pub fn usable_checkpoint(run: &Path) -> bool {
    checkpoint_dir(run).is_some_and(|d| {
        load_safetensors(&d.join("state.safetensors")).is_ok()
            && read(d.join("state.json")).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()).is_some()
    })
}

/// The snapshot `inspect` reads: `--step`'s, else the newest `masks/step_N.safetensors`.
pub fn masks_defect(run: &Path, step: Option<usize>, expected: &Signature) -> Option<String> {
    // No snapshot to read is a defect too: a command that reports on it must fail.
    let Ok(entries) = std::fs::read_dir(run.join("masks")) else { return Some("no masks/ directory".into()) };
    let mut snapshots: Vec<(usize, std::path::PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_prefix("step_")?.strip_suffix(".safetensors")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    snapshots.sort();
    let path = match step {
        Some(s) => match snapshots.into_iter().find(|(n, _)| *n == s) {
            Some((_, p)) => p,
            None => return Some(format!("no mask snapshot for step {s}")),
        },
        None => match snapshots.pop() {
            Some((_, p)) => p,
            None => return Some("no mask snapshots".into()),
        },
    };
    match load_safetensors(&path) {
        Ok(t) => tensors_defect(&t, expected, &["log_alpha."], "mask snapshot"),
        Err(e) => Some(e),
    }
}

/// Lines of a JSONL log; a last line without its newline may be cut short by a kill and is skipped.
fn jsonl(path: &Path) -> Result<Vec<Value>, String> {
    let text =
        read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).map_err(|e| format!("{}: {e}", name_of(path)))?;
    let cut = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = vec![];
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(l) {
            Ok(v) if v.is_object() => out.push(v),
            _ if cut && i + 1 == lines.len() => {}
            _ => return Err(format!("{}:{}: not a JSON object", name_of(path), i + 1)),
        }
    }
    Ok(out)
}

fn has_null(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.iter().any(has_null),
        Value::Object(m) => m.values().any(has_null),
        _ => false,
    }
}

/// A value serde wrote as null for a NaN: anywhere inside a nested object or array, or at the top level
/// under a key that holds a value in another line of the log (a top-level field that is null in every
/// line, like `reference_loss` without references, means "none").
fn nan_in_line(line: &Value, all: &[Value]) -> Option<String> {
    for (k, v) in line.as_object()? {
        let nested = !v.is_null() && has_null(v);
        let dropped = v.is_null() && all.iter().any(|l| l.get(k).is_some_and(|x| !x.is_null()));
        if nested || dropped {
            return Some(k.clone());
        }
    }
    None
}

/// A finished run: its checkpoint at `steps` with finite tensors of the expected signature, and logs that
/// parse, end at `steps` and hold no null (a NaN written by serde) in the lines of the steps after `from`.
pub fn check_run(run: &Path, steps: usize, expected: Option<&Signature>, from: usize) -> Result<(), String> {
    serde_json::from_slice::<Value>(&read(run.join("run.json")).map_err(|e| format!("run.json: {e}"))?)
        .map_err(|e| format!("run.json: {e}"))?;
    let dir = checkpoint_dir(run).ok_or("no checkpoint")?;
    let state: Value = serde_json::from_slice(&read(dir.join("state.json")).map_err(|e| e.to_string())?)
        .map_err(|e| format!("state.json: {e}"))?;
    if state["step"].as_u64() != Some(steps as u64) {
        return Err(format!("the checkpoint is at step {}, not the requested {steps}", state["step"]));
    }
    let t = load_safetensors(&dir.join("state.safetensors"))?;
    match expected {
        Some(sig) => tensors_defect(&t, sig, &[""], "checkpoint").map_or(Ok(()), Err)?,
        None => {
            if let Some(m) = t.iter().find_map(|(k, t)| non_finite(k, t)) {
                return Err(format!("checkpoint: {m}"));
            }
        }
    }
    for log in ["metrics.jsonl", "evals.jsonl"] {
        let lines = jsonl(&run.join(log))?;
        for l in lines.iter().filter(|l| l["step"].as_u64().is_some_and(|s| s as usize > from)) {
            if let Some(k) = nan_in_line(l, &lines) {
                return Err(format!("{log}: `{k}` is null (non-finite) at step {}", l["step"]));
            }
        }
        if log == "metrics.jsonl" && lines.last().and_then(|l| l["step"].as_u64()) != Some(steps as u64) {
            return Err(format!(
                "metrics.jsonl ends at step {}, not {steps}",
                lines.last().map_or(Value::Null, |l| l["step"].clone())
            ));
        }
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------- stdout, SVG

/// `NaN`, `inf`, `-inf`, `Infinity` as words of a text (not inside identifiers).
pub fn non_finite_word(text: &str) -> Option<String> {
    let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
    words.into_iter().find(|w| matches!(*w, "NaN" | "nan" | "inf" | "Inf" | "Infinity")).map(String::from)
}

pub fn check_eval_json(stdout: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(stdout.trim()).map_err(|e| format!("stdout is not one JSON object: {e}"))?;
    fn walk(v: &Value, found: &mut usize) -> Result<(), String> {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if matches!(k.as_str(), "mean_nll" | "perplexity") {
                        *found += 1;
                        if !x.as_f64().is_some_and(f64::is_finite) {
                            return Err(format!("{k} = {x}"));
                        }
                    }
                    walk(x, found)?;
                }
                Ok(())
            }
            Value::Array(a) => a.iter().try_for_each(|x| walk(x, found)),
            _ => Ok(()),
        }
    }
    let mut found = 0;
    walk(&v, &mut found)?;
    if found == 0 {
        return Err("no mean_nll in the JSON".into());
    }
    Ok(())
}

/// `shear eval --tasks --json`: a report `shear report --accuracy` reads, every accuracy in [0, 1], every
/// task with documents.
pub fn check_task_json(stdout: &str) -> Result<(), String> {
    let r: shear::eval::tasks::TaskReport =
        serde_json::from_str(stdout.trim()).map_err(|e| format!("stdout is not a task report: {e}"))?;
    if r.tasks.is_empty() {
        return Err("no task results".into());
    }
    for (name, t) in &r.tasks {
        for (k, x) in [("acc", Some(t.acc)), ("acc_norm", t.acc_norm), ("paper_value", Some(t.paper_value))] {
            if !x.is_some_and(|x| (0.0..=1.0).contains(&x)) {
                return Err(format!("{name}: {k} = {x:?}"));
            }
        }
        if t.docs == 0 {
            return Err(format!("{name}: no documents"));
        }
    }
    Ok(())
}

pub fn check_charts(dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("no chart directory: {e}"))?;
    let mut n = 0;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "svg") {
            n += 1;
            let t = read(&p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| format!("{}: {e}", name_of(&p)))?;
            if !t.contains("<svg") {
                return Err(format!("{} is not SVG", name_of(&p)));
            }
            if let Some(w) = non_finite_word(&t) {
                return Err(format!("{} draws a {w} coordinate or label", name_of(&p)));
            }
        }
    }
    if n == 0 {
        return Err("no SVG written".into());
    }
    Ok(())
}
