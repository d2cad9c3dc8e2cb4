//! `rafi bench cold`: see `rafi::bench::cold` and docs/cli.md.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rafi::bench::cold::{self, ColdConfig};
use rafi::bench::CpuPair;
use rafi::fabric::FabricKind;

use crate::cli::args::RunArgs;
use crate::cli::executor::ModeArg;

#[derive(Debug, Clone, Args)]
pub struct ColdArgs {
    /// The fabric: shm or tcp.
    #[arg(long, default_value = "shm")]
    pub fabric: FabricKind,
    /// Cold starts to time.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// How the executor's worker waits.
    #[arg(long, value_enum, default_value_t = ModeArg::Hot)]
    pub mode: ModeArg,
    /// Function libraries every executor loads (their loading is part of the start).
    #[arg(long)]
    pub library: Vec<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(args: &ColdArgs) -> anyhow::Result<()> {
    let config = ColdConfig {
        fabric: args.fabric,
        iters: args.iters,
        libraries: args.library.clone(),
        mode: match args.mode {
            ModeArg::Hot => "hot".into(),
            ModeArg::Warm => "warm".into(),
        },
        cpus: args
            .run
            .cpus
            .unwrap_or_else(CpuPair::default_for_this_process),
    };
    let report = cold::run(&config).with_context(|| format!("cold starts over {}", args.fabric))?;
    super::printer(args.run.json).print(&report);
    Ok(())
}
