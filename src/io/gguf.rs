//! GGUF (llama.cpp) → HF model directory.
//!
//! Weights are dequantized to f32 with candle's kernels (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and
//! the K-quants Q2_K..Q6_K). llama.cpp's converter permutes the rows of `attn_q` and `attn_k` so that RoPE can
//! rotate interleaved pairs; HF rotates halves, so the permutation is undone here. `config.json` comes
//! from the `llama.*` metadata and `tokenizer.json` from the `tokenizer.ggml.*` metadata.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};

use super::hf::{save_model, SaveOptions};
use super::tokenizer::{tokenizer_files_from_gguf, GgufVocab};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::model::TensorMap;

pub struct GgufImport {
    pub config: LlamaConfig,
    pub weights: TensorMap,
    pub tokenizer_json: String,
    pub tokenizer_config_json: String,
    /// `(gguf tensor type, count)`, for the log.
    pub tensor_types: Vec<(String, usize)>,
}

/// Read a GGUF file into a config, f32 weights in HF naming and layout, and tokenizer files.
pub fn read_gguf(path: &Path, mut progress: impl FnMut(usize, usize)) -> Result<GgufImport> {
    let gerr = |msg: String| Error::Gguf { path: path.into(), msg };
    check_header(path)?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("unknown dtype") {
            gerr(format!(
                "unsupported tensor quantization ({msg}); supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q8_K"
            ))
        } else {
            gerr(format!("not a readable GGUF file: {msg}"))
        }
    })?;
    check_layout(&content, std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len()).map_err(gerr)?;
    let md = &content.metadata;
    let get = |key: &str| md.get(key);
    let arch = get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if arch != "llama" {
        return Err(gerr(format!("architecture is `{arch}`; only `llama` GGUF files are supported")));
    }
    // An optional key that is present must be valid: a default would hide a corrupt value.
    let optional_usize = |key: &str| -> Result<Option<usize>> {
        get(key)
            .map(|v| {
                value_as_u64(v).map(|x| x as usize).ok_or_else(|| gerr(format!("metadata `{key}` is not an integer")))
            })
            .transpose()
    };
    let usize_of =
        |key: &str| -> Result<usize> { optional_usize(key)?.ok_or_else(|| gerr(format!("missing metadata `{key}`"))) };

    if md.contains_key("llama.rope.scaling.type") || content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(gerr("RoPE scaling (llama 3.1-style rope_freqs) is not supported".into()));
    }

    let vocab = read_vocab(md).map_err(gerr)?;
    let n_layers = usize_of("llama.block_count")?;
    let hidden = usize_of("llama.embedding_length")?;
    let heads = usize_of("llama.attention.head_count")?;
    if heads == 0 {
        return Err(gerr("metadata `llama.attention.head_count` is 0".into()));
    }
    let kv_heads = optional_usize("llama.attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = optional_usize("llama.attention.key_length")?.unwrap_or(hidden / heads);
    let vocab_size = optional_usize("llama.vocab_size")?.unwrap_or(vocab.tokens.len());
    let tied = !content.tensor_infos.contains_key("output.weight");
    let mut cfg = LlamaConfig::new(
        vocab_size,
        hidden,
        usize_of("llama.feed_forward_length")?,
        n_layers,
        heads,
        kv_heads,
        head_dim,
        tied,
    );
    // GGUF stores eps as f32; print it shortest (9.999999747e-6 -> 1e-5), as HF's config has it. A key
    // that is present but not a number is an error, not a default.
    let number = |key: &str| -> Result<Option<f64>> {
        get(key).map(|v| value_as_f64(v).ok_or_else(|| gerr(format!("metadata `{key}` is not a number")))).transpose()
    };
    if let Some(eps) = number("llama.attention.layer_norm_rms_epsilon")? {
        cfg.rms_norm_eps = shortest_f32(eps);
    }
    cfg.rope_theta = Some(number("llama.rope.freq_base")?.map(shortest_f32).unwrap_or(10_000.0));
    if let Some(ctx) = optional_usize("llama.context_length")? {
        cfg.max_position_embeddings = ctx;
    }
    if let Some(b) = vocab.bos_token_id {
        cfg.extra.insert("bos_token_id".into(), b.into());
    }
    if let Some(e) = vocab.eos_token_id {
        cfg.extra.insert("eos_token_id".into(), e.into());
    }
    if let Some(name) = get("general.name").and_then(|v| v.to_string().ok()) {
        cfg.extra.insert("_name_or_path".into(), name.clone().into());
    }
    // Validated like any config.json, before the JSON round trip (which would write a NaN as null).
    let cfg = cfg.checked(path)?;
    let cfg = LlamaConfig::from_json_str(&cfg.to_json_string(), path)?;

    let (tokenizer_json, tokenizer_config_json) = tokenizer_files_from_gguf(&vocab, path)?;

    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut weights = TensorMap::new();
    let mut types = std::collections::BTreeMap::<String, usize>::new();
    for (i, gname) in names.iter().enumerate() {
        let hf_name = hf_tensor_name(gname).ok_or_else(|| gerr(format!("unexpected tensor `{gname}`")))?;
        let q = content.tensor(&mut reader, gname, &Device::Cpu).map_err(|e| gerr(format!("tensor `{gname}`: {e}")))?;
        *types.entry(format!("{:?}", q.dtype())).or_default() += 1;
        let mut t = q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?;
        crate::model::check_finite([(*gname, &t)], path)?;
        if gname.ends_with("attn_q.weight") {
            t = unpermute_rope_rows(&t, heads)?;
        } else if gname.ends_with("attn_k.weight") {
            t = unpermute_rope_rows(&t, kv_heads)?;
        }
        weights.insert(hf_name, t);
        progress(i + 1, names.len());
    }
    crate::model::check_weights(&cfg, &weights).map_err(|e| gerr(format!("tensors do not match the metadata: {e}")))?;
    Ok(GgufImport {
        config: cfg,
        weights,
        tokenizer_json,
        tokenizer_config_json,
        tensor_types: types.into_iter().collect(),
    })
}

/// Convert a GGUF file to an HF directory at `out`.
pub fn convert_gguf(path: &Path, out: &Path, opts: SaveOptions, progress: impl FnMut(usize, usize)) -> Result<PathBuf> {
    super::check_writable_destination(out)?;
    let imp = read_gguf(path, progress)?;
    let mut opts = opts;
    opts.extra_files.push(("tokenizer.json".into(), imp.tokenizer_json.into_bytes()));
    opts.extra_files.push(("tokenizer_config.json".into(), imp.tokenizer_config_json.into_bytes()));
    save_model(out, &imp.config, &imp.weights, &opts)
}

/// GGUF's metadata value types, by their code: the fixed size of a scalar in bytes, `None` for a string
/// (8) or an array (9).
fn scalar_size(ty: u32) -> std::result::Result<Option<u64>, String> {
    match ty {
        0 | 1 | 7 => Ok(Some(1)),
        2 | 3 => Ok(Some(2)),
        4..=6 => Ok(Some(4)),
        10..=12 => Ok(Some(8)),
        8 | 9 => Ok(None),
        other => Err(format!("unknown metadata value type {other}")),
    }
}

/// Walk the header's metadata before candle's reader sees it, for what that reader would divide by or
/// trust: `general.alignment` must be a positive multiple of 8 (the GGUF spec's rule). Every length is
/// checked against the bytes left in the file, so a corrupt count is an error, not an allocation.
fn check_header(path: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let gerr = |msg: String| Error::Gguf { path: path.into(), msg: format!("not a readable GGUF file: {msg}") };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = BufReader::new(file);
    let bytes = |n: usize, r: &mut BufReader<File>| -> Result<[u8; 8]> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b[..n]).map_err(|_| gerr("the header ends early (truncated?)".into()))?;
        Ok(b)
    };
    let u32_at = |b: [u8; 8]| u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
    let magic = bytes(4, &mut r)?;
    if &magic[..4] != b"GGUF" {
        return Err(gerr("no GGUF magic".into()));
    }
    let version = u32_at(bytes(4, &mut r)?);
    // Version 1 wrote counts and lengths as u32, later versions as u64.
    let len_size = if version == 1 { 4 } else { 8 };
    let length = |r: &mut BufReader<File>| -> Result<u64> {
        let b = bytes(len_size, r)?;
        let n = if len_size == 4 { u32_at(b) as u64 } else { u64::from_le_bytes(b) };
        let left = size.saturating_sub(r.stream_position().map_err(|e| Error::io(path, e))?);
        if n > left {
            return Err(gerr(format!("a length of {n} in the header exceeds the {left} bytes left in the file")));
        }
        Ok(n)
    };
    let _tensors = length(&mut r)?;
    let kv_count = length(&mut r)?;
    let skip = |n: u64, r: &mut BufReader<File>| -> Result<()> {
        r.seek(SeekFrom::Current(n as i64)).map(|_| ()).map_err(|e| Error::io(path, e))
    };
    for _ in 0..kv_count {
        let key_len = length(&mut r)?;
        if key_len > 1 << 16 {
            return Err(gerr(format!("a metadata key of {key_len} bytes")));
        }
        let mut key = vec![0u8; key_len as usize];
        r.read_exact(&mut key).map_err(|_| gerr("the header ends early (truncated?)".into()))?;
        let ty = u32_at(bytes(4, &mut r)?);
        if key == b"general.alignment" {
            // Integer types only: u8, i8, u16, i16, u32, i32, u64, i64.
            let n = scalar_size(ty).ok().flatten().filter(|_| matches!(ty, 0..=5 | 10 | 11)).ok_or_else(|| {
                Error::Gguf { path: path.into(), msg: "metadata `general.alignment` is not an integer".into() }
            })?;
            let b = bytes(n as usize, &mut r)?;
            let v = u64::from_le_bytes(b) & (u64::MAX >> (64 - 8 * n));
            if v == 0 || v % 8 != 0 {
                let msg = format!("metadata `general.alignment` is {v}; GGUF requires a positive multiple of 8");
                return Err(Error::Gguf { path: path.into(), msg });
            }
            continue;
        }
        // Skip the value: a scalar, a string, or an array of either (arrays of arrays do not occur in
        // model files and are refused).
        match scalar_size(ty).map_err(gerr)? {
            Some(n) => skip(n, &mut r)?,
            None if ty == 8 => {
                let n = length(&mut r)?;
                skip(n, &mut r)?
            }
            None => {
                let elem = u32_at(bytes(4, &mut r)?);
                let count = length(&mut r)?;
                match scalar_size(elem).map_err(gerr)? {
                    Some(n) => {
                        let total = count.saturating_mul(n);
                        let left = size.saturating_sub(r.stream_position().map_err(|e| Error::io(path, e))?);
                        if total > left {
                            return Err(gerr(format!("an array of {count} values exceeds the file")));
                        }
                        skip(total, &mut r)?
                    }
                    None if elem == 8 => {
                        for _ in 0..count {
                            let n = length(&mut r)?;
                            skip(n, &mut r)?;
                        }
                    }
                    None => return Err(gerr("nested metadata arrays are not supported".into())),
                }
            }
        }
    }
    Ok(())
}

/// The tensor data must be laid out as GGUF writers lay it out: each tensor at an aligned offset right
/// after the previous one (padding only), the last one ending within one alignment of the end of the file.
/// A wrong tensor count, alignment, type or offset in the header shifts or resizes some tensor and breaks
/// this tiling, instead of converting into garbage weights.
fn check_layout(content: &Content, file_size: u64) -> std::result::Result<(), String> {
    // As candle's reader computed the start of the data (it ignores a 64-bit alignment).
    let alignment = match content.metadata.get("general.alignment") {
        Some(v @ (Value::U8(_) | Value::U16(_) | Value::U32(_) | Value::I8(_) | Value::I16(_) | Value::I32(_))) => {
            value_as_u64(v).unwrap_or(32)
        }
        _ => 32,
    };
    let mut tensors: Vec<(&String, u64, u64)> = content
        .tensor_infos
        .iter()
        .map(|(name, t)| {
            let elems = t.shape.elem_count() as u64;
            let block = t.ggml_dtype.block_size() as u64;
            (name, t.offset, (elems / block).saturating_mul(t.ggml_dtype.type_size() as u64))
        })
        .collect();
    tensors.sort_by_key(|&(name, offset, _)| (offset, name.clone()));
    let data = file_size.checked_sub(content.tensor_data_offset).ok_or("the tensor data starts past the end")?;
    let mut end = 0u64;
    for (name, offset, bytes) in tensors {
        let expected = end.div_ceil(alignment) * alignment;
        if offset != expected {
            return Err(format!(
                "tensor `{name}` starts at data offset {offset}, but the tensors before it end at {end} (alignment \
                 {alignment}): the header's tensor count, types, offsets or alignment are inconsistent"
            ));
        }
        end = offset.saturating_add(bytes);
        if end > data {
            return Err(format!("tensor `{name}` ends past the end of the file (truncated?)"));
        }
    }
    if data - end >= alignment {
        return Err(format!(
            "{} bytes follow the last tensor: the header's tensor count or offsets do not describe the file",
            data - end
        ));
    }
    Ok(())
}

fn hf_tensor_name(g: &str) -> Option<String> {
    let fixed = match g {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = g.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Inverse of llama.cpp's `permute`: within each head, rows were reordered from
/// `[pair, half, ...]` to `[half, pair, ...]` (interleaved RoPE); HF expects rotate-half order.
pub fn unpermute_rope_rows(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if rows % (2 * n_heads) != 0 {
        return Err(Error::Invalid(format!("cannot unpermute {rows} rows over {n_heads} heads")));
    }
    let half = rows / n_heads / 2;
    Ok(w.reshape((n_heads, half, 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?)
}

/// The forward permutation (what llama.cpp's converter applies); used to test the inverse.
pub fn permute_rope_rows(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let half = rows / n_heads / 2;
    Ok(w.reshape((n_heads, 2, half, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?)
}

fn read_vocab(md: &std::collections::HashMap<String, Value>) -> std::result::Result<GgufVocab, String> {
    let strings = |key: &str| -> std::result::Result<Vec<String>, String> {
        match md.get(key) {
            None => Ok(vec![]),
            Some(v) => v
                .to_vec()
                .map_err(|e| format!("metadata `{key}`: {e}"))?
                .iter()
                .map(|s| s.to_string().cloned().map_err(|e| format!("metadata `{key}`: {e}")))
                .collect(),
        }
    };
    let token_types = match md.get("tokenizer.ggml.token_type") {
        None => vec![],
        Some(v) => v
            .to_vec()
            .map_err(|e| format!("tokenizer.ggml.token_type: {e}"))?
            .iter()
            .map(|x| value_as_u64(x).map(|x| x as i32).ok_or("tokenizer.ggml.token_type: not integers".to_string()))
            .collect::<std::result::Result<_, _>>()?,
    };
    let model = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok().cloned())
        .ok_or("no tokenizer in the GGUF metadata (tokenizer.ggml.model missing)")?;
    let id = |key: &str| md.get(key).and_then(value_as_u64).map(|x| x as u32);
    Ok(GgufVocab {
        model,
        pre: md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok().cloned()),
        tokens: strings("tokenizer.ggml.tokens")?,
        merges: strings("tokenizer.ggml.merges")?,
        token_types,
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_id: id("tokenizer.ggml.eos_token_id"),
        chat_template: md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok().cloned()),
    })
}

fn value_as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::U16(x) => Some(*x as u64),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::U32(x) => Some(*x as u64),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::U64(x) => Some(*x),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

fn value_as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        other => value_as_u64(other).map(|x| x as f64),
    }
}

fn shortest_f32(x: f64) -> f64 {
    format!("{}", x as f32).parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() -> Result<()> {
        let w = Tensor::arange(0f32, 24.0 * 3.0, &Device::Cpu)?.reshape((24, 3))?;
        let p = permute_rope_rows(&w, 3)?;
        assert_ne!(p.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        assert_eq!(unpermute_rope_rows(&p, 3)?.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        // Head 0 has 8 rows; llama.cpp interleaves its halves: rows 0,4,1,5,2,6,3,7.
        let first_col: Vec<f32> = p.to_vec2::<f32>()?.iter().take(8).map(|r| r[0] / 3.0).collect();
        assert_eq!(first_col, vec![0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]);
        Ok(())
    }

    #[test]
    fn maps_tensor_names() {
        assert_eq!(hf_tensor_name("blk.12.ffn_up.weight").unwrap(), "model.layers.12.mlp.up_proj.weight");
        assert_eq!(hf_tensor_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert!(hf_tensor_name("blk.x.ffn_up.weight").is_none());
    }
}
