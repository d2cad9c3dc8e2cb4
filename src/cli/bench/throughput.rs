//! `rafi bench throughput`: see `rafi::bench::throughput` and docs/cli.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rafi::bench::cpus::format_cpu_list;
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
    /// Client threads, each driving its share of the workers: a number, or `auto` for one
    /// per worker while the cores last (scaling runs need this: one thread feeds only a
    /// few workers at full rate). Never more than the run's workers.
    #[arg(long, default_value = "1", value_parser = parse_client_threads)]
    pub client_threads: ClientThreads,
    /// The client threads' cores, one thread each (the first --workers of them in a run
    /// with fewer workers) [default: the first --client-threads cores this process may use].
    #[arg(long, alias = "client-cpu", value_parser = parse_core_list,
          conflicts_with = "client_threads")]
    pub client_cpus: Option<CoreArg>,
    /// The workers' cores, one each; as many as the largest --workers [default: the cores
    /// after the clients'].
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

/// `--client-threads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientThreads {
    Fixed(usize),
    /// One per worker while the cores last.
    Auto,
}

fn parse_client_threads(s: &str) -> Result<ClientThreads, String> {
    match s {
        "auto" => Ok(ClientThreads::Auto),
        n => match n.parse::<usize>() {
            Ok(k) if (1..=1024).contains(&k) => Ok(ClientThreads::Fixed(k)),
            _ => Err(format!("'{s}' is not a thread count (1 to 1024) or auto")),
        },
    }
}

/// The client and executor cores of a run with `n` workers.
fn cores_for(
    args: &ThroughputArgs,
    allowed: &[usize],
    n: usize,
) -> anyhow::Result<(Vec<usize>, Vec<usize>)> {
    let clients = match (&args.client_cpus, args.client_threads) {
        (Some(CoreArg(cpus)), _) => Some(cpus[..cpus.len().min(n)].to_vec()),
        (None, _) if args.executor_cores.is_none() => None,
        (None, ClientThreads::Fixed(k)) => Some(allowed[..k.min(n).min(allowed.len())].to_vec()),
        (None, ClientThreads::Auto) => {
            Some(allowed[..throughput::auto_client_threads(allowed.len(), n)].to_vec())
        }
    };
    match (&args.executor_cores, clients) {
        (Some(CoreArg(cores)), Some(clients)) => {
            if cores.len() < n {
                anyhow::bail!(
                    "--workers {n} needs {n} executor cores, --executor-cores gives {}",
                    cores.len()
                );
            }
            Ok((clients, cores[..n].to_vec()))
        }
        (None, Some(clients)) => {
            let free: Vec<usize> = allowed
                .iter()
                .copied()
                .filter(|c| !clients.contains(c))
                .collect();
            if free.len() < n {
                anyhow::bail!(
                    "{n} worker(s) need {n} cores besides the client threads' {}, but this \
                     process may use only cpus {} (give --executor-cores to share cores on \
                     purpose)",
                    format_cpu_list(&clients),
                    format_cpu_list(allowed)
                );
            }
            Ok((clients, free[..n].to_vec()))
        }
        (_, None) => {
            let k = match args.client_threads {
                ClientThreads::Fixed(k) => k.min(n),
                ClientThreads::Auto => throughput::auto_client_threads(allowed.len(), n),
            };
            Ok(throughput::default_cores(allowed, k, n)?)
        }
    }
}

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
        let (client_cpus, executor_cores) = cores_for(args, &allowed, n)?;
        runs.push((n, client_cpus, executor_cores));
    }
    for (n, client_cpus, executor_cores) in runs {
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
            client_cpus,
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
