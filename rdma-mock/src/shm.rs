//! The shm fabric: processes on one host.
//!
//! Connection set-up: every device runs an *agent* thread that listens on an abstract Unix
//! socket. The dialing side sends a hello with four descriptors attached (its protection
//! domain's arena, its QP's receive-queue block, its receive CQ's notify page and, if it has
//! one, the CQ's channel eventfd) and gets the same back. Each side maps the other's arena
//! whole, so regions registered later are reachable by their rkey at once.
//!
//! Data path: `post_send` runs the [`responder`](crate::responder) itself over the peer's
//! mapped memory: a direct copy or atomic, then the receive completion written into the
//! peer's slot. No thread of the peer takes part, and nothing on the path allocates, locks
//! or makes a system call (except waking a peer that sleeps on its channel).
//!
//! Failure: the agent keeps each connection's socket and watches it with epoll. When the
//! peer process dies or drops its QP, the kernel closes the socket; the agent marks the
//! link dead and moves the local QP to the error state, which flushes its receives and
//! fails later sends with `RetryExceeded`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::device::{Accepted, Endpoint, Pending, Registry};
use crate::error::{ConnectError, OpenError, PostError};
use crate::memory::{arena_len_is_valid, ArenaView};
use crate::qp::{send_completion, QpShared};
use crate::queue::{block_len, RecvQueue};
use crate::responder::{with_rnr_retry, AtomicOp, Target};
use crate::sys::{self, page_size, recv_with_fds, send_with_fds, Epoll, EventFd, SharedMapping};
use crate::types::{QpState, SendOp, SendWr, WcStatus};

const MAGIC: u32 = 0x4b4d_4452; // "RDMK"
const VERSION: u16 = 1;
const KIND_HELLO: u16 = 0;
const KIND_REFUSE: u16 = 2;
const HELLO_LEN: usize = 40;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The fixed part of a handshake message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hello {
    kind: u16,
    device: u64,
    qpn: u32,
    /// The QP the message is for (hello), or 0 in a reply.
    to_qpn: u32,
    to_device: u64,
    rq_depth: u32,
}

impl Hello {
    fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&self.kind.to_le_bytes());
        b[8..16].copy_from_slice(&self.device.to_le_bytes());
        b[16..20].copy_from_slice(&self.qpn.to_le_bytes());
        b[20..24].copy_from_slice(&self.to_qpn.to_le_bytes());
        b[24..32].copy_from_slice(&self.to_device.to_le_bytes());
        b[32..36].copy_from_slice(&self.rq_depth.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < HELLO_LEN {
            return Err(format!(
                "handshake message of {} bytes is too short",
                b.len()
            ));
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != MAGIC || u16_at(4) != VERSION {
            return Err("not an rdma-mock shm handshake (magic or version differ)".into());
        }
        Ok(Hello {
            kind: u16_at(6),
            device: u64_at(8),
            qpn: u32_at(16),
            to_qpn: u32_at(20),
            to_device: u64_at(24),
            rq_depth: u32_at(32),
        })
    }
}

/// The descriptors that describe a QP to its peer.
fn qp_fds(qp: &QpShared) -> Vec<RawFd> {
    let mut fds = vec![
        qp.pd.arena.mapping().fd(),
        qp.rq.mapping().fd(),
        qp.recv_cq.notify.fd(),
    ];
    if let Some(channel) = &qp.recv_cq.channel {
        fds.push(channel.event.as_raw_fd());
    }
    fds
}

/// The peer's memory, mapped into this process.
struct PeerMemory {
    arena: SharedMapping,
    rq: RecvQueue,
    notify: SharedMapping,
    event: Option<EventFd>,
}

impl PeerMemory {
    fn map(hello: &Hello, fds: Vec<OwnedFd>) -> io::Result<Self> {
        let mut fds = fds.into_iter();
        let (Some(arena), Some(rq), Some(notify)) = (fds.next(), fds.next(), fds.next()) else {
            return Err(io::Error::other("handshake carried too few descriptors"));
        };
        let arena_len = std::fs::File::from(arena.try_clone()?).metadata()?.len() as usize;
        if !arena_len_is_valid(arena_len) {
            return Err(io::Error::other("peer's arena is too small"));
        }
        let depth = hello.rq_depth;
        if depth == 0 || !depth.is_power_of_two() || depth > 1 << 16 {
            return Err(io::Error::other(format!(
                "peer announced a receive queue of {depth} slots"
            )));
        }
        Ok(Self {
            arena: SharedMapping::map(arena, arena_len)?,
            rq: RecvQueue::from_peer(SharedMapping::map(rq, block_len(depth))?, depth)?,
            notify: SharedMapping::map(notify, page_size())?,
            event: fds.next().map(EventFd::from_owned),
        })
    }
}

/// What a link and the agent that watches its socket share.
struct LinkState {
    /// Cleared when the peer's socket closes.
    alive: AtomicBool,
    /// Set once the QP's `connect` owns the link: only then does the peer's death fail the
    /// QP (a stray dialer that leaves must not).
    active: AtomicBool,
}

/// A connected shm QP's view of its peer.
pub(crate) struct ShmLink {
    peer: PeerMemory,
    state: Arc<LinkState>,
    /// Number of the peer's next receive that we consume.
    rq_next: u64,
    token: u64,
    agent: Weak<AgentShared>,
}

impl ShmLink {
    /// The QP's `connect` takes this link. False if the peer already went away.
    pub(crate) fn activate(&self) -> bool {
        self.state.active.store(true, Ordering::SeqCst);
        self.state.alive.load(Ordering::SeqCst)
    }

    #[inline]
    pub(crate) fn post_send(&mut self, qp: &QpShared, wr: &SendWr<'_>) -> Result<(), PostError> {
        // Unpolled completions count against max_send_wr (the ring may be a little larger).
        if qp.send_ring.len() >= qp.config.max_send_wr as u64 {
            return Err(PostError::SendQueueFull(qp.config.max_send_wr));
        }
        let result = if qp.state() == QpState::Error {
            Err(WcStatus::WrFlushError)
        } else {
            self.execute(qp, wr)
        };
        match result {
            Ok(len) if wr.signaled => qp.push_send_completion(send_completion(
                qp,
                wr.wr_id,
                wr.op,
                WcStatus::Success,
                len,
            )),
            Ok(_) => {}
            Err(status) => {
                qp.fail();
                qp.push_send_completion(send_completion(qp, wr.wr_id, wr.op, status, 0));
            }
        }
        Ok(())
    }

    /// Runs the request against the peer's memory; returns the bytes moved.
    #[inline]
    fn execute(&mut self, qp: &QpShared, wr: &SendWr<'_>) -> Result<u32, WcStatus> {
        if !self.state.alive.load(Ordering::Relaxed) || self.peer.rq.state() == QpState::Error {
            return Err(WcStatus::RetryExceeded);
        }
        let alive = &self.state.alive;
        let mut target = Target {
            arena: ArenaView::new(&self.peer.arena),
            rq: &self.peer.rq,
            cq_notify: &self.peer.notify,
            cq_event: self.peer.event.as_ref(),
            rq_next: &mut self.rq_next,
        };
        let config = &qp.config;
        let still_there = || alive.load(Ordering::Relaxed);
        match wr.op {
            SendOp::Write { remote } => {
                let src = qp.gather(&wr.payload)?;
                with_rnr_retry(config, still_there, || target.write(remote, &src))?;
                Ok(src.total() as u32)
            }
            SendOp::WriteWithImm { remote, imm } => {
                let src = qp.gather(&wr.payload)?;
                with_rnr_retry(config, still_there, || {
                    target.write_with_imm(remote, &src, imm)
                })?;
                Ok(src.total() as u32)
            }
            SendOp::Send | SendOp::SendWithImm { .. } => {
                let imm = if let SendOp::SendWithImm { imm } = wr.op {
                    Some(imm)
                } else {
                    None
                };
                let src = qp.gather(&wr.payload)?;
                with_rnr_retry(config, still_there, || target.send(&src, imm))?;
                Ok(src.total() as u32)
            }
            SendOp::Read { remote } => {
                let dst = qp.scatter(&wr.payload)?;
                with_rnr_retry(config, still_there, || target.read(remote, &dst))?;
                Ok(dst.total() as u32)
            }
            SendOp::FetchAdd { remote, add } => {
                atomic(qp, wr, &mut target, remote, AtomicOp::FetchAdd(add))
            }
            SendOp::CmpSwap {
                remote,
                compare,
                swap,
            } => atomic(
                qp,
                wr,
                &mut target,
                remote,
                AtomicOp::CmpSwap { compare, swap },
            ),
        }
    }
}

impl Drop for ShmLink {
    /// Closing our end of the socket is what tells the peer we are gone.
    fn drop(&mut self) {
        if let Some(agent) = self.agent.upgrade() {
            agent.command(Command::Forget(self.token));
        }
    }
}

fn atomic(
    qp: &QpShared,
    wr: &SendWr<'_>,
    target: &mut Target<'_>,
    remote: crate::RemoteAddr,
    op: AtomicOp,
) -> Result<u32, WcStatus> {
    let dst = qp.scatter(&wr.payload)?;
    let old = match target.atomic(remote, op) {
        Ok(old) => old,
        Err(crate::responder::Refusal::Failed(s)) => return Err(s),
        Err(crate::responder::Refusal::NotReady) => return Err(WcStatus::RnrRetryExceeded),
    };
    // SAFETY: `dst` was resolved to 8 writable bytes (validate_send requires one 8-byte sge).
    unsafe { dst.fill_from(old.to_le_bytes().as_ptr()) };
    Ok(8)
}

/// Dials the peer's agent and links `qp` to the peer QP at `remote`.
pub(crate) fn dial(
    agent: &Agent,
    qp: &Arc<QpShared>,
    remote: &Endpoint,
) -> Result<ShmLink, ConnectError> {
    let addr = SocketAddr::from_abstract_name(remote.address.as_bytes()).map_err(|source| {
        ConnectError::Unreachable {
            addr: remote.address.clone(),
            source,
        }
    })?;
    let stream = UnixStream::connect_addr(&addr).map_err(|source| ConnectError::Unreachable {
        addr: remote.address.clone(),
        source,
    })?;
    let handshake = |e: io::Error| ConnectError::Handshake(e.to_string());
    // Peers map each other's memory: only processes of our own user may be peers.
    let uid = sys::peer_uid(&stream).map_err(handshake)?;
    if uid != sys::own_uid() {
        return Err(ConnectError::Refused(format!(
            "the endpoint belongs to user {uid}; the shm fabric connects processes of one user"
        )));
    }
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(handshake)?;
    let hello = Hello {
        kind: KIND_HELLO,
        device: agent.shared.uid,
        qpn: qp.qpn,
        to_qpn: remote.qpn,
        to_device: remote.device,
        rq_depth: qp.rq.depth(),
    };
    send_with_fds(&stream, &hello.encode(), &qp_fds(qp)).map_err(handshake)?;
    let mut buf = [0u8; 512];
    let (n, fds) = recv_with_fds(&stream, &mut buf).map_err(handshake)?;
    if n == 0 {
        return Err(ConnectError::Refused(
            "the peer closed the connection during the handshake".into(),
        ));
    }
    let reply = Hello::decode(&buf[..n]).map_err(ConnectError::Handshake)?;
    if reply.kind == KIND_REFUSE {
        return Err(ConnectError::Refused(
            String::from_utf8_lossy(&buf[HELLO_LEN..n]).into_owned(),
        ));
    }
    if reply.device != remote.device || reply.qpn != remote.qpn {
        return Err(ConnectError::Handshake(
            "the reply came from another queue pair".into(),
        ));
    }
    let peer = PeerMemory::map(&reply, fds).map_err(handshake)?;
    stream.set_read_timeout(None).map_err(handshake)?;
    Ok(agent.watch(stream, qp, peer))
}

enum Command {
    Watch {
        token: u64,
        stream: UnixStream,
        qp: Weak<QpShared>,
        state: Arc<LinkState>,
    },
    Forget(u64),
    Stop,
}

struct AgentShared {
    uid: u64,
    commands: Mutex<Vec<Command>>,
    wake: EventFd,
    next_token: std::sync::atomic::AtomicU64,
}

impl AgentShared {
    fn command(&self, command: Command) {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(command);
        self.wake.signal();
    }
}

/// The connection agent of one shm device.
pub(crate) struct Agent {
    shared: Arc<AgentShared>,
    name: String,
    thread: Option<JoinHandle<()>>,
}

const TOKEN_LISTENER: u64 = 0;
const TOKEN_WAKE: u64 = 1;

impl Agent {
    pub(crate) fn start(uid: u64, registry: Arc<Registry>) -> Result<Self, OpenError> {
        let name = format!("rdma-mock/{}/{uid:016x}", sys::pid());
        let listen_err = |source| OpenError::Listen {
            fabric: "shm",
            what: format!("@{name}"),
            source,
        };
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(listen_err)?;
        let listener = UnixListener::bind_addr(&addr).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let wake = EventFd::new().map_err(OpenError::Thread)?;
        let epoll = Epoll::new().map_err(OpenError::Thread)?;
        epoll
            .add(listener.as_raw_fd(), TOKEN_LISTENER)
            .map_err(OpenError::Thread)?;
        epoll
            .add(wake.as_raw_fd(), TOKEN_WAKE)
            .map_err(OpenError::Thread)?;
        let shared = Arc::new(AgentShared {
            uid,
            commands: Mutex::new(Vec::new()),
            wake,
            next_token: std::sync::atomic::AtomicU64::new(2),
        });
        let worker = AgentLoop {
            shared: shared.clone(),
            registry,
            listener,
            epoll,
            conns: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("rdma-mock-shm-agent".into())
            .spawn(move || worker.run())
            .map_err(OpenError::Thread)?;
        Ok(Self {
            shared,
            name,
            thread: Some(thread),
        })
    }

    pub(crate) fn address(&self) -> String {
        self.name.clone()
    }

    /// Makes a link over `stream` and has the agent watch it for the peer hanging up.
    fn watch(&self, stream: UnixStream, qp: &Arc<QpShared>, peer: PeerMemory) -> ShmLink {
        make_link(&self.shared, stream, qp, peer, true)
    }
}

/// Makes a link over `stream` and has the agent watch the socket for the peer hanging up.
/// `active`: the QP's `connect` owns it already (the dialing side).
fn make_link(
    agent: &Arc<AgentShared>,
    stream: UnixStream,
    qp: &Arc<QpShared>,
    peer: PeerMemory,
    active: bool,
) -> ShmLink {
    let state = Arc::new(LinkState {
        alive: AtomicBool::new(true),
        active: AtomicBool::new(active),
    });
    let token = agent.next_token.fetch_add(1, Ordering::Relaxed);
    agent.command(Command::Watch {
        token,
        stream,
        qp: Arc::downgrade(qp),
        state: state.clone(),
    });
    ShmLink {
        peer,
        state,
        rq_next: 0,
        token,
        agent: Arc::downgrade(agent),
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shared.command(Command::Stop);
        if let Some(thread) = self.thread.take() {
            // The last handle of a device can be dropped on the agent thread itself (when it
            // briefly held a QP); it then stops on its own after this call returns.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

struct Watched {
    token: u64,
    stream: UnixStream,
    qp: Weak<QpShared>,
    state: Arc<LinkState>,
}

struct AgentLoop {
    shared: Arc<AgentShared>,
    registry: Arc<Registry>,
    listener: UnixListener,
    epoll: Epoll,
    conns: Vec<Watched>,
}

impl AgentLoop {
    fn run(mut self) {
        let mut ready = Vec::with_capacity(32);
        loop {
            ready.clear();
            if self.epoll.wait(&mut ready).is_err() {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            for &token in &ready {
                match token {
                    TOKEN_LISTENER => self.accept_all(),
                    TOKEN_WAKE => {
                        let _ = self.shared.wake.wait(Some(Duration::ZERO));
                        let commands = std::mem::take(
                            &mut *self
                                .shared
                                .commands
                                .lock()
                                .unwrap_or_else(|e| e.into_inner()),
                        );
                        for command in commands {
                            match command {
                                Command::Watch {
                                    token,
                                    stream,
                                    qp,
                                    state,
                                } => {
                                    if self.epoll.add(stream.as_raw_fd(), token).is_ok() {
                                        self.conns.push(Watched {
                                            token,
                                            stream,
                                            qp,
                                            state,
                                        });
                                    } else {
                                        peer_gone(&qp, &state);
                                    }
                                }
                                Command::Forget(token) => self.forget(token, false),
                                Command::Stop => return,
                            }
                        }
                    }
                    token => self.forget(token, true),
                }
            }
        }
    }

    /// Stops watching a connection; `hung_up` when the peer closed it (or sent junk).
    /// Stops watching a connection: `hung_up` when the peer closed it (or sent bytes, which
    /// it never does after the handshake), otherwise because our side dropped the link.
    fn forget(&mut self, token: u64, hung_up: bool) {
        if let Some(pos) = self.conns.iter().position(|c| c.token == token) {
            let conn = self.conns.swap_remove(pos);
            self.epoll.remove(conn.stream.as_raw_fd());
            if hung_up {
                peer_gone(&conn.qp, &conn.state);
            } else {
                conn.state.alive.store(false, Ordering::SeqCst);
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    // Each handshake on its own thread: a dialer that says nothing must hold up
                    // neither other connections nor the watch over live ones.
                    let (agent, registry) = (self.shared.clone(), self.registry.clone());
                    let _ = std::thread::Builder::new()
                        .name("rdma-mock-shm-handshake".into())
                        .spawn(move || handshake(&agent, &registry, stream));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Out of descriptors, say: the listener stays readable, so back off instead
                // of spinning on the error.
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            }
        }
    }
}

/// Answers a dialer's hello: checks it, maps its memory, offers the link to the local QP's
/// `connect`, and replies with our descriptors. Refusals say why.
fn handshake(agent: &Arc<AgentShared>, registry: &Registry, stream: UnixStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let refuse = |why: String| -> io::Result<()> {
        let reply = Hello {
            kind: KIND_REFUSE,
            device: agent.uid,
            qpn: 0,
            to_qpn: 0,
            to_device: 0,
            rq_depth: 0,
        };
        let mut msg = reply.encode().to_vec();
        msg.extend_from_slice(why.as_bytes());
        send_with_fds(&stream, &msg, &[])?;
        Err(io::Error::other(why))
    };
    // Peers map each other's memory: refuse other users before looking at anything.
    let uid = sys::peer_uid(&stream)?;
    if uid != sys::own_uid() {
        return refuse(format!(
            "connections from user {uid} are refused: the shm fabric connects processes of one user"
        ));
    }
    let mut buf = [0u8; 512];
    let (n, fds) = recv_with_fds(&stream, &mut buf)?;
    let hello = match Hello::decode(&buf[..n]) {
        Ok(h) if h.kind == KIND_HELLO => h,
        Ok(_) => return refuse("expected a hello".into()),
        Err(why) => return refuse(why),
    };
    if hello.to_device != agent.uid {
        return refuse(format!(
            "device {:016x} is not here (stale endpoint?)",
            hello.to_device
        ));
    }
    let Some(qp) = registry.qp(hello.to_qpn) else {
        return refuse(format!("no queue pair {} on this device", hello.to_qpn));
    };
    if qp.state() != QpState::Init {
        return refuse(format!("queue pair {} is already connected", hello.to_qpn));
    }
    let peer = match PeerMemory::map(&hello, fds) {
        Ok(p) => p,
        Err(e) => return refuse(format!("cannot map the dialer's memory: {e}")),
    };
    // Offer first, so that a second dialer for the same QP is refused before we reply. The
    // link is not active until `connect` takes it: if this dialer leaves, the QP stays fine.
    let link = make_link(agent, stream.try_clone()?, &qp, peer, false);
    let accepted = Accepted {
        peer_device: hello.device,
        peer_qpn: hello.qpn,
        link: Pending::Shm(link),
    };
    if !registry.offer(qp.qpn, accepted) {
        return refuse(format!(
            "queue pair {} is already being connected",
            hello.to_qpn
        ));
    }
    let reply = Hello {
        kind: KIND_HELLO,
        device: agent.uid,
        qpn: qp.qpn,
        to_qpn: hello.qpn,
        to_device: hello.device,
        rq_depth: qp.rq.depth(),
    };
    if let Err(e) = send_with_fds(&stream, &reply.encode(), &qp_fds(&qp)) {
        registry.withdraw(qp.qpn, hello.device, hello.qpn);
        return Err(e);
    }
    registry.publish(qp.qpn, hello.device, hello.qpn);
    Ok(())
}

/// The peer of a link went away: fail our QP so its work is flushed, receives it had
/// claimed and never completed included.
fn peer_gone(qp: &Weak<QpShared>, state: &LinkState) {
    state.alive.store(false, Ordering::SeqCst);
    // A link `connect` has not taken (a stray or vanished dialer) leaves the QP alone; one
    // taken concurrently sees `alive` cleared in `activate` (both sides use SeqCst).
    if !state.active.load(Ordering::SeqCst) {
        return;
    }
    if let Some(qp) = qp.upgrade() {
        qp.deliverer_gone.store(true, Ordering::Release);
        qp.fail();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_rejects_junk() {
        let h = Hello {
            kind: KIND_HELLO,
            device: 7,
            qpn: 3,
            to_qpn: 9,
            to_device: 11,
            rq_depth: 64,
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        assert!(Hello::decode(&[0u8; 10]).is_err());
        assert!(Hello::decode(&[0u8; HELLO_LEN]).is_err());
    }

    #[test]
    fn garbage_handshakes_are_refused_and_the_device_keeps_serving() {
        use crate::{Device, DeviceConfig, Fabric, QpConfig};
        let dev = Device::open(DeviceConfig::new(Fabric::Shm)).expect("device");
        let pd = dev.alloc_pd().expect("pd");
        let cq = dev.create_cq(None).expect("cq");
        let qp = pd.create_qp(&cq, &cq, QpConfig::default()).expect("qp");
        let ep = qp.endpoint();
        let dial = || {
            let addr = SocketAddr::from_abstract_name(ep.address.as_bytes()).expect("name");
            UnixStream::connect_addr(&addr).expect("connect")
        };
        let refusal = |stream: &UnixStream| {
            let mut buf = [0u8; 512];
            let (n, _) = recv_with_fds(stream, &mut buf).expect("reply");
            let reply = Hello::decode(&buf[..n]).expect("a handshake message");
            assert_eq!(reply.kind, KIND_REFUSE);
            String::from_utf8_lossy(&buf[HELLO_LEN..n]).into_owned()
        };
        // Junk bytes.
        let junk = dial();
        send_with_fds(&junk, &[0x42; HELLO_LEN], &[]).expect("send");
        assert!(refusal(&junk).contains("not an rdma-mock shm handshake"));
        // A well-formed hello without the descriptors it needs.
        let hello = Hello {
            kind: KIND_HELLO,
            device: 1,
            qpn: 1,
            to_qpn: ep.qpn,
            to_device: ep.device,
            rq_depth: 4,
        };
        let bare = dial();
        send_with_fds(&bare, &hello.encode(), &[]).expect("send");
        assert!(refusal(&bare).contains("too few descriptors"));
        // Descriptors of the wrong kind (three eventfds) and an absurd queue depth.
        let fds: Vec<EventFd> = (0..3).map(|_| EventFd::new().expect("eventfd")).collect();
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let wrong = dial();
        let huge = Hello {
            rq_depth: 1 << 30,
            ..hello
        };
        send_with_fds(&wrong, &huge.encode(), &raw).expect("send");
        let why = refusal(&wrong);
        assert!(why.contains("cannot map"), "{why}");
        // The QP can still be connected for real afterwards.
        let other = pd.create_qp(&cq, &cq, QpConfig::default()).expect("qp");
        let (mut a, mut b) = (qp, other);
        let (ea, eb) = (a.endpoint(), b.endpoint());
        let t = std::thread::spawn(move || {
            b.connect(&ea).expect("connect b");
            b
        });
        a.connect(&eb).expect("connect a");
        drop(t.join().expect("thread"));
    }

    /// A peer that claimed a receive slot and died before completing it: once the agent
    /// saw it go, that receive and the ones after it are flushed (and poll never spins).
    #[test]
    fn a_receive_claimed_by_a_dead_peer_is_flushed() {
        use crate::{
            Access, Device, DeviceConfig, Fabric, QpConfig, RecvWr, WcStatus, WorkCompletion,
        };
        let dev = Device::open(DeviceConfig::new(Fabric::Shm)).expect("device");
        let pd = dev.alloc_pd().expect("pd");
        let cq_handle = dev.create_cq(None).expect("cq");
        let mut cq = cq_handle;
        let mut qp = pd.create_qp(&cq, &cq, QpConfig::default()).expect("qp");
        let mr = pd.register(4096, Access::ALL).expect("region");
        qp.post_recv(&RecvWr {
            wr_id: 7,
            sgl: &[mr.sge(0, 64)],
        })
        .expect("recv");
        qp.post_recv(&RecvWr {
            wr_id: 8,
            sgl: &[mr.sge(64, 64)],
        })
        .expect("recv");
        let shared = dev_qp_shared(&qp);
        // What a peer's post_send does first ...
        assert!(shared.rq.claim(0));
        // ... then it is killed, and the agent sees its socket close.
        let state = LinkState {
            alive: AtomicBool::new(true),
            active: AtomicBool::new(true),
        };
        peer_gone(&Arc::downgrade(&shared), &state);
        let mut wc = [WorkCompletion::default(); 4];
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 2 && std::time::Instant::now() < deadline {
            let n = cq.poll(&mut wc);
            got.extend(wc[..n].iter().map(|w| (w.wr_id, w.status)));
        }
        assert_eq!(
            got,
            [(7, WcStatus::WrFlushError), (8, WcStatus::WrFlushError)]
        );
    }

    fn dev_qp_shared(qp: &crate::QueuePair) -> Arc<QpShared> {
        qp.shared().clone()
    }

    fn shm_qp() -> (
        crate::Device,
        crate::ProtectionDomain,
        crate::CompletionQueue,
    ) {
        use crate::{Device, DeviceConfig, Fabric};
        let dev = Device::open(DeviceConfig::new(Fabric::Shm)).expect("device");
        let pd = dev.alloc_pd().expect("pd");
        let cq = dev.create_cq(None).expect("cq");
        (dev, pd, cq)
    }

    #[test]
    fn a_silent_dialer_does_not_hold_up_other_connections() {
        use crate::QpConfig;
        let (_dev, pd, cq) = shm_qp();
        let mut a = pd.create_qp(&cq, &cq, QpConfig::default()).expect("qp");
        let mut b = pd.create_qp(&cq, &cq, QpConfig::default()).expect("qp");
        let addr = SocketAddr::from_abstract_name(a.endpoint().address.as_bytes()).expect("name");
        let _silent = UnixStream::connect_addr(&addr).expect("connect");
        let started = std::time::Instant::now();
        let (ea, eb) = (a.endpoint(), b.endpoint());
        let t = std::thread::spawn(move || {
            b.connect(&ea).expect("connect b");
            b
        });
        a.connect(&eb).expect("connect a");
        drop(t.join().expect("thread"));
        assert!(
            started.elapsed() < HANDSHAKE_TIMEOUT,
            "the silent dialer held up the agent"
        );
    }

    /// A dialer that completes its handshake and leaves before the owner calls `connect`:
    /// `connect` says so, and the QP is left unharmed (still waiting, usable).
    #[test]
    fn a_dialer_that_leaves_before_connect_is_reported() {
        use crate::{ConnectError, QpConfig, QpState};
        let (_dev, pd, cq) = shm_qp();
        let mut qp = pd.create_qp(&cq, &cq, QpConfig::default()).expect("qp");
        let (_dev2, pd2, cq2) = shm_qp();
        let donor = pd2.create_qp(&cq2, &cq2, QpConfig::default()).expect("qp");
        let ours = qp.endpoint();
        {
            let addr = SocketAddr::from_abstract_name(ours.address.as_bytes()).expect("name");
            let stream = UnixStream::connect_addr(&addr).expect("connect");
            let hello = Hello {
                kind: KIND_HELLO,
                device: 0,
                qpn: 9,
                to_qpn: ours.qpn,
                to_device: ours.device,
                rq_depth: donor.shared().rq.depth(),
            };
            send_with_fds(&stream, &hello.encode(), &qp_fds(donor.shared())).expect("hello");
            let mut buf = [0u8; 512];
            let (n, _fds) = recv_with_fds(&stream, &mut buf).expect("reply");
            assert_eq!(Hello::decode(&buf[..n]).expect("reply").kind, KIND_HELLO);
        } // the dialer leaves
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut expected = ours.clone();
        expected.device = 0;
        expected.qpn = 9;
        match qp.connect(&expected) {
            Err(ConnectError::Handshake(why)) => assert!(why.contains("went away"), "{why}"),
            other => panic!("connect to a departed dialer: {other:?}"),
        }
        assert_eq!(qp.state(), QpState::Init);
    }
}
