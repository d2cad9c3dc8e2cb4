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
//! Writing: the progress thread is the only reader of the socket, so it must never wait for a
//! write, or two peers that both fill their sockets would each wait for the other to read.
//! It writes a response only if it can take the writer lock at once and the socket takes the
//! bytes without blocking; what is left goes to a backlog that a flusher thread (or the next
//! request) writes out. Whoever holds the writer lock writes the backlog before its own frame,
//! so frames never interleave and responses keep their order.
//!
//! Wire format (little endian): a request is a 48-byte header plus `len` payload bytes, a
//! response a 24-byte header plus `len` bytes (READ data or an atomic's old value).

use std::collections::VecDeque;
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::device::{Accepted, DeviceConfig, DeviceShared, Endpoint, Registry};
use crate::error::{ConnectError, OpenError, PostError};
use crate::qp::{send_completion, Link, QpShared};
use crate::responder::{with_rnr_retry, AtomicOp, Gather, Refusal, Scatter, Target};
use crate::types::{QpConfig, QpState, RemoteAddr, SendOp, SendWr, WcStatus};

const MAGIC: u32 = 0x5444_4452; // "RDDT"
const VERSION: u32 = 1;
const HELLO_LEN: usize = 40;
const REQ_LEN: usize = 48;
const RESP_LEN: usize = 24;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const FRAME_REQUEST: u8 = 1;
const FRAME_RESPONSE: u8 = 2;
const FLAG_ACK: u8 = 1;

/// Largest payload one request may carry (a sanity bound against a corrupt stream).
const MAX_MESSAGE: u32 = 1 << 30;

fn op_code(op: SendOp) -> u8 {
    match op {
        SendOp::Write { .. } => 0,
        SendOp::WriteWithImm { .. } => 1,
        SendOp::Send => 2,
        SendOp::SendWithImm { .. } => 3,
        SendOp::Read { .. } => 4,
        SendOp::FetchAdd { .. } => 5,
        SendOp::CmpSwap { .. } => 6,
    }
}

/// A request header as it travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    op: u8,
    flags: u8,
    len: u32,
    seq: u64,
    remote: RemoteAddr,
    imm: u32,
    operand1: u64,
    operand2: u64,
}

impl Request {
    fn of(wr: &SendWr<'_>, seq: u64, len: u32, ack: bool) -> Self {
        let (remote, imm, operand1, operand2) = match wr.op {
            SendOp::Send => (RemoteAddr::default(), 0, 0, 0),
            SendOp::SendWithImm { imm } => (RemoteAddr::default(), imm, 0, 0),
            SendOp::Write { remote } | SendOp::Read { remote } => (remote, 0, 0, 0),
            SendOp::WriteWithImm { remote, imm } => (remote, imm, 0, 0),
            SendOp::FetchAdd { remote, add } => (remote, 0, add, 0),
            SendOp::CmpSwap {
                remote,
                compare,
                swap,
            } => (remote, 0, compare, swap),
        };
        Self {
            op: op_code(wr.op),
            flags: if ack { FLAG_ACK } else { 0 },
            len,
            seq,
            remote,
            imm,
            operand1,
            operand2,
        }
    }

    fn encode(&self) -> [u8; REQ_LEN] {
        let mut b = [0u8; REQ_LEN];
        b[..4].copy_from_slice(&[FRAME_REQUEST, self.op, self.flags, 0]);
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.remote.addr.to_le_bytes());
        b[24..28].copy_from_slice(&self.remote.rkey.to_le_bytes());
        b[28..32].copy_from_slice(&self.imm.to_le_bytes());
        b[32..40].copy_from_slice(&self.operand1.to_le_bytes());
        b[40..48].copy_from_slice(&self.operand2.to_le_bytes());
        b
    }

    /// Decodes the header after its first byte (the frame type).
    fn decode(b: &[u8; REQ_LEN]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Self {
            op: b[1],
            flags: b[2],
            len: u32_at(4),
            seq: u64_at(8),
            remote: RemoteAddr {
                addr: u64_at(16),
                rkey: u32_at(24),
            },
            imm: u32_at(28),
            operand1: u64_at(32),
            operand2: u64_at(40),
        }
    }
}

fn encode_response(out: &mut Vec<u8>, status: WcStatus, seq: u64, payload: &[u8]) {
    out.extend_from_slice(&[FRAME_RESPONSE, status as u8, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(payload);
}

/// A request we sent and that has not been acknowledged.
struct Outstanding {
    seq: u64,
    wr_id: u64,
    op: SendOp,
    signaled: bool,
    len: u32,
    /// Where READ data or an atomic's old value goes.
    scatter: Scatter,
}

/// State of a connection shared by the poster, the progress thread and the flusher.
struct Conn {
    writer: Mutex<Writer>,
    /// Responses the progress thread made but could not hand to the socket without waiting.
    replies: Mutex<Replies>,
    replies_ready: Condvar,
    /// Our requests awaiting acknowledgement. Its lock is also the producer lock of the QP's
    /// send-completion ring, which the poster and the progress thread both fill.
    outstanding: Mutex<VecDeque<Outstanding>>,
    closed: AtomicBool,
    stream: TcpStream,
}

struct Writer {
    stream: TcpStream,
    /// Bytes that must go out before anything else (a partly written response included).
    backlog: Vec<u8>,
}

#[derive(Default)]
struct Replies {
    bytes: Vec<u8>,
    /// The flusher has work: bytes here or in the writer's backlog.
    pending: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    /// Writes a request frame (after any backlog). Called by the poster; may block.
    fn send_request(&self, header: &[u8], payload: &[(*const u8, usize)]) -> io::Result<()> {
        let mut w = lock(&self.writer);
        self.take_replies(&mut w.backlog);
        let Writer { stream, backlog } = &mut *w;
        if !backlog.is_empty() {
            stream.write_all(backlog)?;
            backlog.clear();
        }
        let mut slices = [IoSlice::new(&[]); 1 + crate::MAX_SGE];
        slices[0] = IoSlice::new(header);
        for (slot, &(ptr, len)) in slices[1..].iter_mut().zip(payload) {
            // SAFETY: each piece was resolved inside registered memory (or is the poster's
            // inline slice) and stays valid until post_send returns, after this write.
            *slot = IoSlice::new(unsafe { std::slice::from_raw_parts(ptr, len) });
        }
        let mut bufs = &mut slices[..1 + payload.len()];
        while !bufs.is_empty() {
            match stream.write_vectored(bufs) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Queues a response and writes it if that needs no waiting. Called by the progress
    /// thread, which must never block on the socket.
    fn send_reply(&self, build: impl FnOnce(&mut Vec<u8>)) {
        let mut replies = lock(&self.replies);
        build(&mut replies.bytes);
        let all_out = match self.writer.try_lock() {
            Ok(mut w) => {
                w.backlog.append(&mut replies.bytes);
                let Writer { stream, backlog } = &mut *w;
                let mut sent = 0;
                while sent < backlog.len() {
                    match crate::sys::send_nonblocking(stream.as_raw_fd(), &backlog[sent..]) {
                        Ok(n) => sent += n,
                        Err(_) => break, // full (or broken: the reader will see it)
                    }
                }
                backlog.drain(..sent);
                backlog.is_empty()
            }
            Err(_) => false,
        };
        if !all_out {
            replies.pending = true;
            self.replies_ready.notify_one();
        }
    }

    fn take_replies(&self, backlog: &mut Vec<u8>) {
        let mut replies = lock(&self.replies);
        backlog.append(&mut replies.bytes);
        replies.pending = false;
    }

    /// The flusher thread: writes out what the progress thread could not, blocking as needed.
    fn flush_loop(&self) {
        loop {
            let mut replies = lock(&self.replies);
            while !replies.pending && !self.closed.load(Ordering::Acquire) {
                replies = self
                    .replies_ready
                    .wait(replies)
                    .unwrap_or_else(|e| e.into_inner());
            }
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            drop(replies);
            let mut w = lock(&self.writer);
            self.take_replies(&mut w.backlog);
            let Writer { stream, backlog } = &mut *w;
            if stream.write_all(backlog).is_err() {
                return; // the connection is gone; the reader notices and cleans up
            }
            backlog.clear();
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
        let _replies = lock(&self.replies);
        self.replies_ready.notify_all();
    }
}

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
        if outstanding.len() as u64 + 1 > qp.send_ring.room()
            || outstanding.len() >= qp.config.max_send_wr as usize
        {
            return Err(PostError::SendQueueFull(qp.config.max_send_wr));
        }
        if qp.state() == QpState::Error {
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
        outstanding.push_back(Outstanding {
            seq,
            wr_id: wr.wr_id,
            op: wr.op,
            signaled: wr.signaled,
            len,
            scatter,
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

/// The peer is gone: fail the QP and flush what we had outstanding (the oldest request with
/// `RetryExceeded`, as RC hardware reports the timeout, the rest with `WrFlushError`).
fn connection_lost(conn: &Conn, qp: &QpShared) {
    qp.fail();
    flush_outstanding(conn, qp, WcStatus::RetryExceeded);
}

fn flush_outstanding(conn: &Conn, qp: &QpShared, first: WcStatus) {
    let mut outstanding = lock(&conn.outstanding);
    let mut status = first;
    while let Some(o) = outstanding.pop_front() {
        qp.push_send_completion(send_completion(qp, o.wr_id, o.op, status, 0));
        status = WcStatus::WrFlushError;
    }
}

/// The per-connection progress thread.
struct Progress {
    conn: Arc<Conn>,
    qp: Arc<QpShared>,
    reader: BufReader<TcpStream>,
    /// The peer's retry settings, for requests that find no receive posted.
    peer_config: QpConfig,
    /// Next receive of ours to consume.
    rq_next: u64,
    /// Set after we refused a request: the rest of the stream is dropped.
    refused: bool,
    /// Payload of the frame being handled (reused).
    payload: Vec<u8>,
    /// Data of a READ being answered (reused).
    read_buf: Vec<u8>,
}

impl Progress {
    fn run(mut self) {
        // Whatever ended the stream (the peer hung up or died, a corrupt frame, or our own
        // close), nothing outstanding is left hanging.
        let _ = self.serve();
        if self.conn.closed.load(Ordering::Acquire) {
            flush_outstanding(&self.conn, &self.qp, WcStatus::WrFlushError);
        } else {
            connection_lost(&self.conn, &self.qp);
        }
        self.conn.close(); // and stop the flusher
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut header = [0u8; REQ_LEN];
        loop {
            if let Err(e) = self.reader.read_exact(&mut header[..1]) {
                return if e.kind() == io::ErrorKind::UnexpectedEof {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            match header[0] {
                FRAME_REQUEST => {
                    self.reader.read_exact(&mut header[1..REQ_LEN])?;
                    let request = Request::decode(&header);
                    self.request(request)?;
                }
                FRAME_RESPONSE => {
                    self.reader.read_exact(&mut header[1..RESP_LEN])?;
                    let status = WcStatus::from_u32(header[1] as u32);
                    let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
                    let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
                    self.read_payload(len)?;
                    self.response(status, seq);
                }
                other => {
                    return Err(io::Error::other(format!(
                        "corrupt stream: frame type {other}"
                    )))
                }
            }
        }
    }

    fn read_payload(&mut self, len: u32) -> io::Result<()> {
        if len > MAX_MESSAGE {
            return Err(io::Error::other(format!(
                "corrupt stream: {len}-byte payload"
            )));
        }
        self.payload.resize(len as usize, 0);
        self.reader.read_exact(&mut self.payload)
    }

    /// Applies a peer's request to our memory and answers it when asked to (or on error).
    fn request(&mut self, req: Request) -> io::Result<()> {
        let carries_data = matches!(req.op, 0..=3);
        self.read_payload(if carries_data { req.len } else { 0 })?;
        if self.refused {
            return Ok(());
        }
        let qp = &*self.qp;
        if qp.state() == QpState::Error {
            // A QP in error does not answer: the requester's transport times out.
            self.refused = true;
            self.conn
                .send_reply(|b| encode_response(b, WcStatus::RetryExceeded, req.seq, &[]));
            return Ok(());
        }
        let cq = &qp.recv_cq;
        let mut target = Target {
            arena: qp.arena(),
            rq: &qp.rq,
            cq_notify: &cq.notify,
            cq_event: cq.channel.as_ref().map(|c| &*c.event),
            rq_next: &mut self.rq_next,
        };
        let data = Gather::one(self.payload.as_ptr(), self.payload.len());
        let mut reply = [0u8; 8];
        let mut reply_len = 0;
        let read_buf = &mut self.read_buf;
        let conn = &self.conn;
        let still_there = || !conn.closed.load(Ordering::Relaxed);
        let result = match req.op {
            0 => with_rnr_retry(&self.peer_config, still_there, || {
                target.write(req.remote, &data)
            }),
            1 => with_rnr_retry(&self.peer_config, still_there, || {
                target.write_with_imm(req.remote, &data, req.imm)
            }),
            2 => with_rnr_retry(&self.peer_config, still_there, || target.send(&data, None)),
            3 => with_rnr_retry(&self.peer_config, still_there, || {
                target.send(&data, Some(req.imm))
            }),
            4 => {
                if req.len > MAX_MESSAGE {
                    Err(WcStatus::RemoteInvalidRequest)
                } else {
                    read_buf.resize(req.len as usize, 0);
                    let mut dst = Scatter::EMPTY;
                    dst.push(read_buf.as_mut_ptr(), read_buf.len());
                    target.read(req.remote, &dst).map_err(refusal_status)
                }
            }
            5 | 6 => {
                let op = if req.op == 5 {
                    AtomicOp::FetchAdd(req.operand1)
                } else {
                    AtomicOp::CmpSwap {
                        compare: req.operand1,
                        swap: req.operand2,
                    }
                };
                target
                    .atomic(req.remote, op)
                    .map(|old| {
                        reply = old.to_le_bytes();
                        reply_len = 8;
                    })
                    .map_err(refusal_status)
            }
            _ => Err(WcStatus::RemoteInvalidRequest),
        };
        match result {
            Ok(()) if req.op == 4 => self
                .conn
                .send_reply(|b| encode_response(b, WcStatus::Success, req.seq, read_buf)),
            Ok(()) if req.flags & FLAG_ACK != 0 || reply_len > 0 => self.conn.send_reply(|b| {
                encode_response(b, WcStatus::Success, req.seq, &reply[..reply_len])
            }),
            Ok(()) => {}
            Err(status) => {
                self.refused = true;
                self.conn
                    .send_reply(|b| encode_response(b, status, req.seq, &[]));
            }
        }
        Ok(())
    }

    /// Completes our requests up to `seq` (a cumulative acknowledgement).
    fn response(&mut self, status: WcStatus, seq: u64) {
        let qp = &*self.qp;
        let mut outstanding = lock(&self.conn.outstanding);
        while let Some(front) = outstanding.front() {
            if front.seq > seq {
                break;
            }
            let o = outstanding.pop_front().expect("front exists");
            if o.seq < seq || status == WcStatus::Success {
                if o.seq == seq && !self.payload.is_empty() {
                    let n = self.payload.len().min(o.scatter.total());
                    if n == o.scatter.total() {
                        // SAFETY: the scatter pieces are registered memory resolved at post
                        // time with room for total() bytes; the payload holds at least that.
                        unsafe { o.scatter.fill_from(self.payload.as_ptr()) };
                    }
                }
                if o.signaled {
                    qp.push_send_completion(send_completion(
                        qp,
                        o.wr_id,
                        o.op,
                        WcStatus::Success,
                        o.len,
                    ));
                }
            } else {
                qp.fail();
                qp.push_send_completion(send_completion(qp, o.wr_id, o.op, status, 0));
                while let Some(rest) = outstanding.pop_front() {
                    qp.push_send_completion(send_completion(
                        qp,
                        rest.wr_id,
                        rest.op,
                        WcStatus::WrFlushError,
                        0,
                    ));
                }
                break;
            }
        }
    }
}

fn refusal_status(r: Refusal) -> WcStatus {
    match r {
        Refusal::Failed(s) => s,
        Refusal::NotReady => WcStatus::RnrRetryExceeded,
    }
}

/// Handshake message: who we are, which QP we want, and our retry settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hello {
    refused: bool,
    device: u64,
    qpn: u32,
    to_device: u64,
    to_qpn: u32,
    rnr_retry: u8,
    rnr_timer_us: u32,
}

impl Hello {
    fn of(qp: &QpShared, device: u64, to: (u64, u32)) -> Self {
        Self {
            refused: false,
            device,
            qpn: qp.qpn,
            to_device: to.0,
            to_qpn: to.1,
            rnr_retry: qp.config.rnr_retry,
            rnr_timer_us: qp.config.rnr_timer.as_micros().min(u32::MAX as u128) as u32,
        }
    }

    #[cfg(test)]
    fn of_raw(device: u64, qpn: u32, to_device: u64, to_qpn: u32) -> Self {
        Self {
            refused: false,
            device,
            qpn,
            to_device,
            to_qpn,
            rnr_retry: 0,
            rnr_timer_us: 0,
        }
    }

    fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8] = self.refused as u8;
        b[9] = self.rnr_retry;
        b[12..16].copy_from_slice(&self.rnr_timer_us.to_le_bytes());
        b[16..24].copy_from_slice(&self.device.to_le_bytes());
        b[24..28].copy_from_slice(&self.qpn.to_le_bytes());
        b[28..32].copy_from_slice(&self.to_qpn.to_le_bytes());
        b[32..40].copy_from_slice(&self.to_device.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HELLO_LEN]) -> Result<Self, String> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != MAGIC || u32_at(4) != VERSION {
            return Err("not an rdma-mock tcp handshake (magic or version differ)".into());
        }
        Ok(Self {
            refused: b[8] != 0,
            rnr_retry: b[9],
            rnr_timer_us: u32_at(12),
            device: u64_at(16),
            qpn: u32_at(24),
            to_qpn: u32_at(28),
            to_device: u64_at(32),
        })
    }

    fn peer_config(&self) -> QpConfig {
        QpConfig {
            rnr_retry: self.rnr_retry,
            rnr_timer: Duration::from_micros(self.rnr_timer_us as u64),
            ..QpConfig::default()
        }
    }
}

/// Refusal: a hello with `refused` set, then a length-prefixed reason.
fn send_refusal(mut stream: &TcpStream, device: u64, why: &str) -> io::Result<()> {
    let hello = Hello {
        refused: true,
        device,
        qpn: 0,
        to_device: 0,
        to_qpn: 0,
        rnr_retry: 0,
        rnr_timer_us: 0,
    };
    let mut msg = hello.encode().to_vec();
    msg.extend_from_slice(&(why.len() as u32).to_le_bytes());
    msg.extend_from_slice(why.as_bytes());
    stream.write_all(&msg)
}

fn read_hello(mut stream: &TcpStream) -> io::Result<Result<Hello, String>> {
    let mut b = [0u8; HELLO_LEN];
    stream.read_exact(&mut b)?;
    let hello = match Hello::decode(&b) {
        Ok(h) => h,
        Err(why) => return Ok(Err(why)),
    };
    if hello.refused {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len)?;
        let mut why = vec![0u8; (u32::from_le_bytes(len) as usize).min(4096)];
        stream.read_exact(&mut why)?;
        return Ok(Err(String::from_utf8_lossy(&why).into_owned()));
    }
    Ok(Ok(hello))
}

/// Starts the progress and flusher threads of a connection and returns our link.
fn start_link(stream: TcpStream, qp: &Arc<QpShared>, peer: &Hello) -> io::Result<TcpLink> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(None)?;
    let conn = Arc::new(Conn {
        writer: Mutex::new(Writer {
            stream: stream.try_clone()?,
            backlog: Vec::new(),
        }),
        replies: Mutex::new(Replies::default()),
        replies_ready: Condvar::new(),
        outstanding: Mutex::new(VecDeque::with_capacity(qp.config.max_send_wr as usize)),
        closed: AtomicBool::new(false),
        stream: stream.try_clone()?,
    });
    let progress = Progress {
        conn: conn.clone(),
        qp: qp.clone(),
        reader: BufReader::with_capacity(64 * 1024, stream),
        peer_config: peer.peer_config(),
        rq_next: 0,
        refused: false,
        payload: Vec::with_capacity(4096),
        read_buf: Vec::new(),
    };
    let flusher = conn.clone();
    let threads = vec![
        std::thread::Builder::new()
            .name(format!("rdma-mock-tcp-qp{}", qp.qpn))
            .spawn(move || progress.run())?,
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
                    if let Ok(stream) = stream {
                        // Each handshake on its own thread: a dialer that says nothing must
                        // not hold up the others until its handshake times out.
                        let registry = registry.clone();
                        let _ = std::thread::Builder::new()
                            .name("rdma-mock-tcp-accept".into())
                            .spawn(move || accept(uid, &registry, stream));
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
    let reply = Hello::of(&qp, uid, (hello.device, hello.qpn));
    (&stream).write_all(&reply.encode())?;
    let link = start_link(stream, &qp, &hello)?;
    let accepted = Accepted {
        peer_device: hello.device,
        peer_qpn: hello.qpn,
        link: Link::Tcp(link),
    };
    // A second dialer for the same QP loses: dropping its link closes its connection.
    registry.offer(qp.qpn, accepted);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_round_trips() {
        let req = Request {
            op: 6,
            flags: FLAG_ACK,
            len: 77,
            seq: 1 << 40,
            remote: RemoteAddr {
                addr: 0xdead_beef_0000,
                rkey: 0x1234,
            },
            imm: 9,
            operand1: 5,
            operand2: u64::MAX,
        };
        assert_eq!(Request::decode(&req.encode()), req);
    }

    #[test]
    fn hello_round_trips_and_rejects_junk() {
        let h = Hello {
            refused: false,
            device: 1,
            qpn: 2,
            to_device: 3,
            to_qpn: 4,
            rnr_retry: 5,
            rnr_timer_us: 6,
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        assert!(Hello::decode(&[0u8; HELLO_LEN]).is_err());
    }

    use crate::{
        Access, Device, DeviceConfig, Fabric, QpConfig, QpState, RecvWr, WcStatus, WorkCompletion,
    };

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
}
