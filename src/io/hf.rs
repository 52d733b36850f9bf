//! Load and save HF model directories (`config.json` + safetensors, single file or sharded).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::StagingDir;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::invalid;
use crate::model::{check_weights, Llama, TensorMap};

pub const CONFIG_FILE: &str = "config.json";
pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Files besides config and weights that travel with a model when it is re-saved.
pub const COMPANION_FILES: &[&str] =
    &["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"];

pub struct LoadedModel {
    pub config: LlamaConfig,
    pub model: Llama,
    pub dir: PathBuf,
}

/// Load config and weights of `dir`, cast to `dtype` on `device`, and build the model.
pub fn load_model(dir: &Path, dtype: DType, device: &Device) -> Result<LoadedModel> {
    let config = load_config(dir)?;
    let weights = load_weights(dir, Some(dtype), device)?;
    check_weights(&config, &weights).map_err(|e| Error::Weights {
        path: dir.to_path_buf(),
        msg: format!("weights do not match config.json: {e}"),
    })?;
    let model = Llama::new(&config, &weights)?;
    Ok(LoadedModel { config, model, dir: dir.to_path_buf() })
}

pub fn load_config(dir: &Path) -> Result<LlamaConfig> {
    let path = dir.join(CONFIG_FILE);
    if !path.exists() {
        return Err(Error::Config { path, msg: "file not found (is this a model directory?)".into() });
    }
    LlamaConfig::load(&path)
}

/// The safetensors files of `dir`: the shards named by the index if there is one, else `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let text = super::read_metadata(&index)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Weights { path: index.clone(), msg: format!("invalid JSON: {e}") })?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::Weights { path: index.clone(), msg: "no `weight_map` object".into() })?;
        let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::Weights { path: dir.to_path_buf(), msg: format!("neither {SINGLE_FILE} nor {INDEX_FILE} found") })
}

/// All tensors of `dir`, cast to `dtype` (`None` keeps each stored dtype). A truncated or corrupt file
/// is reported with its path.
pub fn load_weights(dir: &Path, dtype: Option<DType>, device: &Device) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for file in weight_files(dir)? {
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| Error::Weights {
            path: file.clone(),
            msg: format!("not a readable safetensors file (truncated or corrupt?): {e}"),
        })?;
        for (name, t) in tensors {
            if !t.dtype().is_float() {
                let msg = format!("tensor `{name}` is stored as {:?}; weights are floating point", t.dtype());
                return Err(Error::Weights { path: file.clone(), msg });
            }
            // Checked once, as it will be used: a cast keeps NaN and ±inf, and can only add some (f16 tops
            // out at 65504).
            let t = match dtype {
                Some(dt) if t.dtype() != dt => {
                    let cast = t.to_dtype(dt)?;
                    crate::model::check_finite([(&name, &cast)], &file)
                        .map_err(|e| invalid!("{e} (as {dt:?}, cast from the stored {:?})", t.dtype()))?;
                    cast
                }
                _ => {
                    crate::model::check_finite([(&name, &t)], &file)?;
                    t
                }
            };
            if out.insert(name.clone(), t).is_some() {
                return Err(Error::Weights {
                    path: file.clone(),
                    msg: format!("tensor `{name}` appears in two shards"),
                });
            }
        }
    }
    Ok(out)
}

#[derive(Default)]
pub struct SaveOptions {
    /// Cast every tensor to this dtype; `None` keeps each tensor's dtype.
    pub dtype: Option<DType>,
    /// Largest shard in bytes; a model that fits is written as one `model.safetensors`.
    pub max_shard_bytes: Option<u64>,
    /// Directory whose tokenizer and generation files are copied along.
    pub companions_from: Option<PathBuf>,
    /// Extra files `(relative path, contents)` to write, e.g. a freshly built `tokenizer.json`, or a
    /// one-shot pruning's mask snapshot in `oneshot/`.
    pub extra_files: Vec<(String, Vec<u8>)>,
}

/// Write a complete model directory at `dest` (atomically; `dest` must not exist or be empty).
pub fn save_model(dest: &Path, cfg: &LlamaConfig, weights: &TensorMap, opts: &SaveOptions) -> Result<PathBuf> {
    check_weights(cfg, weights)?;
    crate::model::check_finite(weights, dest)?;
    // What travels along must load: a model directory with a broken tokenizer is not worth writing.
    if let Some(src) = opts.companions_from.as_deref().filter(|s| s.join(super::tokenizer::TOKENIZER_FILE).exists()) {
        super::load_tokenizer(src)?;
    }
    let staging = StagingDir::new(dest)?;
    let dir = staging.path();

    // Tensors in model order (embedding, layer 0, 1, ...), so shards split along layers.
    let mut ordered: Vec<(String, Tensor)> = Vec::new();
    for (name, _) in cfg.tensor_shapes() {
        let t = &weights[&name];
        let t = match opts.dtype {
            Some(dt) if t.dtype() != dt => t.to_dtype(dt)?,
            _ => t.clone(),
        };
        ordered.push((name, t));
    }
    let saved_dtype = ordered[0].1.dtype();

    let shards = split_into_shards(&ordered, opts.max_shard_bytes);
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    if shards.len() == 1 {
        write_safetensors(&dir.join(SINGLE_FILE), &shards[0], metadata)?;
    } else {
        let n = shards.len();
        let mut weight_map = BTreeMap::new();
        let mut total_size = 0u64;
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
            for (name, t) in shard {
                weight_map.insert(name.clone(), Value::from(file.clone()));
                total_size += tensor_bytes(t);
            }
            write_safetensors(&dir.join(&file), shard, metadata.clone())?;
        }
        let index = json!({ "metadata": { "total_size": total_size }, "weight_map": weight_map });
        write_file(&dir.join(INDEX_FILE), &serde_json::to_string_pretty(&index).expect("json"))?;
    }

    let mut cfg = cfg.clone();
    cfg.extra.insert("torch_dtype".into(), Value::from(dtype_name(saved_dtype)));
    write_file(&dir.join(CONFIG_FILE), &cfg.to_json_string())?;

    if let Some(src) = &opts.companions_from {
        for name in COMPANION_FILES {
            let from = src.join(name);
            if from.exists() {
                std::fs::copy(&from, dir.join(name)).map_err(|e| Error::io(&from, e))?;
            }
        }
    }
    for (name, contents) in &opts.extra_files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&path, contents).map_err(|e| Error::io(&path, e))?;
    }
    staging.commit()
}

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

fn split_into_shards(tensors: &[(String, Tensor)], max_bytes: Option<u64>) -> Vec<Vec<(String, Tensor)>> {
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![vec![]];
    let mut current = 0u64;
    for (name, t) in tensors {
        let size = tensor_bytes(t);
        if let Some(max) = max_bytes {
            if current > 0 && current + size > max {
                shards.push(vec![]);
                current = 0;
            }
        }
        current += size;
        shards.last_mut().expect("non-empty").push((name.clone(), t.clone()));
    }
    shards
}

fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::serialize_to_file(views, metadata, path)
        .map_err(|e| Error::Weights { path: path.into(), msg: format!("cannot write: {e}") })
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| Error::io(path, e))
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "unknown",
    }
}

/// Parse a user-facing dtype name (`f32`, `bf16`, `f16`, or the HF spelling).
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        other => Err(Error::Invalid(format!("unknown dtype `{other}`; expected f32, bf16 or f16"))),
    }
}
