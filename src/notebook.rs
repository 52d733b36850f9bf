//! Helpers for the evcxr notebooks in `notebooks/`: quick mode and the shared run folder.
//!
//! `SHEAR_QUICK=1` shrinks step counts and sample sizes so that CI can execute every notebook in minutes;
//! the code path is the same, only the numbers passed to the library change.

use std::path::PathBuf;

/// True when `SHEAR_QUICK` is set to anything but `0` or the empty string.
pub fn quick() -> bool {
    std::env::var("SHEAR_QUICK").map(|v| !v.is_empty() && v != "0").unwrap_or(false)
}

/// `default` normally, `quick` in quick mode.
pub fn size(default: usize, quick: usize) -> usize {
    if self::quick() {
        quick
    } else {
        default
    }
}

/// Where the notebooks write their runs and models: `runs/notebooks[-quick]/` under the repository root
/// (the notebooks run with `notebooks/` as their working directory). Quick mode writes elsewhere, so a
/// CI run never clobbers the outputs of a full run.
pub fn workdir() -> PathBuf {
    let root = std::env::current_dir().map(|d| d.join("..")).unwrap_or_else(|_| PathBuf::from(".."));
    root.join("runs").join(if quick() { "notebooks-quick" } else { "notebooks" })
}
