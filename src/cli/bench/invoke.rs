//! `rafi bench invoke`: see `rafi::bench::invoke` and docs/cli.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rafi::bench::invoke::{self, InvokeConfig};
use rafi::bench::plot::{self, Axis, Plot, Scale, Series, Units};
use rafi::bench::progress::Progress;
use rafi::bench::{CpuPair, LatencyRecorder, LatencyReport};

use crate::cli::args::{parse_size, FabricArgs, RunArgs};
use crate::cli::executor::ModeArg;

#[derive(Debug, Clone, Args)]
pub struct InvokeArgs {
    #[command(flatten)]
    pub fabric: FabricArgs,
    /// How the executor's worker waits: hot spins, warm sleeps between requests.
    #[arg(long, value_enum, default_value_t = ModeArg::Hot)]
    pub mode: ModeArg,
    /// Payload bytes in (and out, for rafi.echo); units K, M, G.
    #[arg(long, default_value = "64", value_parser = parse_size, conflicts_with = "sizes")]
    pub size: usize,
    /// A payload sweep: one run (and one executor) per size, comma-separated, e.g.
    /// 1,8,64,1K,64K,1M,4M. Sizes above 64 KiB run fewer iterations (2 GiB of payload per
    /// point, at least 100).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<usize>,
    /// Write an SVG plot: p50 against payload for a sweep, the latency CDF for one size.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Timed invocations.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// Untimed invocations first [default: iters/10, at least 1000 but at most iters].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// The function: rafi.echo returns its input (size bytes each way, like the
    /// ping-pong), rafi.noop returns nothing; or a function of a --library.
    #[arg(long, default_value = "rafi.echo")]
    pub function: String,
    /// Function libraries the executor loads.
    #[arg(long, value_name = "PATH")]
    pub library: Vec<PathBuf>,
    /// warm: untimed microseconds between invocations, so the worker is asleep when the
    /// request lands.
    #[arg(long, default_value_t = 50)]
    pub gap_us: u64,
    /// warm: the worker's idle time before it sleeps, in microseconds.
    #[arg(long, default_value_t = 0)]
    pub idle_us: u64,
    /// Put a 64-byte header on every request and response (the protocol's full form)
    /// instead of the compact form, to measure what the compact form saves.
    #[arg(long)]
    pub headers: bool,
    /// Send each input from registered input memory (`Allocation::invoke_from`: the
    /// request's WRITE reads it in place) instead of copying it into the request slot.
    #[arg(long)]
    pub registered: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Payload bytes per point of a sweep before its iterations are cut.
const BYTES_PER_POINT: u64 = 2 << 30;

/// The iterations for one point of a sweep: `iters`, cut for large sizes.
fn iters_for(iters: u64, size: usize) -> u64 {
    if size <= 64 * 1024 {
        iters
    } else {
        iters.min((BYTES_PER_POINT / size as u64).max(100))
    }
}

pub fn run(args: &InvokeArgs) -> anyhow::Result<()> {
    let sizes = if args.sizes.is_empty() {
        vec![args.size]
    } else {
        args.sizes.clone()
    };
    // Chosen before the first run pins this process to one core.
    let cpus = args
        .run
        .cpus
        .unwrap_or_else(CpuPair::default_for_this_process);
    let mut printer = super::printer(args.run.json);
    let mut progress = Progress::new("sweep", sizes.len() as u64);
    let mut results = Vec::with_capacity(sizes.len());
    for (i, &size) in sizes.iter().enumerate() {
        if sizes.len() > 1 {
            progress.set(i as u64);
        }
        let iters = iters_for(args.iters, size);
        let config = InvokeConfig {
            fabric: invoke::fabric_config(
                args.fabric.fabric,
                args.fabric.device.clone(),
                args.fabric.gid_index,
            ),
            mode: match args.mode {
                ModeArg::Hot => "hot".into(),
                ModeArg::Warm => "warm".into(),
            },
            size,
            iters,
            warmup: args.warmup.unwrap_or((iters / 10).max(1000).min(iters)),
            function: args.function.clone(),
            libraries: args.library.clone(),
            gap: Duration::from_micros(args.gap_us),
            idle: Duration::from_micros(args.idle_us),
            compact: !args.headers,
            registered: args.registered,
            cpus,
        };
        let (report, recorder) = super::on_own_thread(|| {
            invoke::run_recorded(&config, &["executor"])
                .with_context(|| format!("invoke {size} B over {}", args.fabric.fabric))
        })?;
        printer.print(&report);
        results.push((report, recorder));
    }
    drop(progress);
    if let Some(path) = &args.plot {
        let plot = if results.len() > 1 {
            Plot::new(
                &format!("rafi {} latency against payload", args.function),
                Axis::new("payload (bytes)", Scale::Log, Units::Bytes),
                Axis::new("latency", Scale::Log, Units::Nanos),
            )
            .with(series_of(&results, "p50", |r| r.p50_ns))
            .with(series_of(&results, "p99", |r| r.p99_ns))
        } else {
            let (report, recorder) = &results[0];
            Plot::new(
                &format!("rafi {} latency CDF, {} B", args.function, report.size),
                Axis::new("latency", Scale::Log, Units::Nanos),
                Axis::new(
                    "fraction of calls at or below",
                    Scale::Linear,
                    Units::Percent,
                ),
            )
            .with(Series::new(
                &args.function,
                plot::cdf_points(recorder.histogram(), 200),
            ))
        };
        plot::write(&plot, path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One point per report: (size, `value` of it).
fn series_of(
    results: &[(LatencyReport, LatencyRecorder)],
    label: &str,
    value: impl Fn(&LatencyReport) -> u64,
) -> Series {
    Series::new(
        label,
        results
            .iter()
            .map(|(r, _)| (r.size as f64, value(r) as f64))
            .collect(),
    )
}
