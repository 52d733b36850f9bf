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
    log: Mutex<LogState>,
}

/// What a hidden bar needs for its log lines: when it last wrote one, and the first position it was given
/// with its time (a resumed run starts past 0; the rate counts from there).
struct LogState {
    last: Instant,
    first: Option<(Instant, usize)>,
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
        Self { bar, what, log: Mutex::new(LogState { last: Instant::now(), first: None }) }
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
        let mut log = self.log.lock().expect("progress lock");
        let (t0, done0) = *log.first.get_or_insert((Instant::now(), done));
        if log.last.elapsed() < LOG_EVERY || done <= done0 || done >= total {
            return;
        }
        log.last = Instant::now();
        let per_unit = t0.elapsed().as_secs_f64() / (done - done0) as f64;
        let status = status.map(|s| format!(", {s}")).unwrap_or_default();
        info!(
            "{} {done}/{total}{status} ({per_unit:.2} s each, eta {:.0} s)",
            self.what,
            per_unit * (total - done) as f64
        );
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
