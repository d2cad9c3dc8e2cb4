//! Where a rank's remote workers come from: a lease of cores from the resource manager and
//! one executor per node of the lease, allocated through the node's executor manager.
//! The flags read the environment variables the `rafi` command uses (`rafi up` prints them).

use std::time::Duration;

use anyhow::{bail, Context};
use rafi::client::{Allocation, AllocationOptions};
use rafi::cluster::api::{Lease, LeaseRequest};
use rafi::cluster::lease::{LeaseClient, Leased};
use rafi::fabric::{Fabric, FabricConfig, FabricKind};
use rafi::protocol::SlotGeometry;

/// How a rank reaches the cluster and what it leases.
#[derive(Clone, Debug, clap::Args)]
pub struct ClusterArgs {
    /// The resource manager's address (host:port).
    #[arg(long, env = "RAFI_RESOURCE_MANAGER")]
    pub resource_manager: String,
    /// The client name the resource manager knows this application by.
    #[arg(long, env = "RAFI_CLIENT")]
    pub client: String,
    /// The client's secret.
    #[arg(long, env = "RAFI_CLIENT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The fabric of the leased nodes: shm, tcp or verbs (verbs: build with --features verbs).
    #[arg(long, default_value = "shm")]
    pub fabric: FabricKind,
    /// Cores each rank leases (one remote worker per core).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub cores: u32,
    /// How the executors' workers wait for work: hot (spin) or warm (sleep when idle).
    #[arg(long, default_value = "warm", value_parser = ["hot", "warm"])]
    pub mode: String,
    /// How long the lease lasts, in seconds.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub lease_secs: u64,
    /// How long one invocation may take, in milliseconds.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// How long a waiting invocation spins before it sleeps on the completion channel, in
    /// microseconds (local threads share the cores with it).
    #[arg(long, default_value_t = 50)]
    pub spin_us: u64,
}

impl ClusterArgs {
    pub fn fabric_config(&self) -> FabricConfig {
        FabricConfig::new(self.fabric)
    }

    /// Allocation options for `slots` in flight per worker of `slot_size` bytes each.
    ///
    /// # Errors
    /// When the slot geometry is invalid (not a power of two, out of range).
    pub fn allocation_options(
        &self,
        name: &str,
        slots: u32,
        slot_size: u32,
    ) -> anyhow::Result<AllocationOptions> {
        Ok(AllocationOptions {
            client_name: name.to_string(),
            geometry: SlotGeometry::new(slots, slot_size)
                .with_context(|| format!("{slots} slots of {slot_size} B"))?,
            timeout: Duration::from_millis(self.timeout_ms),
            spin: Some(Duration::from_micros(self.spin_us)),
            ..AllocationOptions::default()
        })
    }
}

/// A rank's lease and its executors. Dropping it ends the executors, then releases the
/// lease (errors on release are printed: nothing else can be done about them then).
pub struct RemoteWorkers<F: Fabric> {
    /// One allocation per node of the lease, each with one worker per leased core there.
    pub nodes: Vec<Leased<F>>,
    lease: Lease,
    client: LeaseClient,
}

impl<F: Fabric> RemoteWorkers<F> {
    /// Leases `args.cores` cores and allocates every node's executor for `functions`.
    ///
    /// # Errors
    /// When the resource manager cannot be reached or refuses (wrong credentials, no room),
    /// or an executor cannot be started or allocated.
    pub fn acquire(
        fabric: &F,
        args: &ClusterArgs,
        functions: &[&str],
        options: &AllocationOptions,
    ) -> anyhow::Result<Self> {
        let client = LeaseClient::new(args.resource_manager.as_str(), &args.client, &args.secret);
        let lease = client
            .lease(&LeaseRequest {
                cores: args.cores,
                memory_mib: 0,
                gpus: 0,
                duration_ms: args.lease_secs * 1000,
                fabric: Some(args.fabric),
            })
            .with_context(|| {
                format!(
                    "leasing {} {} core(s) from the resource manager at {} as client {:?}",
                    args.cores, args.fabric, args.resource_manager, args.client
                )
            })?;
        // From here on the lease is released on every path (Drop).
        let mut workers = RemoteWorkers {
            nodes: Vec::new(),
            lease,
            client,
        };
        if workers.lease.parts.is_empty() {
            bail!("lease {} has no part", workers.lease.lease);
        }
        for part in workers.lease.parts.clone() {
            let leased = Leased::allocate(
                fabric.clone(),
                &part,
                functions,
                Some(&args.mode),
                options.clone(),
            )
            .with_context(|| {
                format!(
                    "allocating an executor on node {} (cores {:?}) of lease {}",
                    part.node_name, part.cores, workers.lease.lease
                )
            })?;
            workers.nodes.push(leased);
        }
        Ok(workers)
    }

    pub fn lease_id(&self) -> u64 {
        self.lease.lease
    }

    /// Remote workers in all (leased cores).
    pub fn worker_count(&self) -> usize {
        self.nodes.iter().map(|n| n.allocation.workers()).sum()
    }

    /// The node allocations, for invoking.
    pub fn allocations(&mut self) -> Vec<&mut Allocation<F>> {
        self.nodes.iter_mut().map(|n| &mut n.allocation).collect()
    }

    /// The slowest node's time from the allocate request to its allocation being ready.
    pub fn ready_time(&self) -> Duration {
        self.nodes.iter().map(|n| n.ready).max().unwrap_or_default()
    }
}

impl<F: Fabric> Drop for RemoteWorkers<F> {
    fn drop(&mut self) {
        // Executors first (closing their manager connections ends them), then the lease.
        self.nodes.clear();
        if let Err(e) = self.client.release(self.lease.lease) {
            eprintln!("releasing lease {}: {e}", self.lease.lease);
        }
    }
}
