//! One tcp connection's shared state and its writing side.
//!
//! Writing: the socket's readers (the application's polls and the progress thread) must
//! never wait for a write, or two peers that both fill their sockets would each wait for the
//! other to read. A reader writes a response only if it can take the writer lock at once and
//! the socket takes the bytes without blocking; what is left goes to a backlog that the
//! flusher thread (or the next request) writes out. Whoever holds the writer lock writes the
//! backlog before its own frame, so frames never interleave and responses keep their order.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::inbound::Inbound;
use crate::qp::QpShared;
use crate::types::{SendOp, Sge, MAX_SGE};

/// A request we sent and that has not been acknowledged.
pub(super) struct Outstanding {
    pub(super) seq: u64,
    pub(super) wr_id: u64,
    pub(super) op: SendOp,
    pub(super) signaled: bool,
    /// The completion's byte count (8 for an atomic, whose request carries no bytes).
    pub(super) len: u32,
    /// Where READ data or an atomic's old value goes: the scatter list itself, resolved
    /// again when the data arrives (the region may have been deregistered meanwhile).
    pub(super) sgl: [Sge; MAX_SGE],
    pub(super) sge_count: usize,
}

/// State of a connection shared by the poster, the application's polls, the progress
/// thread and the flusher.
pub(crate) struct Conn {
    writer: Mutex<Writer>,
    /// Responses the progress thread made but could not hand to the socket without waiting.
    replies: Mutex<Replies>,
    replies_ready: Condvar,
    /// Our requests awaiting acknowledgement. Its lock is also the producer lock of the QP's
    /// send-completion ring, which the poster and the progress thread both fill.
    pub(super) outstanding: Mutex<VecDeque<Outstanding>>,
    /// Everything that reads the socket: whoever holds it applies the peer's frames.
    pub(super) inbound: Mutex<Inbound>,
    /// When the application last polled this connection (ns on [`now_ns`]'s clock); 0 when
    /// it went to sleep. While it polls, the progress thread stays parked.
    app_polled_at: AtomicU64,
    park: Mutex<()>,
    unpark: Condvar,
    pub(super) closed: AtomicBool,
    pub(super) stream: TcpStream,
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

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    /// Writes a request frame (after any backlog). Called by the poster; may block.
    pub(super) fn send_request(
        &self,
        header: &[u8],
        payload: &[(*const u8, usize)],
    ) -> io::Result<()> {
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
    pub(super) fn send_reply(&self, build: impl FnOnce(&mut Vec<u8>)) {
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
    pub(super) fn flush_loop(&self) {
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

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
        let _replies = lock(&self.replies);
        self.replies_ready.notify_all();
        self.app_stops_polling();
    }

    /// The application polls this connection now: drive it here, unless another thread is
    /// at it already. Never waits.
    pub(crate) fn progress_from_app(&self, qp: &QpShared) {
        self.app_polled_at.store(now_ns(), Ordering::Relaxed);
        if let Ok(mut inbound) = self.inbound.try_lock() {
            super::inbound::drive(self, qp, &mut inbound);
        }
        super::inbound::flush_if_failed(self, qp);
    }

    /// The application is about to sleep (or the link closes): the progress thread takes
    /// over at once.
    pub(crate) fn app_stops_polling(&self) {
        self.app_polled_at.store(0, Ordering::Relaxed);
        let _park = lock(&self.park);
        self.unpark.notify_all();
    }

    /// How long the progress thread should stay parked because the application polls.
    pub(super) fn app_polling_for(&self) -> Option<Duration> {
        let at = self.app_polled_at.load(Ordering::Relaxed);
        let since = Duration::from_nanos(now_ns().saturating_sub(at));
        (at != 0 && since < APP_WINDOW).then(|| APP_WINDOW - since)
    }

    /// Parks the progress thread for up to `d` (woken early by `app_stops_polling`).
    pub(super) fn park_for(&self, d: Duration) {
        let park = lock(&self.park);
        if self.app_polled_at.load(Ordering::Relaxed) != 0 && !self.closed.load(Ordering::Acquire) {
            let _ = self.unpark.wait_timeout(park, d);
        }
    }

    /// Sleeps until `at` (a receiver-not-ready retry), or until the connection closes.
    pub(super) fn sleep_until(&self, at: Instant) {
        let mut park = lock(&self.park);
        while !self.closed.load(Ordering::Acquire) {
            let Some(left) = at.checked_duration_since(Instant::now()) else {
                return;
            };
            park = self
                .unpark
                .wait_timeout(park, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub(super) fn new(stream: &TcpStream, inbound: Inbound, max_send_wr: u32) -> io::Result<Self> {
        Ok(Self {
            writer: Mutex::new(Writer {
                stream: stream.try_clone()?,
                backlog: Vec::new(),
            }),
            replies: Mutex::new(Replies::default()),
            replies_ready: Condvar::new(),
            outstanding: Mutex::new(VecDeque::with_capacity(max_send_wr as usize)),
            inbound: Mutex::new(inbound),
            app_polled_at: AtomicU64::new(0),
            park: Mutex::new(()),
            unpark: Condvar::new(),
            closed: AtomicBool::new(false),
            stream: stream.try_clone()?,
        })
    }
}

/// How long after its last poll the application is still taken to be polling. The
/// progress thread checks back this often; a peer's request waits at most this long when
/// the application stops polling without going to sleep through `CompletionQueue::wait`.
const APP_WINDOW: Duration = Duration::from_micros(200);

/// Nanoseconds on a process-wide monotonic clock; never 0.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}
