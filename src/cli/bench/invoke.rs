//! `rafi bench invoke`: see `rafi::bench::invoke` and docs/cli.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rafi::bench::invoke::{self, InvokeConfig};
use rafi::bench::CpuPair;

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
    #[arg(long, default_value = "64", value_parser = parse_size)]
    pub size: usize,
    /// Timed invocations.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// Untimed invocations first [default: iters/10, at least 1000].
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
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(args: &InvokeArgs) -> anyhow::Result<()> {
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
        size: args.size,
        iters: args.iters,
        warmup: args.warmup.unwrap_or((args.iters / 10).max(1000)),
        function: args.function.clone(),
        libraries: args.library.clone(),
        gap: Duration::from_micros(args.gap_us),
        idle: Duration::from_micros(args.idle_us),
        cpus: args
            .run
            .cpus
            .unwrap_or_else(CpuPair::default_for_this_process),
    };
    let report = invoke::run(&config, &["executor"])
        .with_context(|| format!("invoke over {}", args.fabric.fabric))?;
    super::printer(args.run.json).print(&report);
    Ok(())
}
