//! The `rafi` command line (clap derive): one module per subcommand.
//!
//! ```text
//! rafi executor …           serve functions on the cores given (executor.rs)
//! rafi bench pingpong …     raw fabric round trips between two processes (bench/pingpong.rs)
//! rafi bench invoke …       invocations through the whole stack (bench/invoke.rs)
//! ```
//!
//! Errors end up in [`main`]: one `rafi: error: …` line on stderr (with the chain of causes)
//! and exit status 1; clap's own usage errors exit with 2.

mod args;
mod bench;
mod executor;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// RDMA-accelerated function invocation for HPC clusters.
#[derive(Debug, Parser)]
#[command(name = "rafi", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve functions to clients, one worker thread pinned to each core given.
    Executor(executor::ExecutorArgs),
    /// Measure latencies (fabric ping-pong, invocations).
    Bench(bench::BenchArgs),
}

/// Parses the arguments, runs the command, reports an error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rafi: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command.
///
/// # Errors
/// Whatever the command reports.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Executor(args) => executor::run(&args),
        Command::Bench(args) => bench::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
