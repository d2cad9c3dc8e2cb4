//! Several clients against one executor: `n` client threads in this process, each with its
//! own allocation (its own control connection, queue pair and slots), all invoking in a
//! closed loop (one call in flight each) at the same time.
//!
//! ```text
//!  client threads 1..n (client cores, round robin)      rafi executor (executor cores)
//!  connect ─ barrier ─┬ invoke_view ─▶ ─────────────────▶ worker: each polls the links
//!                     └ ◀─ result ── record latency        of the clients it serves
//! ```
//!
//! The executor assigns single-worker allocations round robin over its workers: with one
//! executor core (the default) every client shares that one worker; with as many executor
//! cores as clients each has its own.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use super::cpus::{check_allowed, format_cpu_list, pin, CpuPair};
use super::invoke::{geometry_for, start_executor, ExecutorSpawn, InvokeBenchError};
use super::progress::Progress;
use super::report::{LatencyRecorder, LatencyReport};
use crate::client::{Allocation, AllocationOptions};
use crate::fabric::{self, Fabric, FabricConfig, FabricUser};

/// The `scenario` field of this benchmark's reports.
pub const SCENARIO: &str = "clients";

/// Settings of a run over several client counts.
#[derive(Clone, Debug)]
pub struct ClientsConfig {
    pub fabric: FabricConfig,
    /// `hot` or `warm`.
    pub mode: String,
    pub function: String,
    pub size: usize,
    /// Timed invocations per client.
    pub iters: u64,
    /// Untimed invocations per client first.
    pub warmup: u64,
    /// Client threads are pinned to these, round robin.
    pub client_cores: Vec<usize>,
    /// One executor worker pinned to each.
    pub executor_cores: Vec<usize>,
    /// How long a client spins before it sleeps on its completion channel; `None`: spin
    /// while there are at least as many client cores as clients, else sleep at once (a
    /// spinning client would keep the others on its core off it for a scheduler slice).
    pub spin: Option<Duration>,
    pub libraries: Vec<std::path::PathBuf>,
}

/// Starts one executor, then for each count in `counts` runs that many clients at once;
/// one report (and the merged samples) per count. A report's latency fields cover every
/// client's calls; `throughput_ops` is all calls over the wall time from the common start
/// to the last client's end.
///
/// # Errors
/// When the settings are invalid, the executor cannot be started or a client fails.
pub fn run(
    config: &ClientsConfig,
    counts: &[usize],
    executor_args: &[&str],
) -> Result<Vec<(LatencyReport, LatencyRecorder)>, InvokeBenchError> {
    if config.client_cores.is_empty() || config.executor_cores.is_empty() {
        return Err(InvokeBenchError::Config(
            "client and executor cores must not be empty".into(),
        ));
    }
    if counts.contains(&0) || counts.is_empty() {
        return Err(InvokeBenchError::Config(
            "client counts must be at least 1".into(),
        ));
    }
    for &cpu in config.client_cores.iter().chain(&config.executor_cores) {
        check_allowed(CpuPair {
            client: cpu,
            server: cpu,
        })?;
    }
    let geometry = geometry_for(config.size)?;
    let (executor, address) = start_executor(
        &ExecutorSpawn {
            fabric: &config.fabric,
            cores: &config.executor_cores,
            mode: &config.mode,
            idle: Duration::ZERO,
            geometry,
            libraries: &config.libraries,
        },
        executor_args,
    )?;
    let mut progress = Progress::new("clients", counts.len() as u64);
    let mut out = Vec::with_capacity(counts.len());
    for (i, &n) in counts.iter().enumerate() {
        progress.set(i as u64);
        out.push(run_count(config, n, address)?);
    }
    drop(executor);
    Ok(out)
}

/// What one client thread measured.
struct ClientRun {
    recorder: LatencyRecorder,
    /// From the common start to this client's last result.
    elapsed: Duration,
}

fn run_count(
    config: &ClientsConfig,
    n: usize,
    at: std::net::SocketAddr,
) -> Result<(LatencyReport, LatencyRecorder), InvokeBenchError> {
    let spin = config.spin.or(if n > config.client_cores.len() {
        Some(Duration::ZERO)
    } else {
        None
    });
    let barrier = Barrier::new(n);
    let runs: Vec<Result<ClientRun, InvokeBenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let barrier = &barrier;
                let cpu = config.client_cores[i % config.client_cores.len()];
                s.spawn(move || {
                    let client = Client {
                        config,
                        at,
                        index: i,
                        spin,
                        barrier,
                    };
                    if let Err(e) = pin(cpu, "client thread") {
                        barrier.wait();
                        return Err(e.into());
                    }
                    match fabric::open(&config.fabric, client) {
                        Ok(result) => result,
                        // The client never ran, so it has not met the others yet.
                        Err(e) => {
                            barrier.wait();
                            Err(e.into())
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(InvokeBenchError::Panicked)))
            .collect()
    });
    let mut recorder = LatencyRecorder::new();
    let mut wall = Duration::ZERO;
    for run in runs {
        let run = run?;
        recorder.merge(&run.recorder);
        wall = wall.max(run.elapsed);
    }
    // Warm-up calls run in the same wall time, so they count too.
    let calls = recorder.len() + n as u64 * config.warmup;
    let ops = calls as f64 / wall.as_secs_f64().max(1e-9);
    let report = recorder
        .report(
            SCENARIO,
            config.fabric.kind.name(),
            &config.function,
            config.size,
            config.warmup,
        )
        .with("clients", n)
        .with("throughput_ops", ops.round())
        .with("mode", config.mode.as_str())
        .with("client_cores", format_cpu_list(&config.client_cores))
        .with("executor_cores", format_cpu_list(&config.executor_cores))
        .with("workers", config.executor_cores.len())
        .with("client_wait", if spin.is_some() { "sleep" } else { "spin" });
    Ok((report, recorder))
}

/// One client thread: connect, meet the others, invoke in a closed loop.
struct Client<'a> {
    config: &'a ClientsConfig,
    at: std::net::SocketAddr,
    index: usize,
    spin: Option<Duration>,
    barrier: &'a Barrier,
}

impl FabricUser for Client<'_> {
    type Output = Result<ClientRun, InvokeBenchError>;

    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let c = self.config;
        let connected = Allocation::connect(
            fabric,
            self.at,
            &[c.function.as_str()],
            AllocationOptions {
                client_name: format!("rafi-bench-clients-{}", self.index),
                geometry: geometry_for(c.size)?,
                spin: self.spin,
                ..AllocationOptions::default()
            },
        );
        // Every client meets the others exactly once, failed or not.
        self.barrier.wait();
        let mut a = connected?;
        let f = a
            .function(&c.function)
            .map_err(|source| InvokeBenchError::Invoke { index: 0, source })?;
        let input: Vec<u8> = (0..c.size).map(|i| i as u8).collect();
        let echo = c.function == "rafi.echo";
        let mut recorder = LatencyRecorder::new();
        let start = Instant::now();
        for index in 0..c.warmup + c.iters {
            let t0 = Instant::now();
            let view = a
                .invoke_view(f, &input)
                .map_err(|source| InvokeBenchError::Invoke { index, source })?;
            let elapsed = t0.elapsed();
            if echo && view.len() != input.len() {
                return Err(InvokeBenchError::WrongOutput {
                    index,
                    len: view.len(),
                });
            }
            drop(view);
            if index >= c.warmup {
                recorder.record(elapsed);
            }
        }
        Ok(ClientRun {
            recorder,
            elapsed: start.elapsed(),
        })
    }
}
