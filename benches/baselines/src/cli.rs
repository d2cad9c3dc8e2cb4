//! Command-line pieces the three binaries share, and how they print their reports.

use rafi::bench::{LatencyRecorder, LatencyReport, OutputFormat, ReportPrinter};

use crate::sizes::{warmup_for, SizeList};

/// The `scenario` field of every report these binaries print.
pub const SCENARIO: &str = "baseline";

/// What every baseline takes: the sizes, the round trips and the output format.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Payload sizes, bytes each way: a comma list, K and M are powers of 1024 (1 B to 4M).
    #[arg(long, default_value = "64", value_parser = clap::value_parser!(SizeList))]
    pub sizes: SizeList,
    /// Timed round trips per size.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// Untimed round trips before them, per size [default: the larger of iters/10 and
    /// 1000, at most 256 MiB of payload (and at least 16 round trips) for large sizes].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// One JSON object per size (the LatencyReport fields) instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    /// The warm-up round trips of `size`.
    pub fn warmup_for(&self, size: usize) -> u64 {
        warmup_for(self.warmup, self.iters, size)
    }

    /// A printer for the chosen format.
    pub fn printer(&self) -> ReportPrinter {
        ReportPrinter::new(if self.json {
            OutputFormat::JsonLines
        } else {
            OutputFormat::Table
        })
    }
}

/// The report of one size, `scenario` "baseline"; the caller adds its extras with
/// [`LatencyReport::with`].
pub fn report(
    recorder: &LatencyRecorder,
    fabric: &str,
    op: &str,
    size: usize,
    warmup: u64,
) -> LatencyReport {
    recorder
        .report(SCENARIO, fabric, op, size, warmup)
        .with("verified", true)
}

/// Prints a report and flushes stdout, so that a consumer reading a pipe sees each size as
/// soon as it is measured.
pub fn emit(printer: &mut ReportPrinter, report: &LatencyReport) {
    use std::io::Write;
    printer.print(report);
    let _ = std::io::stdout().flush();
}

/// Runs a binary's `main` body: an error is printed as `NAME: error: ...` with its causes,
/// and the process exits with status 1.
pub fn run_main(name: &str, body: impl FnOnce() -> anyhow::Result<()>) {
    if let Err(e) = body() {
        eprintln!("{name}: error: {e:#}");
        std::process::exit(1);
    }
}

/// The control message a server process sends first: where it listens.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Listening {
    pub port: u16,
}
