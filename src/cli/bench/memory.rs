//! `rafi bench memory`: see `rafi::bench::memory` and docs/remote-memory.md.

use anyhow::Context;
use clap::{Args, ValueEnum};
use rafi::bench::memory::{self, MemoryBenchConfig, MemoryOp};

use crate::cli::args::{parse_size, FabricArgs};

#[derive(Debug, Clone, Args)]
pub struct MemoryArgs {
    #[command(flatten)]
    pub fabric: FabricArgs,
    /// Transfer sizes, comma-separated (units K, M, G are powers of 1024).
    #[arg(long, value_delimiter = ',', value_parser = parse_size,
          default_value = "64,1K,4K,64K,1M,16M")]
    pub sizes: Vec<usize>,
    /// Operations measured: put (against raw WRITE), get (against raw READ), and their
    /// in-place forms put-with and get-with (no staging copy; sizes up to half the
    /// staging region).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "put,get")]
    pub ops: Vec<OpArg>,
    /// Timed operations per size at most (large sizes get fewer: 2 GiB per point, at
    /// least 20).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// Untimed operations per size first [default: iters/10, at most the point's iters].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// The client's staging region (transfers beyond half of it go in chunks).
    #[arg(long, default_value = "8M", value_parser = parse_size)]
    pub staging: usize,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OpArg {
    Put,
    Get,
    PutWith,
    GetWith,
}

pub fn run(args: &MemoryArgs) -> anyhow::Result<()> {
    let config = MemoryBenchConfig {
        fabric: rafi::bench::invoke::fabric_config(
            args.fabric.fabric,
            args.fabric.device.clone(),
            args.fabric.gid_index,
        ),
        sizes: args.sizes.clone(),
        iters: args.iters,
        warmup: args.warmup.unwrap_or(args.iters / 10),
        ops: args
            .ops
            .iter()
            .map(|o| match o {
                OpArg::Put => MemoryOp::Put,
                OpArg::Get => MemoryOp::Get,
                OpArg::PutWith => MemoryOp::PutInPlace,
                OpArg::GetWith => MemoryOp::GetInPlace,
            })
            .collect(),
        staging: args.staging,
    };
    let reports = memory::run(&config)
        .with_context(|| format!("remote memory over {}", args.fabric.fabric))?;
    let mut printer = super::printer(args.json);
    for report in &reports {
        printer.print(report);
    }
    Ok(())
}
