//! Model directories in the Hugging Face layout, and import from GGUF.
//!
//! A model directory holds `config.json`, the weights as `model.safetensors` or as shards
//! `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`, and `tokenizer.json`
//! (plus any other tokenizer/generation files, copied along). Directories are written atomically: into a
//! hidden temporary sibling that is renamed into place only when every file is complete.

pub mod gguf;
pub mod hf;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use hf::{load_model, load_weights, save_model, LoadedModel, SaveOptions};
pub use tokenizer::load_tokenizer;
/// The tokenizer type (from the `tokenizers` crate), named here so that notebooks can write it down.
pub use tokenizers::Tokenizer;

/// A directory being written: files go into a temporary sibling; [`StagingDir::commit`] renames it to
/// the destination. Dropped without commit, it removes itself, so a failure leaves nothing half-written.
pub struct StagingDir {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// Refuses a destination that exists and is not an empty directory, before any work starts.
    pub fn new(dest: &Path) -> Result<Self> {
        check_writable_destination(dest)?;
        let name =
            dest.file_name().ok_or_else(|| Error::Invalid(format!("{}: not a directory name", dest.display())))?;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let tmp = parent.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Self { tmp, dest: dest.to_path_buf(), committed: false })
    }

    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn commit(mut self) -> Result<PathBuf> {
        if self.dest.exists() {
            // Only an empty directory can be here (checked in `new`); rename cannot replace it.
            std::fs::remove_dir(&self.dest).map_err(|e| Error::io(&self.dest, e))?;
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

pub fn check_writable_destination(dest: &Path) -> Result<()> {
    if dest.exists() {
        let empty_dir = dest.is_dir() && std::fs::read_dir(dest).map_err(|e| Error::io(dest, e))?.next().is_none();
        if !empty_dir {
            return Err(Error::Invalid(format!(
                "{}: output already exists; choose a new path or remove it first",
                dest.display()
            )));
        }
    }
    Ok(())
}

/// The largest config, target, run, checkpoint state, manifest or index file shear reads (they are a few
/// kB; a tokenizer.json is at most tens of MB): a corrupt or hostile size is refused before it is read.
pub const MAX_METADATA_BYTES: u64 = 256 << 20;

/// Read a small metadata file (JSON, TOML) as UTF-8, refusing one larger than [`MAX_METADATA_BYTES`].
pub fn read_metadata(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if len > MAX_METADATA_BYTES {
        return Err(Error::Invalid(format!(
            "{}: {len} bytes, far more than such a file holds (at most {MAX_METADATA_BYTES}); corrupt?",
            path.display()
        )));
    }
    read_utf8(path)
}

/// Read a text file, rejecting bytes that are not UTF-8 with the offset of the first bad one.
pub fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| Error::NotUtf8 { path: path.into(), offset: e.utf8_error().valid_up_to() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_dir_leaves_nothing_unless_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        {
            let s = StagingDir::new(&dest).unwrap();
            std::fs::write(s.path().join("half-written"), b"x").unwrap();
            // dropped without commit, as when an error interrupts a save
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        let s = StagingDir::new(&dest).unwrap();
        std::fs::write(s.path().join("done"), b"x").unwrap();
        s.commit().unwrap();
        assert!(dest.join("done").exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        assert!(StagingDir::new(&dest).is_err(), "a non-empty destination is refused");
    }
}
