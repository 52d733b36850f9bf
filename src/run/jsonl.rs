//! Metrics as JSON Lines (one object per line, readable by polars), flushed as they are written.
//!
//! A run can be killed at any byte (SIGKILL, OOM, a closed laptop), so a log may end in a line cut short.
//! Each line goes out in one `write` with its newline last; readers take a last line without its newline
//! that does not parse as that cut line and skip it, while a bad line anywhere else is an error.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};
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

    pub fn write(&mut self, record: &impl Serialize) -> Result<()> {
        // One buffer, one write: `writeln!` on the file would issue a write per formatted piece, and a reader
        // (or a kill) between them sees half a line.
        let mut line =
            serde_json::to_string(record).map_err(|e| Error::Invalid(format!("{}: {e}", self.path.display())))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).and_then(|_| self.file.flush()).map_err(|e| Error::io(&self.path, e))
    }
}

/// The complete lines of a JSONL text with their 1-based line numbers: blank lines and a trailing line cut
/// short by a kill (no newline, does not parse) are left out; any other line that does not parse is an error.
fn parse_lines<'t>(path: &Path, text: &'t str) -> Result<Vec<(usize, &'t str, Value)>> {
    let cut_tail = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push((i + 1, *line, v)),
            Err(_) if cut_tail && i + 1 == lines.len() => {}
            Err(e) => return Err(Error::Invalid(format!("{}:{}: {e}", path.display(), i + 1))),
        }
    }
    Ok(out)
}

/// Keep the lines whose `step` is at most `step` (drop those written after the checkpoint a run resumes
/// from, and a last line cut short by the kill that ended the run).
pub fn truncate_jsonl(path: &Path, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = String::new();
    for (number, line, v) in parse_lines(path, &text)? {
        let s = v["step"]
            .as_u64()
            .ok_or_else(|| Error::Invalid(format!("{}:{number}: no \"step\" in a run log line", path.display())))?;
        if s as usize <= step {
            out.push_str(line);
            out.push('\n');
        }
    }
    // Into a sibling, then renamed over: a kill during the resume itself leaves the old log, not half of it.
    let tmp = path.with_extension("jsonl.partial");
    std::fs::write(&tmp, out).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Read a JSONL file into values (for reports and tests). Safe on the logs of a run still being written.
pub fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(parse_lines(path, &text)?.into_iter().map(|(_, _, v)| v).collect())
}

/// Read a JSONL file as records of type `T` ([`super::records`]); a line that is not one is an error
/// naming its line number.
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_lines(path, &text)?
        .into_iter()
        .map(|(number, _, v)| {
            serde_json::from_value(v).map_err(|e| Error::Invalid(format!("{}:{number}: {e}", path.display())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_cut_by_a_kill_is_skipped_and_dropped_on_resume_but_a_bad_line_inside_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut w = JsonlWriter::open(&path).unwrap();
        for step in 1..=3 {
            w.write(&serde_json::json!({"step": step, "loss": 1.5})).unwrap();
        }
        drop(w);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"step\": 4, \"lo");
        std::fs::write(&path, &text).unwrap();

        assert_eq!(read_jsonl(&path).unwrap().len(), 3);
        truncate_jsonl(&path, 2).unwrap();
        let kept = std::fs::read_to_string(&path).unwrap();
        assert_eq!(kept, "{\"step\":1,\"loss\":1.5}\n{\"step\":2,\"loss\":1.5}\n");

        std::fs::write(&path, "{\"step\": 1}\n{\"step\": 2, \"lo\n{\"step\": 3}\n").unwrap();
        let err = read_jsonl(&path).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl:2:"), "{err}");
        assert!(truncate_jsonl(&path, 3).is_err());
    }
}
