//! Corpus building and opening on small synthetic domains: determinism, splits, vocabularies above u16,
//! and every kind of bad data.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use shear::data::corpus::{build, BuildOptions, Corpus, DOMAINS};

/// Raw documents for all seven domains (30 per domain, a few duplicates).
fn write_raw(dir: &Path, skip: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    for (k, d) in DOMAINS.iter().enumerate() {
        let mut lines = vec![];
        if Some(*d) != skip {
            for i in 0..30 {
                let text =
                    format!("{d} document {i}: ab ba abab {} the end\r\n\r\n\r\n\r\nbye  ", "xy ".repeat(5 + i + k));
                lines
                    .push(serde_json::json!({"id": format!("{d}/{i}"), "source": "test==1", "text": text}).to_string());
            }
            // An exact duplicate after normalization (CRLF vs LF) is dropped.
            let dup = format!("{d} document 0: ab ba abab {} the end\n\n\n\nbye", "xy ".repeat(5 + k));
            lines.push(serde_json::json!({"id": format!("{d}/dup"), "source": "test==1", "text": dup}).to_string());
        }
        std::fs::write(dir.join(format!("{d}.jsonl")), lines.join("\n")).unwrap();
    }
}

fn tiny_tokenizer(root: &Path) -> (tokenizers::Tokenizer, Vec<u8>) {
    let model = tiny_hf_model(root);
    (shear::io::load_tokenizer(&model).unwrap(), std::fs::read(model.join("tokenizer.json")).unwrap())
}

fn opts() -> BuildOptions {
    BuildOptions { seq_len: 32, eval_permille: 200, ..Default::default() }
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    for split in ["train", "eval"] {
        for d in DOMAINS {
            let p = dir.join(split).join(format!("{d}.bin"));
            out.push((p.clone(), std::fs::read(p).unwrap()));
        }
    }
    out.push((dir.join("manifest.json"), std::fs::read(dir.join("manifest.json")).unwrap()));
    out
}

#[test]
fn builds_deterministically_with_disjoint_splits() {
    let tmp = tempfile::tempdir().unwrap();
    let (tok, tj) = tiny_tokenizer(tmp.path());
    let raw = tmp.path().join("raw");
    write_raw(&raw, None);
    let a = tmp.path().join("a");
    let m = build(&raw, &a, &tok, &tj, (0, 0), &opts(), |_, _| {}).unwrap();
    let b = tmp.path().join("b");
    build(&raw, &b, &tok, &tj, (0, 0), &opts(), |_, _| {}).unwrap();
    for ((_, x), (p, y)) in files(&a).iter().zip(files(&b)) {
        assert_eq!(x, &y, "{} differs between two builds", p.display());
    }
    assert_eq!(m.token_bytes, 2);
    for (d, s) in &m.domains {
        assert_eq!(s.documents_read, 31, "{d}");
        assert_eq!(s.duplicates_dropped, 1, "{d}");
        assert_eq!(s.train.documents + s.eval.documents, 30, "{d}");
        assert!(s.eval.documents > 0 && s.train.documents > s.eval.documents, "{d}");
        assert_eq!(s.train.tokens, s.train.sequences * 32);
        assert_eq!(s.sources, vec!["test==1".to_string()]);
    }
    let c = Corpus::open(&a).unwrap();
    assert_eq!(c.domains, DOMAINS.iter().map(|d| d.to_string()).collect::<Vec<_>>());
    // Every packed sequence starts a document with the delimiter or continues one; documents are
    // [EOT] text [EOT]: the first token of a shard is the delimiter.
    assert_eq!(c.sequence(true, 0, 0)[0], 0);
    assert_eq!(c.sequences(true, 0), m.domains["cc"].train.sequences);
}

#[test]
fn vocabularies_above_u16_are_stored_as_u32() {
    let tmp = tempfile::tempdir().unwrap();
    // A byte-level BPE whose merge "a b" yields id 70,000.
    let table = bytes_to_unicode();
    let mut vocab = serde_json::Map::new();
    vocab.insert("<|endoftext|>".into(), 0.into());
    for (b, c) in table.iter().enumerate() {
        vocab.insert(c.to_string(), (b + 1).into());
    }
    for i in 257..70_000 {
        vocab.insert(format!("<unused{i}>"), i.into());
    }
    vocab.insert("ab".into(), 70_000.into());
    let tj = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null, "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": ["a b"]}
    })
    .to_string();
    let tok = tokenizers::Tokenizer::from_bytes(tj.as_bytes()).unwrap();
    assert_eq!(tok.encode("ab", false).unwrap().get_ids(), &[70_000]);
    let raw = tmp.path().join("raw");
    write_raw(&raw, None);
    let out = tmp.path().join("c");
    let m = build(&raw, &out, &tok, tj.as_bytes(), (0, 0), &opts(), |_, _| {}).unwrap();
    assert_eq!(m.token_bytes, 4);
    let c = Corpus::open(&out).unwrap();
    let all: Vec<u32> = (0..c.sequences(true, 0)).flat_map(|i| c.sequence(true, 0, i).to_vec()).collect();
    assert!(all.contains(&70_000));
}

#[test]
fn bad_data_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (tok, tj) = tiny_tokenizer(tmp.path());

    // An empty domain.
    let raw = tmp.path().join("raw-empty");
    write_raw(&raw, Some("arxiv"));
    let err = build(&raw, &tmp.path().join("x"), &tok, &tj, (0, 0), &opts(), |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("arxiv.jsonl") && err.contains("no usable documents"), "{err}");
    assert!(!tmp.path().join("x").exists(), "no partial corpus");

    // A line that is not a record.
    let raw = tmp.path().join("raw-bad");
    write_raw(&raw, None);
    std::fs::write(raw.join("wiki.jsonl"), "{\"id\": \"a\", \"text\": \"no source\"}\n").unwrap();
    let err = build(&raw, &tmp.path().join("y"), &tok, &tj, (0, 0), &opts(), |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("wiki.jsonl:1") && err.contains("source"), "{err}");

    let raw = tmp.path().join("raw");
    write_raw(&raw, None);
    let good = tmp.path().join("good");
    build(&raw, &good, &tok, &tj, (0, 0), &opts(), |_, _| {}).unwrap();

    // A corrupted shard: one flipped byte, same size.
    let shard = good.join("train/book.bin");
    let original = std::fs::read(&shard).unwrap();
    let mut bytes = original.clone();
    bytes[10] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();
    let err = Corpus::open(&good).err().unwrap().to_string();
    assert!(err.contains("train/book.bin") && err.contains("corrupted shard"), "{err}");
    std::fs::write(&shard, &original).unwrap();

    // A manifest that does not match the shards.
    let mpath = good.join("manifest.json");
    let manifest = std::fs::read_to_string(&mpath).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let n = v["domains"]["c4"]["eval"]["sequences"].as_u64().unwrap();
    v["domains"]["c4"]["eval"]["sequences"] = (n + 1).into();
    std::fs::write(&mpath, v.to_string()).unwrap();
    let err = Corpus::open(&good).err().unwrap().to_string();
    assert!(err.contains("eval/c4.bin") && err.contains("manifest says"), "{err}");
    std::fs::write(&mpath, &manifest).unwrap();

    // A tokenizer that does not match.
    let c = Corpus::open(&good).unwrap();
    c.check_tokenizer(&tj, Path::new("model")).unwrap();
    let err = c.check_tokenizer(b"{}", Path::new("other-model")).unwrap_err().to_string();
    assert!(err.contains("other-model") && err.contains("another tokenizer"), "{err}");

    // Not a corpus at all.
    let err = Corpus::open(tmp.path()).err().unwrap().to_string();
    assert!(err.contains("no manifest.json"), "{err}");
}
