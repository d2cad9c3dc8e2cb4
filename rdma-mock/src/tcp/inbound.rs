//! The reading side of a tcp connection: the peer's frames, applied by whichever thread
//! holds [`Conn::inbound`].
//!
//! Two threads drive it. The application does, whenever it polls a completion queue of the
//! QP ([`Conn::progress_from_app`]): a polling application then sees the peer's operations
//! with no hand-off between threads, as with a busy-polling socket. The progress thread
//! does when the application does not poll, so one-sided operations complete without any
//! help from the target application; while the application polls, it stays parked.
//!
//! Nothing here blocks: the socket is read with `MSG_DONTWAIT` into a frame buffer, and a
//! request that finds no receive posted stays at the head of the buffer with a retry time
//! (receiver-not-ready), so that a single-threaded application can still post the receive
//! that lets it through.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::{lock, Conn, Outstanding};
use super::wire::*;
use crate::qp::{send_completion, QpShared};
use crate::responder::{AtomicOp, Gather, Refusal, Scatter, Target};
use crate::types::Payload;
use crate::types::{Access, QpConfig, QpState, WcStatus};

/// Reading state of one connection.
pub(crate) struct Inbound {
    frames: FrameBuffer,
    state: State,
}

struct State {
    /// Next receive of ours to consume.
    rq_next: u64,
    /// The peer's retry settings, for requests that find no receive posted.
    peer_config: QpConfig,
    /// The request at the head found no receive: retries so far and when to try again.
    rnr: Option<(u8, Instant)>,
    /// Set after we refused a request: the rest of the stream is dropped (go-back-N
    /// without retransmission).
    refused: bool,
    /// Data of a READ being answered (reused).
    read_buf: Vec<u8>,
    /// The stream ended (peer gone, corrupt frame, or closed by us) and was cleaned up.
    ended: bool,
}

impl Inbound {
    pub(super) fn new(peer_config: QpConfig) -> Self {
        Self {
            frames: FrameBuffer::new(),
            state: State {
                rq_next: 0,
                peer_config,
                rnr: None,
                refused: false,
                read_buf: Vec::new(),
                ended: false,
            },
        }
    }
}

/// Bytes read from the socket and not yet applied: `buf[start..end]`.
struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameBuffer {
    fn new() -> Self {
        Self {
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// The length of the frame at the head if all of it is here; an error for a header that
    /// cannot be valid (the stream is then unusable).
    fn complete_frame(&mut self) -> Result<Option<usize>, String> {
        let avail = &self.buf[self.start..self.end];
        let Some(&kind) = avail.first() else {
            return Ok(None);
        };
        let header = match kind {
            FRAME_REQUEST => REQ_LEN,
            FRAME_RESPONSE => RESP_LEN,
            other => return Err(format!("corrupt stream: frame type {other}")),
        };
        if avail.len() < header {
            return Ok(None);
        }
        let len = u32::from_le_bytes(avail[4..8].try_into().expect("4 bytes"));
        // A READ request names the length to read; it carries no payload.
        let carried = if kind == FRAME_REQUEST && !carries_payload(avail[1]) {
            0
        } else {
            len
        };
        if carried > MAX_MESSAGE {
            return Err(format!("corrupt stream: {carried}-byte payload"));
        }
        let total = header + carried as usize;
        if avail.len() < total {
            self.make_room(total);
            return Ok(None);
        }
        Ok(Some(total))
    }

    /// Makes sure a frame of `total` bytes fits from the head.
    fn make_room(&mut self, total: usize) {
        if self.buf.len() - self.start < total {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < total {
                self.buf.resize(total, 0);
            }
        }
    }

    /// Reads what the socket has without waiting. `Ok(0)`: the peer closed the stream.
    fn fill(&mut self, fd: std::os::fd::RawFd) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.make_room(self.end - self.start + 4096);
        }
        crate::sys::recv_nonblocking(fd, &mut self.buf[self.end..]).inspect(|&n| self.end += n)
    }

    fn consume(&mut self, len: usize) {
        self.start += len;
    }
}

fn carries_payload(op: u8) -> bool {
    matches!(op, 0..=3)
}

/// What applying the head frame came to.
enum Step {
    Done,
    /// Receiver not ready: leave the frame at the head and retry later.
    Retry,
}

/// Applies every complete frame and reads what the socket has, without waiting. Returns
/// false once the stream has ended (and was cleaned up: QP failed, outstanding flushed).
pub(super) fn drive(conn: &Conn, qp: &QpShared, inbound: &mut Inbound) -> bool {
    let Inbound { frames, state } = inbound;
    if state.ended {
        return false;
    }
    loop {
        loop {
            let total = match frames.complete_frame() {
                Ok(Some(total)) => total,
                Ok(None) => break,
                Err(_) => return end_stream(conn, qp, state),
            };
            let frame = &frames.buf[frames.start..frames.start + total];
            let step = if frame[0] == FRAME_REQUEST {
                request(conn, qp, state, frame)
            } else {
                response(conn, qp, frame);
                Step::Done
            };
            match step {
                Step::Done => frames.consume(total),
                Step::Retry => return true,
            }
        }
        match frames.fill(conn.stream.as_raw_fd()) {
            Ok(0) => return end_stream(conn, qp, state),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return end_stream(conn, qp, state),
        }
    }
}

/// When the head request may be retried, if it waits for a receive.
pub(super) fn retry_at(inbound: &Inbound) -> Option<Instant> {
    inbound.state.rnr.map(|(_, at)| at)
}

/// Applies a peer's request to our memory and answers it when asked to (or on error).
fn request(conn: &Conn, qp: &QpShared, state: &mut State, frame: &[u8]) -> Step {
    let req = Request::decode(frame[..REQ_LEN].try_into().expect("header length"));
    if state.refused {
        return Step::Done;
    }
    if let Some((_, at)) = state.rnr {
        if Instant::now() < at {
            return Step::Retry;
        }
    }
    if qp.state() == QpState::Error {
        // A QP in error does not answer: the requester's transport times out.
        refuse(conn, state, WcStatus::RetryExceeded, req.seq);
        return Step::Done;
    }
    let payload = &frame[REQ_LEN..];
    let data = Gather::one(payload.as_ptr(), payload.len());
    let cq = &qp.recv_cq;
    let mut target = Target {
        arena: qp.arena(),
        rq: &qp.rq,
        cq_notify: &cq.notify,
        cq_event: cq.channel.as_ref().map(|c| &*c.event),
        rq_next: &mut state.rq_next,
    };
    let mut old = None;
    let read_buf = &mut state.read_buf;
    let result = match req.op {
        0 => target.write(req.remote, &data),
        1 => target.write_with_imm(req.remote, &data, req.imm),
        2 => target.send(&data, None),
        3 => target.send(&data, Some(req.imm)),
        // Check the rkey before sizing the buffer: a peer must not make us allocate for a
        // read it may not do.
        4 if req.len <= MAX_MESSAGE
            && qp
                .arena()
                .resolve(
                    req.remote.rkey,
                    req.remote.addr,
                    req.len as usize,
                    Access::REMOTE_READ,
                )
                .is_none() =>
        {
            Err(Refusal::Failed(WcStatus::RemoteAccessError))
        }
        4 if req.len <= MAX_MESSAGE => {
            read_buf.resize(req.len as usize, 0);
            let mut dst = Scatter::EMPTY;
            dst.push(read_buf.as_mut_ptr(), read_buf.len());
            target.read(req.remote, &dst)
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
            target.atomic(req.remote, op).map(|value| old = Some(value))
        }
        _ => Err(Refusal::Failed(WcStatus::RemoteInvalidRequest)),
    };
    match result {
        Err(Refusal::NotReady) => {
            let tries = state.rnr.map_or(0, |(tries, _)| tries);
            if tries < state.peer_config.rnr_retry {
                state.rnr = Some((tries + 1, Instant::now() + state.peer_config.rnr_timer));
                return Step::Retry;
            }
            refuse(conn, state, WcStatus::RnrRetryExceeded, req.seq);
        }
        Err(Refusal::Failed(status)) => refuse(conn, state, status, req.seq),
        Ok(()) => {
            state.rnr = None;
            if req.op == 4 {
                let data = &state.read_buf;
                conn.send_reply(|b| encode_response(b, WcStatus::Success, req.seq, data));
            } else if let Some(old) = old {
                conn.send_reply(|b| {
                    encode_response(b, WcStatus::Success, req.seq, &old.to_le_bytes())
                });
            } else if req.flags & FLAG_ACK != 0 {
                conn.send_reply(|b| encode_response(b, WcStatus::Success, req.seq, &[]));
            }
        }
    }
    Step::Done
}

/// Refuses request `seq` and drops the rest of the stream.
fn refuse(conn: &Conn, state: &mut State, status: WcStatus, seq: u64) {
    state.rnr = None;
    state.refused = true;
    conn.send_reply(|b| encode_response(b, status, seq, &[]));
}

/// Completes our requests up to the response's `seq` (a cumulative acknowledgement).
fn response(conn: &Conn, qp: &QpShared, frame: &[u8]) {
    let status = WcStatus::from_u32(frame[1] as u32);
    let seq = u64::from_le_bytes(frame[8..16].try_into().expect("8 bytes"));
    let payload = &frame[RESP_LEN..];
    let mut outstanding = lock(&conn.outstanding);
    while let Some(front) = outstanding.front() {
        if front.seq > seq {
            break;
        }
        let o = outstanding.pop_front().expect("front exists");
        let mut status = status;
        if o.seq == seq && status == WcStatus::Success && !payload.is_empty() {
            // Resolve the destination now, as an HCA checks the lkey when the data lands: a
            // region deregistered meanwhile is a local protection error.
            match qp.scatter(&Payload::Sgl(&o.sgl[..o.sge_count])) {
                Ok(dst) if payload.len() >= dst.total() => {
                    // SAFETY: `dst` was resolved just now inside registered memory with room
                    // for total() bytes; the payload holds at least that many.
                    unsafe { dst.fill_from(payload.as_ptr()) };
                }
                Ok(_) => status = WcStatus::RemoteInvalidRequest,
                Err(local) => status = local,
            }
        }
        if o.seq < seq || status == WcStatus::Success {
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

/// The stream is over: fail the QP and flush what we had outstanding, once. Returns false
/// (for `drive`).
fn end_stream(conn: &Conn, qp: &QpShared, state: &mut State) -> bool {
    state.ended = true;
    if conn.closed.load(Ordering::Acquire) {
        // We closed it ourselves (the QP is being dropped): still flush, never hang.
        flush_outstanding(conn, qp, WcStatus::WrFlushError);
    } else {
        connection_lost(conn, qp);
    }
    false
}

/// The peer is gone: fail the QP and flush what we had outstanding (the oldest request with
/// `RetryExceeded`, as RC hardware reports the timeout, the rest with `WrFlushError`).
pub(super) fn connection_lost(conn: &Conn, qp: &QpShared) {
    qp.fail();
    flush_outstanding(conn, qp, WcStatus::RetryExceeded);
}

fn flush_outstanding(conn: &Conn, qp: &QpShared, first: WcStatus) {
    flush_all(&mut lock(&conn.outstanding), qp, first);
}

/// Completes every outstanding request, the oldest with `first`, the rest with
/// `WrFlushError`. The caller holds the outstanding lock (the send ring's producer lock).
pub(super) fn flush_all(outstanding: &mut VecDeque<Outstanding>, qp: &QpShared, first: WcStatus) {
    let mut status = first;
    while let Some(o) = outstanding.pop_front() {
        qp.push_send_completion(send_completion(qp, o.wr_id, o.op, status, 0));
        status = WcStatus::WrFlushError;
    }
}

/// After the QP failed for a reason other than the stream (a receive-side error, say), its
/// outstanding requests will get no answer that counts: flush them, in order.
pub(super) fn flush_if_failed(conn: &Conn, qp: &QpShared) {
    if qp.state() == QpState::Error {
        flush_outstanding(conn, qp, WcStatus::WrFlushError);
    }
}

/// The progress thread: drives the connection whenever the application does not.
pub(super) fn progress_thread(conn: Arc<Conn>, qp: Arc<QpShared>) {
    let fd = conn.stream.as_raw_fd();
    loop {
        if let Some(d) = conn.app_polling_for() {
            conn.park_for(d);
            continue;
        }
        // Wait for bytes; or, while the request at the head waits for a receive, until it
        // may be retried (bytes behind it cannot be applied before it anyway).
        let retry = retry_at(&lock(&conn.inbound));
        match retry {
            Some(at) => conn.sleep_until(at),
            None => {
                if crate::sys::poll_readable(fd, None).is_err() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        if !drive(&conn, &qp, &mut lock(&conn.inbound)) {
            break;
        }
        flush_if_failed(&conn, &qp);
    }
    conn.close(); // and so stop the flusher
}
