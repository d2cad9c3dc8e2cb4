//! The cold-start benchmark: from a lease request to the first result, on a cluster of this
//! host (`rafi::cluster::local`), timed in phases.
//!
//! ```text
//!  t0 ─ lease (HTTP to the resource manager) ─ t1 ─ allocate at the node's manager:
//!       spawn `rafi executor` pinned to the leased core, load its functions, listen
//!       (the manager's spawn time) ─ executor handshake, queue pairs connected ─ t2 ─
//!       first invocation of rafi.echo (64 B) ─ t3;  then release, and wait for the
//!       executor to be gone before the next round
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::cpus::{check_allowed, pin, CpuError, CpuPair};
use super::report::{LatencyRecorder, LatencyReport};
use crate::client::AllocationOptions;
use crate::cluster::api::LeaseRequest;
use crate::cluster::lease::{Leased, LeasedAllocateError};
use crate::cluster::local::{LocalCluster, LocalClusterConfig, LocalClusterError};
use crate::fabric::{self, Fabric, FabricConfig, FabricError, FabricKind, FabricUser};

/// The `scenario` field of this benchmark's reports.
pub const SCENARIO: &str = "cold";

#[derive(Clone, Debug)]
pub struct ColdConfig {
    pub fabric: FabricKind,
    pub iters: u64,
    /// Function libraries the executors load (part of what a cold start pays).
    pub libraries: Vec<PathBuf>,
    /// The executor's polling mode.
    pub mode: String,
    /// The client's core and the node's one spare core.
    pub cpus: CpuPair,
}

#[derive(Debug, thiserror::Error)]
pub enum ColdError {
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error("starting the cluster")]
    Cluster(#[from] LocalClusterError),
    #[error("opening the fabric")]
    Fabric(#[from] FabricError),
    #[error("round {round}: leasing")]
    Lease {
        round: u64,
        source: crate::cluster::http::CallError,
    },
    #[error("round {round}: allocating")]
    Allocate {
        round: u64,
        source: LeasedAllocateError,
    },
    #[error("round {round}: the first invocation")]
    Invoke {
        round: u64,
        source: crate::client::InvokeError,
    },
    #[error("round {round}: the executor of the released lease is still running after 10 s")]
    NotReclaimed { round: u64 },
}

/// Runs the benchmark.
///
/// # Errors
/// [`ColdError`].
pub fn run(config: &ColdConfig) -> Result<LatencyReport, ColdError> {
    check_allowed(config.cpus)?;
    let mut cluster_config = LocalClusterConfig::new(config.fabric, vec![vec![config.cpus.server]]);
    cluster_config.libraries = config.libraries.clone();
    let cluster = LocalCluster::start(cluster_config)?;
    pin(config.cpus.client, "cold-start client")?;
    fabric::open(
        &FabricConfig::new(config.fabric),
        Rounds {
            config,
            cluster: &cluster,
        },
    )?
}

struct Rounds<'a> {
    config: &'a ColdConfig,
    cluster: &'a LocalCluster,
}

impl FabricUser for Rounds<'_> {
    type Output = Result<LatencyReport, ColdError>;

    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let c = self.config;
        let leases = &self.cluster.client;
        let (mut total, mut lease_t, mut spawn_t, mut connect_t, mut first_t) = (
            LatencyRecorder::new(),
            LatencyRecorder::new(),
            LatencyRecorder::new(),
            LatencyRecorder::new(),
            LatencyRecorder::new(),
        );
        let input = [7u8; 64];
        for round in 0..c.iters {
            let t0 = Instant::now();
            let lease = leases
                .lease(&LeaseRequest {
                    cores: 1,
                    memory_mib: 0,
                    gpus: 0,
                    duration_ms: 60_000,
                    fabric: Some(c.fabric),
                })
                .map_err(|source| ColdError::Lease { round, source })?;
            let t1 = Instant::now();
            let part = &lease.parts[0];
            let mut leased = Leased::allocate(
                fabric.clone(),
                part,
                &["rafi.echo"],
                Some(&c.mode),
                AllocationOptions {
                    client_name: "rafi-bench-cold".into(),
                    ..AllocationOptions::default()
                },
            )
            .map_err(|source| ColdError::Allocate { round, source })?;
            let t2 = Instant::now();
            let echo = leased
                .allocation
                .function("rafi.echo")
                .map_err(|source| ColdError::Invoke { round, source })?;
            let mut out = [0u8; 64];
            leased
                .allocation
                .invoke_into(echo, &input, &mut out)
                .map_err(|source| ColdError::Invoke { round, source })?;
            let t3 = Instant::now();
            total.record(t3 - t0);
            lease_t.record(t1 - t0);
            spawn_t.record(leased.spawn);
            connect_t.record((t2 - t1).saturating_sub(leased.spawn));
            first_t.record(t3 - t2);
            drop(leased);
            let _ = leases.release(lease.lease);
            // The next round needs the core back: wait until the executor is gone.
            let deadline = Instant::now() + Duration::from_secs(10);
            while self
                .cluster
                .nodes()
                .any(|(_, _, m)| !m.running().is_empty())
            {
                if Instant::now() > deadline {
                    return Err(ColdError::NotReclaimed { round });
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let p50 = |r: &LatencyRecorder| r.histogram().value_at_quantile(0.5);
        Ok(total
            .report(SCENARIO, c.fabric.name(), "lease-to-first-result", 64, 0)
            .with("mode", c.mode.as_str())
            .with("lease_p50_ns", p50(&lease_t))
            .with("spawn_p50_ns", p50(&spawn_t))
            .with("connect_p50_ns", p50(&connect_t))
            .with("first_invoke_p50_ns", p50(&first_t))
            .with("client_cpu", c.cpus.client)
            .with("executor_cpu", c.cpus.server))
    }
}
