//! Progress of long work. On a terminal: a bar, with lasting lines (evals, interruptions) printed above it.
//! Without one (`shear prune … > run.log 2>&1`, `nohup`), indicatif draws nothing, so the same information
//! goes to the log instead: every lasting line, and the position at most once a minute.

use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::{info, warn};

/// How often a hidden bar logs its position.
const LOG_EVERY: Duration = Duration::from_secs(60);

pub struct Progress {
    bar: ProgressBar,
    what: &'static str,
    started: Instant,
    last_logged: Mutex<Instant>,
}

impl Progress {
    /// Progress over `len` units (0 when the length is only known later, see [`Progress::update`]).
    pub fn new(len: usize, what: &'static str) -> Self {
        let bar = ProgressBar::new(len as u64);
        bar.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
                .expect("template")
                .progress_chars("=> "),
        );
        bar.set_message(what);
        let now = Instant::now();
        Self { bar, what, started: now, last_logged: Mutex::new(now) }
    }

    /// `done` of `total` units, with a short status shown after the name (e.g. the loss).
    pub fn update(&self, done: usize, total: usize, status: Option<&dyn Display>) {
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
        if let Some(s) = status {
            self.bar.set_message(s.to_string());
        }
        if !self.bar.is_hidden() {
            return;
        }
        let mut last = self.last_logged.lock().expect("progress lock");
        if last.elapsed() < LOG_EVERY || done == 0 || done >= total {
            return;
        }
        *last = Instant::now();
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = elapsed / done as f64 * (total - done) as f64;
        let status = status.map(|s| format!(", {s}")).unwrap_or_default();
        info!("{} {done}/{total}{status} ({:.0} s, eta {:.0} s)", self.what, elapsed, eta);
    }

    /// A line that stays: above the bar on a terminal, in the log otherwise.
    pub fn println(&self, line: impl AsRef<str>) {
        if self.bar.is_hidden() {
            info!("{}", line.as_ref());
        } else {
            self.bar.println(line);
        }
    }

    /// A line that stays and must be seen: like [`Progress::println`], at warning level in the log.
    pub fn warn(&self, line: impl AsRef<str>) {
        if self.bar.is_hidden() {
            warn!("{}", line.as_ref());
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
