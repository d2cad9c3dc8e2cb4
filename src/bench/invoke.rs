//! The invocation benchmark: round trips of a function invocation between this process (a
//! client pinned to one core) and a `rafi executor` process (one worker pinned to
//! another), through the whole rafi stack — client library, protocol, executor, function.
//!
//! ```text
//!  measuring process (cpu A)                        rafi executor (cpu B, one worker)
//!  spawn `rafi executor --cores B …` ─────────────▶ listen; print {"event":"listening",…}
//!  pin, open fabric, allocate ─── hello/accept/ready over TCP ───▶
//!  ┌ t0 ─ invoke_view(function, size bytes) ─ WRITE_WITH_IMM ─▶ validate, call, answer
//!  └ t1 ◀─ response in place ──────────────── WRITE_WITH_IMM ──
//!  [warm: idle `gap` untimed, so the worker is asleep when the next request lands]
//! ```
//!
//! Hot mode measures the path with both sides spinning; warm mode the path where the
//! worker sleeps on its completion channel and the request wakes it.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::control::{ControlError, PeerProcess};
use super::cpus::{check_allowed, pin, CpuError, CpuPair};
use super::progress::Progress;
use super::report::{LatencyRecorder, LatencyReport};
use crate::client::{AllocateError, Allocation, AllocationOptions, InvokeError};
use crate::fabric::{self, Fabric, FabricConfig, FabricError, FabricKind, FabricUser};
use crate::protocol::{SlotGeometry, HEADER_LEN};

/// Invocations between two looks at the progress bar (outside the timed window).
const PROGRESS_EVERY: u64 = 4096;

/// The `scenario` field of this benchmark's reports.
pub const SCENARIO: &str = "invoke";

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct InvokeConfig {
    pub fabric: FabricConfig,
    /// `hot` or `warm` (the executor's polling mode).
    pub mode: String,
    /// Payload bytes in (and, for `rafi.echo`, out).
    pub size: usize,
    pub iters: u64,
    pub warmup: u64,
    /// The function invoked (a built-in by default).
    pub function: String,
    /// Function libraries the executor loads (`--library`).
    pub libraries: Vec<std::path::PathBuf>,
    /// Warm mode: untimed idle time between invocations, so the worker is asleep.
    pub gap: Duration,
    /// Warm mode: the worker's idle time before it sleeps.
    pub idle: Duration,
    pub cpus: CpuPair,
    /// The protocol's compact form (no headers); false: a header on every message.
    pub compact: bool,
    /// Send the input from a registered input buffer (`invoke_from`) instead of copying it
    /// into the request slot.
    pub registered: bool,
}

/// The benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum InvokeBenchError {
    #[error("invalid settings: {0}")]
    Config(String),
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error("executor process")]
    Executor(#[from] ControlError),
    #[error("opening the fabric")]
    Fabric(#[from] FabricError),
    #[error("allocating the executor's worker")]
    Allocate(#[from] AllocateError),
    #[error("invocation {index}")]
    Invoke { index: u64, source: InvokeError },
    #[error("a client thread panicked")]
    Panicked,
    #[error("invocation {index}: wrong output ({len} bytes)")]
    WrongOutput { index: u64, len: usize },
}

/// What `rafi executor` prints on stdout once it listens.
#[derive(Debug, Deserialize)]
pub struct Listening {
    pub event: String,
    pub address: std::net::SocketAddr,
}

/// The slot geometry that fits `size` bytes each way: slots of the next power of two that
/// holds header and payload (at least 4 KiB), 8 of them.
pub fn geometry_for(size: usize) -> Result<SlotGeometry, InvokeBenchError> {
    let slot = (size + HEADER_LEN).next_power_of_two().max(4096);
    u32::try_from(slot)
        .ok()
        .and_then(|s| SlotGeometry::new(8, s).ok())
        .ok_or_else(|| InvokeBenchError::Config(format!("{size} bytes do not fit a slot")))
}

/// Starts the executor process, measures, and returns the report. `executor_args` are the
/// arguments that make this executable run `rafi executor` (e.g. `["executor"]`).
///
/// # Errors
/// When the settings are invalid, the executor cannot be started or reached, or an
/// invocation fails.
pub fn run(
    config: &InvokeConfig,
    executor_args: &[&str],
) -> Result<LatencyReport, InvokeBenchError> {
    Ok(run_recorded(config, executor_args)?.0)
}

/// [`run`], also returning the samples (for a CDF plot).
///
/// # Errors
/// As [`run`].
pub fn run_recorded(
    config: &InvokeConfig,
    executor_args: &[&str],
) -> Result<(LatencyReport, LatencyRecorder), InvokeBenchError> {
    if config.mode != "hot" && config.mode != "warm" {
        return Err(InvokeBenchError::Config(format!(
            "mode '{}' (expected hot or warm)",
            config.mode
        )));
    }
    let geometry = geometry_for(config.size)?;
    check_allowed(config.cpus)?;
    let (executor, address) = start_executor(
        &ExecutorSpawn {
            fabric: &config.fabric,
            cores: &[config.cpus.server],
            mode: &config.mode,
            idle: config.idle,
            geometry,
            libraries: &config.libraries,
        },
        executor_args,
    )?;
    pin(config.cpus.client, "measuring process")?;
    let report = fabric::open(
        &config.fabric,
        Measure {
            config,
            at: address,
        },
    )??;
    drop(executor); // killed: an executor serves until it is told to stop
    Ok(report)
}

/// How to start a `rafi executor` process for a benchmark.
#[derive(Clone, Debug)]
pub struct ExecutorSpawn<'a> {
    pub fabric: &'a FabricConfig,
    /// One worker pinned to each.
    pub cores: &'a [usize],
    /// `hot` or `warm`.
    pub mode: &'a str,
    /// Warm mode: the worker's idle time before it sleeps.
    pub idle: Duration,
    /// The largest geometry clients will ask for.
    pub geometry: SlotGeometry,
    pub libraries: &'a [std::path::PathBuf],
}

/// Starts `rafi executor` (this executable with `executor_args`, e.g. `["executor"]`) as
/// `spawn` says, on a free local port, and returns the process (killed when dropped) and
/// the address it listens on.
///
/// # Errors
/// When the process cannot be started or does not report that it listens.
pub fn start_executor(
    spawn: &ExecutorSpawn<'_>,
    executor_args: &[&str],
) -> Result<(PeerProcess, std::net::SocketAddr), ControlError> {
    let cores: Vec<String> = spawn.cores.iter().map(usize::to_string).collect();
    let mut args: Vec<String> = executor_args.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--fabric".into(),
        spawn.fabric.kind.name().into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--cores".into(),
        cores.join(","),
        "--mode".into(),
        spawn.mode.into(),
        "--idle-us".into(),
        spawn.idle.as_micros().to_string(),
        "--max-slot-size".into(),
        spawn.geometry.slot_size().to_string(),
        "--max-slots".into(),
        spawn.geometry.slots().to_string(),
    ]);
    if let Some(device) = &spawn.fabric.verbs.device {
        args.extend(["--device".into(), device.clone()]);
    }
    if let Some(gid) = spawn.fabric.verbs.gid_index {
        args.extend(["--gid-index".into(), gid.to_string()]);
    }
    for lib in spawn.libraries {
        args.extend(["--library".into(), lib.display().to_string()]);
    }
    let mut executor = PeerProcess::spawn(&args)?;
    let listening: Listening = executor.recv()?;
    Ok((executor, listening.address))
}

struct Measure<'a> {
    config: &'a InvokeConfig,
    at: std::net::SocketAddr,
}

impl FabricUser for Measure<'_> {
    type Output = Result<(LatencyReport, LatencyRecorder), InvokeBenchError>;

    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let c = self.config;
        let kind = fabric.kind();
        let mut a = Allocation::connect(
            fabric,
            self.at,
            &[c.function.as_str()],
            AllocationOptions {
                client_name: "rafi-bench-invoke".into(),
                geometry: geometry_for(c.size)?,
                compact: c.compact,
                ..AllocationOptions::default()
            },
        )?;
        let f = a
            .function(&c.function)
            .map_err(|source| InvokeBenchError::Invoke { index: 0, source })?;
        let input: Vec<u8> = (0..c.size).map(|i| i as u8).collect();
        // With --registered the input lies in registered memory and is sent from there.
        let registered = match c.registered {
            false => None,
            true => {
                let mut buffer = a
                    .input_buffer(c.size)
                    .map_err(|source| InvokeBenchError::Invoke { index: 0, source })?;
                buffer.as_mut_slice()[..c.size].copy_from_slice(&input);
                Some(buffer)
            }
        };
        let mut recorder = LatencyRecorder::new();
        let echo = c.function == "rafi.echo";
        let total = c.warmup + c.iters;
        let mut progress = Progress::new(&format!("invoke {} B", c.size), total);
        for index in 0..total {
            if c.mode == "warm" && !c.gap.is_zero() {
                idle_spin(c.gap);
            }
            // The output is viewed in place (the zero-copy API); like the raw ping-pong,
            // the timed loop does not read it, warm-up and the last call check it.
            let t0 = Instant::now();
            let view = match &registered {
                None => a.invoke_view(f, &input),
                Some(buffer) => a.invoke_from(f, buffer, 0..c.size),
            }
            .map_err(|source| InvokeBenchError::Invoke { index, source })?;
            let elapsed = t0.elapsed();
            let checked = index < c.warmup || index + 1 == total;
            if echo && checked && view[..] != input[..] {
                return Err(InvokeBenchError::WrongOutput {
                    index,
                    len: view.len(),
                });
            }
            drop(view);
            if index >= c.warmup {
                recorder.record(elapsed);
            }
            if index % PROGRESS_EVERY == 0 {
                progress.set(index);
            }
        }
        let report = recorder
            .report(SCENARIO, kind.name(), &c.function, c.size, c.warmup)
            .with("mode", c.mode.as_str())
            .with("form", if c.compact { "compact" } else { "headers" })
            .with("input", if c.registered { "registered" } else { "copied" })
            .with("client_cpu", c.cpus.client)
            .with("executor_cpu", c.cpus.server);
        Ok((report, recorder))
    }
}

/// Spins for `d` without a system call per round (the clock is read every few hundred).
fn idle_spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        for _ in 0..100 {
            std::hint::spin_loop();
        }
    }
}

/// The fabric settings for a kind with optional verbs overrides.
pub fn fabric_config(
    kind: FabricKind,
    device: Option<String>,
    gid_index: Option<u8>,
) -> FabricConfig {
    let mut c = FabricConfig::new(kind);
    if device.is_some() {
        c.verbs.device = device;
    }
    if gid_index.is_some() {
        c.verbs.gid_index = gid_index;
    }
    c
}
