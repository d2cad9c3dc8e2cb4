//! The `rafi` command line (clap derive): one module per subcommand.
//!
//! ```text
//! rafi resource-manager …   the cluster's nodes, leases and accounting
//! rafi executor-manager …   a node's manager: register, start executors for leases
//! rafi executor …           serve functions on the cores given (executor.rs)
//! rafi invoke …            invoke a function from the shell (invoke.rs)
//! rafi bench pingpong …     raw fabric round trips between two processes (bench/pingpong.rs)
//! rafi bench invoke …       invocations through the whole stack (bench/invoke.rs)
//! ```
//!
//! Errors end up in [`main`]: one `rafi: error: …` line on stderr (with the chain of causes)
//! and exit status 1; clap's own usage errors exit with 2.

mod args;
mod bench;
mod config;
mod executor;
mod executor_manager;
mod invoke;
mod resource_manager;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// RDMA-accelerated function invocation for HPC clusters.
#[derive(Debug, Parser)]
#[command(name = "rafi", version, about, propagate_version = true)]
pub struct Cli {
    /// A TOML configuration file (see docs/cli.md); flags and environment variables win
    /// over it.
    #[arg(long, global = true, env = "RAFI_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve functions to clients, one worker thread pinned to each core given.
    Executor(executor::ExecutorArgs),
    /// Run the cluster's resource manager: nodes, leases, accounting (HTTP API).
    ResourceManager(resource_manager::ResourceManagerArgs),
    /// Run a node's executor manager: register its spare cores, start executors for leases.
    ExecutorManager(executor_manager::ExecutorManagerArgs),
    /// Invoke a function from the shell (on an executor, or on a core leased for the call).
    Invoke(invoke::InvokeArgs),
    /// Measure latencies (fabric ping-pong, invocations).
    Bench(bench::BenchArgs),
}

/// Parses the arguments, runs the command, reports an error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rafi: error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. Many of rafi's errors already say their cause
/// (`cannot reach X: connection refused`); a cause whose text is already in the line is
/// not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Runs a parsed command.
///
/// # Errors
/// Whatever the command reports.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let file = config::ConfigFile::load(cli.config.as_deref())?;
    match cli.command {
        Command::ResourceManager(args) => resource_manager::run(&args, &file),
        Command::ExecutorManager(args) => executor_manager::run(&args, &file),
        Command::Executor(args) => executor::run(&args),
        Command::Invoke(args) => invoke::run(&args, &file),
        Command::Bench(args) => bench::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_already_said_are_not_repeated() {
        let io = std::io::Error::other("connection refused");
        let e = anyhow::Error::new(io).context("cannot reach X: connection refused");
        let e = e.context("allocating");
        assert_eq!(report(&e), "allocating: cannot reach X: connection refused");
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
