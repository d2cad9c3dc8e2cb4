//! Remote memory: latency and bandwidth of `RemoteMemory::put` / `get` against the raw
//! fabric's WRITE / READ of the same sizes, measured in the same run, generic over
//! [`Fabric`].
//!
//! ```text
//!  this process
//!  ├─ executor (in process: its session thread registers the leased region; nobody on
//!  │  the target side takes part in a one-sided operation, on any backend)
//!  ├─ RemoteMemory::connect ── memory-only allocation ──▶ region of max(size) bytes
//!  │    put:  check, copy into staging, WRITE, wait        (rafi, timed per call)
//!  │    get:  check, READ into staging, wait, copy out
//!  │    put_with / get_with: the same without the copy (data built / read in place)
//!  └─ raw: two connected queue pairs of one protection domain, a source and a target
//!       region; post WRITE / READ of `size` bytes straight from / into registered
//!       memory, poll for its completion               (the floor, timed per operation)
//! ```
//!
//! One sample is one operation from post (or call) to its completion, timed with
//! [`Instant`]. The rafi numbers include what the client API adds: the rights and bounds
//! checks, the copy through the staging region, and chunking beyond half the staging
//! region (two chunks in flight). Bandwidth is `size / mean`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::report::{LatencyRecorder, LatencyReport};
use crate::client::{AllocateError, MemoryError, MemoryOptions, RemoteMemory};
use crate::executor::{Catalog, Executor, ExecutorConfig, ExecutorError, Outcome};
use crate::fabric::{
    self, Access, CompletionQueue, Fabric, FabricConfig, FabricError, FabricUser, MemoryRegion,
    PostError, ProtectionDomain, QpConfig, QueuePair, SendOp, SendWr, WcStatus, WorkCompletion,
};

/// The `scenario` field of this benchmark's reports.
pub const SCENARIO: &str = "memory";
/// Most bytes moved per operation kind and size; fewer iterations for large sizes.
const BYTES_PER_POINT: u64 = 2 << 30;
/// Fewest timed operations per point.
const MIN_ITERS: u64 = 20;

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct MemoryBenchConfig {
    pub fabric: FabricConfig,
    /// Transfer sizes in bytes.
    pub sizes: Vec<usize>,
    /// Timed operations per point at most (fewer for large sizes, at least 20).
    pub iters: u64,
    /// Untimed operations first, per point (at most the point's iterations).
    pub warmup: u64,
    /// Which operations: `put` (against raw WRITE), `get` (against raw READ).
    pub ops: Vec<MemoryOp>,
    /// The client's staging region (see [`MemoryOptions::staging`]).
    pub staging: usize,
}

/// A measured operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryOp {
    Put,
    Get,
    /// `put_with` with a fill that writes nothing: the transfer of data produced in place.
    PutInPlace,
    /// `get_with` with a reader that looks at one byte: data consumed in place.
    GetInPlace,
}

/// The benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryBenchError {
    #[error("invalid settings: {0}")]
    Config(String),
    #[error(transparent)]
    Fabric(#[from] FabricError),
    #[error("starting the executor: {0}")]
    Executor(#[from] ExecutorError),
    #[error("leasing memory: {0}")]
    Allocate(#[from] AllocateError),
    #[error("a memory operation failed: {0}")]
    Memory(#[from] MemoryError),
    #[error("posting a raw operation: {0}")]
    Post(#[from] PostError),
    #[error("a raw operation completed with: {0}")]
    Completion(WcStatus),
    #[error("no completion within {0:?}")]
    Stalled(Duration),
    #[error("the data read back differs from the data written ({0})")]
    Corrupt(&'static str),
}

/// Runs the benchmark; returns one report per (operation, size, side): `put` and
/// `raw_write`, `get` and `raw_read`, each with `bandwidth_mib_s` and, for rafi's rows,
/// `p50_vs_raw`.
///
/// # Errors
/// [`MemoryBenchError`].
pub fn run(config: &MemoryBenchConfig) -> Result<Vec<LatencyReport>, MemoryBenchError> {
    if config.sizes.is_empty() || config.sizes.contains(&0) {
        return Err(MemoryBenchError::Config(
            "sizes must be given and at least 1 B".into(),
        ));
    }
    if config.sizes.iter().any(|&s| s > 1 << 30) {
        return Err(MemoryBenchError::Config("sizes are at most 1 GiB".into()));
    }
    fabric::open(&config.fabric, Measure { config })?
}

struct Measure<'a> {
    config: &'a MemoryBenchConfig,
}

/// The executor serves memory only.
struct NoFunctions;

impl Catalog for NoFunctions {
    fn resolve(&self, _: &str) -> Option<u32> {
        None
    }
    fn call(&self, _: u32, _: &[u8], _: &mut [u8]) -> Outcome {
        Outcome::Failed(-1)
    }
}

impl FabricUser for Measure<'_> {
    type Output = Result<Vec<LatencyReport>, MemoryBenchError>;

    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let c = self.config;
        let max = c.sizes.iter().copied().max().unwrap_or(64);
        let mut executor_config = ExecutorConfig::new(1);
        executor_config.max_memory = max as u64;
        let executor = Executor::start(
            fabric.clone(),
            "127.0.0.1:0".parse().expect("an address"),
            executor_config,
            Arc::new(NoFunctions),
        )?;
        let mut options = MemoryOptions::new(max as u64);
        options.client_name = "rafi-bench-memory".into();
        options.staging = c.staging;
        let mut memory = RemoteMemory::connect(fabric.clone(), executor.address(), options)?;
        let mut raw = RawPair::create(&fabric, max)?;
        let fabric_name = fabric.kind().name();
        let source: Vec<u8> = (0..max).map(|i| (i * 7 + 3) as u8).collect();
        let mut sink = vec![0u8; max];
        raw.source.write(0, &source);

        let mut reports = Vec::new();
        for &op in &c.ops {
            for &size in &c.sizes {
                let iters = (BYTES_PER_POINT / size as u64).clamp(MIN_ITERS, c.iters.max(1));
                let warmup = c.warmup.min(iters);
                let (rafi_op, raw_op) = match op {
                    MemoryOp::Put => ("put", "raw_write"),
                    MemoryOp::Get => ("get", "raw_read"),
                    MemoryOp::PutInPlace => ("put_with", "raw_write"),
                    MemoryOp::GetInPlace => ("get_with", "raw_read"),
                };
                let in_place = matches!(op, MemoryOp::PutInPlace | MemoryOp::GetInPlace);
                if in_place && size > memory.max_in_place() {
                    continue; // beyond one staging chunk: put/get only
                }
                // Raw first, then rafi, then check what arrived.
                let mut rec = LatencyRecorder::new();
                for i in 0..warmup + iters {
                    let t0 = Instant::now();
                    raw.transfer(op, size)?;
                    if i >= warmup {
                        rec.record(t0.elapsed());
                    }
                }
                let raw_report =
                    with_bandwidth(rec.report(SCENARIO, fabric_name, raw_op, size, warmup));
                let mut rec = LatencyRecorder::new();
                for i in 0..warmup + iters {
                    let t0 = Instant::now();
                    match op {
                        MemoryOp::Put => memory.put(0, &source[..size])?,
                        MemoryOp::Get => memory.get(0, &mut sink[..size])?,
                        MemoryOp::PutInPlace => memory.put_with(0, size, |_| {})?,
                        MemoryOp::GetInPlace => {
                            let first = memory.get_with(0, size, |b| b[0])?;
                            std::hint::black_box(first);
                        }
                    }
                    if i >= warmup {
                        rec.record(t0.elapsed());
                    }
                }
                let ratio = |r: &LatencyReport| {
                    ((r.p50_ns as f64 / raw_report.p50_ns.max(1) as f64) * 100.0).round() / 100.0
                };
                let rafi_report =
                    with_bandwidth(rec.report(SCENARIO, fabric_name, rafi_op, size, warmup));
                let rafi_report = {
                    let r = ratio(&rafi_report);
                    rafi_report.with("p50_vs_raw", r)
                };
                reports.push(raw_report);
                reports.push(rafi_report);
            }
        }
        // What the puts wrote is what the gets read (the in-place put writes what the
        // staging chunk held: last a put's or a get's bytes, so it is left out here).
        if c.ops.contains(&MemoryOp::Put) && !c.ops.contains(&MemoryOp::PutInPlace) {
            memory.get(0, &mut sink)?;
            let largest = c.sizes.iter().copied().max().unwrap_or(0);
            if sink[..largest] != source[..largest] {
                return Err(MemoryBenchError::Corrupt("put, then get"));
            }
        }
        drop(memory);
        drop(executor);
        Ok(reports)
    }
}

fn with_bandwidth(report: LatencyReport) -> LatencyReport {
    let mib_s = if report.mean_ns > 0.0 {
        report.size as f64 / report.mean_ns * 1e9 / f64::from(1 << 20)
    } else {
        0.0
    };
    let rounded = (mib_s * 10.0).round() / 10.0;
    report.with("bandwidth_mib_s", rounded)
}

/// Two connected queue pairs of one protection domain: `a` posts into `target` (reached
/// through `b`) from or into `source`.
struct RawPair<F: Fabric> {
    a: F::Qp,
    a_cq: F::Cq,
    _b: F::Qp,
    _b_cq: F::Cq,
    source: F::Mr,
    target: F::Mr,
    next_wr: u64,
    _pd: F::Pd,
}

impl<F: Fabric> RawPair<F> {
    fn create(fabric: &F, len: usize) -> Result<Self, MemoryBenchError> {
        let pd = fabric.alloc_pd()?;
        let config = QpConfig {
            max_send_wr: 4,
            max_recv_wr: 1,
            max_sge: 1,
            max_inline_data: 0,
            ..QpConfig::default()
        };
        let a_cq = fabric.create_cq(8, None)?;
        let b_cq = fabric.create_cq(8, None)?;
        let mut a = pd.create_qp(&a_cq, &a_cq, config)?;
        let mut b = pd.create_qp(&b_cq, &b_cq, config)?;
        let source = pd.register(len, Access::LOCAL_WRITE)?;
        let target = pd.register(
            len,
            Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ,
        )?;
        // The mock fabrics wait for the peer's connect inside `connect`: one side on a
        // thread of its own.
        let (a_end, b_end) = (a.endpoint(), b.endpoint());
        std::thread::scope(|s| {
            let other = s.spawn(|| b.connect(&a_end));
            let ours = a.connect(&b_end);
            let theirs = other
                .join()
                .unwrap_or_else(|_| Err(FabricError::Config("connect panicked".into())));
            ours.and(theirs)
        })?;
        Ok(Self {
            a,
            a_cq,
            _b: b,
            _b_cq: b_cq,
            source,
            target,
            next_wr: 0,
            _pd: pd,
        })
    }

    fn transfer(&mut self, op: MemoryOp, size: usize) -> Result<(), MemoryBenchError> {
        let sge = [self.source.sge(0, size)];
        let remote = self.target.remote(0);
        let op = match op {
            MemoryOp::Put | MemoryOp::PutInPlace => SendOp::Write { remote },
            MemoryOp::Get | MemoryOp::GetInPlace => SendOp::Read { remote },
        };
        self.next_wr += 1;
        self.a.post_send(&SendWr::new(self.next_wr, op, &sge))?;
        let mut wc = [WorkCompletion::default(); 1];
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            if self.a_cq.poll(&mut wc) == 1 {
                return match wc[0].status {
                    WcStatus::Success => Ok(()),
                    status => Err(MemoryBenchError::Completion(status)),
                };
            }
            polls = polls.wrapping_add(1);
            if polls % 4096 == 0 && start.elapsed() > Duration::from_secs(10) {
                return Err(MemoryBenchError::Stalled(Duration::from_secs(10)));
            }
            std::hint::spin_loop();
        }
    }
}
