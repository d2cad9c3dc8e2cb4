//! `rafi up`: a whole cluster on this host — a resource manager and executor managers on
//! the shm fabric (or tcp) — then, with `--demo`, a client that leases cores, allocates an
//! executor and invokes real functions, printing what happened.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use rafi::bench::cpus::allowed_cpus;
use rafi::client::AllocationOptions;
use rafi::cluster::api::{LeaseRequest, NodeStatus, Usage};
use rafi::cluster::http::call;
use rafi::cluster::lease::Leased;
use rafi::cluster::local::{LocalCluster, LocalClusterConfig};
use rafi::fabric::{self, Fabric, FabricConfig, FabricKind, FabricUser};
use rafi::function::FunctionLibrary;
use rafi::protocol::SlotGeometry;

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Nodes (executor managers) to start; the spare cores are split among them.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// The fabric: shm or tcp.
    #[arg(long, default_value = "shm", value_parser = parse_fabric)]
    pub fabric: FabricKind,
    /// Spare cores to lease [default: every core this process may use but the first,
    /// which stays with the client; all of them on a one-core machine].
    #[arg(long)]
    pub spare_cores: Option<String>,
    /// A function library every executor loads (repeatable).
    #[arg(long)]
    pub library: Vec<PathBuf>,
    /// The resource manager's database [default: in memory].
    #[arg(long)]
    pub database: Option<PathBuf>,
    /// Run the demo client, print what happened, and stop (else serve until killed).
    #[arg(long)]
    pub demo: bool,
    /// The demo's worker polling: hot or warm.
    #[arg(long, default_value = "hot")]
    pub mode: String,
}

fn parse_fabric(s: &str) -> Result<FabricKind, String> {
    match s.parse()? {
        FabricKind::Verbs => Err("rafi up runs on shm or tcp (one host)".into()),
        kind => Ok(kind),
    }
}

pub fn run(args: &UpArgs) -> anyhow::Result<()> {
    let spare = match &args.spare_cores {
        Some(list) => rafi::cluster::manager::parse_core_list(list)
            .with_context(|| format!("{list:?} is not a core list like 1-3"))?,
        None => {
            let cpus = allowed_cpus().unwrap_or_else(|| vec![0]);
            if cpus.len() > 1 {
                cpus[1..].to_vec()
            } else {
                cpus
            }
        }
    };
    if args.nodes == 0 || args.nodes > spare.len() {
        bail!(
            "{} node(s) cannot share {} spare core(s) {spare:?} (each node needs one at least)",
            args.nodes,
            spare.len()
        );
    }
    let nodes: Vec<Vec<usize>> = (0..args.nodes)
        .map(|i| spare.iter().copied().skip(i).step_by(args.nodes).collect())
        .collect();
    // Load the libraries here first: a bad one is reported before anything starts, and
    // the demo learns which functions it has.
    let mut functions = Vec::new();
    for path in &args.library {
        let lib = FunctionLibrary::open(path)
            .with_context(|| format!("loading function library {}", path.display()))?;
        functions.extend(lib.functions().iter().map(|f| f.name().to_string()));
    }
    let mut config = LocalClusterConfig::new(args.fabric, nodes);
    config.libraries = args.library.clone();
    if let Some(db) = &args.database {
        config.database = db.clone();
    }
    let started = Instant::now();
    let cluster = LocalCluster::start(config).context("starting the local cluster")?;
    println!(
        "rafi up: a {} cluster on this host in {:.0} ms",
        args.fabric,
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("  resource manager  http://{}", cluster.resource_manager());
    for (name, cores, manager) in cluster.nodes() {
        println!(
            "  node {name:<8}  executor manager {}, spare cores {cores:?}",
            manager.advertised()
        );
    }
    let credential = &cluster.client.credential;
    let (client, secret) = credential.split_once(':').unwrap_or((credential, ""));
    println!(
        "  clients           RAFI_RESOURCE_MANAGER={} RAFI_CLIENT={client} RAFI_CLIENT_SECRET={secret}",
        cluster.resource_manager()
    );
    if !functions.is_empty() {
        println!(
            "  functions         rafi.noop rafi.echo {}",
            functions.join(" ")
        );
    }
    if !args.demo {
        println!("serving until killed (Ctrl-C)");
        loop {
            std::thread::park();
        }
    }
    // The demo client runs on the core the cluster does not lease (the first).
    if let Some(&cpu) = allowed_cpus().unwrap_or_default().first() {
        if !spare.contains(&cpu) {
            if let Err(e) = rafi::bench::cpus::pin(cpu, "demo client") {
                eprintln!("rafi up: the demo client is not pinned: {e}");
            }
        }
    }
    let examples = ["echo", "blackscholes", "matmul"]
        .iter()
        .all(|f| functions.iter().any(|g| g == f));
    let kind = args.fabric;
    fabric::open(
        &FabricConfig::new(kind),
        Demo {
            cluster: &cluster,
            examples,
            mode: &args.mode,
        },
    )?
}

struct Demo<'a> {
    cluster: &'a LocalCluster,
    examples: bool,
    mode: &'a str,
}

impl FabricUser for Demo<'_> {
    type Output = anyhow::Result<()>;

    fn run<F: Fabric>(self, fabric: F) -> anyhow::Result<()> {
        let leases = &self.cluster.client;
        let cores = self.cluster.nodes().next().map_or(1, |(_, c, _)| c.len()) as u32;
        println!("\ndemo: lease {cores} core(s) for a minute");
        let t0 = Instant::now();
        let lease = leases
            .lease(&LeaseRequest {
                cores,
                memory_mib: 256,
                gpus: 0,
                duration_ms: 60_000,
                fabric: Some(fabric.kind()),
            })
            .context("leasing")?;
        let part = lease.parts.first().context("the lease has no part")?;
        println!(
            "  lease {} granted in {:.1} ms: node {}, cores {:?}",
            lease.lease,
            t0.elapsed().as_secs_f64() * 1e3,
            part.node_name,
            part.cores
        );
        let functions: Vec<&str> = if self.examples {
            vec!["echo", "blackscholes", "matmul", "rafi.noop"]
        } else {
            vec!["rafi.echo", "rafi.noop"]
        };
        let mut leased = Leased::allocate(
            fabric,
            part,
            &functions,
            Some(self.mode),
            AllocationOptions {
                client_name: "rafi-up-demo".into(),
                geometry: SlotGeometry::new(8, 1 << 20).context("slot geometry")?,
                ..AllocationOptions::default()
            },
        )
        .context("allocating an executor on the leased cores")?;
        println!(
            "  executor started by the node's manager in {:.1} ms, allocation ready in {:.1} ms \
             ({} worker(s), {} polling)",
            leased.spawn.as_secs_f64() * 1e3,
            leased.ready.as_secs_f64() * 1e3,
            leased.allocation.workers(),
            self.mode
        );
        let calls = super::demo::run(&mut leased.allocation, self.examples)?;
        drop(leased);
        let status = leases.release(lease.lease).context("releasing the lease")?;
        println!("  lease {} released ({:?})", lease.lease, status.state);
        // What the resource manager recorded: the executor's last counts reach it with the
        // node's next heartbeat after the executor ends.
        let credential = &leases.credential;
        let fetch = || -> anyhow::Result<Vec<Usage>> {
            Ok(call::<(), _>(
                &leases.resource_manager,
                "GET",
                "/v1/usage",
                credential,
                None,
            )?)
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut usage = fetch()?;
        while Instant::now() < deadline
            && !usage
                .iter()
                .any(|u| u.lease == lease.lease && u.invocations >= calls)
        {
            std::thread::sleep(std::time::Duration::from_millis(100));
            usage = fetch()?;
        }
        for u in usage.iter().filter(|u| u.lease == lease.lease) {
            println!(
                "  accounting: lease {} of {}: {:.3} core-seconds, {} invocations, busy {} us, hot {} us",
                u.lease,
                u.client,
                u.core_seconds,
                u.invocations,
                u.busy_ns / 1000,
                u.hot_ns / 1000
            );
        }
        let nodes: Vec<NodeStatus> = call::<(), _>(
            &leases.resource_manager,
            "GET",
            "/v1/nodes",
            credential,
            None,
        )?;
        for n in &nodes {
            // The release reaches the node with its next heartbeat.
            println!(
                "  node {}: {:?}, spare cores {:?}, leased {:?}",
                n.name, n.state, n.spare_cores, n.leased_cores
            );
        }
        Ok(())
    }
}
