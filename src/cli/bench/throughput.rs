//! `rafi bench throughput`: see `rafi::bench::throughput` and docs/cli.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rafi::bench::plot::{self, Axis, Plot, Scale, Series, Units};
use rafi::bench::throughput::{self, Stop, ThroughputConfig};

use super::cores::parse_core_list;
use crate::cli::args::{parse_size, FabricArgs};
use crate::cli::executor::ModeArg;

#[derive(Debug, Clone, Args)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub fabric: FabricArgs,
    /// Executor workers, comma-separated for a sweep (one run and one executor each).
    #[arg(long, value_delimiter = ',', default_value = "1",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Vec<u32>,
    /// Invocations in flight per worker.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub depth: u32,
    /// The function (rafi.noop: nothing back; rafi.echo: its input back).
    #[arg(long, default_value = "rafi.noop")]
    pub function: String,
    /// Input bytes per invocation.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub size: usize,
    /// Timed invocations per run [default: 2000000 unless --seconds].
    #[arg(long, conflicts_with = "seconds",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: Option<u64>,
    /// Measure for this long instead of a number of invocations.
    #[arg(long, value_parser = parse_seconds)]
    pub seconds: Option<f64>,
    /// Untimed invocations first.
    #[arg(long, default_value_t = 100_000)]
    pub warmup: u64,
    /// How the workers wait.
    #[arg(long, value_enum, default_value_t = ModeArg::Hot)]
    pub mode: ModeArg,
    /// The client's core [default: the first this process may use].
    #[arg(long)]
    pub client_cpu: Option<usize>,
    /// The workers' cores, one each; as many as the largest --workers [default: the cores
    /// after the client's].
    #[arg(long, value_parser = parse_core_list)]
    pub executor_cores: Option<CoreArg>,
    /// Do not time each call (saves two clock reads per invocation; no latency fields).
    #[arg(long)]
    pub no_latency: bool,
    /// Function libraries the executor loads.
    #[arg(long, value_name = "PATH")]
    pub library: Vec<PathBuf>,
    /// Write an SVG plot of invocations/s against workers.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub use super::cores::CoreArg;

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "'{s}' is not a number of seconds between 0 and 86400"
        )),
    }
}

pub fn run(args: &ThroughputArgs) -> anyhow::Result<()> {
    let stop = match (args.iters, args.seconds) {
        (_, Some(s)) => Stop::Time(Duration::from_secs_f64(s)),
        (Some(n), None) => Stop::Iters(n),
        (None, None) => Stop::Iters(2_000_000),
    };
    // Read before the first run pins this process to one core.
    let allowed = throughput::usable_cores();
    let mut printer = super::printer(args.json);
    let mut points = Vec::new();
    // Every worker count's cores first, so that one that does not fit fails before any run.
    let mut runs = Vec::with_capacity(args.workers.len());
    for &n in &args.workers {
        let n = n as usize;
        let (client_cpu, executor_cores) = match (&args.executor_cores, args.client_cpu) {
            (Some(CoreArg(cores)), client) => {
                if cores.len() < n {
                    anyhow::bail!(
                        "--workers {n} needs {n} executor cores, --executor-cores gives {}",
                        cores.len()
                    );
                }
                let client = match client {
                    Some(c) => c,
                    None => throughput::default_cores(&allowed, 0)?.0,
                };
                (client, cores[..n].to_vec())
            }
            (None, client) => {
                let (first, cores) = throughput::default_cores(&allowed, n)?;
                (client.unwrap_or(first), cores)
            }
        };
        runs.push((n, client_cpu, executor_cores));
    }
    for (n, client_cpu, executor_cores) in runs {
        let config = ThroughputConfig {
            fabric: rafi::bench::invoke::fabric_config(
                args.fabric.fabric,
                args.fabric.device.clone(),
                args.fabric.gid_index,
            ),
            mode: match args.mode {
                ModeArg::Hot => "hot".into(),
                ModeArg::Warm => "warm".into(),
            },
            function: args.function.clone(),
            size: args.size,
            depth: args.depth,
            client_cpu,
            executor_cores,
            stop,
            warmup: args.warmup,
            record_latency: !args.no_latency,
            libraries: args.library.clone(),
        };
        let (report, _) = super::on_own_thread(|| {
            throughput::run(&config, &["executor"]).with_context(|| {
                format!("throughput with {n} worker(s) over {}", args.fabric.fabric)
            })
        })?;
        let ops = report
            .extra
            .get("throughput_ops")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        if !args.json {
            eprintln!(
                "{n} worker(s), depth {}: {:.3} M invocations/s ({:.3} M per worker)",
                args.depth,
                ops / 1e6,
                ops / 1e6 / n as f64
            );
        }
        printer.print(&report);
        points.push((n as f64, ops));
    }
    if let Some(path) = &args.plot {
        let plot = Plot::new(
            &format!("{} throughput, depth {}", args.function, args.depth),
            Axis::new("executor workers", Scale::Linear, Units::Plain),
            Axis::new("invocations per second", Scale::Linear, Units::Plain),
        )
        .with(Series::new("rafi", points));
        plot::write(&plot, path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
