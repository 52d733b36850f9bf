//! One-shot structured pruning to exactly a target shape (docs/method.md §11): the baselines the paper
//! compares learned masks against (§4.1, "pruning methods followed by the same continued pre-training").
//!
//! Each method scores every structure the masks prune (a layer, a KV group, a query head, an MLP channel,
//! a hidden channel) once, on the unpruned source, keeps the top-scored ones per mask row exactly as
//! materialization needs them ([`super::masks::layouts`]: heads per (layer, KV group), KV groups and MLP
//! channels per layer, hidden channels and layers over the model), and materializes 0/1 masks. Larger
//! scores are more important.
//!
//! | method | structures | layers |
//! |---|---|---|
//! | `magnitude` | L2 norm of the structure's weights | L2 norm of the layer's weights |
//! | `wanda-sp` | Σ over the structure's weights of Wanda's `|W_ij|·‖X_j‖` (Sun et al., 2023; the structured variant of An et al., 2024) | the layer's total Wanda score |
//! | `activation` | Minitron's mean activation magnitude per head, neuron and embedding channel (Muralidharan et al., 2024, §2) | Block Influence |
//! | `block-influence` | none: the source's width is kept (ShortGPT, Men et al., 2024) | Block Influence, `1 − mean cos(x_in, x_out)` |

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::masks::layouts;
use super::target::TargetShape;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::family::{Family, MaskValues};
use crate::model::{Activations, Llama, TensorMap};

/// A one-shot pruning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Magnitude,
    WandaSp,
    Activation,
    BlockInfluence,
}

impl Method {
    pub const ALL: [Method; 4] = [Method::Magnitude, Method::WandaSp, Method::Activation, Method::BlockInfluence];

    pub fn name(self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::WandaSp => "wanda-sp",
            Method::Activation => "activation",
            Method::BlockInfluence => "block-influence",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|m| m.name()).collect();
            Error::Invalid(format!("unknown one-shot method `{s}` (one of {})", names.join(", ")))
        })
    }

    /// Whether the scores read activations (everything but `magnitude`).
    pub fn needs_calibration(self) -> bool {
        self != Method::Magnitude
    }

    /// The shape this method prunes to: the target, or for `block-influence` the target's depth at the
    /// source's width.
    pub fn shape(self, source: &LlamaConfig, target: &TargetShape) -> TargetShape {
        match self {
            Method::BlockInfluence => TargetShape { layers: target.layers, ..TargetShape::of(source) },
            _ => *target,
        }
    }
}

/// Per-structure scores in the mask families' layouts: `layer [L]`, `kv_group [L·KV]`, `head [L·H]`,
/// `intermediate [L·m]`, `hidden [d]` (only the layer scores for `block-influence`).
#[derive(Debug, Clone, Default)]
pub struct Importance(pub BTreeMap<Family, Vec<f64>>);

impl Importance {
    pub fn get(&self, family: Family) -> Option<&[f64]> {
        self.0.get(&family).map(|v| v.as_slice())
    }
}

/// What the activation-based scores need of a calibration pass, summed over its tokens.
#[derive(Debug, Clone, Default)]
pub struct Calibration {
    pub tokens: usize,
    pub layers: Vec<LayerStats>,
    /// Over the final norm's output: Σ x² and Σ |x| per channel.
    pub final_sq: Vec<f64>,
    pub final_abs: Vec<f64>,
}

/// One block's sums over the calibration tokens (per channel unless said otherwise).
#[derive(Debug, Clone, Default)]
pub struct LayerStats {
    /// Σ x² and Σ |x| of the input norm's output (what q, k, v read).
    pub a_sq: Vec<f64>,
    pub a_abs: Vec<f64>,
    /// Σ x² of the attention output, `o_proj`'s input `[H·hd]`.
    pub ctx_sq: Vec<f64>,
    /// Σ over tokens of each head's output norm `‖ctx_h‖₂` `[H]`.
    pub head_norm: Vec<f64>,
    /// Σ x² and Σ |x| of the post-attention norm's output (what gate and up read).
    pub h_sq: Vec<f64>,
    pub h_abs: Vec<f64>,
    /// Σ x² and Σ |x| of the SwiGLU activation, `down_proj`'s input `[m]`.
    pub act_sq: Vec<f64>,
    pub act_abs: Vec<f64>,
    /// Σ cos(block input, block output) over tokens.
    pub cos: f64,
}

fn add(acc: &mut Vec<f64>, t: &Tensor) -> Result<()> {
    let v: Vec<f32> = t.to_dtype(DType::F32)?.to_vec1()?;
    if acc.is_empty() {
        acc.resize(v.len(), 0.0);
    }
    acc.iter_mut().zip(v).for_each(|(a, x)| *a += x as f64);
    Ok(())
}

/// Sums of squares and of magnitudes over the rows of `x: [n, c]`.
fn sq_abs(x: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((x.sqr()?.sum(0)?, x.abs()?.sum(0)?))
}

impl Calibration {
    /// Run `model` (f32, CPU) over `batches` (`[b, t]` token ids each) and sum the statistics;
    /// `progress(done, total)` after each batch.
    pub fn collect(model: &Llama, batches: &[Tensor], mut progress: impl FnMut(usize, usize)) -> Result<Self> {
        let cfg = model.config();
        let (heads, hd) = (cfg.num_attention_heads, cfg.head_dim());
        let mut c = Calibration { layers: vec![LayerStats::default(); cfg.num_hidden_layers], ..Default::default() };
        for (i, ids) in batches.iter().enumerate() {
            let hf = model.calibration_pass(ids, |l, act: &Activations| {
                let s = &mut c.layers[l];
                let rows = |t: &Tensor| t.flatten_to(1);
                let (a, h, ctx, m) = (rows(&act.a)?, rows(&act.h)?, rows(&act.ctx)?, rows(&act.act)?);
                let (sq, ab) = sq_abs(&a)?;
                add(&mut s.a_sq, &sq)?;
                add(&mut s.a_abs, &ab)?;
                let (sq, ab) = sq_abs(&h)?;
                add(&mut s.h_sq, &sq)?;
                add(&mut s.h_abs, &ab)?;
                let (sq, ab) = sq_abs(&m)?;
                add(&mut s.act_sq, &sq)?;
                add(&mut s.act_abs, &ab)?;
                add(&mut s.ctx_sq, &ctx.sqr()?.sum(0)?)?;
                let n = ctx.dim(0)?;
                add(&mut s.head_norm, &ctx.reshape((n, heads, hd))?.sqr()?.sum(2)?.sqrt()?.sum(0)?)?;
                let (x, y) = (rows(&act.x)?, rows(&act.y)?);
                let dot = (&x * &y)?.sum(1)?;
                let norms = (x.sqr()?.sum(1)?.sqrt()? * y.sqr()?.sum(1)?.sqrt()?)?;
                s.cos += (dot / norms)?.sum_all()?.to_scalar::<f32>()? as f64;
                Ok(())
            })?;
            let (sq, ab) = sq_abs(&hf.flatten_to(1)?)?;
            add(&mut c.final_sq, &sq)?;
            add(&mut c.final_abs, &ab)?;
            c.tokens += ids.elem_count();
            progress(i + 1, batches.len());
        }
        if c.tokens == 0 {
            return Err(Error::Invalid("no calibration tokens".into()));
        }
        Ok(c)
    }

    /// Block Influence per layer: `1 − mean cos(x_in, x_out)` (ShortGPT, Men et al., 2024, eq. 1).
    pub fn block_influence(&self) -> Vec<f64> {
        self.layers.iter().map(|s| 1.0 - s.cos / self.tokens as f64).collect()
    }
}

/// A weight matrix `[out, in]` in f64 row-major, with its shape.
struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl Matrix {
    fn of(weights: &TensorMap, name: &str) -> Result<Self> {
        let t = weights.get(name).ok_or_else(|| Error::Invalid(format!("no weight `{name}`")))?;
        let (rows, cols) = t.dims2()?;
        let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect();
        Ok(Self { rows, cols, data })
    }
    fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
    /// Σ_j f(W_rj) per row `r`.
    fn row_sums(&self, f: impl Fn(f64) -> f64) -> Vec<f64> {
        (0..self.rows).map(|r| self.row(r).iter().map(|&w| f(w)).sum()).collect()
    }
    /// Σ_i f(W_ij) per column `j`.
    fn col_sums(&self, f: impl Fn(f64) -> f64) -> Vec<f64> {
        let mut out = vec![0.0; self.cols];
        for r in 0..self.rows {
            out.iter_mut().zip(self.row(r)).for_each(|(o, &w)| *o += f(w));
        }
        out
    }
    /// Wanda per row: `Σ_j |W_rj| · x_j`.
    fn wanda_rows(&self, x: &[f64]) -> Vec<f64> {
        (0..self.rows).map(|r| self.row(r).iter().zip(x).map(|(w, x)| w.abs() * x).sum()).collect()
    }
}

fn sq(w: f64) -> f64 {
    w * w
}
fn abs(w: f64) -> f64 {
    w.abs()
}
/// Sums of `v` over consecutive groups of `n`.
fn group_sums(v: &[f64], n: usize) -> Vec<f64> {
    v.chunks(n).map(|c| c.iter().sum()).collect()
}
fn add_into(acc: &mut [f64], v: &[f64]) {
    acc.iter_mut().zip(v).for_each(|(a, v)| *a += v);
}

/// One layer's seven projections.
struct Layer {
    q: Matrix,
    k: Matrix,
    v: Matrix,
    o: Matrix,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

impl Layer {
    fn of(weights: &TensorMap, i: usize) -> Result<Self> {
        let m = |s: &str| Matrix::of(weights, &format!("model.layers.{i}.{s}.weight"));
        Ok(Self {
            q: m("self_attn.q_proj")?,
            k: m("self_attn.k_proj")?,
            v: m("self_attn.v_proj")?,
            o: m("self_attn.o_proj")?,
            gate: m("mlp.gate_proj")?,
            up: m("mlp.up_proj")?,
            down: m("mlp.down_proj")?,
        })
    }
}

/// Every structure's score under `method` (`calibration` for all but `magnitude`).
pub fn importance(
    method: Method,
    cfg: &LlamaConfig,
    weights: &TensorMap,
    calibration: Option<&Calibration>,
) -> Result<Importance> {
    let cal = match (method.needs_calibration(), calibration) {
        (true, None) => return Err(no_calibration(method)),
        (_, c) => c,
    };
    let (l, hd, d) = (cfg.num_hidden_layers, cfg.head_dim(), cfg.hidden_size);
    let heads_per_group = cfg.group_size();
    let mut out = BTreeMap::new();
    if method == Method::BlockInfluence {
        out.insert(Family::Layer, cal.expect("checked").block_influence());
        return Ok(Importance(out));
    }
    let (mut layer, mut kv_group, mut head, mut intermediate) = (vec![], vec![], vec![], vec![]);
    let mut hidden = vec![0.0; d];
    // The LM head reads every hidden channel (the embedding matrix when tied).
    let head_name = if cfg.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
    for i in 0..l {
        let w = Layer::of(weights, i)?;
        match method {
            Method::Magnitude => {
                let (q_rows, o_cols) = (w.q.row_sums(sq), w.o.col_sums(sq));
                let (k_rows, v_rows) = (w.k.row_sums(sq), w.v.row_sums(sq));
                let per_head: Vec<f64> =
                    group_sums(&q_rows, hd).iter().zip(group_sums(&o_cols, hd)).map(|(q, o)| (q + o).sqrt()).collect();
                let per_group =
                    group_sums(&k_rows, hd).into_iter().zip(group_sums(&v_rows, hd)).map(|(k, v)| (k + v).sqrt());
                let down_cols = w.down.col_sums(sq);
                let per_channel = w
                    .gate
                    .row_sums(sq)
                    .into_iter()
                    .zip(w.up.row_sums(sq))
                    .zip(&down_cols)
                    .map(|((g, u), dn)| (g + u + dn).sqrt());
                head.extend(per_head);
                kv_group.extend(per_group);
                intermediate.extend(per_channel);
                for cols in
                    [w.q.col_sums(sq), w.k.col_sums(sq), w.v.col_sums(sq), w.gate.col_sums(sq), w.up.col_sums(sq)]
                {
                    add_into(&mut hidden, &cols);
                }
                add_into(&mut hidden, &w.o.row_sums(sq));
                add_into(&mut hidden, &w.down.row_sums(sq));
                let total: f64 = [&w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down]
                    .iter()
                    .map(|m| m.data.iter().map(|&x| x * x).sum::<f64>())
                    .sum();
                layer.push(total.sqrt());
            }
            Method::WandaSp => {
                let s = &cal.expect("checked").layers[i];
                let norm = |v: &[f64]| v.iter().map(|x| x.sqrt()).collect::<Vec<f64>>();
                let (xa, xctx, xh, xact) = (norm(&s.a_sq), norm(&s.ctx_sq), norm(&s.h_sq), norm(&s.act_sq));
                // Per input column j: Σ_i |W_ij| · ‖X_j‖.
                let scored =
                    |w: &Matrix, x: &[f64]| -> Vec<f64> { w.col_sums(abs).iter().zip(x).map(|(c, x)| c * x).collect() };
                let (o_cols, down_cols) = (scored(&w.o, &xctx), scored(&w.down, &xact));
                head.extend(group_sums(&o_cols, hd));
                let kv_rows: Vec<f64> =
                    w.k.wanda_rows(&xa).iter().zip(w.v.wanda_rows(&xa)).map(|(k, v)| k + v).collect();
                kv_group.extend(group_sums(&kv_rows, hd));
                intermediate.extend(down_cols.iter().copied());
                let (q, k, v) = (scored(&w.q, &xa), scored(&w.k, &xa), scored(&w.v, &xa));
                let (g, u) = (scored(&w.gate, &xh), scored(&w.up, &xh));
                for cols in [&q, &k, &v, &g, &u] {
                    add_into(&mut hidden, cols);
                }
                let sum = |v: &[f64]| v.iter().sum::<f64>();
                layer.push([&q, &k, &v, &o_cols, &g, &u, &down_cols].iter().map(|v| sum(v)).sum());
            }
            Method::Activation => {
                let c = cal.expect("checked");
                let (s, n) = (&c.layers[i], c.tokens as f64);
                let per_head: Vec<f64> = s.head_norm.iter().map(|v| v / n).collect();
                kv_group.extend(group_sums(&per_head, heads_per_group));
                head.extend(per_head);
                intermediate.extend(s.act_abs.iter().map(|v| v / n));
                for v in [&s.a_abs, &s.h_abs] {
                    add_into(&mut hidden, &v.iter().map(|x| x / n).collect::<Vec<f64>>());
                }
            }
            Method::BlockInfluence => unreachable!("returned above"),
        }
    }
    match method {
        Method::Magnitude => {
            add_into(&mut hidden, &Matrix::of(weights, "model.embed_tokens.weight")?.col_sums(sq));
            if !cfg.tie_word_embeddings {
                add_into(&mut hidden, &Matrix::of(weights, head_name)?.col_sums(sq));
            }
            hidden.iter_mut().for_each(|h| *h = h.sqrt());
        }
        Method::WandaSp => {
            let xf: Vec<f64> = cal.expect("checked").final_sq.iter().map(|x| x.sqrt()).collect();
            let cols = Matrix::of(weights, head_name)?.col_sums(abs);
            add_into(&mut hidden, &cols.iter().zip(&xf).map(|(c, x)| c * x).collect::<Vec<f64>>());
        }
        Method::Activation => {
            let c = cal.expect("checked");
            add_into(&mut hidden, &c.final_abs.iter().map(|x| x / c.tokens as f64).collect::<Vec<f64>>());
            layer = c.block_influence();
        }
        Method::BlockInfluence => unreachable!("returned above"),
    }
    out.insert(Family::Layer, layer);
    out.insert(Family::KvGroup, kv_group);
    out.insert(Family::Head, head);
    out.insert(Family::Intermediate, intermediate);
    out.insert(Family::Hidden, hidden);
    Ok(Importance(out))
}

fn no_calibration(method: Method) -> Error {
    Error::Invalid(format!(
        "--method {} scores activations and needs calibration data: --data TEXT|CORPUS",
        method.name()
    ))
}

/// Whether `method` gets the calibration data it needs, and no data it would ignore.
pub fn check_data(method: Method, data: Option<&Path>) -> Result<()> {
    match (method.needs_calibration(), data) {
        (true, None) => Err(no_calibration(method)),
        (false, Some(_)) => {
            Err(Error::Invalid(format!("--method {} reads only the weights; --data would be ignored", method.name())))
        }
        _ => Ok(()),
    }
}

/// Whether each of `scores` is among its `k` largest (ties: the lower index first).
fn top_k(scores: &[f64], k: usize) -> Vec<bool> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept = vec![false; scores.len()];
    idx.into_iter().take(k).for_each(|i| kept[i] = true);
    kept
}

/// 0/1 masks that keep, per mask row, the top-scored structures: exactly `shape`'s counts, so that
/// [`super::materialize()`] gives that shape.
pub fn keep_masks(source: &LlamaConfig, shape: &TargetShape, importance: &Importance) -> Result<MaskValues> {
    shape.validate(source)?;
    let mut masks = MaskValues::default();
    for layout in layouts(source, shape) {
        let scores = importance.get(layout.family).ok_or_else(|| {
            Error::Invalid(format!("no `{}` scores for a target that prunes them", layout.family.name()))
        })?;
        if scores.len() != layout.rows * layout.row_len {
            return Err(Error::Invalid(format!(
                "{} `{}` scores, the masks need {}",
                scores.len(),
                layout.family.name(),
                layout.rows * layout.row_len
            )));
        }
        let values: Vec<f32> = scores
            .chunks(layout.row_len)
            .flat_map(|row| top_k(row, layout.target_kept).into_iter().map(|k| if k { 1.0 } else { 0.0 }))
            .collect();
        masks.insert(layout.family, Tensor::from_vec(values, layout.shape.clone(), &Device::Cpu)?);
    }
    Ok(masks)
}

/// A one-shot pruning's result: what it kept and why.
pub struct OneShot {
    pub method: Method,
    /// The shape pruned to ([`Method::shape`]).
    pub shape: TargetShape,
    pub importance: Importance,
    pub masks: MaskValues,
}

/// Score, choose and materialize: the pruned model's config and weights.
pub fn prune(
    method: Method,
    source: &LlamaConfig,
    weights: &TensorMap,
    target: &TargetShape,
    calibration: Option<&Calibration>,
) -> Result<(OneShot, LlamaConfig, TensorMap)> {
    target.validate(source)?;
    let shape = method.shape(source, target);
    let importance = importance(method, source, weights, calibration)?;
    let masks = keep_masks(source, &shape, &importance)?;
    let (cfg, small) = super::materialize(source, weights, &masks, &shape)?;
    Ok((OneShot { method, shape, importance, masks }, cfg, small))
}

/// Calibration batches from `data` for the model in `model_dir`: a corpus directory's training sequences
/// (tokenized with that model's tokenizer), domain by domain in turn, or a text file's training part (the
/// last 5% is held out, as `shear prune --data` holds it out) cut into consecutive windows of `seq_len`;
/// `tokens` in all (or what there is), `batch` sequences per batch.
pub fn calibration_batches(
    data: &Path,
    model_dir: &Path,
    tokens: usize,
    seq_len: usize,
    batch: usize,
) -> Result<Vec<Tensor>> {
    if tokens == 0 || seq_len < 2 || batch == 0 {
        return Err(Error::Invalid(format!(
            "calibration of {tokens} tokens in sequences of {seq_len}, {batch} per batch: nothing to measure"
        )));
    }
    let seqs: Vec<Vec<u32>> = if data.is_dir() {
        let corpus = crate::data::corpus::Corpus::open(data)?;
        let tj = model_dir.join(crate::io::tokenizer::TOKENIZER_FILE);
        corpus.check_tokenizer(&std::fs::read(&tj).map_err(|e| Error::io(&tj, e))?, model_dir)?;
        let k = corpus.domains.len();
        let per: Vec<usize> = (0..k).map(|d| corpus.sequences(true, d)).collect();
        let want = tokens.div_ceil(corpus.seq_len());
        let mut out = vec![];
        let mut i = 0;
        while out.len() < want && i < *per.iter().max().unwrap_or(&0) {
            for d in (0..k).filter(|&d| i < per[d]) {
                if out.len() < want {
                    out.push(corpus.sequence(true, d, i).to_vec());
                }
            }
            i += 1;
        }
        out
    } else {
        let tok = crate::io::load_tokenizer(model_dir)?;
        let text = crate::data::TextData::from_file(data, &tok, 0.05, seq_len)?;
        text.train.chunks_exact(seq_len).take(tokens.div_ceil(seq_len)).map(|c| c.to_vec()).collect()
    };
    if seqs.is_empty() {
        return Err(Error::Invalid(format!("{}: no calibration sequences", data.display())));
    }
    seqs.chunks(batch)
        .map(|b| {
            let (n, t) = (b.len(), b[0].len());
            Ok(Tensor::from_vec(b.concat(), (n, t), &Device::Cpu)?)
        })
        .collect()
}

/// Where `shear oneshot` puts its mask snapshot inside the model directory it writes.
pub const SNAPSHOT_DIR: &str = "oneshot";

/// What a one-shot pruning's `oneshot/run.json` says: enough for `shear inspect` and notebook 03 to read
/// its masks as they read a pruning run's ([`crate::run::pruning::MaskSpec`]), and how it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OneShotSpec {
    pub source_model: std::path::PathBuf,
    /// The shape pruned to (for `block-influence`, the requested target's depth at the source's width).
    pub target: TargetShape,
    pub requested_target: TargetShape,
    pub method: Method,
    pub data: Option<std::path::PathBuf>,
    pub calibration_tokens: usize,
}

impl OneShot {
    /// The snapshot files, paths relative to the model directory: `oneshot/run.json`, `target.toml` and
    /// `masks/step_000000.safetensors` with the 0/1 masks as `z_target.*`, the scores as `importance.*`,
    /// and as `log_alpha.*` the hard-concrete bounds ±ln 100 (kept / dropped), so that every view of
    /// learned masks reads these as decided masks.
    pub fn snapshot_files(&self, spec: &OneShotSpec) -> Result<Vec<(String, Vec<u8>)>> {
        let mut t: BTreeMap<String, Tensor> = BTreeMap::new();
        let limit = super::hard_concrete::LOG_ALPHA_LIMIT as f32;
        for (family, z) in self.masks.iter() {
            t.insert(format!("z_target.{}", family.name()), z.clone());
            t.insert(format!("log_alpha.{}", family.name()), ((z * (2.0 * limit as f64))? - limit as f64)?);
            if let Some(scores) = self.importance.get(family) {
                let v: Vec<f32> = scores.iter().map(|&x| x as f32).collect();
                t.insert(format!("importance.{}", family.name()), Tensor::from_vec(v, z.shape(), &Device::Cpu)?);
            }
        }
        let views: Vec<(&str, &Tensor)> = t.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let masks = safetensors::serialize(views, None)
            .map_err(|e| Error::Invalid(format!("cannot serialize the one-shot masks: {e}")))?;
        let json = serde_json::to_string_pretty(spec).expect("a one-shot spec serializes");
        let toml = toml::to_string(&self.shape).expect("a target shape serializes");
        Ok(vec![
            (format!("{SNAPSHOT_DIR}/{}", crate::run::RUN_FILE), json.into_bytes()),
            (format!("{SNAPSHOT_DIR}/{}", crate::run::pruning::TARGET_FILE), toml.into_bytes()),
            (format!("{SNAPSHOT_DIR}/{}", crate::run::pruning::snapshot_name(0)), masks),
        ])
    }
}
