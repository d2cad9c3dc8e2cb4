//! The throughput benchmark: client threads pipeline invocations over every worker of one
//! `rafi executor` process (`depth` in flight per worker, [`Allocation::invoke_many`]'s
//! fan-out) and count completed invocations per second.
//!
//! ```text
//!  client thread k (cpu Ck), its share of the workers   rafi executor (cores W1..WN, hot)
//!  invoke_many(batch) ─ depth requests per worker ─▶ worker i: call, answer
//!       ◀──────────── responses, in completion order ─ …
//!  throughput = all threads' invocations / the longest thread's wall time;
//!  latency = each call's time from being handed to the pipeline to its result
//!  (queueing included)
//! ```
//!
//! One client thread posts and reaps every request itself (on shm it also does the work a
//! NIC would do), so it can feed only a few workers at full rate: scaling over many
//! workers needs several client threads (`client_cpus`). The executor gives each of their
//! allocations the least loaded workers, so their shares are disjoint.

use std::cell::Cell;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use super::cpus::{allowed_cpus, check_allowed, format_cpu_list, pin, CpuPair};
use super::invoke::{start_executor, ExecutorSpawn, InvokeBenchError};
use super::progress::Progress;
use super::report::{LatencyRecorder, LatencyReport};
use crate::client::{Allocation, AllocationOptions, InvokeError};
use crate::fabric::{self, Fabric, FabricConfig, FabricUser};
use crate::protocol::{SlotGeometry, HEADER_LEN};

/// The `scenario` field of this benchmark's reports.
pub const SCENARIO: &str = "throughput";

/// When a run stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this many timed invocations.
    Iters(u64),
    /// After the first batch that ends this long after the start.
    Time(Duration),
}

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct ThroughputConfig {
    pub fabric: FabricConfig,
    /// `hot` or `warm`.
    pub mode: String,
    pub function: String,
    /// Input bytes per invocation.
    pub size: usize,
    /// Invocations in flight per worker (the slots of each worker connection).
    pub depth: u32,
    /// One client thread pinned to each; the workers are shared out among them.
    pub client_cpus: Vec<usize>,
    /// One executor worker pinned to each; their number is the number of workers.
    pub executor_cores: Vec<usize>,
    pub stop: Stop,
    /// Untimed invocations first.
    pub warmup: u64,
    /// Time every invocation too (two clock reads per call).
    pub record_latency: bool,
    pub libraries: Vec<std::path::PathBuf>,
}

/// The cores this process may use, for [`default_cores`]: read it before a run pins the
/// process to one of them.
pub fn usable_cores() -> Vec<usize> {
    allowed_cpus().unwrap_or_else(|| {
        let p = CpuPair::default_for_this_process();
        vec![p.client, p.server]
    })
}

/// The cores for `clients` client threads and `workers` workers by default, out of
/// `allowed` ([`usable_cores`]): the clients on the first, the workers on the next ones.
///
/// # Errors
/// When fewer than `clients + workers` cores are allowed, with the list that is.
pub fn default_cores(
    allowed: &[usize],
    clients: usize,
    workers: usize,
) -> Result<(Vec<usize>, Vec<usize>), InvokeBenchError> {
    if allowed.len() < clients + workers {
        return Err(InvokeBenchError::Config(format!(
            "{workers} worker(s) need {} cores ({clients} for the client threads), but this \
             process may use only cpus {} (give --client-cpus and --executor-cores to share \
             cores on purpose)",
            clients + workers,
            format_cpu_list(allowed)
        )));
    }
    Ok((
        allowed[..clients].to_vec(),
        allowed[clients..clients + workers].to_vec(),
    ))
}

/// The client threads for `workers` workers when asked for `auto`: one per worker while
/// the cores last, at least one.
pub fn auto_client_threads(allowed: usize, workers: usize) -> usize {
    workers.min(allowed.saturating_sub(workers)).max(1)
}

/// How many of `workers` workers client thread `k` of `threads` drives.
fn share(workers: usize, threads: usize, k: usize) -> usize {
    workers / threads + usize::from(k < workers % threads)
}

/// The geometry for `depth` slots of `size` bytes.
pub fn geometry(size: usize, depth: u32) -> Result<SlotGeometry, InvokeBenchError> {
    let slot = (size + HEADER_LEN).next_power_of_two().max(4096);
    u32::try_from(slot)
        .ok()
        .and_then(|s| SlotGeometry::new(depth, s).ok())
        .ok_or_else(|| {
            InvokeBenchError::Config(format!(
                "depth {depth} with {size} bytes does not fit a slot geometry (depth 1 to {})",
                SlotGeometry::MAX_SLOTS
            ))
        })
}

/// Starts the executor, measures, and returns the report (with `throughput_ops`,
/// `workers`, `depth`) and the latency samples.
///
/// # Errors
/// When the settings are invalid, the executor cannot be started or reached, or an
/// invocation fails.
pub fn run(
    config: &ThroughputConfig,
    executor_args: &[&str],
) -> Result<(LatencyReport, LatencyRecorder), InvokeBenchError> {
    if config.executor_cores.is_empty() {
        return Err(InvokeBenchError::Config("no executor cores".into()));
    }
    if config.client_cpus.is_empty() || config.client_cpus.len() > config.executor_cores.len() {
        return Err(InvokeBenchError::Config(format!(
            "{} client thread(s) for {} worker(s): give between one and one per worker",
            config.client_cpus.len(),
            config.executor_cores.len()
        )));
    }
    if config.stop == Stop::Iters(0) || config.stop == Stop::Time(Duration::ZERO) {
        return Err(InvokeBenchError::Config("nothing to measure".into()));
    }
    let geometry = geometry(config.size, config.depth)?;
    for &cpu in config.executor_cores.iter().chain(&config.client_cpus) {
        check_allowed(CpuPair {
            client: cpu,
            server: cpu,
        })?;
    }
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
    let threads = config.client_cpus.len();
    let barrier = Barrier::new(threads);
    let runs: Vec<Result<ThreadRun, InvokeBenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let barrier = &barrier;
                s.spawn(move || {
                    let thread = ClientThread {
                        config,
                        geometry,
                        at: address,
                        k,
                        barrier,
                    };
                    let ran = pin(config.client_cpus[k], "client thread")
                        .map_err(InvokeBenchError::from)
                        .and_then(|()| {
                            fabric::open(&config.fabric, thread).map_err(InvokeBenchError::from)
                        });
                    ran.unwrap_or_else(|e| {
                        // It never met the others: meet them now, failed.
                        barrier.wait();
                        Err(e)
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(InvokeBenchError::Panicked)))
            .collect()
    });
    drop(executor);
    let mut recorder = LatencyRecorder::new();
    let (mut done, mut elapsed, mut kind) = (0, Duration::ZERO, "");
    for run in runs {
        let run = run?;
        recorder.merge(&run.recorder);
        done += run.done;
        elapsed = elapsed.max(run.elapsed);
        kind = run.kind;
    }
    let c = config;
    let workers = c.executor_cores.len();
    let ops = done as f64 / elapsed.as_secs_f64().max(1e-9);
    let mut report = recorder.report(SCENARIO, kind, &c.function, c.size, c.warmup);
    report.iters = done;
    let report = report
        .with("throughput_ops", ops.round())
        .with("per_worker_ops", (ops / workers as f64).round())
        .with("workers", workers)
        .with("depth", c.depth)
        .with("mode", c.mode.as_str())
        .with("latency_recorded", c.record_latency)
        .with("elapsed_ns", elapsed.as_nanos() as u64)
        .with("client_threads", threads)
        .with("client_cpu", c.client_cpus[0])
        .with("client_cpus", format_cpu_list(&c.client_cpus))
        .with("executor_cores", format_cpu_list(&c.executor_cores));
    Ok((report, recorder))
}

/// What one client thread measured.
struct ThreadRun {
    recorder: LatencyRecorder,
    /// Timed invocations completed.
    done: u64,
    /// From the common start to this thread's last batch's end.
    elapsed: Duration,
    kind: &'static str,
}

/// Client thread `k`: allocates its share of the workers, warms up, meets the others
/// (every thread exactly once, ready or failed), measures.
struct ClientThread<'a> {
    config: &'a ThroughputConfig,
    geometry: SlotGeometry,
    at: std::net::SocketAddr,
    k: usize,
    barrier: &'a Barrier,
}

/// A client thread's allocation, its function and its pipeline, warm.
type Warm<F> = (Allocation<F>, crate::client::FunctionId, Pipeline);

impl FabricUser for ClientThread<'_> {
    type Output = Result<ThreadRun, InvokeBenchError>;

    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let c = self.config;
        let all = c.executor_cores.len();
        let workers = share(all, c.client_cpus.len(), self.k);
        let kind = fabric.kind().name();
        let warm = self.connect_and_warm(fabric, workers);
        self.barrier.wait();
        let (mut a, f, mut pipeline) = warm?;
        let mut recorder = LatencyRecorder::new();
        // Iterations are shared out like the workers; the first thread shows progress.
        let (total, progress_total) = match c.stop {
            Stop::Iters(n) => {
                let mine = (n * workers as u64 / all as u64).max(1);
                (mine, mine)
            }
            Stop::Time(d) => (u64::MAX, d.as_millis() as u64),
        };
        let mut progress = (self.k == 0).then(|| Progress::new("throughput", progress_total));
        let batch = pipeline.starts.len();
        let start = Instant::now();
        loop {
            let n = (total - pipeline.done).min(batch as u64) as usize;
            pipeline.batch(&mut a, f, n, c.record_latency, &mut recorder)?;
            let elapsed = start.elapsed();
            let (at, finished) = match c.stop {
                Stop::Iters(_) => (pipeline.done, pipeline.done >= total),
                Stop::Time(d) => (elapsed.as_millis() as u64, elapsed >= d),
            };
            if let Some(p) = progress.as_mut() {
                p.set(at);
            }
            if finished {
                break;
            }
        }
        Ok(ThreadRun {
            recorder,
            done: pipeline.done,
            elapsed: start.elapsed(),
            kind,
        })
    }
}

impl ClientThread<'_> {
    /// Allocates `workers` workers and runs this thread's share of the warm-up.
    fn connect_and_warm<F: Fabric>(
        &self,
        fabric: F,
        workers: usize,
    ) -> Result<Warm<F>, InvokeBenchError> {
        let c = self.config;
        let mut a = Allocation::connect(
            fabric,
            self.at,
            &[c.function.as_str()],
            AllocationOptions {
                client_name: format!("rafi-bench-throughput-{}", self.k),
                workers,
                geometry: self.geometry,
                ..AllocationOptions::default()
            },
        )?;
        let f = a
            .function(&c.function)
            .map_err(|source| InvokeBenchError::Invoke { index: 0, source })?;
        // Big enough that draining the pipeline between batches costs little.
        let batch = (workers * c.depth as usize * 256).max(4096);
        let mut pipeline = Pipeline {
            input: (0..c.size).map(|i| i as u8).collect(),
            echo: c.function == "rafi.echo",
            starts: vec![Cell::new(0); batch],
            done: 0,
        };
        let mut discard = LatencyRecorder::new();
        let mut left = c.warmup * workers as u64 / c.executor_cores.len() as u64;
        while left > 0 {
            let n = left.min(batch as u64) as usize;
            pipeline.batch(&mut a, f, n, c.record_latency, &mut discard)?;
            left -= n as u64;
        }
        pipeline.done = 0;
        Ok((a, f, pipeline))
    }
}

/// The state of the batches of one client thread.
struct Pipeline {
    input: Vec<u8>,
    echo: bool,
    /// When each input of the current batch was handed to the pipeline, in ns since the
    /// batch's start.
    starts: Vec<Cell<u64>>,
    /// Invocations completed so far.
    done: u64,
}

impl Pipeline {
    /// Runs `n` invocations through `invoke_many`.
    fn batch<F: Fabric>(
        &mut self,
        a: &mut Allocation<F>,
        f: crate::client::FunctionId,
        n: usize,
        timed: bool,
        recorder: &mut LatencyRecorder,
    ) -> Result<(), InvokeBenchError> {
        let base = Instant::now();
        let starts = &self.starts;
        let input = &self.input[..];
        let inputs = (0..n).map(|i| {
            if timed {
                starts[i].set(base.elapsed().as_nanos() as u64);
            }
            input
        });
        let mut failed: Option<InvokeBenchError> = None;
        let echo = self.echo;
        let first = self.done;
        a.invoke_many(f, inputs, |i, result| {
            if timed {
                let now = base.elapsed().as_nanos() as u64;
                recorder.record_ns(now.saturating_sub(starts[i].get()));
            }
            let index = first + i as u64;
            match result {
                Ok(out) if echo && out.len() != input.len() => {
                    failed.get_or_insert(InvokeBenchError::WrongOutput {
                        index,
                        len: out.len(),
                    });
                }
                Ok(_) => {}
                Err(source) => {
                    failed.get_or_insert(InvokeBenchError::Invoke { index, source });
                }
            }
        })
        .map_err(|source: InvokeError| InvokeBenchError::Invoke {
            index: self.done,
            source,
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        self.done += n as u64;
        Ok(())
    }
}
