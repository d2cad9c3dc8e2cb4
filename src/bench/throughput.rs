//! The throughput benchmark: one client pipelines invocations over every worker of one
//! `rafi executor` process (`depth` in flight per worker, [`Allocation::invoke_many`]'s
//! fan-out) and counts completed invocations per second.
//!
//! ```text
//!  client (cpu C)                                 rafi executor (cores W1..WN, hot)
//!  invoke_many(batch) ─ depth requests per worker ─▶ worker i: call, answer
//!       ◀──────────── responses, in completion order ─ …
//!  throughput = invocations / wall time of the batches; latency = each call's
//!  time from being handed to the pipeline to its result (queueing included)
//! ```

use std::cell::Cell;
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
    pub client_cpu: usize,
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

/// The cores for `workers` workers by default, out of `allowed` ([`usable_cores`]): the
/// client on the first, the workers on the next ones.
///
/// # Errors
/// When fewer than `workers + 1` cores are allowed, with the list that is.
pub fn default_cores(
    allowed: &[usize],
    workers: usize,
) -> Result<(usize, Vec<usize>), InvokeBenchError> {
    if allowed.len() < workers + 1 {
        return Err(InvokeBenchError::Config(format!(
            "{workers} worker(s) need {} cores (one for the client), but this process may use \
             only cpus {} (give --client-cpu and --executor-cores to share cores on purpose)",
            workers + 1,
            format_cpu_list(allowed)
        )));
    }
    Ok((allowed[0], allowed[1..=workers].to_vec()))
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
    if config.stop == Stop::Iters(0) || config.stop == Stop::Time(Duration::ZERO) {
        return Err(InvokeBenchError::Config("nothing to measure".into()));
    }
    let geometry = geometry(config.size, config.depth)?;
    for &cpu in config.executor_cores.iter().chain([&config.client_cpu]) {
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
    pin(config.client_cpu, "measuring process")?;
    let result = fabric::open(
        &config.fabric,
        Measure {
            config,
            geometry,
            at: address,
        },
    )??;
    drop(executor);
    Ok(result)
}

struct Measure<'a> {
    config: &'a ThroughputConfig,
    geometry: SlotGeometry,
    at: std::net::SocketAddr,
}

impl FabricUser for Measure<'_> {
    type Output = Result<(LatencyReport, LatencyRecorder), InvokeBenchError>;

    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let c = self.config;
        let kind = fabric.kind();
        let workers = c.executor_cores.len();
        let mut a = Allocation::connect(
            fabric,
            self.at,
            &[c.function.as_str()],
            AllocationOptions {
                client_name: "rafi-bench-throughput".into(),
                workers,
                geometry: self.geometry,
                ..AllocationOptions::default()
            },
        )?;
        let f = a
            .function(&c.function)
            .map_err(|source| InvokeBenchError::Invoke { index: 0, source })?;
        let input: Vec<u8> = (0..c.size).map(|i| i as u8).collect();
        // Big enough that draining the pipeline between batches costs little.
        let batch = (workers * c.depth as usize * 256).max(4096);
        let mut pipeline = Pipeline {
            input: &input,
            echo: c.function == "rafi.echo",
            starts: vec![Cell::new(0); batch],
            done: 0,
        };
        let mut discard = LatencyRecorder::new();
        let mut left = c.warmup;
        while left > 0 {
            let n = left.min(batch as u64) as usize;
            pipeline.batch(&mut a, f, n, c.record_latency, &mut discard)?;
            left -= n as u64;
        }
        let mut recorder = LatencyRecorder::new();
        let (total, mut progress) = match c.stop {
            Stop::Iters(n) => (n, Progress::new("throughput", n)),
            Stop::Time(d) => (u64::MAX, Progress::new("throughput", d.as_millis() as u64)),
        };
        pipeline.done = 0;
        let start = Instant::now();
        loop {
            let n = (total - pipeline.done).min(batch as u64) as usize;
            pipeline.batch(&mut a, f, n, c.record_latency, &mut recorder)?;
            let elapsed = start.elapsed();
            match c.stop {
                Stop::Iters(n) => {
                    progress.set(pipeline.done);
                    if pipeline.done >= n {
                        break;
                    }
                }
                Stop::Time(d) => {
                    progress.set(elapsed.as_millis() as u64);
                    if elapsed >= d {
                        break;
                    }
                }
            }
        }
        let elapsed = start.elapsed();
        let ops = pipeline.done as f64 / elapsed.as_secs_f64();
        let mut report = recorder.report(SCENARIO, kind.name(), &c.function, c.size, c.warmup);
        report.iters = pipeline.done;
        let report = report
            .with("throughput_ops", ops.round())
            .with("per_worker_ops", (ops / workers as f64).round())
            .with("workers", workers)
            .with("depth", c.depth)
            .with("mode", c.mode.as_str())
            .with("latency_recorded", c.record_latency)
            .with("elapsed_ns", elapsed.as_nanos() as u64)
            .with("client_cpu", c.client_cpu)
            .with("executor_cores", format_cpu_list(&c.executor_cores));
        Ok((report, recorder))
    }
}

/// The state of the batches of one run.
struct Pipeline<'i> {
    input: &'i [u8],
    echo: bool,
    /// When each input of the current batch was handed to the pipeline, in ns since the
    /// batch's start.
    starts: Vec<Cell<u64>>,
    /// Invocations completed so far.
    done: u64,
}

impl Pipeline<'_> {
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
        let input = self.input;
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
