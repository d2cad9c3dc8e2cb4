//! `rafi executor-manager`: one per node; registers the node's spare cores with the
//! resource manager and starts executors for leases.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rafi::cluster::manager::{parse_core_list, ExecutorManager, ManagerConfig};
use rafi::fabric::FabricKind;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::config::ConfigFile;

#[derive(Debug, Clone, Args)]
pub struct ExecutorManagerArgs {
    /// The resource manager (`host:port`) [config: cluster.resource_manager].
    #[arg(long, env = "RAFI_RESOURCE_MANAGER")]
    pub resource_manager: Option<String>,
    /// The cluster secret [config: cluster.secret]; prefer --secret-file.
    #[arg(long, env = "RAFI_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A file holding the cluster secret [config: cluster.secret_file].
    #[arg(long, env = "RAFI_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// This node's name [default: the host name].
    #[arg(long)]
    pub node: Option<String>,
    /// Where clients reach the allocation service [default: 127.0.0.1:7900].
    #[arg(long)]
    pub listen: Option<String>,
    /// The address announced to the resource manager and clients [default: --listen's].
    #[arg(long)]
    pub advertise: Option<String>,
    /// The fabric of this node's executors: shm, tcp or verbs [default: shm].
    #[arg(long)]
    pub fabric: Option<String>,
    /// Cores batch jobs leave free (e.g. 8-15) [default: every online core but 0].
    #[arg(long)]
    pub spare_cores: Option<String>,
    /// Memory leases may take, MiB [default: the host's].
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// GPUs leases may take, as `CUDA_VISIBLE_DEVICES` names them (e.g. 0,1), or `none`
    /// [default: what `nvidia-smi -L` lists].
    #[arg(long)]
    pub gpus: Option<String>,
    /// A function library every executor loads (repeatable).
    #[arg(long)]
    pub library: Vec<PathBuf>,
    /// Let clients ship function libraries to this node's executors.
    #[arg(long)]
    pub accept_libraries: bool,
}

pub fn config(args: &ExecutorManagerArgs, file: &ConfigFile) -> anyhow::Result<ManagerConfig> {
    let section = &file.executor_manager;
    let rm = args
        .resource_manager
        .clone()
        .or_else(|| file.cluster.resource_manager.clone())
        .unwrap_or_else(|| "127.0.0.1:7800".into());
    let secret = file.secret(args.secret.as_deref(), args.secret_file.as_deref())?;
    let mut c = ManagerConfig::new(rm, secret);
    if let Some(node) = args.node.clone().or_else(|| section.node.clone()) {
        c.node_name = node;
    }
    let listen = args
        .listen
        .clone()
        .or_else(|| section.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:7900".into());
    c.listen = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not an address like 127.0.0.1:7900"))?;
    c.advertise = args.advertise.clone().or_else(|| section.advertise.clone());
    if let Some(f) = args.fabric.clone().or_else(|| section.fabric.clone()) {
        c.fabric = f.parse::<FabricKind>().map_err(anyhow::Error::msg)?;
    }
    if let Some(list) = args
        .spare_cores
        .clone()
        .or_else(|| section.spare_cores.clone())
    {
        c.spare_cores = parse_core_list(&list)
            .with_context(|| format!("{list:?} is not a core list like 8-15 or 2,3"))?;
    }
    if let Some(m) = args.memory_mib.or(section.memory_mib) {
        c.memory_mib = m;
    }
    if let Some(list) = &args.gpus {
        c.gpus = parse_gpu_ids(list)?;
    } else if let Some(gpus) = &section.gpus {
        c.gpus = gpus.clone();
    }
    for lib in args.library.iter().chain(&section.libraries) {
        c.executor_args
            .extend(["--library".into(), lib.display().to_string()]);
    }
    if args.accept_libraries || section.accept_libraries == Some(true) {
        c.executor_args.push("--accept-libraries".into());
    }
    c.sandbox = section.sandbox.clone();
    c.memory_cgroup = section.memory_cgroup.clone();
    Ok(c)
}

/// `--gpus`: ids as `CUDA_VISIBLE_DEVICES` takes them (indices or `GPU-…` UUIDs), comma
/// separated, or `none`.
fn parse_gpu_ids(list: &str) -> anyhow::Result<Vec<String>> {
    if list.trim() == "none" {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = list.split(',').map(|id| id.trim().to_string()).collect();
    if let Some(bad) = ids
        .iter()
        .find(|id| id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        anyhow::bail!(
            "--gpus {list:?}: {bad:?} is not a GPU id (give ids like 0,1 or GPU-UUIDs, or none)"
        );
    }
    Ok(ids)
}

/// Serves until SIGTERM or SIGINT, then shuts down cleanly and returns (exit status 0):
/// every executor ends (its clients hear `executor_ended`) and a last heartbeat tells the
/// resource manager that their leases ended. Slurm's warning signal before a job's end
/// (`sbatch --signal=TERM@60`) and `scancel --signal=TERM` arrive this way
/// (scripts/slurm/, docs/slurm.md).
pub fn run(args: &ExecutorManagerArgs, file: &ConfigFile) -> anyhow::Result<()> {
    let config = config(args, file)?;
    // Before the manager starts, so that a signal that comes while it starts is not lost
    // (it is kept and handled as soon as the manager runs).
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing the signal handlers")?;
    let (node, rm, cores) = (
        config.node_name.clone(),
        config.resource_manager.clone(),
        config.spare_cores.clone(),
    );
    let manager = ExecutorManager::start(config).context("starting the executor manager")?;
    eprintln!(
        "rafi executor-manager: node {node}, spare cores {cores:?}, allocations at {}, \
         registering with the resource manager at {rm}",
        manager.advertised()
    );
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    let name = if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    let running = manager.running().len();
    eprintln!(
        "rafi executor-manager: {name}: stopping {running} executor(s) and ending their leases"
    );
    manager.shutdown();
    eprintln!("rafi executor-manager: node {node} shut down cleanly");
    Ok(())
}
