//! A progress bar for long benchmark runs, on stderr and only when stderr is a terminal
//! (so that `--json` output piped into a file, and logs, stay clean).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Redraws at most this often (a redraw is a system call).
const REDRAW: Duration = Duration::from_millis(100);
const BAR_WIDTH: usize = 30;

/// A bar `label [#####.....] 45%` redrawn in place; cleared when dropped.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    shown: bool,
    enabled: bool,
    last_draw: Option<Instant>,
}

impl Progress {
    /// A bar for `total` units of work; drawn only when stderr is a terminal.
    pub fn new(label: &str, total: u64) -> Self {
        Self::with_output(label, total, std::io::stderr().is_terminal())
    }

    /// A bar that draws only when `enabled` (tests, or callers that know better).
    pub fn with_output(label: &str, total: u64, enabled: bool) -> Self {
        Self {
            label: label.into(),
            total: total.max(1),
            shown: false,
            enabled,
            last_draw: None,
        }
    }

    /// Records that `done` of the total are done; redraws when enough time has passed.
    /// Cheap when disabled, but not free when enabled: call it outside timed sections.
    pub fn set(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self.last_draw.is_some_and(|t| now - t < REDRAW) && done < self.total {
            return;
        }
        self.last_draw = Some(now);
        let line = self.line(done);
        let mut err = std::io::stderr().lock();
        // A progress bar that cannot be drawn is not an error of the benchmark.
        let _ = write!(err, "\r{line}");
        let _ = err.flush();
        self.shown = true;
    }

    /// The bar's text for `done` units.
    pub fn line(&self, done: u64) -> String {
        let fraction = (done.min(self.total) as f64) / self.total as f64;
        let filled = (fraction * BAR_WIDTH as f64).round() as usize;
        format!(
            "{} [{}{}] {:3.0}%",
            self.label,
            "#".repeat(filled),
            ".".repeat(BAR_WIDTH - filled),
            fraction * 100.0
        )
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.shown {
            let width = self.line(0).chars().count();
            let _ = write!(std::io::stderr(), "\r{}\r", " ".repeat(width));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_text() {
        let p = Progress::with_output("sweep", 4, false);
        assert_eq!(p.line(0), format!("sweep [{}]   0%", ".".repeat(30)));
        assert_eq!(
            p.line(2),
            format!("sweep [{}{}]  50%", "#".repeat(15), ".".repeat(15))
        );
        assert_eq!(p.line(9), format!("sweep [{}] 100%", "#".repeat(30)));
        let mut off = Progress::with_output("x", 0, false);
        off.set(1); // disabled: draws nothing, no panic on a zero total
        assert!(!off.shown);
    }
}
