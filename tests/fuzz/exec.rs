//! Running the binary under test: a subprocess with a wall-clock timeout and an address-space limit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test: this crate's `shear`, or `SHEAR_FUZZ_BIN` (to survey another build).
pub struct Shear {
    pub bin: PathBuf,
    pub timeout: Duration,
    /// `ulimit -v` in KiB: an absurd size must fail to allocate, not take the machine's memory.
    pub memory_kib: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signal(i32),
    TimedOut,
}

pub struct RunResult {
    pub outcome: Outcome,
    pub stdout: String,
    pub stderr: String,
}

/// Run `shear ARGS` (under `cwd` when given) and capture its output. Output goes to files rather than
/// pipes, so a chatty child cannot block on a full pipe while we wait for it.
pub fn run(shear: &Shear, args: &[String], cwd: Option<&Path>) -> RunResult {
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let (out_path, err_path) = (scratch.path().join("stdout"), scratch.path().join("stderr"));
    // `exec` replaces the shell, so the pid we kill on timeout is the binary itself.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        // A shell that cannot set the limit must not run the binary without it (125: see `fuzz.rs`).
        .arg(format!("ulimit -v {} || exit 125; exec \"$0\" \"$@\"", shear.memory_kib))
        .arg(&shear.bin)
        .args(args)
        .env("RUST_LOG", "error")
        // Tiny models: one thread each keeps two cases in flight on two cores without oversubscription.
        .env("RAYON_NUM_THREADS", "1")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().expect("spawn sh");
    let start = Instant::now();
    let outcome = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            use std::os::unix::process::ExitStatusExt;
            break match (status.code(), status.signal()) {
                (Some(c), _) => Outcome::Exited(c),
                (None, Some(sig)) => Outcome::Signal(sig),
                (None, None) => Outcome::Signal(-1),
            };
        }
        if start.elapsed() > shear.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break Outcome::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(if start.elapsed() < Duration::from_millis(200) { 2 } else { 20 }));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    RunResult { outcome, stdout: read(&out_path), stderr: read(&err_path) }
}
