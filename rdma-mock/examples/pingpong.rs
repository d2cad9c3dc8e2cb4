//! Round-trip latency of rdma-mock between two processes, with latency floors measured by the
//! same binary so that ratios are taken in one run (this machine class is noisy: only a
//! ratio to a floor measured at the same time means something).
//!
//! ```text
//! cargo run --release -p rdma-mock --example pingpong -- --fabric shm --op write-imm --size 64 --iters 100000 --json
//! cargo run --release -p rdma-mock --example pingpong -- --baseline cacheline --json
//! cargo run --release -p rdma-mock --example pingpong -- --baseline tcp --size 64 --json
//! ```
//!
//! The client (this process) re-executes itself as the responder (hidden `--role responder`,
//! same arguments) and talks to it in JSON lines over the child's stdin and stdout: the
//! responder's endpoint, region address and rkey, then ours, then "ready", and "done" at the
//! end. Each process pins itself to its own core (`--client-cpu`, `--server-cpu`); with the
//! default `--pin process` it does so before it opens the device, so the fabric's helper
//! threads (the shm agent, the tcp progress thread) share that core.
//!
//! One round trip: the client stamps a sequence number into its source buffer, posts the op
//! into the responder's region and waits for the reply; the responder waits for the arrival,
//! posts the same op back into the client's region, then reposts its receive. The timer runs
//! from just before the client's post to just after it sees the reply.
//!
//! Ops: `write-imm` (WRITE_WITH_IMM; the receive completion signals arrival), `send` (SEND
//! into a posted receive buffer) and `write` (plain RDMA WRITE; the receiver spins on the last
//! 8 bytes of its region, or the last byte when the payload is shorter than 8 bytes).
//!
//! Floors (`--baseline`): `cacheline` bounces one 64-bit flag each way on its own 128-byte
//! aligned line of a shared memfd page; `memcpy` does the same after copying `--size` bytes
//! into the peer's shared buffer (what an shm one-sided write costs at least); `tcp` is a
//! plain TCP loopback ping-pong of `--size` bytes with TCP_NODELAY and blocking read/write;
//! `copy` is `memcpy` where each side also copies the payload it received out of the shared
//! buffer into a private one (what a peer that consumes its input costs at least); `wake`
//! is the cache-line ping-pong with a sleeping responder: it blocks in read(2) on an
//! eventfd that the client writes after raising its flag (what waking a sleeping worker
//! costs at least), with `--gap-us` of idle time between round trips so that it really is
//! asleep when the request comes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rdma_mock::{
    pin_current_thread, Access, CompletionQueue, Device, DeviceConfig, Endpoint, Fabric,
    MemoryRegion, ProtectionDomain, QpConfig, QpState, QueuePair, RecvWr, RemoteAddr, SendOp,
    SendWr, WcOpcode, WorkCompletion, MAX_INLINE_DATA,
};
use serde::{Deserialize, Serialize};

/// A side that sees no progress for this long gives up (the peer died or hangs).
const STALL: Duration = Duration::from_secs(10);
/// Receives kept posted on each side.
const RECV_DEPTH: u64 = 64;
/// Signaled sends allowed in flight before `post` waits for their completions.
const MAX_SIGNALED: u32 = 16;
/// Flags of the cache-line floor sit 128 bytes apart: separate lines and separate
/// adjacent-line prefetch pairs, as in the C reference (`shmrtt`).
const FLAG_STRIDE: usize = 128;
const PAGE: usize = 4096;
/// Round trips longer than this are counted as stalls (host preemption, interrupts).
const STALL_SAMPLE_NS: f64 = 10_000.0;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Round-trip latency of rdma-mock between two processes, with same-run floors",
    args_override_self = true
)]
struct Args {
    /// Fabric under test.
    #[arg(long, value_enum, default_value_t = FabricArg::Shm)]
    fabric: FabricArg,
    /// Operation bounced each way.
    #[arg(long, value_enum, default_value_t = Op::WriteImm)]
    op: Op,
    /// Payload bytes each way (1 B to 256 MiB; suffixes K/KiB and M/MiB are powers of 1024).
    #[arg(long, default_value = "64", value_parser = parse_size)]
    size: usize,
    /// Timed round trips.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    iters: u64,
    /// Untimed round trips first [default: the larger of iters/10 and 1000].
    #[arg(long)]
    warmup: Option<u64>,
    /// Print one JSON object per run instead of a table line.
    #[arg(long)]
    json: bool,
    /// How both sides wait for an arrival [default: spin on shm and the shared-memory
    /// floors, yield on tcp, block (blocking read) for the tcp floor; spin or yield there
    /// busy-poll a non-blocking socket].
    #[arg(long, value_enum)]
    wait: Option<Wait>,
    /// Signal one send in N (0: never; 1: every send, each completion polled).
    #[arg(long, default_value_t = 64)]
    signal_every: u32,
    /// Send the payload inline (up to 1024 B) instead of from a registered source region.
    #[arg(long)]
    inline: bool,
    /// Measure a latency floor instead of rdma-mock.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Core of the client (this process).
    #[arg(long, default_value_t = 0)]
    client_cpu: usize,
    /// Core of the responder process.
    #[arg(long, default_value_t = 1)]
    server_cpu: usize,
    /// What to pin: the whole process before the device opens (helper threads share the
    /// core), or only the benchmark thread after connecting (helper threads float).
    #[arg(long, value_enum, default_value_t = PinScope::Process)]
    pin: PinScope,
    /// Timer: RDTSC calibrated against the monotonic clock, or std::time::Instant
    /// [default: tsc on x86_64 with an invariant TSC].
    #[arg(long, value_enum)]
    timer: Option<Timer>,
    /// Check the payload's sequence stamps on every round trip, not only during warm-up
    /// (this reads the payload's lines, which costs cache misses).
    #[arg(long)]
    verify: bool,
    #[arg(long, value_enum, default_value_t = Role::Client, hide = true)]
    role: Role,
    /// The cache-line floor's shared memfd, inherited by the responder.
    #[arg(long, hide = true)]
    shm_fd: Option<i32>,
    /// The wake floor's eventfd, inherited by the responder.
    #[arg(long, hide = true)]
    wake_fd: Option<i32>,
    /// Idle microseconds between round trips (untimed) [default: 50 for --baseline wake,
    /// else 0].
    #[arg(long)]
    gap_us: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FabricArg {
    Shm,
    Tcp,
}

impl FabricArg {
    fn fabric(self) -> Fabric {
        match self {
            FabricArg::Shm => Fabric::Shm,
            FabricArg::Tcp => Fabric::Tcp,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    WriteImm,
    Send,
    Write,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Wait {
    /// Busy-poll with a PAUSE between empty polls.
    Spin,
    /// Busy-poll with sched_yield between empty polls (lets a helper thread on the core run).
    Yield,
    /// Sleep on a completion channel (CompletionQueue::wait).
    Block,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Baseline {
    Cacheline,
    Memcpy,
    Tcp,
    Wake,
    Copy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PinScope {
    Process,
    Thread,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Timer {
    Tsc,
    Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    Client,
    Responder,
}

fn value_name<T: ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size in bytes (e.g. 64, 4K, 1MiB)"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => return Err(format!("unknown size unit in '{s}' (use K or M)")),
    };
    let size = n
        .checked_mul(scale)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if size == 0 || size > 256 << 20 {
        return Err(format!("size {size} is not in 1 B ..= 256 MiB"));
    }
    Ok(size)
}

impl Args {
    fn wait(&self) -> Wait {
        // Measured on a 2-vCPU VM (docs/performance.md): on tcp the progress thread shares
        // the core with the polling thread, and yielding lets it run at once.
        self.wait.unwrap_or(match (self.baseline, self.fabric) {
            (Some(Baseline::Tcp), _) => Wait::Block,
            (Some(_), _) | (None, FabricArg::Shm) => Wait::Spin,
            (None, FabricArg::Tcp) => Wait::Yield,
        })
    }

    fn gap_us(&self) -> u64 {
        self.gap_us
            .unwrap_or(if self.baseline == Some(Baseline::Wake) {
                50
            } else {
                0
            })
    }

    fn warmup(&self) -> u64 {
        self.warmup.unwrap_or((self.iters / 10).max(1000))
    }

    fn validate(&self) -> Result<()> {
        if self.inline && self.size > MAX_INLINE_DATA as usize {
            bail!(
                "--inline carries at most {MAX_INLINE_DATA} bytes, --size is {}",
                self.size
            );
        }
        match self.baseline {
            None if self.op == Op::Write && self.wait() == Wait::Block => {
                bail!("--op write has no completion to block on: use --wait spin or yield")
            }
            Some(Baseline::Cacheline | Baseline::Memcpy | Baseline::Wake | Baseline::Copy)
                if self.wait() == Wait::Block =>
            {
                bail!("the shared-memory floors spin: use --wait spin or yield")
            }
            _ => Ok(()),
        }
    }
}

fn main() {
    let args = Args::parse();
    let result = args.validate().and_then(|()| match args.role {
        Role::Client => client(&args),
        Role::Responder => responder(&args),
    });
    if let Err(e) = result {
        let who = match args.role {
            Role::Client => "pingpong",
            Role::Responder => "pingpong responder",
        };
        eprintln!("{who}: error: {e:#}");
        std::process::exit(1);
    }
}

// ---- control channel: JSON lines over the responder's stdin and stdout ------------------------

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum Msg {
    /// Where a side's queue pair and target region are.
    Hello {
        endpoint: Endpoint,
        addr: u64,
        rkey: u32,
    },
    /// The tcp floor's listening port.
    Listening { port: u16 },
    /// The responder is connected and polling.
    Ready,
    /// The client is finished; the responder may tear down.
    Done,
}

fn read_msg(reader: &mut impl BufRead, from: &str) -> Result<Msg> {
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .with_context(|| format!("reading from the {from}"))?;
    ensure!(
        n > 0,
        "the {from} closed the control channel (see its message above)"
    );
    serde_json::from_str(line.trim_end())
        .with_context(|| format!("bad control line from the {from}: {line:?}"))
}

fn write_msg(writer: &mut impl Write, msg: &Msg, to: &str) -> Result<()> {
    let line = serde_json::to_string(msg).context("encoding a control line")?;
    writeln!(writer, "{line}")
        .and_then(|()| writer.flush())
        .with_context(|| format!("writing to the {to}"))
}

/// The responder process as the client sees it. Killed if dropped before `finish`.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    finished: bool,
}

impl Peer {
    fn spawn(extra: &[String]) -> Result<Self> {
        let exe =
            std::env::current_exe().context("finding this executable to start the responder")?;
        let mut child = Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .args(["--role", "responder"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the responder {}", exe.display()))?;
        let stdin = child
            .stdin
            .take()
            .context("the responder has no stdin pipe")?;
        let stdout = child
            .stdout
            .take()
            .context("the responder has no stdout pipe")?;
        Ok(Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            finished: false,
        })
    }

    fn recv(&mut self) -> Result<Msg> {
        read_msg(&mut self.stdout, "responder")
    }

    fn send(&mut self, msg: &Msg) -> Result<()> {
        write_msg(&mut self.stdin, msg, "responder")
    }

    fn expect_ready(&mut self) -> Result<()> {
        match self.recv()? {
            Msg::Ready => Ok(()),
            other => bail!("expected 'ready' from the responder, got {other:?}"),
        }
    }

    fn finish(mut self) -> Result<()> {
        self.send(&Msg::Done)?;
        self.finished = true;
        let status = self.child.wait().context("waiting for the responder")?;
        ensure!(status.success(), "the responder failed: {status}");
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The responder's end of the control channel.
struct Control {
    stdin: BufReader<std::io::Stdin>,
    stdout: std::io::Stdout,
}

impl Control {
    fn new() -> Self {
        Self {
            stdin: BufReader::new(std::io::stdin()),
            stdout: std::io::stdout(),
        }
    }

    fn recv(&mut self) -> Result<Msg> {
        read_msg(&mut self.stdin, "client")
    }

    fn send(&mut self, msg: &Msg) -> Result<()> {
        write_msg(&mut self.stdout, msg, "client")
    }

    fn expect_done(&mut self) -> Result<()> {
        match self.recv()? {
            Msg::Done => Ok(()),
            other => bail!("expected 'done' from the client, got {other:?}"),
        }
    }
}

// ---- timing -----------------------------------------------------------------------------------

struct Clock {
    kind: Timer,
    origin: Instant,
    ns_per_tick: f64,
}

impl Clock {
    fn new(requested: Option<Timer>) -> Self {
        let kind = requested.unwrap_or(if invariant_tsc() {
            Timer::Tsc
        } else {
            Timer::Instant
        });
        let mut clock = Self {
            kind,
            origin: Instant::now(),
            ns_per_tick: 1.0,
        };
        if kind == Timer::Tsc {
            // 50 ms of calibration puts the error far below the 10 ns read granularity.
            let (t0, c0) = (Instant::now(), clock.now());
            while t0.elapsed() < Duration::from_millis(50) {}
            let (ns, ticks) = (t0.elapsed().as_nanos() as f64, clock.now() - c0);
            clock.ns_per_tick = ns / ticks as f64;
        }
        clock
    }

    #[inline(always)]
    fn now(&self) -> u64 {
        match self.kind {
            Timer::Tsc => rdtsc(),
            Timer::Instant => self.origin.elapsed().as_nanos() as u64,
        }
    }

    fn ns(&self, ticks: u64) -> f64 {
        ticks as f64 * self.ns_per_tick
    }

    /// Smallest back-to-back reading, i.e. what the timer adds to every sample.
    fn overhead_ns(&self) -> f64 {
        let best = (0..10_000)
            .map(|_| {
                let a = self.now();
                self.now() - a
            })
            .min()
            .unwrap_or(0);
        self.ns(best)
    }
}

fn invariant_tsc() -> bool {
    cfg!(target_arch = "x86_64")
        && std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|l| l.contains(" constant_tsc") && l.contains(" nonstop_tsc"))
        })
}

/// RDTSC fenced on both sides, as the C reference does, so that it is ordered after the
/// load that saw the reply and before the stores of the next request.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unused_unsafe)] // these intrinsics are safe on newer toolchains
fn rdtsc() -> u64 {
    use std::arch::x86_64::{_mm_lfence, _rdtsc};
    // SAFETY: LFENCE and RDTSC exist on every x86_64 CPU and touch no memory.
    unsafe {
        _mm_lfence();
        let t = _rdtsc();
        _mm_lfence();
        t
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn rdtsc() -> u64 {
    unreachable!("the tsc timer is only selectable on x86_64")
}

/// Samples of one run, in timer ticks, and what describes the run.
struct Run {
    name: String,
    fabric: &'static str,
    op: String,
    size: usize,
    ticks: Vec<u64>,
    wall: Duration,
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Run {
    fn report(&self, args: &Args, clock: &Clock) -> Result<()> {
        ensure!(!self.ticks.is_empty(), "no samples");
        let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
            .map_err(|e| anyhow!("creating the histogram: {e}"))?;
        let (mut sum, mut stalls, mut stall_ns) = (0.0, 0u64, 0.0);
        for &t in &self.ticks {
            let ns = clock.ns(t);
            sum += ns;
            if ns > STALL_SAMPLE_NS {
                stalls += 1;
                stall_ns += ns;
            }
            hist.saturating_record(ns.round().max(1.0) as u64);
        }
        let n = self.ticks.len() as f64;
        let exact = |ticks: u64| (clock.ns(ticks) * 10.0).round() / 10.0;
        let min = exact(self.ticks.iter().copied().min().unwrap_or(0));
        let max = exact(self.ticks.iter().copied().max().unwrap_or(0));
        let q = |p: f64| hist.value_at_quantile(p);
        let mean = (sum / n * 10.0).round() / 10.0;
        let wall_per_iter = (self.wall.as_nanos() as f64 / n * 10.0).round() / 10.0;
        if args.json {
            let mut obj = serde_json::json!({
                "name": self.name,
                "fabric": self.fabric,
                "op": self.op,
                "size": self.size,
                "iters": self.ticks.len(),
                "warmup": args.warmup(),
                "p50_ns": q(0.50),
                "p90_ns": q(0.90),
                "p99_ns": q(0.99),
                "p999_ns": q(0.999),
                "min_ns": min,
                "max_ns": max,
                "mean_ns": mean,
                "wall_per_iter_ns": wall_per_iter,
                "n_gt10us": stalls,
                "stall_ms": (stall_ns / 1e4).round() / 100.0,
                "client_cpu": args.client_cpu,
                "server_cpu": args.server_cpu,
                "timer": value_name(clock.kind),
                "timer_overhead_ns": (clock.overhead_ns() * 10.0).round() / 10.0,
            });
            if let Some(map) = obj.as_object_mut() {
                map.extend(self.extra.clone());
            }
            println!("{obj}");
        } else {
            println!(
                "{:<26} p50 {:>8} ns  p99 {:>8} ns  p99.9 {:>8} ns  min {:>8} ns  max {:>10} ns  mean {:>9} ns  n {} (>10us: {})",
                self.name, q(0.5), q(0.99), q(0.999), min, max, mean, self.ticks.len(), stalls
            );
        }
        Ok(())
    }
}

// ---- the two roles ----------------------------------------------------------------------------

fn pin(cpu: usize, who: &str) -> Result<()> {
    pin_current_thread(cpu).with_context(|| {
        format!(
            "pinning the {who} to cpu {cpu} (this machine has {} cpus; see --client-cpu/--server-cpu)",
            // Not available_parallelism: that counts our (inherited) affinity mask.
            // SAFETY: sysconf only reads a system setting.
            unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
        )
    })
}

fn client(args: &Args) -> Result<()> {
    let clock = Clock::new(args.timer);
    ensure!(
        clock.kind != Timer::Tsc || cfg!(target_arch = "x86_64"),
        "--timer tsc needs x86_64"
    );
    let run = match args.baseline {
        None => fabric_client(args, &clock)?,
        Some(Baseline::Cacheline | Baseline::Memcpy | Baseline::Wake | Baseline::Copy) => {
            shared_memory_client(args, &clock)?
        }
        Some(Baseline::Tcp) => tcp_client(args, &clock)?,
    };
    run.report(args, &clock)
}

fn responder(args: &Args) -> Result<()> {
    match args.baseline {
        None => fabric_responder(args),
        Some(Baseline::Cacheline | Baseline::Memcpy | Baseline::Wake | Baseline::Copy) => {
            shared_memory_responder(args)
        }
        Some(Baseline::Tcp) => tcp_responder(args),
    }
}

/// Sequence numbers: round trip `k` carries `2k + 1` to the responder and `2k + 2` back, so
/// each side waits for a value it never wrote itself.
fn request_seq(k: u64) -> u64 {
    2 * k + 1
}
fn reply_seq(k: u64) -> u64 {
    2 * k + 2
}

// ---- rdma-mock ping-pong ----------------------------------------------------------------------

/// What keeps a waiting loop honest: a PAUSE or a yield between empty polls, and every few
/// thousand of them a look at the clock and at the queue pair, so a dead peer ends the run.
struct Idle {
    wait: Wait,
    empty: u32,
    since: Option<Instant>,
}

impl Idle {
    fn new(wait: Wait) -> Self {
        Self {
            wait,
            empty: 0,
            since: None,
        }
    }

    #[inline(always)]
    fn pause(&mut self, qp: Option<&QueuePair>, what: &str) -> Result<()> {
        match self.wait {
            Wait::Spin => std::hint::spin_loop(),
            Wait::Yield => std::thread::yield_now(),
            Wait::Block => {}
        }
        self.empty = self.empty.wrapping_add(1);
        if self.empty % 4096 == 0 {
            self.check(qp, what)?;
        }
        Ok(())
    }

    #[cold]
    fn check(&mut self, qp: Option<&QueuePair>, what: &str) -> Result<()> {
        if let Some(qp) = qp {
            ensure!(
                qp.state() != QpState::Error,
                "the queue pair failed while waiting for {what} (did the peer exit?)"
            );
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        ensure!(
            since.elapsed() < STALL,
            "no {what} for {STALL:?}: the peer is gone or stuck"
        );
        Ok(())
    }
}

/// Where the sequence stamp of a `size`-byte payload lives: its last 8 bytes, or its last
/// byte when it is shorter. Payloads of 16 bytes and more carry it in their first 8 too, so a
/// receiver can tell a torn arrival (last word there, first not yet).
fn stamp_span(size: usize) -> (usize, usize) {
    if size >= 8 {
        (size - 8, 8)
    } else {
        (size - 1, 1)
    }
}

fn stamp_value(size: usize, seq: u64) -> u64 {
    if size >= 8 {
        seq
    } else {
        seq & 0xff
    }
}

/// Reads `len` (1 or 8) bytes at `ptr` that a peer may be writing right now.
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes.
unsafe fn load_volatile(ptr: *const u8, len: usize) -> u64 {
    // SAFETY: guaranteed by the caller. A byte array has alignment 1, so the last 8 bytes
    // of any payload can be read; volatile keeps the spin loop from caching the value.
    let value = unsafe {
        if len == 8 {
            u64::from_le_bytes(std::ptr::read_volatile(ptr.cast::<[u8; 8]>()))
        } else {
            u64::from(std::ptr::read_volatile(ptr))
        }
    };
    // The payload bytes read after this must not be older than the stamp.
    fence(Ordering::Acquire);
    value
}

/// One side of the rdma-mock ping-pong: a queue pair, its completion queues, the region the
/// peer writes into (`dst`) and the one our requests read from (`src`).
struct Side {
    qp: QueuePair,
    send_cq: CompletionQueue,
    recv_cq: CompletionQueue,
    dst: MemoryRegion,
    src: MemoryRegion,
    inline_buf: Vec<u8>,
    remote: RemoteAddr,
    op: Op,
    size: usize,
    wait: Wait,
    inline: bool,
    signal_every: u64,
    posted: u64,
    signaled_in_flight: u32,
    recvs_posted: u64,
    verify: bool,
    torn: u64,
    wc: [WorkCompletion; 16],
    _pd: ProtectionDomain,
    _device: Device,
}

impl Side {
    fn open(args: &Args) -> Result<Self> {
        let fabric = args.fabric.fabric();
        let device = Device::open(DeviceConfig::new(fabric))
            .with_context(|| format!("opening an rdma-mock {fabric} device"))?;
        let pd = device
            .alloc_pd()
            .context("allocating a protection domain")?;
        let wait = args.wait();
        let channel = match wait {
            Wait::Block => Some(
                device
                    .create_channel()
                    .context("creating a completion channel")?,
            ),
            _ => None,
        };
        let send_cq = device
            .create_cq(None)
            .context("creating the send completion queue")?;
        let recv_cq = device
            .create_cq(channel.as_ref())
            .context("creating the receive completion queue")?;
        let config = QpConfig {
            max_inline_data: MAX_INLINE_DATA,
            ..QpConfig::default()
        };
        let qp = pd
            .create_qp(&send_cq, &recv_cq, config)
            .context("creating the queue pair")?;
        let dst = pd
            .register(args.size, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
            .with_context(|| format!("registering the {}-byte target region", args.size))?;
        let src = pd
            .register(args.size, Access::LOCAL_WRITE)
            .with_context(|| format!("registering the {}-byte source region", args.size))?;
        let mut side = Self {
            qp,
            send_cq,
            recv_cq,
            dst,
            src,
            inline_buf: vec![0xa5; if args.inline { args.size } else { 0 }],
            remote: RemoteAddr::default(),
            op: args.op,
            size: args.size,
            wait,
            inline: args.inline,
            signal_every: u64::from(args.signal_every),
            posted: 0,
            signaled_in_flight: 0,
            recvs_posted: 0,
            verify: true,
            torn: 0,
            wc: [WorkCompletion::default(); 16],
            _pd: pd,
            _device: device,
        };
        // Receives may be posted before connecting, so the peer never finds none.
        if side.op != Op::Write {
            for _ in 0..RECV_DEPTH {
                side.post_recv()?;
            }
        }
        Ok(side)
    }

    fn hello(&self) -> Msg {
        Msg::Hello {
            endpoint: self.qp.endpoint(),
            addr: self.dst.addr(),
            rkey: self.dst.rkey(),
        }
    }

    fn connect(&mut self, peer: Msg) -> Result<()> {
        let Msg::Hello {
            endpoint,
            addr,
            rkey,
        } = peer
        else {
            bail!("expected the peer's hello, got {peer:?}");
        };
        self.remote = RemoteAddr { addr, rkey };
        self.qp
            .connect(&endpoint)
            .with_context(|| format!("connecting to the peer at {}", endpoint.address))
    }

    #[inline]
    fn post_recv(&mut self) -> Result<()> {
        let sge = [self.dst.sge(0, self.size)];
        // WRITE_WITH_IMM only consumes the receive; SEND lands in its buffer.
        let sgl = if self.op == Op::Send { &sge[..] } else { &[] };
        self.qp
            .post_recv(&RecvWr {
                wr_id: self.recvs_posted,
                sgl,
            })
            .context("posting a receive")?;
        self.recvs_posted += 1;
        Ok(())
    }

    /// Writes `seq` into the payload we are about to send (our private source memory).
    #[inline]
    fn stamp(&mut self, seq: u64) {
        let (off, len) = stamp_span(self.size);
        let bytes = seq.to_le_bytes();
        if self.inline {
            self.inline_buf[off..off + len].copy_from_slice(&bytes[..len]);
            if self.size >= 16 {
                self.inline_buf[..8].copy_from_slice(&bytes);
            }
        } else {
            self.src.write(off, &bytes[..len]);
            if self.size >= 16 {
                self.src.write(0, &bytes);
            }
        }
    }

    /// Posts the op with `seq` into the peer's region.
    #[inline]
    fn post(&mut self, seq: u64) -> Result<()> {
        if self.signaled_in_flight > 0 {
            self.reap_sends(self.signaled_in_flight >= MAX_SIGNALED)?;
        }
        self.stamp(seq);
        let op = match self.op {
            Op::WriteImm => SendOp::WriteWithImm {
                remote: self.remote,
                imm: seq as u32,
            },
            Op::Send => SendOp::Send,
            Op::Write => SendOp::Write {
                remote: self.remote,
            },
        };
        self.posted += 1;
        let signaled = self.signal_every != 0 && self.posted % self.signal_every == 0;
        let sge = [self.src.sge(0, self.size)];
        let mut wr = if self.inline {
            SendWr::inline(seq, op, &self.inline_buf)
        } else {
            SendWr::new(seq, op, &sge)
        };
        wr.signaled = signaled;
        self.qp.post_send(&wr).context("posting the request")?;
        self.signaled_in_flight += u32::from(signaled);
        Ok(())
    }

    /// Takes send completions; with `block`, until none of ours is in flight.
    fn reap_sends(&mut self, block: bool) -> Result<()> {
        let mut idle = Idle::new(if self.wait == Wait::Block {
            Wait::Yield
        } else {
            self.wait
        });
        while self.signaled_in_flight > 0 {
            let n = self.send_cq.poll(&mut self.wc);
            for wc in &self.wc[..n] {
                ensure!(
                    wc.is_ok(),
                    "request {} completed with: {}",
                    wc.wr_id,
                    wc.status
                );
            }
            self.signaled_in_flight = self.signaled_in_flight.saturating_sub(n as u32);
            if n == 0 {
                if !block {
                    break;
                }
                idle.pause(Some(&self.qp), "a send completion")?;
            }
        }
        Ok(())
    }

    /// Waits until the peer's request or reply stamped `seq` has arrived.
    #[inline]
    fn wait_arrival(&mut self, seq: u64) -> Result<()> {
        match self.op {
            Op::Write => {
                let (off, len) = stamp_span(self.size);
                let want = stamp_value(self.size, seq);
                let ptr = self.dst.as_ptr().wrapping_add(off);
                let mut idle = Idle::new(self.wait);
                // SAFETY: `off + len <= size`, the length of `dst`, which lives as long as `self`.
                while unsafe { load_volatile(ptr, len) } != want {
                    idle.pause(Some(&self.qp), "the peer's write")?;
                }
            }
            Op::WriteImm | Op::Send => {
                let wc = self.next_recv()?;
                let expected = if self.op == Op::WriteImm {
                    (WcOpcode::RecvRdmaWithImm, Some(seq as u32))
                } else {
                    (WcOpcode::Recv, None)
                };
                ensure!(
                    (wc.opcode, wc.imm, wc.byte_len as usize)
                        == (expected.0, expected.1, self.size),
                    "unexpected receive completion {wc:?} for sequence {seq}"
                );
            }
        }
        if self.verify {
            self.check_payload(seq)?;
        }
        Ok(())
    }

    #[inline]
    fn next_recv(&mut self) -> Result<WorkCompletion> {
        let mut idle = Idle::new(self.wait);
        loop {
            let n = if self.wait == Wait::Block {
                self.recv_cq
                    .wait(&mut self.wc[..1], Some(STALL))
                    .context("waiting for a receive completion (did the peer exit?)")?
            } else {
                self.recv_cq.poll(&mut self.wc[..1])
            };
            if n > 0 {
                let wc = self.wc[0];
                ensure!(wc.is_ok(), "a receive completed with: {}", wc.status);
                return Ok(wc);
            }
            idle.pause(Some(&self.qp), "a receive completion")?;
        }
    }

    /// Checks the stamps of the payload that just arrived; a first word that lags the last
    /// one (a torn arrival) is waited for and counted.
    #[cold]
    fn check_payload(&mut self, seq: u64) -> Result<()> {
        let (off, len) = stamp_span(self.size);
        let base = self.dst.as_ptr();
        // SAFETY: both spans lie inside `dst` (off + len <= size, and 8 <= size for the first).
        let last = unsafe { load_volatile(base.wrapping_add(off), len) };
        ensure!(
            last == stamp_value(self.size, seq),
            "payload of sequence {seq} ends with stamp {last}"
        );
        if self.size >= 16 {
            let mut idle = Idle::new(Wait::Spin);
            let mut torn = false;
            // SAFETY: as above.
            while unsafe { load_volatile(base, 8) } != seq {
                torn = true;
                idle.pause(Some(&self.qp), "the first word of a torn payload")?;
            }
            self.torn += u64::from(torn);
        }
        Ok(())
    }
}

fn fabric_client(args: &Args, clock: &Clock) -> Result<Run> {
    if args.pin == PinScope::Process {
        pin(args.client_cpu, "client")?;
    }
    let mut peer = Peer::spawn(&[])?;
    let mut side = Side::open(args)?;
    let theirs = peer.recv()?;
    peer.send(&side.hello())?;
    side.connect(theirs)?;
    peer.expect_ready()?;
    if args.pin == PinScope::Thread {
        pin(args.client_cpu, "client")?;
    }

    let warmup = args.warmup();
    let mut ticks = Vec::with_capacity(args.iters as usize);
    for k in 0..warmup {
        side.post(request_seq(k))?;
        side.wait_arrival(reply_seq(k))?;
        if side.op != Op::Write {
            side.post_recv()?;
        }
    }
    side.verify = args.verify;
    let start = Instant::now();
    for k in warmup..warmup + args.iters {
        let t0 = clock.now();
        side.post(request_seq(k))?;
        side.wait_arrival(reply_seq(k))?;
        let t1 = clock.now();
        ticks.push(t1 - t0);
        // Reposting is off the timed path: the reply of this round trip is in already.
        if side.op != Op::Write {
            side.post_recv()?;
        }
    }
    let wall = start.elapsed();
    side.reap_sends(true)?;
    peer.finish()?;

    let wait = value_name(side.wait);
    let op = value_name(args.op);
    let mut extra = serde_json::Map::new();
    extra.insert("wait".into(), wait.into());
    extra.insert("signal_every".into(), args.signal_every.into());
    extra.insert("inline".into(), args.inline.into());
    extra.insert("pin".into(), value_name(args.pin).into());
    extra.insert("torn".into(), side.torn.into());
    Ok(Run {
        name: format!("{}-{op}-{}", args.fabric.fabric(), args.size),
        fabric: args.fabric.fabric().name(),
        op,
        size: args.size,
        ticks,
        wall,
        extra,
    })
}

fn fabric_responder(args: &Args) -> Result<()> {
    if args.pin == PinScope::Process {
        pin(args.server_cpu, "responder")?;
    }
    let mut control = Control::new();
    let mut side = Side::open(args)?;
    control.send(&side.hello())?;
    let theirs = control.recv()?;
    side.connect(theirs)?;
    if args.pin == PinScope::Thread {
        pin(args.server_cpu, "responder")?;
    }
    control.send(&Msg::Ready)?;

    let warmup = args.warmup();
    for k in 0..warmup + args.iters {
        side.verify = k < warmup || args.verify;
        side.wait_arrival(request_seq(k))?;
        side.post(reply_seq(k))?;
        // Repost after replying: the slot's lines are fetched while the client is busy.
        if side.op != Op::Write {
            side.post_recv()?;
        }
    }
    side.reap_sends(true)?;
    if side.torn > 0 {
        eprintln!(
            "pingpong responder: {} torn arrivals (last word before first) in checked round trips",
            side.torn
        );
    }
    control.expect_done()
}

// ---- floor: flags (and payload) in a shared memfd page ---------------------------------------

/// A `MAP_SHARED` mapping of a memfd that both processes map.
struct SharedPage {
    ptr: *mut u8,
    len: usize,
}

impl SharedPage {
    /// Layout: request flag at 0, reply flag at 128, then one payload buffer per direction.
    fn len_for(payload: usize) -> usize {
        PAGE + 2 * payload.div_ceil(PAGE) * PAGE
    }

    /// Creates the memfd. It is not close-on-exec: the responder inherits its number.
    fn create(len: usize) -> Result<(Self, OwnedFd)> {
        // SAFETY: a static NUL-terminated name and no flags.
        let fd = unsafe { libc::memfd_create(c"pingpong-floor".as_ptr(), 0) };
        ensure!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let file = std::fs::File::from(fd.try_clone().context("duplicating the memfd")?);
        file.set_len(len as u64).context("sizing the memfd")?;
        Ok((Self::map(fd.as_raw_fd(), len)?, fd))
    }

    fn map(fd: i32, len: usize) -> Result<Self> {
        // SAFETY: mapping a file descriptor we were given; the kernel checks it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        ensure!(
            ptr != libc::MAP_FAILED,
            "mmap of the shared floor page (fd {fd}, {len} bytes): {}",
            std::io::Error::last_os_error()
        );
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    fn flag(&self, index: usize) -> &AtomicU64 {
        assert!((index + 1) * FLAG_STRIDE <= PAGE);
        // SAFETY: inside the first page of the mapping, 128-byte aligned (the mapping is
        // page aligned), and the mapping lives as long as `self`.
        unsafe { &*self.ptr.add(index * FLAG_STRIDE).cast::<AtomicU64>() }
    }

    /// The payload buffer of direction `index` (0: to the responder, 1: back).
    fn buffer(&self, index: usize, payload: usize) -> *mut u8 {
        let off = PAGE + index * payload.div_ceil(PAGE) * PAGE;
        assert!(off + payload <= self.len);
        self.ptr.wrapping_add(off)
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; no reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Copies the payload into the peer's shared buffer (memcpy floor only).
#[inline(always)]
fn copy_payload(from: &[u8], to: *mut u8) {
    // SAFETY: `to` has room for `from.len()` bytes (SharedPage::buffer checked it) and is
    // shared memory, never a Rust reference, so it cannot alias `from`.
    unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), to, from.len()) };
}

/// Copies the payload the peer wrote at `from` into the private buffer `to`.
fn copy_out(from: *const u8, to: &mut [u8]) {
    // SAFETY: `from` has `to.len()` bytes (SharedPage::buffer checked it) of shared memory,
    // never a Rust reference, so it cannot alias `to`; the peer wrote it before its flag.
    unsafe { std::ptr::copy_nonoverlapping(from, to.as_mut_ptr(), to.len()) };
}

fn floor_payload(args: &Args) -> usize {
    match args.baseline {
        Some(Baseline::Memcpy | Baseline::Copy) => args.size,
        _ => 0,
    }
}

fn shared_memory_client(args: &Args, clock: &Clock) -> Result<Run> {
    pin(args.client_cpu, "client")?;
    let payload = floor_payload(args);
    let (page, fd) = SharedPage::create(SharedPage::len_for(payload))?;
    let wake = (args.baseline == Some(Baseline::Wake))
        .then(WakeFd::create)
        .transpose()?;
    let mut peer_args = vec!["--shm-fd".into(), fd.as_raw_fd().to_string()];
    if let Some(w) = &wake {
        peer_args.extend(["--wake-fd".into(), w.0.as_raw_fd().to_string()]);
    }
    let mut peer = Peer::spawn(&peer_args)?;
    drop(fd); // the mapping keeps the memory; the child has its own copy of the descriptor
    peer.expect_ready()?;
    let gap = Duration::from_micros(args.gap_us());
    let copy_in = args.baseline == Some(Baseline::Copy) && payload > 0;
    let mut private = vec![0u8; if copy_in { payload } else { 0 }];

    let (request, reply) = (page.flag(0), page.flag(1));
    let (out_buf, src) = (page.buffer(0, payload), vec![0x5au8; payload]);
    let warmup = args.warmup();
    let mut ticks = Vec::with_capacity(args.iters as usize);
    let mut start = Instant::now();
    for k in 0..warmup + args.iters {
        if k == warmup {
            start = Instant::now();
        }
        if !gap.is_zero() {
            idle_for(gap);
        }
        let mut idle = Idle::new(args.wait());
        let t0 = clock.now();
        if payload > 0 {
            copy_payload(&src, out_buf);
        }
        request.store(request_seq(k), Ordering::Release);
        if let Some(w) = &wake {
            w.signal()?;
        }
        while reply.load(Ordering::Acquire) != reply_seq(k) {
            idle.pause(None, "the responder's flag")?;
        }
        if copy_in {
            copy_out(page.buffer(1, payload), &mut private);
        }
        let t1 = clock.now();
        if k >= warmup {
            ticks.push(t1 - t0);
        }
    }
    let wall = start.elapsed();
    peer.finish()?;

    let (op, size) = match args.baseline {
        Some(Baseline::Memcpy) => ("memcpy", payload),
        Some(Baseline::Copy) => ("copy", payload),
        Some(Baseline::Wake) => ("wake", 8),
        _ => ("cacheline", 8),
    };
    let mut extra = serde_json::Map::new();
    extra.insert("wait".into(), value_name(args.wait()).into());
    Ok(Run {
        name: format!("floor-{op}-{size}"),
        fabric: "baseline",
        op: op.into(),
        size,
        ticks,
        wall,
        extra,
    })
}

fn shared_memory_responder(args: &Args) -> Result<()> {
    pin(args.server_cpu, "responder")?;
    let fd = args
        .shm_fd
        .context("the shared-memory floor's responder needs --shm-fd")?;
    let payload = floor_payload(args);
    let page = SharedPage::map(fd, SharedPage::len_for(payload))?;
    let mut control = Control::new();
    control.send(&Msg::Ready)?;
    let (request, reply) = (page.flag(0), page.flag(1));
    let (out_buf, src) = (page.buffer(1, payload), vec![0xa5u8; payload]);
    let wake = args.wake_fd.map(WakeFd::inherited);
    let copy_in = args.baseline == Some(Baseline::Copy) && payload > 0;
    let mut private = vec![0u8; if copy_in { payload } else { 0 }];
    for k in 0..args.warmup() + args.iters {
        let mut idle = Idle::new(args.wait());
        while request.load(Ordering::Acquire) != request_seq(k) {
            match &wake {
                // Sleep until the client's write; a wake-up may be for an earlier flag.
                Some(w) => w.sleep()?,
                None => idle.pause(None, "the client's flag")?,
            }
        }
        if copy_in {
            copy_out(page.buffer(0, payload), &mut private);
        }
        if payload > 0 {
            copy_payload(&src, out_buf);
        }
        reply.store(reply_seq(k), Ordering::Release);
    }
    control.expect_done()
}

/// The wake floor's eventfd: the client writes it, the sleeping responder reads it.
struct WakeFd(OwnedFd);

impl WakeFd {
    /// An eventfd that is not close-on-exec: the responder inherits its number.
    fn create() -> Result<Self> {
        // SAFETY: eventfd with constant arguments.
        let fd = unsafe { libc::eventfd(0, 0) };
        ensure!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn inherited(fd: i32) -> Self {
        // SAFETY: the client passed the number of the eventfd this process inherited, and
        // nothing else in this process owns it.
        Self(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn signal(&self) -> Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        let n = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), 8) };
        ensure!(n == 8, "eventfd write: {}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Blocks until the eventfd is written (and clears it).
    fn sleep(&self) -> Result<()> {
        let mut value = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer from our eventfd.
        let n = unsafe { libc::read(self.0.as_raw_fd(), value.as_mut_ptr().cast(), 8) };
        ensure!(n == 8, "eventfd read: {}", std::io::Error::last_os_error());
        Ok(())
    }
}

/// Spins for `d` (untimed idle time between round trips).
fn idle_for(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

// ---- floor: plain TCP loopback ---------------------------------------------------------------

fn tcp_client(args: &Args, clock: &Clock) -> Result<Run> {
    pin(args.client_cpu, "client")?;
    let mut peer = Peer::spawn(&[])?;
    let port = match peer.recv()? {
        Msg::Listening { port } => port,
        other => bail!("expected the responder's port, got {other:?}"),
    };
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("connecting to the responder on 127.0.0.1:{port}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let wait = args.wait();
    stream
        .set_nonblocking(wait != Wait::Block)
        .context("making the socket non-blocking")?;
    peer.expect_ready()?;

    let mut buf = vec![0x5au8; args.size];
    let warmup = args.warmup();
    let mut ticks = Vec::with_capacity(args.iters as usize);
    let mut start = Instant::now();
    for k in 0..warmup + args.iters {
        if k == warmup {
            start = Instant::now();
        }
        let t0 = clock.now();
        send_all(&mut stream, &buf, wait).context("sending to the responder")?;
        recv_exact(&mut stream, &mut buf, wait).context("reading the responder's reply")?;
        let t1 = clock.now();
        if k >= warmup {
            ticks.push(t1 - t0);
        }
    }
    let wall = start.elapsed();
    drop(stream);
    peer.finish()?;
    let mut extra = serde_json::Map::new();
    extra.insert("wait".into(), value_name(wait).into());
    Ok(Run {
        name: format!("floor-tcp-{}", args.size),
        fabric: "baseline",
        op: "tcp".into(),
        size: args.size,
        ticks,
        wall,
        extra,
    })
}

fn tcp_responder(args: &Args) -> Result<()> {
    pin(args.server_cpu, "responder")?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    let port = listener
        .local_addr()
        .context("reading the bound port")?
        .port();
    let mut control = Control::new();
    control.send(&Msg::Listening { port })?;
    let (mut stream, _) = listener.accept().context("accepting the client")?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let wait = args.wait();
    stream
        .set_nonblocking(wait != Wait::Block)
        .context("making the socket non-blocking")?;
    control.send(&Msg::Ready)?;
    let mut buf = vec![0u8; args.size];
    for _ in 0..args.warmup() + args.iters {
        recv_exact(&mut stream, &mut buf, wait).context("reading the client's request")?;
        send_all(&mut stream, &buf, wait).context("replying to the client")?;
    }
    control.expect_done()
}

/// `read_exact`, busy-polling when the socket is non-blocking (`wait` is not `Block`).
fn recv_exact(stream: &mut TcpStream, mut buf: &mut [u8], wait: Wait) -> Result<()> {
    let mut idle = Idle::new(wait);
    while !buf.is_empty() {
        match stream.read(buf) {
            Ok(0) => bail!("the peer closed the connection"),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                idle.pause(None, "data from the peer")?
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `write_all`, busy-polling when the socket is non-blocking.
fn send_all(stream: &mut TcpStream, mut buf: &[u8], wait: Wait) -> Result<()> {
    let mut idle = Idle::new(wait);
    while !buf.is_empty() {
        match stream.write(buf) {
            Ok(0) => bail!("the connection accepts no more data"),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                idle.pause(None, "room in the socket buffer")?
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
