//! Bad inputs through the CLI: a clear one-line error naming what is wrong, exit status 1, and no
//! partial output.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn shear(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shear")).args(args).env("RUST_LOG", "error").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_fails_with(args: &[&str], needles: &[&str]) {
    let (code, stderr) = shear(args);
    assert_eq!(code, 1, "{args:?} should fail; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` missing from: {}", lines[0]);
    }
}

fn text_file(root: &Path) -> PathBuf {
    let p = root.join("text.txt");
    std::fs::write(&p, "a b ab ba abab 12 xyz ".repeat(20)).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_healthy_tiny_model_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_hf_model(tmp.path());
    let text = text_file(tmp.path());
    let out = Command::new(env!("CARGO_BIN_EXE_shear"))
        .args(["eval", "--model", s(&dir), "--text", s(&text), "--seq-len", "16", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // A random model: NLL near ln(vocab).
    let nll = v["mean_nll"].as_f64().unwrap();
    assert!((nll - (TINY_VOCAB as f64).ln()).abs() < 0.5, "{v}");
    assert!((v["perplexity"].as_f64().unwrap() - nll.exp()).abs() < 1e-9);
}

#[test]
fn truncated_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_hf_model(tmp.path());
    let st = dir.join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&st).unwrap().set_len(len / 2).unwrap();
    let text = text_file(tmp.path());
    assert_fails_with(
        &["eval", "--model", s(&dir), "--text", s(&text)],
        &["model.safetensors", "truncated or corrupt"],
    );
    let out = tmp.path().join("resaved");
    assert_fails_with(&["convert", "--hf", s(&dir), "--out", s(&out)], &["model.safetensors"]);
    assert!(!out.exists());
}

#[test]
fn config_that_does_not_match_the_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_hf_model(tmp.path());
    let cfg_path = dir.join("config.json");
    let cfg =
        std::fs::read_to_string(&cfg_path).unwrap().replace("\"intermediate_size\": 48", "\"intermediate_size\": 64");
    std::fs::write(&cfg_path, cfg).unwrap();
    let text = text_file(tmp.path());
    assert_fails_with(
        &["eval", "--model", s(&dir), "--text", s(&text)],
        &["do not match config.json", "model.layers.0.mlp.gate_proj.weight", "[64, 32]", "[48, 32]"],
    );
}

#[test]
fn gguf_of_another_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tmp.path().join("gpt2.gguf");
    write_tiny_gguf(&g, "gpt2");
    let out = tmp.path().join("out");
    assert_fails_with(&["convert", "--gguf", s(&g), "--out", s(&out)], &["gpt2.gguf", "architecture is `gpt2`"]);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "nothing but the input may be left");
}

#[test]
fn gguf_with_an_unsupported_quantization() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tmp.path().join("iq2.gguf");
    write_tiny_gguf(&g, "llama");
    // Re-type one tensor as IQ2_XXS (ggml type 16), which candle cannot dequantize: the type field follows
    // the name, the dimension count and one u64 per dimension.
    let mut bytes = std::fs::read(&g).unwrap();
    let name = b"blk.0.attn_norm.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * n_dims;
    assert_eq!(u32::from_le_bytes(bytes[ty..ty + 4].try_into().unwrap()), 0, "F32 before patching");
    bytes[ty..ty + 4].copy_from_slice(&16u32.to_le_bytes());
    std::fs::write(&g, bytes).unwrap();
    let out = tmp.path().join("out");
    assert_fails_with(
        &["convert", "--gguf", s(&g), "--out", s(&out)],
        &["iq2.gguf", "unsupported tensor quantization"],
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn missing_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_hf_model(tmp.path());
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let text = text_file(tmp.path());
    assert_fails_with(&["eval", "--model", s(&dir), "--text", s(&text)], &["tokenizer.json", "no tokenizer"]);
    assert_fails_with(&["generate", "--model", s(&dir), "--prompt", "ab"], &["tokenizer.json"]);
}

#[test]
fn non_utf8_text() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_hf_model(tmp.path());
    let text = tmp.path().join("latin1.txt");
    std::fs::write(&text, b"caf\xe9 au lait").unwrap();
    assert_fails_with(
        &["eval", "--model", s(&dir), "--text", s(&text)],
        &["latin1.txt", "not valid UTF-8", "offset 3"],
    );
}

#[test]
fn existing_output_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_hf_model(tmp.path());
    let before = std::fs::read(dir.join("config.json")).unwrap();
    let g = tmp.path().join("tiny.gguf");
    assert_fails_with(&["convert", "--gguf", s(&g), "--out", s(&dir)], &["already exists"]);
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), before);
}

#[test]
fn missing_model_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let text = text_file(tmp.path());
    let nowhere = tmp.path().join("nowhere");
    assert_fails_with(&["eval", "--model", s(&nowhere), "--text", s(&text)], &["nowhere"]);
}

#[test]
fn bad_targets_fail_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_hf_model(tmp.path());
    let text = text_file(tmp.path());
    // The tiny model: 2 layers, hidden 32, 4 heads / 2 KV heads, intermediate 48.
    let cases = [
        (
            "layers = 2\nhidden = 64\nheads = 4\nkv_heads = 2\nintermediate = 48",
            "hidden = 64 is larger than the source's 32",
        ),
        ("layers = 0\nhidden = 16\nheads = 2\nkv_heads = 2\nintermediate = 24", "layers is 0"),
        (
            "layers = 1\nhidden = 18\nheads = 3\nkv_heads = 2\nintermediate = 24",
            "3 query heads cannot be spread evenly over 2",
        ),
        (
            "layers = 1\nhidden = 18\nheads = 4\nkv_heads = 2\nintermediate = 24",
            "hidden = 18 is not a multiple of the 4 query heads",
        ),
        ("layers = 1\nhidden = 16\nheads = 4\nkv_heads = 1\nintermediate = 24", "4 query heads per KV group"),
        ("layers = 1\nhidden = 16\nheads = 2\nkv_heads = 1", "missing field `intermediate`"),
    ];
    for (i, (toml, needle)) in cases.iter().enumerate() {
        let target = tmp.path().join(format!("t{i}.toml"));
        std::fs::write(&target, toml).unwrap();
        let out = tmp.path().join(format!("run{i}"));
        assert_fails_with(
            &[
                "prune",
                "--model",
                s(&dir),
                "--target",
                s(&target),
                "--data",
                s(&text),
                "--steps",
                "2",
                "--out",
                s(&out),
            ],
            &[needle],
        );
        assert!(!out.exists(), "no run directory for a rejected target");
    }
    // Sizes that leave nothing to train on.
    let target = tmp.path().join("t0.toml");
    std::fs::write(&target, "layers = 1\nhidden = 16\nheads = 2\nkv_heads = 1\nintermediate = 24").unwrap();
    for (flag, value, needle) in [
        ("--grad-accum", "0", "gradient accumulation must be positive"),
        ("--batch-size", "0", "batch size and gradient accumulation must be positive"),
        ("--seq-len", "1", "needs at least 2 tokens, got 1"),
    ] {
        let out = tmp.path().join("run-sizes");
        let args = ["prune", "--model", s(&dir), "--target", s(&target), "--data", s(&text), "--steps", "2"];
        assert_fails_with(&[&args[..], &["--out", s(&out), flag, value]].concat(), &[needle]);
        assert!(!out.exists(), "no run directory for {flag} {value}");
    }
}
