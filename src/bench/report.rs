//! Latency samples and what a benchmark prints about them: one JSON object per line, or a
//! table row.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histogram resolves: one hour. Longer samples are clamped to it.
const HIGHEST_NS: u64 = 3_600_000_000_000;

/// Collects round-trip times: an HDR histogram (3 significant digits) for percentiles, plus
/// the exact minimum, maximum and sum. Recording allocates nothing.
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    hist: Histogram<u64>,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    pub fn new() -> Self {
        Self {
            // Bounds 1 ns ..= 1 h with 3 digits are always valid, so this cannot fail.
            hist: Histogram::new_with_bounds(1, HIGHEST_NS, 3)
                .unwrap_or_else(|_| unreachable!("valid histogram bounds")),
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    /// Records one sample.
    #[inline]
    pub fn record(&mut self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.record_ns(ns);
    }

    /// Records one sample given in nanoseconds.
    #[inline]
    pub fn record_ns(&mut self, ns: u64) {
        self.hist.saturating_record(ns.clamp(1, HIGHEST_NS));
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds the samples of `other` (recorders of several threads into one).
    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Both histograms have the same bounds, so adding cannot go out of range.
        let _ = self.hist.add(&other.hist);
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Samples recorded so far.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The histogram, for percentiles this type does not report.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    /// A report of what was recorded, for the scenario and parameters given; `iters` is the
    /// number of samples. An empty recorder gives zeros.
    pub fn report(
        &self,
        scenario: &str,
        fabric: &str,
        op: &str,
        size: usize,
        warmup: u64,
    ) -> LatencyReport {
        let n = self.len();
        let q = |p: f64| {
            if n == 0 {
                0
            } else {
                self.hist.value_at_quantile(p)
            }
        };
        let mean = if n == 0 {
            0.0
        } else {
            // One decimal is all a nanosecond clock supports.
            ((self.sum_ns as f64 / n as f64) * 10.0).round() / 10.0
        };
        LatencyReport {
            scenario: scenario.into(),
            fabric: fabric.into(),
            op: op.into(),
            size,
            iters: n,
            warmup,
            p50_ns: q(0.50),
            p90_ns: q(0.90),
            p99_ns: q(0.99),
            p999_ns: q(0.999),
            min_ns: if n == 0 { 0 } else { self.min_ns },
            max_ns: self.max_ns,
            mean_ns: mean,
            extra: BTreeMap::new(),
        }
    }
}

/// One benchmark result: what `--json` prints as one line, what the table shows as one row.
///
/// Percentiles come from the HDR histogram (within 0.1 %); `min_ns`, `max_ns` and `mean_ns`
/// are exact. Scenario-specific settings (wait mode, cores, …) go into `extra`, which is
/// flattened into the JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    /// The benchmark: `pingpong`, later `invoke`, ….
    pub scenario: String,
    /// `shm`, `tcp` or `verbs`.
    pub fabric: String,
    /// What was measured within the scenario: the verb for `pingpong` (`write-imm`,
    /// `send`), the executor mode for `invoke`.
    pub op: String,
    /// Payload bytes each way.
    pub size: usize,
    /// Timed round trips (samples).
    pub iters: u64,
    /// Untimed round trips before them.
    pub warmup: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
    /// Further fields of the JSON object.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl LatencyReport {
    /// Adds a field to `extra` (builder style).
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The report as one line of JSON, without a newline.
    pub fn to_json_line(&self) -> String {
        // A struct of strings, numbers and JSON values always serializes.
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("serializing a report: {e}"))
    }

    /// The header that goes above [`Self::table_row`]s.
    pub fn table_header() -> String {
        format!(
            "{:<10} {:<6} {:<10} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "scenario",
            "fabric",
            "op",
            "size",
            "iters",
            "p50_ns",
            "p90_ns",
            "p99_ns",
            "mean_ns",
            "min_ns",
            "max_ns"
        )
    }

    /// The report as one row of a table under [`Self::table_header`].
    pub fn table_row(&self) -> String {
        format!(
            "{:<10} {:<6} {:<10} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10.1} {:>10} {:>12}",
            self.scenario,
            self.fabric,
            self.op,
            self.size,
            self.iters,
            self.p50_ns,
            self.p90_ns,
            self.p99_ns,
            self.mean_ns,
            self.min_ns,
            self.max_ns
        )
    }
}

/// How a benchmark prints its reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A header, then one row per report.
    Table,
    /// One JSON object per line.
    JsonLines,
}

/// Prints reports to stdout in one [`OutputFormat`]; the table header comes once, before
/// the first row.
#[derive(Debug)]
pub struct ReportPrinter {
    format: OutputFormat,
    header_done: bool,
}

impl ReportPrinter {
    pub fn new(format: OutputFormat) -> Self {
        Self {
            format,
            header_done: false,
        }
    }

    /// The lines that `report` adds to the output (the header with the first table row).
    pub fn lines(&mut self, report: &LatencyReport) -> Vec<String> {
        match self.format {
            OutputFormat::JsonLines => vec![report.to_json_line()],
            OutputFormat::Table => {
                let mut out = Vec::with_capacity(2);
                if !std::mem::replace(&mut self.header_done, true) {
                    out.push(LatencyReport::table_header());
                }
                out.push(report.table_row());
                out
            }
        }
    }

    /// Prints `report` to stdout.
    pub fn print(&mut self, report: &LatencyReport) {
        for line in self.lines(report) {
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_of_known_samples() {
        let mut rec = LatencyRecorder::new();
        for ns in 1..=1000u64 {
            rec.record_ns(ns);
        }
        let r = rec
            .report("pingpong", "shm", "write-imm", 64, 10)
            .with("wait", "spin");
        assert_eq!(r.iters, 1000);
        assert_eq!((r.min_ns, r.max_ns), (1, 1000));
        assert_eq!(r.p50_ns, 500);
        assert_eq!(r.p99_ns, 990);
        assert!((r.mean_ns - 500.5).abs() < 1e-9);
        let line = r.to_json_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["scenario"], "pingpong");
        assert_eq!(v["wait"], "spin");
        assert_eq!(v["p50_ns"], 500);
        let back: LatencyReport = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn merged_recorders() {
        let (mut a, mut b) = (LatencyRecorder::new(), LatencyRecorder::new());
        (1..=500u64).for_each(|ns| a.record_ns(ns));
        (501..=1000u64).for_each(|ns| b.record_ns(ns));
        a.merge(&b);
        a.merge(&LatencyRecorder::new());
        let r = a.report("clients", "shm", "rafi.noop", 0, 0);
        assert_eq!(
            (r.iters, r.min_ns, r.max_ns, r.p50_ns),
            (1000, 1, 1000, 500)
        );
    }

    #[test]
    fn empty_recorder_reports_zeros() {
        let r = LatencyRecorder::new().report("pingpong", "tcp", "send", 0, 0);
        assert_eq!((r.iters, r.p50_ns, r.min_ns, r.max_ns), (0, 0, 0, 0));
        assert_eq!(r.mean_ns, 0.0);
    }

    #[test]
    fn table_header_once() {
        let r = LatencyRecorder::new().report("pingpong", "shm", "send", 1, 0);
        let mut p = ReportPrinter::new(OutputFormat::Table);
        assert_eq!(p.lines(&r).len(), 2);
        assert_eq!(p.lines(&r).len(), 1);
        assert!(LatencyReport::table_header().starts_with("scenario"));
        let mut j = ReportPrinter::new(OutputFormat::JsonLines);
        assert_eq!(j.lines(&r).len(), 1);
    }
}
