//! The raw fabric ping-pong: round trips of WRITE_WITH_IMM (or SEND) between two processes,
//! with no rafi layer in between, generic over [`Fabric`].
//!
//! ```text
//!  measuring process (cpu A)                       peer process (cpu B)
//!  pin, open fabric, spawn peer ──────────────────▶ recv Setup, pin, open fabric
//!  send Setup                                       post receives, send Hello
//!  post receives, recv Hello, send Hello ─────────▶ recv Hello, connect, send Ready
//!  connect, recv Ready
//!  ┌ t0 ─ post op(seq 2k+1) into the peer's region ─▶ receive completion (imm = seq)
//!  │                                                  post op(seq 2k+2) back
//!  └ t1 ◀─ receive completion (imm = seq) ──────────
//!  repost the receive (untimed)                      repost the receive
//!  send Done, wait for the peer's exit ─────────────▶ recv Done, exit 0
//! ```
//!
//! The control messages are JSON lines over the peer's stdin and stdout
//! ([`super::control`]). Each side pins its process before opening the fabric, so helper
//! threads share its core. One round trip is timed with [`Instant`] (a vDSO clock read, some
//! 20 ns on x86_64) from just before the post to just after the reply's completion. The
//! immediate (and for SEND the byte count) of every arrival is checked; the payload's
//! sequence stamps are checked during warm-up and on the last round trip.
//!
//! A side that sees nothing for a while looks, every few thousand empty polls, at its queue
//! pair (which fails when the peer's goes away) and at the peer process, so a dead peer ends
//! the run with an error instead of a hang.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::control::{ControlChannel, ControlError, PeerProcess};
use super::cpus::{check_allowed, pin, CpuError, CpuPair};
use super::report::{LatencyRecorder, LatencyReport};
use crate::fabric::{
    self, Access, CompletionQueue, Endpoint, Fabric, FabricConfig, FabricError, FabricKind,
    FabricUser, MemoryRegion, PostError, ProtectionDomain, QpConfig, QpState, QueuePair, RecvWr,
    RemoteAddr, SendOp, SendWr, VerbsConfig, WaitError, WcOpcode, WcStatus, WorkCompletion,
};

/// The `scenario` field of this benchmark's reports.
pub const SCENARIO: &str = "pingpong";
/// Largest payload: 1 GiB, the largest message of every backend.
pub const MAX_SIZE: usize = 1 << 30;
/// Regions are at least this large, so that a zero-byte payload still has a target.
const MIN_REGION: usize = 4096;
/// Receives kept posted on each side.
const RECV_DEPTH: u32 = 64;
/// One send in this many asks for a completion (verbs frees send-queue slots only then).
const SIGNAL_EVERY: u64 = 32;
/// Signaled sends allowed in flight before posting waits for their completions.
const MAX_SIGNALED: u32 = 4;
/// A side that sees no progress for this long gives up (the peer hangs).
const STALL: Duration = Duration::from_secs(60);
/// Empty polls between looks at the queue pair, the peer and the clock.
const CHECK_EVERY: u32 = 4096;
/// How long one blocking wait sleeps before looking at the peer.
const BLOCK_SLICE: Duration = Duration::from_millis(100);

/// The ping-pong failed.
#[derive(Debug, thiserror::Error)]
pub enum PingpongError {
    #[error("invalid ping-pong settings: {0}")]
    Config(String),
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error("{what}")]
    Fabric {
        what: &'static str,
        source: FabricError,
    },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{what}")]
    Post {
        what: &'static str,
        source: PostError,
    },
    #[error("{what} completed with: {status}{}", peer_hint(*.status))]
    Completion {
        what: &'static str,
        status: WcStatus,
    },
    #[error("waiting for {what}")]
    Wait {
        what: &'static str,
        source: WaitError,
    },
    #[error("the queue pair failed while waiting for {what}: the peer is gone")]
    PeerLost { what: &'static str },
    #[error("waited {after:?} for {what} in vain: the peer is stuck", after = STALL)]
    Stalled { what: &'static str },
    /// A round trip failed and the peer process turned out to have exited.
    #[error("the peer process exited during the run ({status})")]
    PeerExited {
        status: std::process::ExitStatus,
        #[source]
        cause: Box<PingpongError>,
    },
    #[error("unexpected arrival for sequence {seq}: {detail}")]
    Unexpected { seq: u64, detail: String },
    #[error("expected {expected} from the {from}, got {got}")]
    Protocol {
        from: &'static str,
        expected: &'static str,
        got: String,
    },
}

fn peer_hint(status: WcStatus) -> &'static str {
    match status {
        WcStatus::Success => "",
        _ => " (did the peer exit?)",
    }
}

impl PingpongError {
    fn fabric(what: &'static str) -> impl FnOnce(FabricError) -> Self {
        move |source| Self::Fabric { what, source }
    }

    fn post(what: &'static str) -> impl FnOnce(PostError) -> Self {
        move |source| Self::Post { what, source }
    }
}

/// The operation bounced each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PingOp {
    /// RDMA WRITE_WITH_IMM into the peer's region; its receive completion signals arrival.
    WriteImm,
    /// SEND into a receive buffer the peer posted.
    Send,
}

impl PingOp {
    pub fn name(self) -> &'static str {
        match self {
            PingOp::WriteImm => "write-imm",
            PingOp::Send => "send",
        }
    }
}

/// How both sides wait for an arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaitMode {
    /// Busy-poll the completion queue with a PAUSE between empty polls.
    Spin,
    /// Busy-poll with `sched_yield` between empty polls (lets a helper thread on the same
    /// core run: the tcp fabric's progress thread).
    Yield,
    /// Sleep on a completion channel until the completion arrives.
    Block,
}

impl WaitMode {
    pub fn name(self) -> &'static str {
        match self {
            WaitMode::Spin => "spin",
            WaitMode::Yield => "yield",
            WaitMode::Block => "block",
        }
    }

    /// What suits a fabric when nobody says: spin, but yield on tcp, whose progress thread
    /// shares the pinned core (docs/performance.md).
    pub fn default_for(kind: FabricKind) -> Self {
        match kind {
            FabricKind::Tcp => WaitMode::Yield,
            FabricKind::Shm | FabricKind::Verbs => WaitMode::Spin,
        }
    }
}

/// Everything both sides need to know; the measuring side sends it to the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingpongConfig {
    pub fabric: FabricKind,
    /// verbs: device name, overriding `RAFI_RDMA_DEVICE`.
    pub device: Option<String>,
    /// verbs: GID index, overriding `RAFI_RDMA_GID_INDEX`.
    pub gid_index: Option<u8>,
    pub op: PingOp,
    /// Payload bytes each way, 0 ..= [`MAX_SIZE`].
    pub size: usize,
    /// Timed round trips, at least 1.
    pub iters: u64,
    /// Untimed round trips before them.
    pub warmup: u64,
    pub wait: WaitMode,
    pub cpus: CpuPair,
}

impl PingpongConfig {
    /// Defaults: WRITE_WITH_IMM of 64 bytes, 100 000 round trips, the fabric's default
    /// wait, the first two cores this process may use.
    pub fn new(fabric: FabricKind) -> Self {
        Self {
            fabric,
            device: None,
            gid_index: None,
            op: PingOp::WriteImm,
            size: 64,
            iters: 100_000,
            warmup: Self::default_warmup(100_000, 64),
            wait: WaitMode::default_for(fabric),
            cpus: CpuPair::default_for_this_process(),
        }
    }

    /// A tenth of `iters`, at least 1000, but no more than about 1 GiB of payload (so a
    /// 1 GiB ping-pong warms up with one round trip).
    pub fn default_warmup(iters: u64, size: usize) -> u64 {
        let by_iters = (iters / 10).max(1000);
        let by_bytes = (MAX_SIZE / size.max(1)).max(1) as u64;
        by_iters.min(by_bytes)
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// For a size over 1 GiB, zero iterations, or a malformed verbs environment variable.
    pub fn validate(&self) -> Result<(), PingpongError> {
        if self.size > MAX_SIZE {
            return Err(PingpongError::Config(format!(
                "size {} exceeds the limit of {MAX_SIZE} bytes (1 GiB)",
                self.size
            )));
        }
        if self.iters == 0 {
            return Err(PingpongError::Config("iters must be at least 1".into()));
        }
        if self.fabric == FabricKind::Verbs {
            VerbsConfig::check_env().map_err(PingpongError::Config)?;
        }
        Ok(())
    }

    /// The fabric settings: [`FabricConfig::new`] (verbs settings from the environment),
    /// then the device and GID index given here.
    pub fn fabric_config(&self) -> FabricConfig {
        let mut config = FabricConfig::new(self.fabric);
        if let Some(device) = &self.device {
            config.verbs.device = Some(device.clone());
        }
        if let Some(gid) = self.gid_index {
            config.verbs.gid_index = Some(gid);
        }
        config
    }

    fn region_len(&self) -> usize {
        self.size.max(MIN_REGION)
    }
}

/// Where a side's queue pair and target region are: what each side sends the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub endpoint: Endpoint,
    /// Address and rkey of the region the peer's requests land in.
    pub addr: u64,
    pub rkey: u32,
}

/// The control messages of the ping-pong.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum Msg {
    /// Measuring side → peer: the settings.
    Setup(PingpongConfig),
    /// Both ways.
    Hello(Hello),
    /// Peer → measuring side: connected, receives posted, polling.
    Ready,
    /// Measuring side → peer: finished; tear down.
    Done,
}

impl Msg {
    fn name(&self) -> String {
        match self {
            Msg::Setup(_) => "setup".into(),
            Msg::Hello(_) => "hello".into(),
            Msg::Ready => "ready".into(),
            Msg::Done => "done".into(),
        }
    }
}

/// Sequence numbers: round trip `k` carries `2k + 1` to the peer and `2k + 2` back, so each
/// side waits for a value it never wrote itself.
fn request_seq(k: u64) -> u64 {
    2 * k + 1
}
fn reply_seq(k: u64) -> u64 {
    2 * k + 2
}

/// What a waiting loop calls on its cold path to learn whether the peer still runs.
pub type Liveness<'a> = &'a mut dyn FnMut() -> Result<(), PingpongError>;

/// Keeps a waiting loop honest: a PAUSE or a yield between empty polls and, every
/// [`CHECK_EVERY`] of them, a look at the queue pair, the peer and the clock.
struct Idle {
    wait: WaitMode,
    empty: u32,
    since: Option<Instant>,
}

impl Idle {
    fn new(wait: WaitMode) -> Self {
        Self {
            wait,
            empty: 0,
            since: None,
        }
    }

    #[inline(always)]
    fn pause(
        &mut self,
        qp: &impl QueuePair,
        what: &'static str,
        alive: Liveness<'_>,
    ) -> Result<(), PingpongError> {
        match self.wait {
            WaitMode::Spin => std::hint::spin_loop(),
            WaitMode::Yield => std::thread::yield_now(),
            WaitMode::Block => {}
        }
        self.empty = self.empty.wrapping_add(1);
        if self.empty % CHECK_EVERY == 0 {
            self.check(qp, what, alive)?;
        }
        Ok(())
    }

    #[cold]
    fn check(
        &mut self,
        qp: &impl QueuePair,
        what: &'static str,
        alive: Liveness<'_>,
    ) -> Result<(), PingpongError> {
        if qp.state() == QpState::Error {
            return Err(PingpongError::PeerLost { what });
        }
        alive()?;
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= STALL {
            return Err(PingpongError::Stalled { what });
        }
        Ok(())
    }
}

/// One side of the ping-pong: a queue pair, its completion queues, the region the peer
/// writes into (`dst`) and the one our requests read from (`src`).
pub struct PingpongSide<F: Fabric> {
    qp: F::Qp,
    send_cq: F::Cq,
    recv_cq: F::Cq,
    dst: F::Mr,
    src: F::Mr,
    remote: RemoteAddr,
    op: PingOp,
    size: usize,
    wait: WaitMode,
    posted: u64,
    signaled_in_flight: u32,
    recvs_posted: u64,
    wc: [WorkCompletion; 16],
    _channel: Option<F::Channel>,
    _pd: F::Pd,
    _fabric: F,
}

impl<F: Fabric> std::fmt::Debug for PingpongSide<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PingpongSide")
            .field("qp", &self.qp)
            .field("op", &self.op)
            .field("size", &self.size)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl<F: Fabric> PingpongSide<F> {
    /// Allocates everything on `fabric` and posts the receives (before connecting, so the
    /// peer never finds none).
    ///
    /// # Errors
    /// When the fabric refuses a resource.
    pub fn open(fabric: F, config: &PingpongConfig) -> Result<Self, PingpongError> {
        let pd = fabric
            .alloc_pd()
            .map_err(PingpongError::fabric("allocating a protection domain"))?;
        let channel = match config.wait {
            WaitMode::Block => Some(
                fabric
                    .create_channel()
                    .map_err(PingpongError::fabric("creating a completion channel"))?,
            ),
            WaitMode::Spin | WaitMode::Yield => None,
        };
        let send_cq = fabric
            .create_cq(4 * SIGNAL_EVERY as u32, None)
            .map_err(PingpongError::fabric("creating the send completion queue"))?;
        let recv_cq =
            fabric
                .create_cq(2 * RECV_DEPTH, channel.as_ref())
                .map_err(PingpongError::fabric(
                    "creating the receive completion queue",
                ))?;
        let qp_config = QpConfig {
            max_inline_data: 0,
            ..QpConfig::default()
        };
        let qp = pd
            .create_qp(&send_cq, &recv_cq, qp_config)
            .map_err(PingpongError::fabric("creating the queue pair"))?;
        let len = config.region_len();
        let dst = pd
            .register(len, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
            .map_err(PingpongError::fabric("registering the target region"))?;
        let src = pd
            .register(len, Access::LOCAL_WRITE)
            .map_err(PingpongError::fabric("registering the source region"))?;
        let mut side = Self {
            qp,
            send_cq,
            recv_cq,
            dst,
            src,
            remote: RemoteAddr::default(),
            op: config.op,
            size: config.size,
            wait: config.wait,
            posted: 0,
            signaled_in_flight: 0,
            recvs_posted: 0,
            wc: [WorkCompletion::default(); 16],
            _channel: channel,
            _pd: pd,
            _fabric: fabric,
        };
        for _ in 0..RECV_DEPTH {
            side.post_recv()?;
        }
        Ok(side)
    }

    /// What the peer needs to reach this side.
    pub fn hello(&self) -> Hello {
        Hello {
            endpoint: self.qp.endpoint(),
            addr: self.dst.addr(),
            rkey: self.dst.rkey(),
        }
    }

    /// Connects to the peer. Requests may flow once both sides have connected.
    ///
    /// # Errors
    /// When the peer's endpoint is of another fabric or cannot be reached.
    pub fn connect(&mut self, peer: &Hello) -> Result<(), PingpongError> {
        self.remote = RemoteAddr {
            addr: peer.addr,
            rkey: peer.rkey,
        };
        self.qp
            .connect(&peer.endpoint)
            .map_err(PingpongError::fabric("connecting to the peer"))
    }

    /// The measuring side: `warmup + iters` round trips, the timed ones recorded.
    ///
    /// # Errors
    /// When a request fails, an arrival is not the one expected, or the peer goes away.
    pub fn measure(
        &mut self,
        warmup: u64,
        iters: u64,
        recorder: &mut LatencyRecorder,
        alive: Liveness<'_>,
    ) -> Result<(), PingpongError> {
        let total = warmup + iters;
        for k in 0..total {
            let t0 = Instant::now();
            self.post(request_seq(k), alive)?;
            self.wait_arrival(reply_seq(k), alive)?;
            let elapsed = t0.elapsed();
            if k >= warmup {
                recorder.record(elapsed);
            }
            if k < warmup || k + 1 == total {
                self.check_payload(reply_seq(k))?;
            }
            self.post_recv()?;
        }
        self.reap_sends(true, alive)
    }

    /// The answering side: `warmup + iters` times, waits for the request and replies.
    ///
    /// # Errors
    /// As [`Self::measure`].
    pub fn respond(
        &mut self,
        warmup: u64,
        iters: u64,
        alive: Liveness<'_>,
    ) -> Result<(), PingpongError> {
        let total = warmup + iters;
        for k in 0..total {
            self.wait_arrival(request_seq(k), alive)?;
            if k < warmup || k + 1 == total {
                self.check_payload(request_seq(k))?;
            }
            self.post(reply_seq(k), alive)?;
            // Reposting after the reply: off the other side's critical path.
            self.post_recv()?;
        }
        self.reap_sends(true, alive)
    }

    #[inline]
    fn post_recv(&mut self) -> Result<(), PingpongError> {
        let sge = [self.dst.sge(0, self.size)];
        // WRITE_WITH_IMM only consumes the receive; SEND lands in its buffer.
        let sgl = match self.op {
            PingOp::Send if self.size > 0 => &sge[..],
            _ => &[],
        };
        self.qp
            .post_recv(&RecvWr {
                wr_id: self.recvs_posted,
                sgl,
            })
            .map_err(PingpongError::post("posting a receive"))?;
        self.recvs_posted += 1;
        Ok(())
    }

    /// Stamps `seq` into the payload (its last 8 bytes, or last byte when shorter; the
    /// first 8 too from 16 bytes on) and posts the op into the peer's region.
    #[inline]
    fn post(&mut self, seq: u64, alive: Liveness<'_>) -> Result<(), PingpongError> {
        if self.signaled_in_flight > 0 {
            self.reap_sends(self.signaled_in_flight >= MAX_SIGNALED, alive)?;
        }
        if let Some((off, len)) = stamp_span(self.size) {
            let bytes = seq.to_le_bytes();
            self.src.write(off, &bytes[..len]);
            if self.size >= 16 {
                self.src.write(0, &bytes);
            }
        }
        let op = match self.op {
            PingOp::WriteImm => SendOp::WriteWithImm {
                remote: self.remote,
                imm: seq as u32,
            },
            PingOp::Send => SendOp::Send,
        };
        self.posted += 1;
        let signaled = self.posted % SIGNAL_EVERY == 0;
        let sge = [self.src.sge(0, self.size)];
        let sgl = if self.size > 0 { &sge[..] } else { &[] };
        let mut wr = SendWr::new(seq, op, sgl);
        wr.signaled = signaled;
        self.qp
            .post_send(&wr)
            .map_err(PingpongError::post("posting the request"))?;
        self.signaled_in_flight += u32::from(signaled);
        Ok(())
    }

    /// Takes send completions; with `block`, until none of ours is in flight.
    fn reap_sends(&mut self, block: bool, alive: Liveness<'_>) -> Result<(), PingpongError> {
        let mut idle = Idle::new(match self.wait {
            WaitMode::Block => WaitMode::Yield,
            other => other,
        });
        while self.signaled_in_flight > 0 {
            let n = self.send_cq.poll(&mut self.wc);
            if let Some(wc) = self.wc[..n].iter().find(|wc| !wc.is_ok()) {
                return Err(PingpongError::Completion {
                    what: "a request",
                    status: wc.status,
                });
            }
            self.signaled_in_flight = self.signaled_in_flight.saturating_sub(n as u32);
            if n == 0 {
                if !block {
                    break;
                }
                idle.pause(&self.qp, "a send completion", alive)?;
            }
        }
        Ok(())
    }

    /// Waits for the receive completion of the arrival stamped `seq` and checks it.
    #[inline]
    fn wait_arrival(&mut self, seq: u64, alive: Liveness<'_>) -> Result<(), PingpongError> {
        let wc = self.next_recv(alive)?;
        let (opcode, imm) = match self.op {
            PingOp::WriteImm => (WcOpcode::RecvRdmaWithImm, Some(seq as u32)),
            PingOp::Send => (WcOpcode::Recv, None),
        };
        if (wc.opcode, wc.imm, wc.byte_len as usize) != (opcode, imm, self.size) {
            return Err(unexpected(seq, &wc));
        }
        Ok(())
    }

    #[inline]
    fn next_recv(&mut self, alive: Liveness<'_>) -> Result<WorkCompletion, PingpongError> {
        let mut idle = Idle::new(self.wait);
        loop {
            let n = match self.wait {
                WaitMode::Block => match self.recv_cq.wait(&mut self.wc[..1], Some(BLOCK_SLICE)) {
                    Ok(n) => n,
                    Err(WaitError::Timeout(_)) => {
                        idle.check(&self.qp, "a receive completion", alive)?;
                        continue;
                    }
                    Err(source) => {
                        return Err(PingpongError::Wait {
                            what: "a receive completion",
                            source,
                        })
                    }
                },
                WaitMode::Spin | WaitMode::Yield => self.recv_cq.poll(&mut self.wc[..1]),
            };
            if n > 0 {
                let wc = self.wc[0];
                if !wc.is_ok() {
                    return Err(PingpongError::Completion {
                        what: "a receive",
                        status: wc.status,
                    });
                }
                return Ok(wc);
            }
            idle.pause(&self.qp, "a receive completion", alive)?;
        }
    }

    /// Checks the sequence stamps of the payload that just arrived.
    #[cold]
    fn check_payload(&self, seq: u64) -> Result<(), PingpongError> {
        let Some((off, len)) = stamp_span(self.size) else {
            return Ok(());
        };
        let want = seq.to_le_bytes();
        let mut got = [0u8; 8];
        self.dst.read(off, &mut got[..len]);
        let mut ok = got[..len] == want[..len];
        if self.size >= 16 {
            self.dst.read(0, &mut got);
            ok &= got == want;
        }
        if ok {
            Ok(())
        } else {
            Err(PingpongError::Unexpected {
                seq,
                detail: "the payload does not carry its sequence stamp".into(),
            })
        }
    }
}

#[cold]
fn unexpected(seq: u64, wc: &WorkCompletion) -> PingpongError {
    PingpongError::Unexpected {
        seq,
        detail: format!("receive completion {wc:?}"),
    }
}

/// Where the sequence stamp of a `size`-byte payload lives: (offset, length).
fn stamp_span(size: usize) -> Option<(usize, usize)> {
    match size {
        0 => None,
        1..=7 => Some((size - 1, 1)),
        _ => Some((size - 8, 8)),
    }
}

// ---- the two processes ------------------------------------------------------------------

/// Runs the measuring side: pins this process to `config.cpus.client`, opens the fabric,
/// starts the peer (this executable with `peer_args`, which must lead to [`run_peer`]),
/// measures and returns the report.
///
/// # Errors
/// For invalid settings, a fabric that cannot be opened (verbs without the feature, no
/// device), a peer that fails or dies, or a failed round trip.
pub fn run(config: &PingpongConfig, peer_args: &[&str]) -> Result<LatencyReport, PingpongError> {
    config.validate()?;
    check_allowed(config.cpus)?;
    pin(config.cpus.client, "measuring process")?;
    fabric::open(&config.fabric_config(), Measure { config, peer_args })
        .map_err(PingpongError::fabric("opening the fabric"))?
}

/// Runs the peer side: reads the settings from stdin (sent by [`run`]), pins itself to
/// `cpus.server`, and answers until the measuring side is done.
///
/// # Errors
/// As [`run`]; also when the measuring side goes away.
pub fn run_peer() -> Result<(), PingpongError> {
    let mut control = ControlChannel::stdio();
    let config = match control.recv()? {
        Msg::Setup(config) => config,
        other => return Err(protocol("parent process", "setup", &other)),
    };
    config.validate()?;
    pin(config.cpus.server, "peer process")?;
    fabric::open(
        &config.fabric_config(),
        Respond {
            config: &config,
            control,
        },
    )
    .map_err(PingpongError::fabric("opening the fabric"))?
}

fn protocol(from: &'static str, expected: &'static str, got: &Msg) -> PingpongError {
    PingpongError::Protocol {
        from,
        expected,
        got: got.name(),
    }
}

struct Measure<'a> {
    config: &'a PingpongConfig,
    peer_args: &'a [&'a str],
}

impl FabricUser for Measure<'_> {
    type Output = Result<LatencyReport, PingpongError>;

    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let config = self.config;
        let mut peer = PeerProcess::spawn(self.peer_args)?;
        peer.send(&Msg::Setup(config.clone()))?;
        let mut side = PingpongSide::open(fabric, config)?;
        let theirs = match peer.recv()? {
            Msg::Hello(hello) => hello,
            other => return Err(protocol("peer process", "hello", &other)),
        };
        peer.send(&Msg::Hello(side.hello()))?;
        side.connect(&theirs)?;
        match peer.recv()? {
            Msg::Ready => {}
            other => return Err(protocol("peer process", "ready", &other)),
        }

        let mut recorder = LatencyRecorder::new();
        let mut alive = || peer.check_alive().map_err(PingpongError::from);
        let measured = side.measure(config.warmup, config.iters, &mut recorder, &mut alive);
        if let Err(cause) = measured {
            // Most failures mid-run mean the peer is gone: say so, with how it ended.
            return Err(match peer.exit_status_within(Duration::from_millis(500)) {
                Some(status) => PingpongError::PeerExited {
                    status,
                    cause: Box::new(cause),
                },
                None => cause,
            });
        }
        peer.send(&Msg::Done)?;
        peer.finish()?;

        Ok(recorder
            .report(
                SCENARIO,
                config.fabric.name(),
                config.op.name(),
                config.size,
                config.warmup,
            )
            .with("wait", config.wait.name())
            .with("client_cpu", config.cpus.client)
            .with("server_cpu", config.cpus.server))
    }
}

struct Respond<'a, R, W> {
    config: &'a PingpongConfig,
    control: ControlChannel<R, W>,
}

impl<R: std::io::BufRead, W: std::io::Write> FabricUser for Respond<'_, R, W> {
    type Output = Result<(), PingpongError>;

    fn run<F: Fabric>(mut self, fabric: F) -> Self::Output {
        let config = self.config;
        let mut side = PingpongSide::open(fabric, config)?;
        self.control.send(&Msg::Hello(side.hello()))?;
        let theirs = match self.control.recv()? {
            Msg::Hello(hello) => hello,
            other => return Err(protocol("parent process", "hello", &other)),
        };
        side.connect(&theirs)?;
        self.control.send(&Msg::Ready)?;

        // The parent's death shows as a new parent id (we are re-parented).
        let parent = std::os::unix::process::parent_id();
        let mut alive = || {
            if std::os::unix::process::parent_id() == parent {
                Ok(())
            } else {
                Err(PingpongError::Control(ControlError::Closed {
                    peer: "parent process",
                    status: None,
                }))
            }
        };
        side.respond(config.warmup, config.iters, &mut alive)?;
        match self.control.recv()? {
            Msg::Done => Ok(()),
            other => Err(protocol("parent process", "done", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps() {
        assert_eq!(stamp_span(0), None);
        assert_eq!(stamp_span(1), Some((0, 1)));
        assert_eq!(stamp_span(7), Some((6, 1)));
        assert_eq!(stamp_span(8), Some((0, 8)));
        assert_eq!(stamp_span(64), Some((56, 8)));
    }

    #[test]
    fn warmup_defaults() {
        assert_eq!(PingpongConfig::default_warmup(100_000, 64), 10_000);
        assert_eq!(PingpongConfig::default_warmup(100, 64), 1000);
        assert_eq!(PingpongConfig::default_warmup(100, 1 << 20), 1000);
        assert_eq!(PingpongConfig::default_warmup(100, 1 << 30), 1);
        assert_eq!(PingpongConfig::default_warmup(100, 0), 1000);
    }

    #[test]
    fn validation() {
        let mut c = PingpongConfig::new(FabricKind::Shm);
        assert!(c.validate().is_ok());
        c.size = MAX_SIZE + 1;
        assert!(matches!(c.validate(), Err(PingpongError::Config(_))));
        c.size = 0;
        c.iters = 0;
        assert!(matches!(c.validate(), Err(PingpongError::Config(_))));
    }

    #[test]
    fn error_messages() {
        let e = PingpongError::Stalled {
            what: "a receive completion",
        };
        assert_eq!(
            e.to_string(),
            "waited 60s for a receive completion in vain: the peer is stuck"
        );
    }

    #[test]
    fn setup_message_round_trips() {
        let mut c = PingpongConfig::new(FabricKind::Verbs);
        c.device = Some("rxe0".into());
        c.gid_index = Some(1);
        let line = serde_json::to_string(&Msg::Setup(c.clone())).unwrap();
        match serde_json::from_str(&line).unwrap() {
            Msg::Setup(back) => assert_eq!(back, c),
            other => panic!("got {other:?}"),
        }
        let fc = c.fabric_config();
        assert_eq!(fc.verbs.device.as_deref(), Some("rxe0"));
        assert_eq!(fc.verbs.gid_index, Some(1));
    }

    /// Both sides in one process, on two threads: the generic loop without the process
    /// machinery.
    #[test]
    fn in_process_on_both_mock_fabrics() {
        for (kind, op, size) in [
            (FabricKind::Shm, PingOp::WriteImm, 64),
            (FabricKind::Shm, PingOp::Send, 0),
            (FabricKind::Tcp, PingOp::WriteImm, 3),
            (FabricKind::Tcp, PingOp::Send, 5000),
        ] {
            let mut config = PingpongConfig::new(kind);
            config.op = op;
            config.size = size;
            config.wait = WaitMode::Yield;
            let open = |config: &PingpongConfig| {
                let fabric = rdma_mock::Device::open(rdma_mock::DeviceConfig::new(match kind {
                    FabricKind::Tcp => rdma_mock::Fabric::Tcp,
                    _ => rdma_mock::Fabric::Shm,
                }))
                .unwrap();
                PingpongSide::open(fabric, config).unwrap()
            };
            let mut a = open(&config);
            let mut b = open(&config);
            let (ha, hb) = (a.hello(), b.hello());
            let responder = std::thread::spawn(move || {
                b.connect(&ha).unwrap();
                b.respond(10, 200, &mut || Ok(())).unwrap();
            });
            a.connect(&hb).unwrap();
            let mut rec = LatencyRecorder::new();
            a.measure(10, 200, &mut rec, &mut || Ok(())).unwrap();
            responder.join().unwrap();
            let r = rec.report(SCENARIO, kind.name(), op.name(), size, 10);
            assert_eq!(r.iters, 200);
            assert!(r.min_ns <= r.p50_ns && r.p50_ns <= r.p99_ns && r.p99_ns <= r.max_ns);
        }
    }
}
