//! Typed errors of the library. Every variant names the file or field at fault and what was expected,
//! so the CLI can print one line that tells the user what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: invalid config: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error("{path}: {msg}")]
    Weights { path: PathBuf, msg: String },

    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("missing tensor `{0}`")]
    MissingTensor(String),

    #[error("{path}: {msg}")]
    Gguf { path: PathBuf, msg: String },

    #[error("{path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },

    /// A run's checkpoint that is missing, unreadable, or does not fit the run it is resumed into.
    #[error("{run}: {msg}")]
    Checkpoint { run: PathBuf, msg: String },

    #[error("{path}: not valid UTF-8 text (first bad byte at offset {offset})")]
    NotUtf8 { path: PathBuf, offset: usize },

    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// Shorthand for `Error::Invalid(format!(..))`.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::error::Error::Invalid(format!($($arg)*)) };
}
