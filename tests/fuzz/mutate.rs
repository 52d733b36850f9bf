//! Seeded mutators: each takes a healthy file's bytes and returns one hostile variant and a description of
//! what was done, so a failure can be reproduced from the printed line alone.

use std::collections::BTreeMap;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use serde_json::Value;

/// SplitMix64: small, fast and good enough to pick offsets; the sequence depends only on the seed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// What a mutation does to one file of a fixture copy.
#[derive(Clone)]
pub enum Edit {
    Write(Vec<u8>),
    Remove,
    /// Extend (sparsely) to this many bytes: a huge file that costs no disk.
    SetLen(u64),
}

// ---------------------------------------------------------------------------------------------- bytes

/// Truncate, flip bytes, or overwrite a span with 0x00 / 0xFF. `hot` is the length of the prefix that
/// holds the structure (a header): half of the edits land there, where they matter most.
pub fn bytes(rng: &mut Rng, data: &[u8], hot: usize) -> (String, Vec<u8>) {
    let len = data.len().max(1);
    let at = |rng: &mut Rng| if hot > 0 && rng.chance(50) { rng.below(hot.min(len)) } else { rng.below(len) };
    let mut out = data.to_vec();
    match rng.below(4) {
        0 => {
            let n = at(rng);
            out.truncate(n);
            (format!("truncated to {n} of {} bytes", data.len()), out)
        }
        1 => {
            let n = 1 + rng.below(8);
            let first = at(rng);
            for i in 0..n {
                let p = if i == 0 { first } else { at(rng) };
                if p < out.len() {
                    out[p] ^= 1 + rng.below(255) as u8;
                }
            }
            (format!("{n} random bytes flipped, the first at {first}"), out)
        }
        _ => {
            let fill = if rng.chance(50) { 0x00 } else { 0xFF };
            let start = at(rng);
            let n = 1 + rng.below(64);
            let end = (start + n).min(out.len());
            for b in &mut out[start.min(end)..end] {
                *b = fill;
            }
            (format!("bytes {start}..{end} set to {fill:#04x}"), out)
        }
    }
}

// ---------------------------------------------------------------------------------------- safetensors

/// A safetensors file as its JSON header and its data bytes.
pub struct Safetensors {
    pub header: serde_json::Map<String, Value>,
    pub data: Vec<u8>,
}

impl Safetensors {
    pub fn parse(bytes: &[u8]) -> Self {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = serde_json::from_slice(&bytes[8..8 + n]).expect("a healthy header");
        Self { header, data: bytes[8 + n..].to_vec() }
    }

    /// Header padded with spaces to 8 bytes, as the format's writers do.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut h = serde_json::to_string(&self.header).unwrap().into_bytes();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend(&self.data);
        out
    }

    pub fn tensor_names(&self) -> Vec<String> {
        self.header.keys().filter(|k| *k != "__metadata__").cloned().collect()
    }

    pub fn header_len(bytes: &[u8]) -> usize {
        8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
    }
}

const HUGE: [u64; 5] = [1 << 31, 1 << 32, 1 << 40, 1 << 63, u64::MAX];

/// A well-formed file whose values are not finite: one element or a whole tensor of NaN, +Inf or -Inf.
pub fn safetensors_nonfinite(rng: &mut Rng, bytes: &[u8], names: Option<&[&str]>) -> (String, Vec<u8>) {
    let mut st = Safetensors::parse(bytes);
    let candidates: Vec<String> = st
        .tensor_names()
        .into_iter()
        .filter(|n| st.header[n]["dtype"] == "F32")
        .filter(|n| names.is_none_or(|ns| ns.iter().any(|p| n.starts_with(p))))
        .collect();
    let name = rng.pick(&candidates).clone();
    let offs = &st.header[&name]["data_offsets"];
    let (start, end) = (offs[0].as_u64().unwrap() as usize, offs[1].as_u64().unwrap() as usize);
    let (label, value) = *rng.pick(&[("NaN", f32::NAN), ("+Inf", f32::INFINITY), ("-Inf", f32::NEG_INFINITY)]);
    let n = (end - start) / 4;
    let all = rng.chance(30);
    let first = rng.below(n.max(1));
    for i in 0..n {
        if all || i == first {
            st.data[start + 4 * i..start + 4 * i + 4].copy_from_slice(&value.to_le_bytes());
        }
    }
    let what = if all { "every element".to_string() } else { format!("element {first}") };
    (format!("`{name}`: {what} set to {label} (otherwise valid)"), st.to_bytes())
}

/// One edit of the header: a tensor's shape, dtype or offsets, a missing, renamed or extra tensor, the
/// metadata, or the header length itself.
pub fn safetensors_header(rng: &mut Rng, bytes: &[u8]) -> (String, Vec<u8>) {
    let mut st = Safetensors::parse(bytes);
    let names = st.tensor_names();
    let name = rng.pick(&names).clone();
    let file_len = bytes.len() as u64;
    let entry = st.header.get_mut(&name).unwrap();
    let desc = match rng.below(9) {
        0 | 1 => {
            let shape = entry["shape"].as_array_mut().unwrap();
            let before = Value::from(shape.clone());
            match rng.below(5) {
                0 if !shape.is_empty() => {
                    let i = rng.below(shape.len());
                    let old = shape[i].as_u64().unwrap();
                    let huge = HUGE[rng.below(HUGE.len())];
                    let new = *rng.pick(&[0, old + 1, old.saturating_sub(1), huge]);
                    shape[i] = new.into();
                }
                1 if !shape.is_empty() => {
                    shape.pop();
                }
                2 => shape.push(Value::from(*rng.pick(&[1u64, 2]))),
                3 if !shape.is_empty() => shape.clear(),
                4 if shape.len() > 1 && shape.first() != shape.last() => shape.reverse(),
                _ => shape.push(Value::from(3u64)),
            }
            format!("`{name}`: shape {before} -> {}", entry["shape"])
        }
        2 => {
            let dt = *rng.pick(&["F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "Q4", ""]);
            entry["dtype"] = dt.into();
            format!("`{name}`: dtype F32 -> {dt:?}")
        }
        3 | 4 => {
            let offs = entry["data_offsets"].as_array_mut().unwrap();
            let (s, e) = (offs[0].as_u64().unwrap(), offs[1].as_u64().unwrap());
            let (ns, ne) = *rng.pick(&[
                (s + 1, e),
                (s, e + 1),
                (s, e.saturating_sub(1)),
                (e, s),
                (0, 0),
                (s, 1 << 63),
                (s, file_len + 1),
                (u64::MAX - 4, u64::MAX),
            ]);
            *offs = vec![ns.into(), ne.into()];
            format!("`{name}`: data_offsets [{s}, {e}] -> [{ns}, {ne}]")
        }
        5 => {
            st.header.remove(&name);
            format!("`{name}` removed from the header")
        }
        6 => {
            let v = st.header.remove(&name).unwrap();
            let new = format!("{name}.renamed");
            st.header.insert(new.clone(), v);
            format!("`{name}` renamed to `{new}`")
        }
        7 => {
            let v = entry.clone();
            let extra = *rng.pick(&["model.layers.7.mlp.up_proj.weight", "extra.weight", "lm_head.bias"]);
            st.header.insert(extra.into(), v);
            format!("extra tensor `{extra}` sharing `{name}`'s bytes")
        }
        _ => {
            let mut out = st.to_bytes();
            let n = u64::from_le_bytes(out[..8].try_into().unwrap());
            let new = *rng.pick(&[0, 1, n - 1, n + 1, file_len, 1 << 40, u64::MAX]);
            out[..8].copy_from_slice(&new.to_le_bytes());
            return (format!("header length {n} -> {new}"), out);
        }
    };
    (desc, st.to_bytes())
}

// ----------------------------------------------------------------------------------------------- GGUF

/// The healthy GGUF, read once, to rewrite with edited metadata or tensors.
pub struct Gguf {
    pub bytes: Vec<u8>,
    pub metadata: Vec<(String, gguf_file::Value)>,
    pub tensors: Vec<(String, QTensor)>,
}

impl Gguf {
    pub fn read(path: &std::path::Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let mut r = std::io::Cursor::new(&bytes);
        let content = gguf_file::Content::read(&mut r).unwrap();
        let mut metadata: Vec<_> = content.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        metadata.sort_by(|a, b| a.0.cmp(&b.0));
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        let tensors =
            names.into_iter().map(|n| (n.clone(), content.tensor(&mut r, n, &Device::Cpu).unwrap())).collect();
        Self { bytes, metadata, tensors }
    }

    fn write(&self, metadata: &[(String, gguf_file::Value)], tensors: &[(String, QTensor)]) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let md: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut out, &md, &ts).unwrap();
        out.into_inner()
    }

    /// The file with metadata key `key` set to `value` (`None`: removed).
    pub fn with_metadata(&self, key: &str, value: Option<gguf_file::Value>) -> Vec<u8> {
        let mut md: Vec<_> = self.metadata.iter().filter(|(k, _)| k != key).cloned().collect();
        if let Some(v) = value {
            md.push((key.to_string(), v));
        }
        let tensors: Vec<(String, QTensor)> = self.tensors.iter().map(|(k, t)| (k.clone(), requant(t))).collect();
        self.write(&md, &tensors)
    }

    fn with_tensors(&self, tensors: Vec<(String, QTensor)>) -> Vec<u8> {
        self.write(&self.metadata, &tensors)
    }

    /// Where the tensor-info record of `name` starts its dimension count (after the length-prefixed name).
    fn info_at(&self, name: &str) -> usize {
        let mut needle = (name.len() as u64).to_le_bytes().to_vec();
        needle.extend(name.as_bytes());
        self.bytes.windows(needle.len()).position(|w| w == needle).expect("tensor info") + needle.len()
    }
}

/// A copy of a QTensor (QTensor is not Clone): dequantized and quantized again, exact for F32 and Q8_0's
/// own values.
fn requant(t: &QTensor) -> QTensor {
    let d = t.dequantize(&Device::Cpu).unwrap();
    QTensor::quantize(&d, t.dtype()).unwrap()
}

fn u32v(x: u32) -> gguf_file::Value {
    gguf_file::Value::U32(x)
}

/// A structured edit of the GGUF: a metadata value made hostile or removed, a tensor dropped, reshaped or
/// filled with NaN (rewritten with candle's writer), or a patched header count, tensor type, offset or
/// dimension (bytes patched in place, as llama.cpp's reader would see a corrupt file).
pub fn gguf(rng: &mut Rng, g: &Gguf) -> (String, Vec<u8>) {
    use gguf_file::Value as V;
    match rng.below(10) {
        0..=3 => {
            let sizes = [
                "llama.block_count",
                "llama.context_length",
                "llama.embedding_length",
                "llama.feed_forward_length",
                "llama.attention.head_count",
                "llama.attention.head_count_kv",
                "llama.attention.key_length",
            ];
            let key = *rng.pick(&sizes);
            let (label, v) = rng
                .pick(&[
                    ("0", Some(u32v(0))),
                    ("1", Some(u32v(1))),
                    ("2^31", Some(u32v(1 << 31))),
                    ("u32::MAX", Some(u32v(u32::MAX))),
                    ("U64 2^40", Some(V::U64(1 << 40))),
                    ("I32 -1", Some(V::I32(-1))),
                    ("F32 NaN", Some(V::F32(f32::NAN))),
                    ("the string \"8\"", Some(V::String("8".into()))),
                    ("removed", None),
                ])
                .clone();
            (format!("{key} = {label}"), g.with_metadata(key, v))
        }
        4 => {
            let key = *rng.pick(&["llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon"]);
            let (label, v) = rng
                .pick(&[
                    ("NaN", Some(V::F32(f32::NAN))),
                    ("+Inf", Some(V::F32(f32::INFINITY))),
                    ("0", Some(V::F32(0.0))),
                    ("-1", Some(V::F32(-1.0))),
                    ("1e-45", Some(V::F32(1e-45))),
                    ("3e38", Some(V::F32(3e38))),
                    ("U32 7", Some(u32v(7))),
                    ("removed", None),
                ])
                .clone();
            (format!("{key} = {label}"), g.with_metadata(key, v))
        }
        5 => {
            let (label, v) = rng
                .pick(&[
                    ("0", V::U32(0)),
                    ("1", V::U32(1)),
                    ("3", V::U32(3)),
                    ("2^31", V::U32(1 << 31)),
                    ("U8 0", V::U8(0)),
                    ("I32 0", V::I32(0)),
                ])
                .clone();
            (format!("general.alignment = {label}"), g.with_metadata("general.alignment", Some(v)))
        }
        6 => {
            let n_tokens = match g.metadata.iter().find(|(k, _)| k == "tokenizer.ggml.tokens") {
                Some((_, V::Array(a))) => a.len(),
                _ => 0,
            };
            let s = |x: &str| V::String(x.into());
            let (key, label, v) = rng
                .pick(&[
                    (
                        "tokenizer.ggml.tokens",
                        "10 tokens",
                        Some(V::Array((0..10).map(|i| s(&i.to_string())).collect())),
                    ),
                    ("tokenizer.ggml.tokens", "empty", Some(V::Array(vec![]))),
                    ("tokenizer.ggml.tokens", "removed", None),
                    ("tokenizer.ggml.merges", "[\"ab\"] (no space)", Some(V::Array(vec![s("ab")]))),
                    ("tokenizer.ggml.merges", "[\"zz qq\"] (unknown tokens)", Some(V::Array(vec![s("zz qq")]))),
                    ("tokenizer.ggml.token_type", "3 entries", Some(V::Array(vec![V::I32(1); 3]))),
                    ("tokenizer.ggml.token_type", "all 99", Some(V::Array(vec![V::I32(99); n_tokens]))),
                    ("tokenizer.ggml.bos_token_id", "10^6", Some(u32v(1_000_000))),
                    ("tokenizer.ggml.eos_token_id", "u32::MAX", Some(u32v(u32::MAX))),
                    ("tokenizer.ggml.model", "\"llama\" (SentencePiece)", Some(s("llama"))),
                    ("tokenizer.ggml.model", "removed", None),
                    ("general.architecture", "removed", None),
                    ("general.architecture", "U32 1", Some(u32v(1))),
                ])
                .clone();
            (format!("{key} = {label}"), g.with_metadata(key, v))
        }
        7 => {
            let i = rng.below(g.tensors.len());
            let name = g.tensors[i].0.clone();
            let mut tensors: Vec<(String, QTensor)> = g.tensors.iter().map(|(k, t)| (k.clone(), requant(t))).collect();
            let desc = match rng.below(3) {
                0 => {
                    tensors.remove(i);
                    format!("tensor `{name}` left out")
                }
                1 => {
                    let dims = g.tensors[i].1.shape().dims().to_vec();
                    let mut new = dims.clone();
                    new[0] += 1;
                    let t = Tensor::zeros(new.as_slice(), candle_core::DType::F32, &Device::Cpu).unwrap();
                    tensors[i].1 = QTensor::quantize(&t, GgmlDType::F32).unwrap();
                    format!("tensor `{name}` reshaped {dims:?} -> {new:?}")
                }
                _ => {
                    let t = g.tensors[i].1.dequantize(&Device::Cpu).unwrap();
                    let nan = (t.ones_like().unwrap() * f64::NAN).unwrap();
                    tensors[i].1 = QTensor::quantize(&nan, GgmlDType::F32).unwrap();
                    format!("tensor `{name}` all NaN (stored as F32)")
                }
            };
            (desc, g.with_tensors(tensors))
        }
        _ => {
            // In place: header counts (tensor count at byte 8, metadata count at 16, both u64), or one
            // tensor's record: n_dims u32, dims u64 each, type u32, offset u64.
            let mut b = g.bytes.clone();
            let put_u64 = |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            let put_u32 = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            let get_u64 = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
            let get_u32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
            let (name, _) = rng.pick(&g.tensors);
            let at = g.info_at(name);
            let n_dims = get_u32(&b, at) as usize;
            let ty_at = at + 4 + 8 * n_dims;
            let desc = match rng.below(7) {
                0 => {
                    let n = get_u64(&b, 8);
                    let new = *rng.pick(&[n - 1, n + 1, 1 << 40]);
                    put_u64(&mut b, 8, new);
                    format!("tensor count {n} -> {new}")
                }
                1 => {
                    let n = get_u64(&b, 16);
                    let new = *rng.pick(&[n - 1, n + 1, u64::MAX]);
                    put_u64(&mut b, 16, new);
                    format!("metadata count {n} -> {new}")
                }
                2 => {
                    let old = get_u32(&b, ty_at);
                    // 1 = F16, 8 = Q8_0, 30 = BF16, 99 = no such type.
                    let new = *rng.pick(&[1u32, 8, 30, 99]);
                    put_u32(&mut b, ty_at, new);
                    format!("tensor `{name}` type {old} -> {new} (data left as it was)")
                }
                3 | 4 => {
                    let old = get_u64(&b, ty_at + 4);
                    let new = *rng.pick(&[old + 1, old + 32, 1 << 40, u64::MAX]);
                    put_u64(&mut b, ty_at + 4, new);
                    format!("tensor `{name}` offset {old} -> {new}")
                }
                5 => {
                    let i = rng.below(n_dims);
                    let old = get_u64(&b, at + 4 + 8 * i);
                    let new = *rng.pick(&[0, old + 1, 1 << 31, 1 << 40]);
                    put_u64(&mut b, at + 4 + 8 * i, new);
                    format!("tensor `{name}` dimension {i} {old} -> {new}")
                }
                _ => {
                    let new = *rng.pick(&[0u32, 5, 1 << 31]);
                    put_u32(&mut b, at, new);
                    format!("tensor `{name}` n_dims {n_dims} -> {new}")
                }
            };
            (desc, b)
        }
    }
}

// ----------------------------------------------------------------------------------------------- JSON

/// Text the JSON serializer cannot produce, spliced in for a placeholder string.
const RAW: &str = "__fuzz_raw__";

/// Replacement values for a JSON node; `Err` holds literal text (bare NaN, numbers past u64).
fn hostile_json(rng: &mut Rng) -> (String, Result<Value, &'static str>) {
    let v = |x: Value| Ok(x);
    let choices: Vec<(&str, Result<Value, &'static str>)> = vec![
        ("0", v(0.into())),
        ("-1", v((-1).into())),
        ("1", v(1.into())),
        ("2^31", v((1u64 << 31).into())),
        ("2^32", v((1u64 << 32).into())),
        ("2^63", v((1u64 << 63).into())),
        ("2^64", Err("18446744073709551616")),
        ("1e308", v(1e308.into())),
        ("-1e308", v((-1e308).into())),
        ("1e-320", v(1e-320.into())),
        ("0.5", v(0.5.into())),
        ("\"x\"", v("x".into())),
        ("\"\"", v("".into())),
        ("null", v(Value::Null)),
        ("true", v(true.into())),
        ("[]", v(Value::Array(vec![]))),
        ("{}", v(Value::Object(Default::default()))),
        ("an array of 200000 zeros", v(Value::Array(vec![0.into(); 200_000]))),
        ("NaN", Err("NaN")),
        ("Infinity", Err("Infinity")),
        ("-Infinity", Err("-Infinity")),
        ("1e400", Err("1e400")),
    ];
    let (label, value) = rng.pick(&choices).clone();
    (label.to_string(), value)
}

/// Every node below the root as a JSON pointer, in document order.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        _ => {}
    }
}

fn split_pointer(p: &str) -> (&str, String) {
    let (parent, last) = p.rsplit_once('/').unwrap();
    (parent, last.replace("~1", "/").replace("~0", "~"))
}

/// One hostile edit of a JSON document: a node (mostly a leaf) replaced by a hostile value, a key removed
/// or added, the text truncated or its bytes flipped, or the whole document replaced.
pub fn json(rng: &mut Rng, text: &str) -> (String, Vec<u8>) {
    let mut doc: Value = serde_json::from_str(text).expect("a healthy JSON fixture");
    let mut nodes = vec![];
    pointers(&doc, String::new(), &mut nodes);
    let leaves: Vec<&String> = nodes.iter().filter(|p| !doc.pointer(p).unwrap().is_object()).collect();
    let pretty = |d: &Value, raw: Option<&str>| {
        let t = serde_json::to_string_pretty(d).unwrap();
        match raw {
            Some(r) => t.replace(&format!("\"{RAW}\""), r),
            None => t,
        }
        .into_bytes()
    };
    match rng.below(20) {
        0..=11 => {
            // Leaves are where values are read; arrays and objects sometimes too.
            let p = if rng.chance(85) && !leaves.is_empty() {
                rng.pick(&leaves).to_string()
            } else {
                rng.pick(&nodes).clone()
            };
            // A value different from the one there (2 -> 2 would test nothing).
            let mut pick = hostile_json(rng);
            while pick.1.as_ref().is_ok_and(|v| Some(v) == doc.pointer(&p)) {
                pick = hostile_json(rng);
            }
            let (label, value) = pick;
            let node = doc.pointer_mut(&p).unwrap();
            let old = short(node);
            let raw = match value {
                Ok(v) => {
                    *node = v;
                    None
                }
                Err(r) => {
                    *node = RAW.into();
                    Some(r)
                }
            };
            (format!("{p}: {old} -> {label}"), pretty(&doc, raw))
        }
        12 | 13 => {
            let keys: Vec<&String> =
                nodes.iter().filter(|p| doc.pointer(split_pointer(p).0).is_some_and(Value::is_object)).collect();
            let p = rng.pick(&keys).to_string();
            let (parent, key) = split_pointer(&p);
            doc.pointer_mut(parent).unwrap().as_object_mut().unwrap().remove(&key);
            (format!("{p} removed"), pretty(&doc, None))
        }
        14 => {
            let objects: Vec<String> = std::iter::once(String::new())
                .chain(nodes.iter().filter(|p| doc.pointer(p).unwrap().is_object()).cloned())
                .collect();
            let p = rng.pick(&objects).clone();
            doc.pointer_mut(&p).unwrap().as_object_mut().unwrap().insert("fuzz_unknown_key".into(), 1.into());
            (format!("unknown key added at `{p}`"), pretty(&doc, None))
        }
        15 | 16 => {
            let n = rng.below(text.len());
            (format!("text truncated to {n} of {} bytes", text.len()), text.as_bytes()[..n].to_vec())
        }
        17 => bytes(rng, text.as_bytes(), 0),
        18 => {
            let b = text.as_bytes();
            let at = rng.below(b.len());
            let mut out = b[..at].to_vec();
            out.extend([0xff, 0xfe]);
            out.extend(&b[at..]);
            (format!("non-UTF-8 bytes ff fe inserted at {at}"), out)
        }
        _ => {
            let (label, whole) = *rng.pick(&[("empty", ""), ("null", "null"), ("[]", "[]"), ("a number", "3")]);
            (format!("whole document replaced by {label}"), whole.as_bytes().to_vec())
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

// ----------------------------------------------------------------------------------------- TOML, text

/// A target TOML (`key = value` lines): a value replaced by a hostile literal, a key removed, duplicated
/// or unknown, or the whole text garbled.
pub fn toml(rng: &mut Rng, text: &str) -> (String, Edit) {
    let lines: Vec<&str> = text.lines().collect();
    let i = rng.below(lines.len());
    let key = lines[i].split('=').next().unwrap().trim();
    let edited = |new: Option<String>| -> Edit {
        let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        match new {
            Some(l) => out[i] = l,
            None => {
                out.remove(i);
            }
        }
        Edit::Write((out.join("\n") + "\n").into_bytes())
    };
    match rng.below(12) {
        0..=6 => {
            let v = *rng.pick(&[
                "0",
                "-1",
                "2147483648",
                "4294967296",
                "9223372036854775807",
                "9223372036854775808",
                "1e308",
                "nan",
                "inf",
                "-inf",
                "1.5",
                "16.0",
                "\"16\"",
                "[]",
                "{}",
                "true",
                "0x10",
                "",
            ]);
            (format!("{key} = {v}"), edited(Some(format!("{key} = {v}"))))
        }
        7 => (format!("{key} removed"), edited(None)),
        8 => (format!("{key} given twice"), edited(Some(format!("{}\n{}", lines[i], lines[i])))),
        9 => (format!("unknown key `depth = 3` beside {key}"), edited(Some(format!("{}\ndepth = 3", lines[i])))),
        10 => {
            let (d, e) = text_like(rng, text);
            (d, e)
        }
        _ => (format!("{key}'s line as [{key}] (a table)"), edited(Some(format!("[{key}]")))),
    }
}

/// Generic edits of a text file: empty, truncated, non-UTF-8 or NUL bytes, byte flips, or a megabyte of
/// NULs after the text (the 2^31-byte variant is a focused case: reading it costs seconds).
pub fn text_like(rng: &mut Rng, text: &str) -> (String, Edit) {
    let b = text.as_bytes();
    match rng.below(6) {
        0 => ("empty file".into(), Edit::Write(vec![])),
        1 => {
            let n = rng.below(b.len().max(1));
            (format!("truncated to {n} bytes"), Edit::Write(b[..n].to_vec()))
        }
        2 => {
            let at = rng.below(b.len().max(1));
            let bad = *rng.pick(&[&[0xffu8][..], &[0xc3], &[0xed, 0xa0, 0x80], &[0x00, 0x00]]);
            let mut out = b[..at].to_vec();
            out.extend(bad);
            out.extend(&b[at..]);
            (format!("bytes {bad:02x?} inserted at {at}"), Edit::Write(out))
        }
        3 => ("1 MiB (NULs after the text)".into(), Edit::SetLen(1 << 20)),
        _ => {
            let (d, out) = bytes(rng, b, 0);
            (d, Edit::Write(out))
        }
    }
}

/// A training text: shorter or garbled, never huge (a long text is a legitimate input).
pub fn training_text(rng: &mut Rng, text: &str) -> (String, Edit) {
    let b = text.as_bytes();
    match rng.below(7) {
        0 => ("empty file".into(), Edit::Write(vec![])),
        1 => ("one character".into(), Edit::Write(b"a".to_vec())),
        2 | 3 => {
            let n = rng.below(b.len().clamp(1, 400));
            (format!("truncated to {n} bytes"), Edit::Write(b[..n].to_vec()))
        }
        4 => ("only NUL bytes (4000)".into(), Edit::Write(vec![0; 4000])),
        5 => ("only newlines (4000)".into(), Edit::Write(vec![b'\n'; 4000])),
        _ => {
            let at = rng.below(b.len());
            let mut out = b.to_vec();
            out.insert(at, 0xff);
            (format!("byte ff inserted at {at}"), Edit::Write(out))
        }
    }
}

// ---------------------------------------------------------------------------------------------- JSONL

/// A run log: a line garbled, removed, duplicated, replaced or given hostile values, the file emptied or
/// cut mid-line (which a log killed mid-write legitimately ends with).
pub fn jsonl(rng: &mut Rng, text: &str) -> (String, Edit) {
    let lines: Vec<&str> = text.lines().collect();
    let i = rng.below(lines.len());
    let rebuild = |out: Vec<String>| Edit::Write((out.join("\n") + "\n").into_bytes());
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match rng.below(10) {
        0 => {
            let cut = rng.below(lines[i].len());
            out[i] = lines[i][..cut].to_string();
            (format!("line {} cut to {cut} bytes", i + 1), rebuild(out))
        }
        1 => {
            out.remove(i);
            (format!("line {} removed", i + 1), rebuild(out))
        }
        2 => {
            out.insert(i, lines[i].to_string());
            (format!("line {} duplicated", i + 1), rebuild(out))
        }
        3 => {
            let junk = *rng.pick(&["null", "[]", "{}", "3", "\"x\"", "{\"step\": \"one\"}", "{garbage"]);
            out[i] = junk.to_string();
            (format!("line {} replaced by {junk}", i + 1), rebuild(out))
        }
        4..=7 => {
            // A hostile value for one field of one line, spelled as JSON text.
            let mut v: serde_json::Map<String, Value> = serde_json::from_str(lines[i]).unwrap();
            let keys: Vec<String> = v.keys().cloned().collect();
            let key = rng.pick(&keys).clone();
            let lit = *rng.pick(&[
                "1e308",
                "-1e308",
                "NaN",
                "-Infinity",
                "null",
                "-1",
                "18446744073709551615",
                "\"x\"",
                "1e-320",
            ]);
            v.insert(key.clone(), RAW.into());
            out[i] = Value::Object(v).to_string().replace(&format!("\"{RAW}\""), lit);
            (format!("line {}: {key} = {lit}", i + 1), rebuild(out))
        }
        8 => {
            let at = rng.below(text.len());
            (format!("cut at byte {at} (mid-line, as by a kill)"), Edit::Write(text.as_bytes()[..at].to_vec()))
        }
        _ => ("empty file".into(), Edit::Write(vec![])),
    }
}

/// The healthy bytes of `files` under `root`, read once.
pub fn read_all(root: &std::path::Path, files: &[String]) -> BTreeMap<String, Vec<u8>> {
    files.iter().map(|f| (f.clone(), std::fs::read(root.join(f)).unwrap())).collect()
}
