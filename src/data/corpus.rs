//! The multi-domain corpus: documents per domain (from `scripts/corpus/fetch.py`) → normalized,
//! deduplicated, split train/eval by a stable hash of the document id, tokenized, packed into fixed-length
//! sequences, written as one shard per domain and split with a manifest.
//!
//! Packing follows the reference (docs/method.md §7): every document becomes `[BOS] tokens [EOS]`, documents are
//! concatenated in file order, full `seq_len` sequences are emitted and the last partial one is dropped.
//! Tokens are stored little-endian as u16 when the vocabulary fits (≤ 65,536 ids), else u32. Each shard's
//! FNV-1a 64 checksum is in the manifest, so a corrupted shard is detected when the corpus is opened.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::io::StagingDir;

/// The domains in the reference's order (`set_names`).
pub const DOMAINS: [&str; 7] = ["cc", "github", "book", "stackexchange", "wiki", "arxiv", "c4"];
pub const MANIFEST: &str = "manifest.json";

/// FNV-1a, 64 bit: stable across platforms and versions (unlike `std`'s hasher), for ids and checksums.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitStats {
    pub documents: usize,
    pub sequences: usize,
    pub tokens: usize,
    /// UTF-8 bytes of normalized text.
    pub text_bytes: usize,
    /// Shard file, relative to the corpus directory.
    pub file: String,
    /// FNV-1a 64 of the shard's bytes, hex.
    pub checksum: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DomainStats {
    pub train: SplitStats,
    pub eval: SplitStats,
    pub documents_read: usize,
    pub duplicates_dropped: usize,
    pub too_short_dropped: usize,
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub version: u32,
    pub seq_len: usize,
    /// 2 (u16) or 4 (u32) bytes per stored token.
    pub token_bytes: usize,
    pub vocab_size: usize,
    /// FNV-1a 64 of the tokenizer.json the corpus was tokenized with, hex.
    pub tokenizer_checksum: String,
    pub bos_id: u32,
    pub eos_id: u32,
    pub eval_permille: u32,
    pub profile: String,
    pub domains: BTreeMap<String, DomainStats>,
}

pub struct BuildOptions {
    pub seq_len: usize,
    /// Documents whose id hashes below this (out of 1000) go to the eval split.
    pub eval_permille: u32,
    /// Documents shorter than this (characters, after normalization) are dropped.
    pub min_chars: usize,
    pub profile: String,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self { seq_len: 256, eval_permille: 50, min_chars: 32, profile: "custom".into() }
    }
}

/// Normalize a document: Unix newlines, no trailing whitespace on lines, at most two consecutive blank
/// lines, no leading/trailing blank space. NUL and other C0 controls except tab and newline are removed.
pub fn normalize(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for line in text.split('\n') {
        let line: String = line.chars().filter(|c| !c.is_control() || *c == '\t').collect();
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 2 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim().to_string()
}

#[derive(Deserialize)]
struct RawDoc {
    id: String,
    source: String,
    text: String,
}

/// The special ids that delimit documents: the tokenizer's `<|endoftext|>` when it has one (the
/// pre-training convention of GPT-2/StarCoder-style vocabularies such as SmolLM2's), else the model's
/// `bos_token_id` / `eos_token_id`.
pub fn document_delimiters(tok: &Tokenizer, bos: Option<u32>, eos: Option<u32>) -> Result<(u32, u32)> {
    if let Some(id) = tok.token_to_id("<|endoftext|>") {
        return Ok((id, id));
    }
    match (bos, eos) {
        (Some(b), Some(e)) => Ok((b, e)),
        _ => Err(Error::Invalid("the tokenizer has no <|endoftext|> and the config no bos/eos token ids".into())),
    }
}

/// Build the corpus at `out` from `raw/<domain>.jsonl` files. `out` is written atomically.
pub fn build(
    raw: &Path,
    out: &Path,
    tok: &Tokenizer,
    tokenizer_json: &[u8],
    (bos, eos): (u32, u32),
    opts: &BuildOptions,
    mut progress: impl FnMut(&str, &DomainStats),
) -> Result<Manifest> {
    if !(2..=crate::config::LIMITS.positions).contains(&opts.seq_len) {
        return Err(Error::Invalid(format!("sequences of {} tokens: at least 2 are needed", opts.seq_len)));
    }
    if opts.eval_permille > 1000 {
        return Err(Error::Invalid(format!("eval per mille {} is more than 1000", opts.eval_permille)));
    }
    let vocab_size = tok.get_vocab_size(true);
    // The width holds the largest id, not the entry count: a sparse vocabulary can have ids past its size.
    let id_bound = crate::io::tokenizer::id_bound(tok).max(bos.max(eos) as usize + 1);
    let token_bytes = if id_bound <= 1 << 16 { 2 } else { 4 };
    let sources_file = raw.join("sources.json");
    let sources: serde_json::Value = match std::fs::read_to_string(&sources_file) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| Error::Invalid(format!("{}: {e}", sources_file.display())))?,
        Err(_) => serde_json::Value::Null,
    };
    let staging = StagingDir::new(out)?;
    for split in ["train", "eval"] {
        std::fs::create_dir(staging.path().join(split)).map_err(|e| Error::io(staging.path(), e))?;
    }
    let mut domains = BTreeMap::new();
    for domain in DOMAINS {
        let path = raw.join(format!("{domain}.jsonl"));
        let text = crate::io::read_utf8(&path)?;
        let mut seen = HashSet::new();
        let (mut read, mut dups, mut short) = (0, 0, 0);
        let mut splits: [Vec<(u64, String)>; 2] = [vec![], vec![]]; // train, eval
        let mut doc_sources = vec![];
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let doc: RawDoc = serde_json::from_str(line)
                .map_err(|e| Error::Invalid(format!("{}:{}: not a document record: {e}", path.display(), i + 1)))?;
            read += 1;
            let body = normalize(&doc.text);
            if body.chars().count() < opts.min_chars {
                short += 1;
                continue;
            }
            if !seen.insert(fnv1a64(body.as_bytes())) {
                dups += 1;
                continue;
            }
            if !doc_sources.contains(&doc.source) {
                doc_sources.push(doc.source.clone());
            }
            let h = fnv1a64(doc.id.as_bytes());
            let eval = (h % 1000) < opts.eval_permille as u64;
            splits[eval as usize].push((h, body));
        }
        if splits[0].is_empty() && splits[1].is_empty() {
            return Err(Error::Invalid(format!("{}: domain `{domain}` has no usable documents", path.display())));
        }
        // A small domain can hash no document into eval: take the train document with the smallest hash.
        if splits[1].is_empty() && splits[0].len() > 1 {
            let (i, _) = splits[0].iter().enumerate().min_by_key(|(_, (h, _))| *h).expect("non-empty");
            let d = splits[0].remove(i);
            splits[1].push(d);
        }
        if splits[0].is_empty() {
            return Err(Error::Invalid(format!("{}: domain `{domain}` has no training documents", path.display())));
        }
        let mut stats = vec![];
        for (split, docs) in ["train", "eval"].iter().zip(&splits) {
            let file = format!("{split}/{domain}.bin");
            let bodies: Vec<&str> = docs.iter().map(|(_, b)| b.as_str()).collect();
            let encodings = tok
                .encode_batch(bodies.clone(), false)
                .map_err(|e| Error::Invalid(format!("tokenizing `{domain}`: {e}")))?;
            let mut stream: Vec<u32> = vec![];
            for e in &encodings {
                stream.push(bos);
                stream.extend_from_slice(e.get_ids());
                stream.push(eos);
            }
            let sequences = stream.len() / opts.seq_len;
            if sequences == 0 {
                return Err(Error::Invalid(format!(
                    "domain `{domain}` ({split}) has {} tokens, less than one sequence of {}",
                    stream.len(),
                    opts.seq_len
                )));
            }
            stream.truncate(sequences * opts.seq_len);
            let bytes = encode_tokens(&stream, token_bytes)?;
            let dest = staging.path().join(&file);
            std::fs::write(&dest, &bytes).map_err(|e| Error::io(&dest, e))?;
            stats.push(SplitStats {
                documents: docs.len(),
                sequences,
                tokens: stream.len(),
                text_bytes: bodies.iter().map(|b| b.len()).sum(),
                file,
                checksum: format!("{:016x}", fnv1a64(&bytes)),
            });
        }
        let listed: Vec<String> = sources["sources"][domain]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or(doc_sources);
        let eval = stats.pop().expect("two splits");
        let train = stats.pop().expect("two splits");
        let ds = DomainStats {
            train,
            eval,
            documents_read: read,
            duplicates_dropped: dups,
            too_short_dropped: short,
            sources: listed,
        };
        progress(domain, &ds);
        domains.insert(domain.to_string(), ds);
    }
    let manifest = Manifest {
        version: 1,
        seq_len: opts.seq_len,
        token_bytes,
        vocab_size,
        tokenizer_checksum: format!("{:016x}", fnv1a64(tokenizer_json)),
        bos_id: bos,
        eos_id: eos,
        eval_permille: opts.eval_permille,
        profile: opts.profile.clone(),
        domains,
    };
    let mpath = staging.path().join(MANIFEST);
    std::fs::write(&mpath, serde_json::to_string_pretty(&manifest).expect("json")).map_err(|e| Error::io(&mpath, e))?;
    staging.commit()?;
    Ok(manifest)
}

fn encode_tokens(ids: &[u32], token_bytes: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(ids.len() * token_bytes);
    for &id in ids {
        if token_bytes == 2 {
            let narrow = u16::try_from(id).map_err(|_| Error::Invalid(format!("token id {id} does not fit in u16")))?;
            out.extend_from_slice(&narrow.to_le_bytes());
        } else {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    Ok(out)
}

fn decode_tokens(bytes: &[u8], token_bytes: usize) -> Vec<u32> {
    if token_bytes == 2 {
        bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect()
    } else {
        bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}

/// A built corpus, loaded and verified: every shard matches its manifest entry (size and checksum).
pub struct Corpus {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Domain names in [`DOMAINS`] order (those present in the manifest).
    pub domains: Vec<String>,
    pub train: Vec<Vec<u32>>,
    pub eval: Vec<Vec<u32>>,
    /// The largest stored id and where it is (domain index, split), found once at open: every model the
    /// corpus meets is checked against it.
    largest_id: (u32, usize, &'static str),
}

impl Corpus {
    pub fn open(dir: &Path) -> Result<Self> {
        let mpath = dir.join(MANIFEST);
        if !mpath.exists() {
            return Err(Error::Invalid(format!(
                "{}: no {MANIFEST}; build a corpus with `shear corpus build --out {}`",
                dir.display(),
                dir.display()
            )));
        }
        let text = crate::io::read_metadata(&mpath)?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: invalid manifest: {e}", mpath.display())))?;
        let domains: Vec<String> =
            DOMAINS.iter().filter(|d| manifest.domains.contains_key(**d)).map(|d| d.to_string()).collect();
        if domains.is_empty() {
            return Err(Error::Invalid(format!("{}: the manifest lists no domains", mpath.display())));
        }
        if let Some(extra) = manifest.domains.keys().find(|d| !DOMAINS.contains(&d.as_str())) {
            return Err(Error::Invalid(format!(
                "{}: unknown domain `{extra}` (known: {})",
                mpath.display(),
                DOMAINS.join(", ")
            )));
        }
        if !(matches!(manifest.token_bytes, 2 | 4) && manifest.seq_len >= 2) {
            return Err(Error::Invalid(format!(
                "{}: token_bytes {} and seq_len {}: expected 2 or 4 bytes per token and sequences of at least 2",
                mpath.display(),
                manifest.token_bytes,
                manifest.seq_len
            )));
        }
        let load = |s: &SplitStats, domain: &str| -> Result<Vec<u32>> {
            let path = dir.join(&s.file);
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let expected = s.sequences.checked_mul(manifest.seq_len * manifest.token_bytes);
            if expected != Some(bytes.len()) || s.sequences == 0 {
                let expected = expected.map_or("more than any file".to_string(), |e| format!("{e} bytes"));
                return Err(Error::Invalid(format!(
                    "{}: {} bytes, but the manifest says {} sequences of {} tokens ({expected}) for `{domain}`",
                    path.display(),
                    bytes.len(),
                    s.sequences,
                    manifest.seq_len
                )));
            }
            let sum = format!("{:016x}", fnv1a64(&bytes));
            if sum != s.checksum {
                return Err(Error::Invalid(format!(
                    "{}: checksum {sum} does not match the manifest's {} (corrupted shard)",
                    path.display(),
                    s.checksum
                )));
            }
            Ok(decode_tokens(&bytes, manifest.token_bytes))
        };
        let mut train = vec![];
        let mut eval = vec![];
        for d in &domains {
            let st = &manifest.domains[d];
            train.push(load(&st.train, d)?);
            eval.push(load(&st.eval, d)?);
        }
        let largest_id = (0..domains.len())
            .flat_map(|d| [(&train[d], d, "train"), (&eval[d], d, "eval")])
            .map(|(ids, d, split)| (ids.iter().copied().max().unwrap_or(0), d, split))
            .max_by_key(|&(id, _, _)| id)
            .expect("at least one domain");
        Ok(Self { dir: dir.to_path_buf(), manifest, domains, train, eval, largest_id })
    }

    /// Refuse a model whose embedding does not cover every stored id (a shard can be rewritten with a
    /// matching checksum; the ids themselves are what the model will index).
    pub fn check_vocab(&self, vocab_size: usize) -> Result<()> {
        let (max, d, split) = self.largest_id;
        if max as usize >= vocab_size {
            return Err(Error::Invalid(format!(
                "{}: the `{}` {split} shard holds token id {max}, beyond the model's vocab_size {vocab_size}",
                self.dir.display(),
                self.domains[d]
            )));
        }
        Ok(())
    }

    /// Refuse a model whose tokenizer is not the one the corpus was tokenized with.
    pub fn check_tokenizer(&self, tokenizer_json: &[u8], model_dir: &Path) -> Result<()> {
        let sum = format!("{:016x}", fnv1a64(tokenizer_json));
        if sum != self.manifest.tokenizer_checksum {
            return Err(Error::Invalid(format!(
                "{}: the corpus at {} was tokenized with another tokenizer (checksum {} vs {sum}); rebuild it \
                 with this model's tokenizer",
                model_dir.display(),
                self.dir.display(),
                self.manifest.tokenizer_checksum
            )));
        }
        Ok(())
    }

    pub fn seq_len(&self) -> usize {
        self.manifest.seq_len
    }

    /// Sequence `i` of a domain's split.
    pub fn sequence(&self, split_train: bool, domain: usize, i: usize) -> &[u32] {
        let s = self.manifest.seq_len;
        let shard = if split_train { &self.train[domain] } else { &self.eval[domain] };
        &shard[i * s..(i + 1) * s]
    }

    pub fn sequences(&self, split_train: bool, domain: usize) -> usize {
        let shard = if split_train { &self.train[domain] } else { &self.eval[domain] };
        shard.len() / self.manifest.seq_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        assert_eq!(normalize("a  \r\nb\r\n\r\n\r\n\r\n\r\nc\u{0}\t \n"), "a\nb\n\n\nc");
        assert_eq!(normalize("  \n\n x"), "x");
    }

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn token_storage_round_trips_above_u16() {
        let ids = vec![0u32, 1, 65_535, 65_536, 151_000];
        assert_eq!(decode_tokens(&encode_tokens(&ids, 4).unwrap(), 4), ids);
        assert_eq!(decode_tokens(&encode_tokens(&ids[..3], 2).unwrap(), 2), &ids[..3]);
        // An id that does not fit the width is an error, never stored modulo 2^16.
        assert!(encode_tokens(&ids, 2).unwrap_err().to_string().contains("65536 does not fit in u16"));
    }
}
