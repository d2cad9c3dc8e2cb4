//! `rafi bench`: one variant of [`BenchCommand`] per scenario, one module under `bench/`
//! for each.

mod clients;
mod cold;
mod cores;
mod invoke;
mod memory;
mod pingpong;
mod report;
mod throughput;

use clap::{Args, Subcommand};
use rafi::bench::{OutputFormat, ReportPrinter};

pub use invoke::InvokeArgs;
pub use pingpong::PingpongArgs;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Raw fabric round trips between two pinned processes (WRITE_WITH_IMM or SEND), no
    /// rafi layer.
    Pingpong(PingpongArgs),
    /// Function invocations through the whole stack: this process as the client, a
    /// `rafi executor` process with one worker pinned to the second core.
    Invoke(InvokeArgs),
    /// Pipelined invocations over N executor workers: invocations per second, and the
    /// latency of the pipelined calls.
    Throughput(throughput::ThroughputArgs),
    /// Several clients at once, each its own connection, against one executor: latency
    /// per client count and the invocations per second of all of them.
    Clients(clients::ClientsArgs),
    /// The JSON lines of scripts/bench.sh as markdown tables with ratios and SVG plots.
    Report(report::ReportArgs),
    /// Leased remote memory: put/get latency and bandwidth against the raw fabric's
    /// WRITE/READ of the same sizes, in one run.
    Memory(memory::MemoryArgs),
    /// Cold starts on a cluster of this host: lease, spawn an executor, connect, first
    /// result, timed in phases.
    Cold(cold::ColdArgs),
    /// The peer process of `pingpong` (started by it; settings arrive on stdin).
    #[command(hide = true)]
    PingpongPeer,
}

/// Runs a `rafi bench` subcommand.
///
/// # Errors
/// Whatever the scenario reports.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Pingpong(args) => pingpong::run(&args),
        BenchCommand::Invoke(args) => invoke::run(&args),
        BenchCommand::Cold(args) => cold::run(&args),
        BenchCommand::Memory(args) => memory::run(&args),
        BenchCommand::Throughput(args) => throughput::run(&args),
        BenchCommand::Clients(args) => clients::run(&args),
        BenchCommand::Report(args) => report::run(&args),
        BenchCommand::PingpongPeer => pingpong::run_peer(),
    }
}

/// How a bench prints: JSON lines with `--json`, else a table.
pub fn printer(json: bool) -> ReportPrinter {
    ReportPrinter::new(if json {
        OutputFormat::JsonLines
    } else {
        OutputFormat::Table
    })
}

/// Runs one measurement on a thread of its own: a measurement pins its thread (and the
/// executor it spawns inherits the affinity of the spawning thread), so a sweep that runs
/// several keeps this thread, and the next executor, free to use every core.
///
/// # Errors
/// The measurement's, or one saying that it panicked.
pub fn on_own_thread<T: Send>(f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the measuring thread panicked")))
    })
}
