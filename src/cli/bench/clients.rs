//! `rafi bench clients`: see `rafi::bench::clients` and docs/cli.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rafi::bench::clients::{self, ClientsConfig};
use rafi::bench::plot::{self, Axis, Plot, Scale, Series, Units};
use rafi::bench::CpuPair;

use super::cores::{parse_core_list, CoreArg};
use crate::cli::args::{parse_size, FabricArgs};
use crate::cli::executor::ModeArg;

#[derive(Debug, Clone, Args)]
pub struct ClientsArgs {
    #[command(flatten)]
    pub fabric: FabricArgs,
    /// Client counts, comma-separated: one measurement each, all against one executor.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: Vec<u32>,
    /// The function.
    #[arg(long, default_value = "rafi.noop")]
    pub function: String,
    /// Input bytes per invocation.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub size: usize,
    /// Timed invocations per client.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// Untimed invocations per client first [default: iters/10].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// How the executor's workers wait.
    #[arg(long, value_enum, default_value_t = ModeArg::Hot)]
    pub mode: ModeArg,
    /// Cores the client threads are pinned to, round robin [default: the first core this
    /// process may use].
    #[arg(long, value_parser = parse_core_list)]
    pub client_cores: Option<CoreArg>,
    /// The executor's cores, one worker each; clients are spread over the workers round
    /// robin [default: one worker on the second core, shared by every client].
    #[arg(long, value_parser = parse_core_list)]
    pub executor_cores: Option<CoreArg>,
    /// Microseconds a waiting client spins before it sleeps [default: spin while every
    /// client has a core of its own, else sleep at once].
    #[arg(long)]
    pub spin_us: Option<u64>,
    /// Function libraries the executor loads.
    #[arg(long, value_name = "PATH")]
    pub library: Vec<PathBuf>,
    /// Write an SVG plot of latency (p50, p99) against the number of clients.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ClientsArgs) -> anyhow::Result<()> {
    let pair = CpuPair::default_for_this_process();
    let config = ClientsConfig {
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
        iters: args.iters,
        warmup: args.warmup.unwrap_or(args.iters / 10),
        client_cores: args.client_cores.clone().map_or(vec![pair.client], |c| c.0),
        executor_cores: args
            .executor_cores
            .clone()
            .map_or(vec![pair.server], |c| c.0),
        spin: args.spin_us.map(Duration::from_micros),
        libraries: args.library.clone(),
    };
    let counts: Vec<usize> = args.clients.iter().map(|&n| n as usize).collect();
    let results = clients::run(&config, &counts, &["executor"])
        .with_context(|| format!("clients over {}", args.fabric.fabric))?;
    let mut printer = super::printer(args.json);
    for (report, _) in &results {
        printer.print(report);
    }
    if !args.json {
        for (report, _) in &results {
            eprintln!(
                "{} client(s): {:.3} M invocations/s in all",
                report
                    .extra
                    .get("clients")
                    .map_or("?".into(), |v| v.to_string()),
                report
                    .extra
                    .get("throughput_ops")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.0)
                    / 1e6
            );
        }
    }
    if let Some(path) = &args.plot {
        let points = |f: fn(&rafi::bench::LatencyReport) -> u64| {
            counts
                .iter()
                .zip(&results)
                .map(|(&n, (r, _))| (n as f64, f(r) as f64))
                .collect()
        };
        let plot = Plot::new(
            &format!("{} latency against concurrent clients", args.function),
            Axis::new("clients", Scale::Linear, Units::Plain),
            Axis::new("latency", Scale::Log, Units::Nanos),
        )
        .with(Series::new("p50", points(|r| r.p50_ns)))
        .with(Series::new("p99", points(|r| r.p99_ns)));
        plot::write(&plot, path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
