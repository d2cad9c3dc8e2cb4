//! `rafi executor`: serve functions to clients on the cores given, until killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use rafi::bench::cpus::parse_cpu_list;
use rafi::executor::billing::{Accountant, BillingTarget, FLUSH_INTERVAL};
use rafi::executor::{Executor, ExecutorConfig, Polling};
use rafi::fabric::{self, Fabric, FabricUser};
use rafi::function::{FunctionLibrary, FunctionTable};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::cli::args::{parse_size, FabricArgs};

#[derive(Debug, Clone, Args)]
pub struct ExecutorArgs {
    #[command(flatten)]
    pub fabric: FabricArgs,
    /// Where clients connect (the TCP control connection of the allocation handshake).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// tcp fabric: where the fabric itself listens (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub tcp_listen: SocketAddr,
    /// Cores of the worker threads, one worker pinned to each (e.g. 2,3 or 2-5).
    #[arg(long, value_name = "LIST", value_parser = parse_cores, conflicts_with = "workers")]
    pub cores: Option<CoreList>,
    /// Number of unpinned worker threads (when no --cores are given).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// How workers wait for requests.
    #[arg(long, value_enum, default_value_t = ModeArg::Warm)]
    pub mode: ModeArg,
    /// warm: microseconds without a request before a worker sleeps on its channel.
    #[arg(long, default_value_t = 1000)]
    pub idle_us: u64,
    /// A function library (a shared object exporting the rafi function ABI) to load;
    /// repeat for several. The built-ins rafi.noop and rafi.echo are always there.
    #[arg(long, value_name = "PATH")]
    pub library: Vec<PathBuf>,
    /// Let clients ship function libraries with their allocation (their code then runs in
    /// this executor, with its rights).
    #[arg(long)]
    pub accept_libraries: bool,
    /// Most slots a client may ask for per worker connection.
    #[arg(long, default_value_t = 256)]
    pub max_slots: u32,
    /// Largest slot a client may ask for (units K, M, G).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub max_slot_size: usize,
    /// Most remote memory leased to clients, all allocations together (units K, M, G;
    /// docs/remote-memory.md). The executor manager passes the lease's memory.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub max_memory: usize,
    /// Set by the executor manager: where to bill (JSON: the manager's queue pair endpoint
    /// and its counters' address and rkey). The executor then prints its accountant's
    /// endpoint in its `listening` line, bills through RDMA FETCH_ADD, and ends (after a
    /// last flush) when its stdin closes.
    #[arg(long, hide = true, value_name = "JSON", value_parser = parse_billing)]
    pub billing: Option<BillingTarget>,
}

fn parse_billing(s: &str) -> Result<BillingTarget, String> {
    serde_json::from_str(s).map_err(|e| format!("not a billing target: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Spin on the completion queues: lowest latency, one busy core per worker.
    Hot,
    /// Spin while busy, sleep on the completion channel after --idle-us.
    Warm,
}

/// A list of cores (one clap value, not several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreList(pub Vec<usize>);

fn parse_cores(s: &str) -> Result<CoreList, String> {
    parse_cpu_list(s)
        .filter(|c| !c.is_empty())
        .map(CoreList)
        .ok_or_else(|| format!("'{s}' is not a core list (e.g. 2,3 or 2-5)"))
}

pub fn run(args: &ExecutorArgs) -> anyhow::Result<()> {
    let mut table = FunctionTable::with_builtins();
    for path in &args.library {
        let library = FunctionLibrary::open(path)
            .with_context(|| format!("loading function library {}", path.display()))?;
        table
            .add_library(library)
            .with_context(|| format!("adding the functions of {}", path.display()))?;
    }
    let mut config = match &args.cores {
        Some(CoreList(cores)) => ExecutorConfig::pinned(cores),
        None => ExecutorConfig::new(args.workers),
    };
    config.polling = match args.mode {
        ModeArg::Hot => Polling::Hot,
        ModeArg::Warm => Polling::Warm {
            idle: Duration::from_micros(args.idle_us),
        },
    };
    config.max_slots = args.max_slots;
    config.accept_libraries = args.accept_libraries;
    config.max_memory = args.max_memory as u64;
    config.max_slot_size = u32::try_from(args.max_slot_size)
        .ok()
        .filter(|&s| s <= 1 << 30)
        .context("--max-slot-size is at most 1 GiB")?;
    let mut fabric_config = rafi::bench::invoke::fabric_config(
        args.fabric.fabric,
        args.fabric.device.clone(),
        args.fabric.gid_index,
    );
    fabric_config.tcp_listen = args.tcp_listen;
    let functions: Vec<String> = table.iter().map(|(_, f)| f.name().to_string()).collect();
    fabric::open(
        &fabric_config,
        Serve {
            listen: args.listen,
            config,
            table: Arc::new(table),
            functions,
            billing: args.billing.clone(),
        },
    )
    .with_context(|| format!("opening the {} fabric", args.fabric.fabric))?
}

struct Serve {
    listen: SocketAddr,
    config: ExecutorConfig,
    table: Arc<FunctionTable>,
    functions: Vec<String>,
    billing: Option<BillingTarget>,
}

impl FabricUser for Serve {
    type Output = anyhow::Result<()>;

    fn run<F: Fabric>(self, fabric: F) -> anyhow::Result<()> {
        let kind = fabric.kind();
        let cores = self.config.cores.clone();
        let mode = self.config.polling.name();
        let accountant = match self.billing {
            Some(target) => {
                Some(Accountant::create(&fabric, target).context("setting up billing")?)
            }
            None => None,
        };
        let executor = Executor::start(fabric, self.listen, self.config, self.table)
            .context("starting the executor")?;
        // One JSON line on stdout for scripts and `rafi bench invoke`; the rest on stderr.
        println!(
            "{}",
            serde_json::json!({
                "event": "listening",
                "address": executor.address().to_string(),
                "fabric": kind.name(),
                "workers": cores,
                "mode": mode,
                "functions": self.functions,
                "billing": accountant.as_ref().map(Accountant::endpoint),
            })
        );
        eprintln!(
            "rafi executor: serving {} function(s) on {} worker(s), {mode} polling, fabric {kind}, clients at {}",
            self.functions.len(),
            cores.len(),
            executor.address()
        );
        let Some(accountant) = accountant else {
            loop {
                std::thread::park();
            }
        };
        let accountant = accountant
            .start(executor.worker_stats(), FLUSH_INTERVAL)
            .context("starting the accountant")?;
        // Billed executors belong to a manager: they end when it closes their stdin (or
        // dies), after a last flush of their usage. So SIGTERM and SIGINT, which reach
        // every process of a Slurm job step (`scancel --signal=TERM`, the warning before
        // the time limit) or of a terminal's process group, are the manager's to act on:
        // here they only set a flag nobody reads, instead of ending the process before
        // its last flush. (SIGKILL still ends it.)
        let ignored = Arc::new(AtomicBool::new(false));
        for signal in [SIGTERM, SIGINT] {
            signal_hook::flag::register(signal, ignored.clone())
                .context("installing the signal handlers")?;
        }
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        drop(accountant);
        drop(executor);
        Ok(())
    }
}
