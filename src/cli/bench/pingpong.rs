//! `rafi bench pingpong`: see `rafi::bench::pingpong` and docs/cli.md.

use anyhow::Context;
use clap::{Args, ValueEnum};
use rafi::bench::pingpong::{self, PingOp, PingpongConfig, WaitMode, MAX_SIZE};
use rafi::bench::CpuPair;

use crate::cli::args::{parse_size, FabricArgs, RunArgs};

/// The hidden subcommand that `pingpong` starts as its peer.
const PEER_ARGS: &[&str] = &["bench", "pingpong-peer"];

#[derive(Debug, Clone, Args)]
pub struct PingpongArgs {
    #[command(flatten)]
    pub fabric: FabricArgs,
    /// Payload bytes each way, 0 to 1 GiB (units K, M, G are powers of 1024).
    #[arg(long, default_value = "64", value_parser = parse_ping_size)]
    pub size: usize,
    /// Timed round trips.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// Untimed round trips first [default: iters/10, at least 1000, at most 1 GiB of
    /// payload].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Operation bounced each way.
    #[arg(long, value_enum, default_value_t = OpArg::WriteImm)]
    pub op: OpArg,
    /// How both sides wait for an arrival [default: spin; yield on tcp, whose progress
    /// thread shares the core].
    #[arg(long, value_enum)]
    pub wait: Option<WaitArg>,
    #[command(flatten)]
    pub run: RunArgs,
}

fn parse_ping_size(s: &str) -> Result<usize, String> {
    let size = parse_size(s)?;
    if size > MAX_SIZE {
        return Err(format!("{size} bytes is more than 1 GiB"));
    }
    Ok(size)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OpArg {
    /// RDMA WRITE_WITH_IMM into the peer's region.
    WriteImm,
    /// SEND into a posted receive buffer.
    Send,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WaitArg {
    /// Busy-poll the completion queue (PAUSE between empty polls).
    Spin,
    /// Busy-poll with sched_yield between empty polls.
    Yield,
    /// Sleep on a completion channel.
    Block,
}

impl PingpongArgs {
    /// The library's settings for these flags.
    pub fn config(&self) -> PingpongConfig {
        let kind = self.fabric.fabric;
        PingpongConfig {
            fabric: kind,
            device: self.fabric.device.clone(),
            gid_index: self.fabric.gid_index,
            op: match self.op {
                OpArg::WriteImm => PingOp::WriteImm,
                OpArg::Send => PingOp::Send,
            },
            size: self.size,
            iters: self.iters,
            warmup: self
                .warmup
                .unwrap_or_else(|| PingpongConfig::default_warmup(self.iters, self.size)),
            wait: match self.wait {
                None => WaitMode::default_for(kind),
                Some(WaitArg::Spin) => WaitMode::Spin,
                Some(WaitArg::Yield) => WaitMode::Yield,
                Some(WaitArg::Block) => WaitMode::Block,
            },
            cpus: self
                .run
                .cpus
                .unwrap_or_else(CpuPair::default_for_this_process),
        }
    }
}

pub fn run(args: &PingpongArgs) -> anyhow::Result<()> {
    let config = args.config();
    if config.cpus.shared() && config.wait == WaitMode::Spin {
        eprintln!(
            "rafi: warning: both processes run on cpu {} and spin: round trips will measure \
             the scheduler (give two cores with --cpus A,B, or use --wait yield)",
            config.cpus.client
        );
    }
    let report = pingpong::run(&config, PEER_ARGS)
        .with_context(|| format!("pingpong over {}", config.fabric))?;
    super::printer(args.run.json).print(&report);
    Ok(())
}

pub fn run_peer() -> anyhow::Result<()> {
    pingpong::run_peer().context("pingpong peer process")
}
