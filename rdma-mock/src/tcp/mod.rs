//! The tcp fabric: processes on different hosts.
//!
//! Each connected QP pair shares one TCP connection. Both ends run a *progress thread* that
//! reads it: requests from the peer are applied to local memory by the
//! [`responder`](crate::responder) (so one-sided operations need nothing from the target
//! application), and responses to our own requests complete them.
//!
//! Responses are coalesced as on RC hardware: a write that is neither signaled nor the
//! `max_send_wr / 2`-th unacknowledged one asks for no acknowledgement, and every response
//! acknowledges all earlier requests. READ and atomics always get their response. After
//! refusing a request the target drops the rest of the stream (go-back-N without retry), and
//! the initiator flushes everything it had outstanding behind it.
//!
//! Who reads the socket: the application when it polls, the progress thread when it does
//! not (see [`inbound`]); who writes: see [`conn`]. The frames are in [`wire`].
//!

mod conn;
mod inbound;
mod wire;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub(crate) use conn::Conn;
use conn::{lock, Outstanding};
use inbound::{connection_lost, flush_all, Inbound};
use wire::*;

use crate::device::{Accepted, DeviceConfig, DeviceShared, Endpoint, Pending, Registry};
use crate::error::{ConnectError, OpenError, PostError};
use crate::qp::{send_completion, QpShared};
use crate::responder::{Gather, Scatter};
use crate::types::{Payload, QpState, SendOp, SendWr, Sge, WcStatus, MAX_SGE};

/// A connected tcp QP's side of its connection.
pub(crate) struct TcpLink {
    conn: Arc<Conn>,
    next_seq: u64,
    /// Unsignaled requests sent since the last one that asked for an acknowledgement.
    unacked_run: u32,
    /// The progress thread and the flusher.
    threads: Vec<JoinHandle<()>>,
}

impl TcpLink {
    pub(crate) fn post_send(&mut self, qp: &QpShared, wr: &SendWr<'_>) -> Result<(), PostError> {
        let mut outstanding = lock(&self.conn.outstanding);
        // Every outstanding request may still need a completion slot, and so may this one.
        if outstanding.len() as u64 + qp.send_ring.len() >= qp.config.max_send_wr as u64 {
            return Err(PostError::SendQueueFull(qp.config.max_send_wr));
        }
        if qp.state() == QpState::Error {
            // Older requests complete first, flushed (in order, as RC does).
            flush_all(&mut outstanding, qp, WcStatus::WrFlushError);
            qp.push_send_completion(send_completion(
                qp,
                wr.wr_id,
                wr.op,
                WcStatus::WrFlushError,
                0,
            ));
            return Ok(());
        }
        let local = match wr.op {
            SendOp::Read { .. } | SendOp::FetchAdd { .. } | SendOp::CmpSwap { .. } => {
                qp.scatter(&wr.payload).map(|s| (Gather::EMPTY, s))
            }
            _ => qp.gather(&wr.payload).map(|g| (g, Scatter::EMPTY)),
        };
        let (gather, scatter) = match local {
            Ok(bufs) => bufs,
            Err(status) => {
                qp.fail();
                flush_all(&mut outstanding, qp, WcStatus::WrFlushError);
                qp.push_send_completion(send_completion(qp, wr.wr_id, wr.op, status, 0));
                return Ok(());
            }
        };
        let len = match wr.op {
            SendOp::Read { .. } => scatter.total(),
            SendOp::FetchAdd { .. } | SendOp::CmpSwap { .. } => 0,
            _ => gather.total(),
        } as u32;
        let needs_response = matches!(
            wr.op,
            SendOp::Read { .. } | SendOp::FetchAdd { .. } | SendOp::CmpSwap { .. }
        );
        self.unacked_run += 1;
        let ack =
            wr.signaled || needs_response || self.unacked_run >= (qp.config.max_send_wr / 2).max(1);
        if ack {
            self.unacked_run = 0;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut sgl = [Sge::default(); MAX_SGE];
        let mut sge_count = 0;
        if needs_response {
            if let Payload::Sgl(list) = wr.payload {
                sgl[..list.len()].copy_from_slice(list);
                sge_count = list.len();
            }
        }
        outstanding.push_back(Outstanding {
            seq,
            wr_id: wr.wr_id,
            op: wr.op,
            signaled: wr.signaled,
            // An atomic's request carries no bytes; its completion reports the 8 it moved.
            len: if matches!(wr.op, SendOp::FetchAdd { .. } | SendOp::CmpSwap { .. }) {
                8
            } else {
                len
            },
            sgl,
            sge_count,
        });
        drop(outstanding);
        let request = Request::of(wr, seq, len, ack);
        let sent = self.conn.send_request(&request.encode(), gather.parts());
        if sent.is_err() {
            connection_lost(&self.conn, qp);
        }
        Ok(())
    }
}

impl TcpLink {
    /// The QP was moved to the error state by its owner: flush what is outstanding now.
    pub(crate) fn flush_outstanding(&self, qp: &QpShared) {
        flush_all(
            &mut lock(&self.conn.outstanding),
            qp,
            WcStatus::WrFlushError,
        );
    }
}

impl Drop for TcpLink {
    fn drop(&mut self) {
        self.conn.close();
        for thread in self.threads.drain(..) {
            // The last handle of a device can be dropped on one of these threads.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// Starts the progress and flusher threads of a connection and returns our link.
fn start_link(stream: TcpStream, qp: &Arc<QpShared>, peer: &Hello) -> io::Result<TcpLink> {
    stream.set_nodelay(true)?;
    crate::sys::tcp_detect_dead_peers(&stream)?;
    stream.set_read_timeout(None)?;
    let conn = Arc::new(Conn::new(
        &stream,
        Inbound::new(peer.peer_config()),
        qp.config.max_send_wr,
    )?);
    // The application's polls drive the connection from now on (see `inbound`).
    let _ = qp.tcp.set(conn.clone());
    let (progress, progress_qp, flusher) = (conn.clone(), qp.clone(), conn.clone());
    let threads = vec![
        std::thread::Builder::new()
            .name(format!("rdma-mock-tcp-qp{}", qp.qpn))
            .spawn(move || inbound::progress_thread(progress, progress_qp))?,
        std::thread::Builder::new()
            .name(format!("rdma-mock-tcp-flush{}", qp.qpn))
            .spawn(move || flusher.flush_loop())?,
    ];
    Ok(TcpLink {
        conn,
        next_seq: 0,
        unacked_run: 0,
        threads,
    })
}

/// Dials the peer's listener and links `qp` to the peer QP at `remote`.
pub(crate) fn dial(
    device: &DeviceShared,
    qp: &Arc<QpShared>,
    remote: &Endpoint,
) -> Result<TcpLink, ConnectError> {
    let unreachable = |source| ConnectError::Unreachable {
        addr: remote.address.clone(),
        source,
    };
    let addr: SocketAddr = remote.address.parse().map_err(|e| {
        ConnectError::Handshake(format!("bad tcp address '{}': {e}", remote.address))
    })?;
    let stream =
        TcpStream::connect_timeout(&addr, device.config.connect_timeout).map_err(unreachable)?;
    let handshake = |e: io::Error| ConnectError::Handshake(e.to_string());
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(handshake)?;
    let hello = Hello::of(qp, device.uid, (remote.device, remote.qpn));
    (&stream).write_all(&hello.encode()).map_err(handshake)?;
    let reply = read_hello(&stream)
        .map_err(handshake)?
        .map_err(ConnectError::Refused)?;
    if reply.device != remote.device || reply.qpn != remote.qpn {
        return Err(ConnectError::Handshake(
            "the reply came from another queue pair".into(),
        ));
    }
    start_link(stream, qp, &reply).map_err(handshake)
}

/// The listener of one tcp device.
pub(crate) struct Listener {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    pub(crate) fn start(
        uid: u64,
        config: &DeviceConfig,
        registry: Arc<Registry>,
    ) -> Result<Self, OpenError> {
        let listen_err = |source| OpenError::Listen {
            fabric: "tcp",
            what: config.tcp_listen.to_string(),
            source,
        };
        let listener = TcpListener::bind(config.tcp_listen).map_err(listen_err)?;
        let address = listener.local_addr().map_err(listen_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rdma-mock-tcp-listen".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop_flag.load(Ordering::Acquire) {
                        return;
                    }
                    match stream {
                        Ok(stream) => {
                            // Each handshake on its own thread: a dialer that says nothing must
                            // not hold up the others until its handshake times out.
                            let registry = registry.clone();
                            let _ = std::thread::Builder::new()
                                .name("rdma-mock-tcp-accept".into())
                                .spawn(move || accept(uid, &registry, stream));
                        }
                        // Out of descriptors, say: back off instead of spinning on the error.
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .map_err(OpenError::Thread)?;
        Ok(Self {
            address,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn address(&self) -> String {
        self.address.to_string()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// Answers a dialer's hello and hands the link to the local QP's `connect`.
fn accept(uid: u64, registry: &Registry, stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let hello = match read_hello(&stream)? {
        Ok(h) => h,
        Err(why) => return send_refusal(&stream, uid, &why),
    };
    if hello.to_device != uid {
        return send_refusal(
            &stream,
            uid,
            &format!(
                "device {:016x} is not here (stale endpoint?)",
                hello.to_device
            ),
        );
    }
    let Some(qp) = registry.qp(hello.to_qpn) else {
        return send_refusal(
            &stream,
            uid,
            &format!("no queue pair {} on this device", hello.to_qpn),
        );
    };
    if qp.state() != QpState::Init {
        return send_refusal(
            &stream,
            uid,
            &format!("queue pair {} is already connected", hello.to_qpn),
        );
    }
    // Offer first, so that a second dialer for the same QP is refused before we reply; the
    // connection is read only once the QP's `connect` takes it.
    let accepted = Accepted {
        peer_device: hello.device,
        peer_qpn: hello.qpn,
        link: Pending::Tcp(stream.try_clone()?, PeerHello(hello)),
    };
    if !registry.offer(qp.qpn, accepted) {
        return send_refusal(
            &stream,
            uid,
            &format!("queue pair {} is already being connected", hello.to_qpn),
        );
    }
    #[cfg(test)]
    std::thread::sleep(tests::reply_delay());
    let reply = Hello::of(&qp, uid, (hello.device, hello.qpn));
    if let Err(e) = (&stream).write_all(&reply.encode()) {
        registry.withdraw(qp.qpn, hello.device, hello.qpn);
        return Err(e);
    }
    // Only now may the QP's `connect` take the connection: its first frame must follow
    // our reply, or the dialer reads a frame where it expects the reply.
    registry.publish(qp.qpn, hello.device, hello.qpn);
    Ok(())
}

/// The hello of a dialer whose connection waits for the QP's `connect`.
pub(crate) struct PeerHello(Hello);

/// Starts the link of an accepted connection that the QP's `connect` took.
pub(crate) fn activate(
    stream: TcpStream,
    qp: &Arc<QpShared>,
    hello: &PeerHello,
) -> Result<TcpLink, ConnectError> {
    start_link(stream, qp, &hello.0).map_err(|e| ConnectError::Handshake(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::wire::*;
    use super::*;
    use crate::RemoteAddr;
    use std::io::Read;

    use crate::{
        Access, Device, DeviceConfig, Fabric, QpConfig, QpState, RecvWr, SendOp, SendWr, WcStatus,
        WorkCompletion,
    };

    /// How long the agent waits before its handshake reply: a test sets it to widen a race.
    static REPLY_DELAY_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    pub(super) fn reply_delay() -> Duration {
        Duration::from_micros(REPLY_DELAY_US.load(Ordering::Relaxed))
    }

    fn device() -> (Device, crate::ProtectionDomain, crate::CompletionQueue) {
        let dev = Device::open(DeviceConfig::new(Fabric::Tcp)).expect("device");
        let pd = dev.alloc_pd().expect("pd");
        let cq = dev.create_cq(None).expect("cq");
        (dev, pd, cq)
    }

    #[test]
    fn garbage_handshake_is_refused_and_the_device_keeps_serving() {
        let (_dev, pd, cq) = device();
        let qp = pd.create_qp(&cq, &cq, QpConfig::default()).expect("qp");
        let addr = qp.endpoint().address;
        let mut junk = TcpStream::connect(&addr).expect("connect");
        junk.write_all(&[0x42; HELLO_LEN]).expect("write");
        let refusal = read_hello(&junk).expect("an answer");
        assert!(refusal
            .unwrap_err()
            .contains("not an rdma-mock tcp handshake"));
        // A hello for a QP that does not exist is refused by name.
        let stream = TcpStream::connect(&addr).expect("connect");
        let mut hello = Hello::of_raw(1, 2, qp.endpoint().device, 999);
        (&stream).write_all(&hello.encode()).expect("write");
        let why = read_hello(&stream).expect("an answer").unwrap_err();
        assert!(why.contains("no queue pair 999"), "{why}");
        // And a real one still works afterwards.
        hello = Hello::of_raw(1, 2, qp.endpoint().device, qp.qp_num());
        let stream = TcpStream::connect(&addr).expect("connect");
        (&stream).write_all(&hello.encode()).expect("write");
        assert!(read_hello(&stream).expect("an answer").is_ok());
    }

    #[test]
    fn a_silent_dialer_does_not_block_other_connections() {
        let (_dev, pd, cq) = device();
        let qp = pd.create_qp(&cq, &cq, QpConfig::default()).expect("qp");
        let _silent = TcpStream::connect(qp.endpoint().address).expect("connect");
        let started = std::time::Instant::now();
        let stream = TcpStream::connect(qp.endpoint().address).expect("connect");
        (&stream)
            .write_all(&Hello::of_raw(1, 2, qp.endpoint().device, qp.qp_num()).encode())
            .expect("hello");
        assert!(read_hello(&stream).expect("an answer").is_ok());
        assert!(
            started.elapsed() < HANDSHAKE_TIMEOUT,
            "the silent dialer held up the handshake"
        );
    }

    #[test]
    fn corrupt_frame_fails_the_queue_pair_without_panicking() {
        let (_dev, pd, mut cq) = device();
        let mut qp = pd.create_qp(&cq, &cq, QpConfig::default()).expect("qp");
        let region = pd.register(64, Access::ALL).expect("region");
        qp.post_recv(&RecvWr {
            wr_id: 7,
            sgl: &[region.sge(0, 64)],
        })
        .expect("recv");
        // A fake peer with the smallest identity, so our connect waits to be dialed.
        let ours = qp.endpoint();
        let fake = std::thread::spawn(move || {
            let stream = TcpStream::connect(&ours.address).expect("connect");
            let hello = Hello::of_raw(0, 0, ours.device, ours.qpn);
            (&stream).write_all(&hello.encode()).expect("hello");
            read_hello(&stream).expect("reply").expect("accepted");
            // A request frame claiming a 4 GiB payload, then junk.
            let mut frame = Request {
                op: 0,
                flags: 0,
                len: u32::MAX,
                seq: 0,
                remote: RemoteAddr::default(),
                imm: 0,
                operand1: 0,
                operand2: 0,
            }
            .encode()
            .to_vec();
            frame.extend_from_slice(&[0xee; 64]);
            (&stream).write_all(&frame).expect("frame");
            stream
        });
        let mut peer = qp.endpoint();
        peer.device = 0;
        peer.qpn = 0;
        qp.connect(&peer).expect("accepted the fake peer");
        let _stream = fake.join().expect("fake peer");
        let mut wc = [WorkCompletion::default(); 1];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cq.poll(&mut wc) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no flush after a corrupt frame"
            );
            std::thread::yield_now();
        }
        assert_eq!((wc[0].wr_id, wc[0].status), (7, WcStatus::WrFlushError));
        assert_eq!(qp.state(), QpState::Error);
        assert!(region.to_vec().iter().all(|&b| b == 0));
    }

    /// The accepting side may send the moment its `connect` returns: that first frame must
    /// never reach the dialer ahead of the handshake reply it is still waiting for (it did
    /// when the agent offered the link before replying, in about one connection of ten).
    #[test]
    fn a_frame_sent_right_after_connect_never_overtakes_the_handshake_reply() {
        // The agent replies late, so the owner's connect and first send have all the time
        // they need to overtake the reply, were they let through before it.
        REPLY_DELAY_US.store(20_000, Ordering::Relaxed);
        for round in 0..3 {
            let (_dev, pd, cq) = device();
            let mut qp = pd.create_qp(&cq, &cq, QpConfig::default()).expect("qp");
            let ours = qp.endpoint();
            // The fake dialer has the smallest identity, so our connect waits to be dialed.
            let mut peer = ours.clone();
            peer.device = 0;
            peer.qpn = 0;
            let owner = std::thread::spawn(move || {
                qp.connect(&peer).expect("accepted the fake dialer");
                qp.post_send(&SendWr::inline(1, SendOp::Send, b"first"))
                    .expect("send");
                qp
            });
            let stream = TcpStream::connect(&ours.address).expect("connect");
            (&stream)
                .write_all(&Hello::of_raw(0, 0, ours.device, ours.qpn).encode())
                .expect("hello");
            let reply = read_hello(&stream).expect("an answer");
            assert!(reply.is_ok(), "round {round}: {reply:?}");
            let mut kind = [0u8; 1];
            (&stream).read_exact(&mut kind).expect("the first frame");
            assert_eq!(kind[0], FRAME_REQUEST, "round {round}");
            drop(owner.join().expect("owner"));
        }
        REPLY_DELAY_US.store(0, Ordering::Relaxed);
    }

    /// A stray dialer (another identity) sends a hello and then a WRITE before the QP's
    /// owner calls `connect`: nothing it sends reaches the QP's memory, its link is
    /// discarded (its connection closed), and the expected peer connects afterwards.
    #[test]
    fn a_stray_dialer_is_discarded_and_never_touches_memory() {
        let (_dev, pd, cq) = device();
        let mut qp = pd.create_qp(&cq, &cq, QpConfig::default()).expect("qp");
        let region = pd.register(64, Access::ALL).expect("region");
        let ours = qp.endpoint();
        let stray = TcpStream::connect(&ours.address).expect("connect");
        (&stray)
            .write_all(&Hello::of_raw(5, 5, ours.device, ours.qpn).encode())
            .expect("hello");
        read_hello(&stray).expect("reply").expect("offered");
        let write = Request {
            op: 0,
            flags: FLAG_ACK,
            len: 4,
            seq: 0,
            remote: RemoteAddr {
                addr: region.addr(),
                rkey: region.rkey(),
            },
            imm: 0,
            operand1: 0,
            operand2: 0,
        };
        (&stray).write_all(&write.encode()).expect("frame");
        (&stray).write_all(b"evil").expect("payload");
        // The owner expects identity (0, 7); the smaller identity dials, so we wait.
        let mut expected = ours.clone();
        expected.device = 0;
        expected.qpn = 7;
        let waiter = std::thread::spawn(move || {
            let result = qp.connect(&expected);
            (qp, result)
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let real = TcpStream::connect(&ours.address).expect("connect");
        (&real)
            .write_all(&Hello::of_raw(0, 7, ours.device, ours.qpn).encode())
            .expect("hello");
        let accepted = read_hello(&real).expect("reply");
        let (qp, result) = waiter.join().expect("waiter");
        assert!(
            accepted.is_ok(),
            "the expected peer was refused: {accepted:?}"
        );
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(qp.state(), QpState::ReadyToSend);
        // The stray's connection was closed, and its WRITE never landed.
        let mut buf = [0u8; 1];
        stray
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        assert!(
            matches!((&stray).read(&mut buf), Ok(0) | Err(_)),
            "the stray's link stayed open"
        );
        assert_eq!(&region.to_vec()[..4], &[0, 0, 0, 0]);
        drop(real);
    }
}
