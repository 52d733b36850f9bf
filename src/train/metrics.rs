//! Metrics as JSON Lines (one object per line, readable by polars), flushed as they are written.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

pub struct JsonlWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonlWriter {
    /// Append to `path` (created if missing).
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new().append(true).create(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    pub fn write(&mut self, v: &Value) -> Result<()> {
        writeln!(self.file, "{v}").and_then(|_| self.file.flush()).map_err(|e| Error::io(&self.path, e))
    }
}

/// Drop lines whose `step` is after `step` (written after the checkpoint a run resumes from).
pub fn truncate_jsonl(path: &Path, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}

/// Read a JSONL file into values (for reports and tests).
pub fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::Invalid(format!("{}:{}: {e}", path.display(), i + 1))))
        .collect()
}
