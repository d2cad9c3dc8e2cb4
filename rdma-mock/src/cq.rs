//! Completion queues and completion channels.
//!
//! A completion queue does not store completions itself: it polls the queues of the QPs
//! attached to it (the send-completion ring and the shared receive slots of each), round
//! robin. That keeps every ring single-producer single-consumer, so no producer in another
//! process can ever block this one, not even by dying half-way.
//!
//! Blocking waits follow the verbs scheme: arm the queue ([`CompletionQueue::req_notify`]),
//! poll once more, then sleep on the [`CompletionChannel`] (an eventfd, which peers on the
//! shm fabric hold too). A producer that finds the queue armed disarms it and signals the
//! eventfd, so a sleeping consumer costs producers one system call and a busy consumer none.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{AllocError, WaitError};
use crate::qp::QpShared;
use crate::sys::{page_size, EventFd, SharedMapping};
use crate::types::WorkCompletion;

/// The wake-up line of one or more completion queues (`ibv_comp_channel`). Like a verbs
/// channel, it is meant for one waiting thread: with two, one may take the other's wake-up.
#[derive(Debug, Clone)]
pub struct CompletionChannel {
    pub(crate) event: Arc<EventFd>,
}

impl CompletionChannel {
    pub(crate) fn new() -> Result<Self, AllocError> {
        let event = EventFd::new().map_err(|source| AllocError::SharedMemory {
            what: "a completion channel",
            source,
        })?;
        Ok(Self {
            event: Arc::new(event),
        })
    }

    /// Sleeps until an armed completion queue of this channel gets a completion, and
    /// acknowledges the events (`ibv_get_cq_event` + `ibv_ack_cq_events`). Returns how many
    /// events were pending. Uses no CPU while it waits.
    ///
    /// # Errors
    /// [`WaitError::Timeout`] when nothing arrives within `timeout`.
    pub fn get_event(&self, timeout: Option<Duration>) -> Result<u64, WaitError> {
        match self.event.wait(timeout)? {
            0 => Err(WaitError::Timeout(timeout.unwrap_or_default())),
            n => Ok(n),
        }
    }

    /// The eventfd, for registering with an event loop (epoll, tokio's `AsyncFd`).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.event.as_raw_fd()
    }
}

/// The page a completion queue shares with peers: the armed flag.
#[repr(C, align(64))]
pub(crate) struct NotifyPage {
    armed: AtomicU32,
}

/// Signals `event` if the queue whose notify page is `page` is armed. Called by every
/// producer after it published a completion.
#[inline]
pub(crate) fn notify(page: &SharedMapping, event: Option<&EventFd>) {
    let Some(event) = event else { return };
    // Pairs with the fence in `req_notify`: either the consumer sees our completion when it
    // polls after arming, or we see it armed here.
    fence(Ordering::SeqCst);
    let armed = &notify_page(page).armed;
    if armed.load(Ordering::Relaxed) != 0 && armed.swap(0, Ordering::AcqRel) != 0 {
        event.signal();
    }
}

pub(crate) fn notify_page(page: &SharedMapping) -> &NotifyPage {
    debug_assert!(page.len() >= std::mem::size_of::<NotifyPage>());
    // SAFETY: every notify mapping is at least one page (created below or size-checked when
    // received from a peer) and NotifyPage is a single atomic.
    unsafe { &*page.as_ptr().cast::<NotifyPage>() }
}

/// Which queues of a QP a completion queue serves.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) qp: Arc<QpShared>,
    pub(crate) send: bool,
    pub(crate) recv: bool,
}

/// State shared by a completion queue and the QPs attached to it.
pub(crate) struct CqShared {
    pub(crate) notify: SharedMapping,
    pub(crate) channel: Option<CompletionChannel>,
    sources: Mutex<Vec<Source>>,
    generation: AtomicU64,
}

impl CqShared {
    pub(crate) fn attach(&self, source: Source) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = sources.iter_mut().find(|s| Arc::ptr_eq(&s.qp, &source.qp)) {
            existing.send |= source.send;
            existing.recv |= source.recv;
        } else {
            sources.push(source);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn detach(&self, qp: &Arc<QpShared>) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.retain(|s| !Arc::ptr_eq(&s.qp, qp));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Wakes a waiter of this queue, if it is armed.
    pub(crate) fn notify(&self) {
        notify(&self.notify, self.channel.as_ref().map(|c| &*c.event));
    }
}

/// A completion queue (`ibv_cq`). Poll it from one thread; it is `Send`, not `Sync`.
pub struct CompletionQueue {
    shared: Arc<CqShared>,
    /// The attached QPs as of `seen_generation`; refreshed when QPs come or go.
    sources: Vec<Source>,
    seen_generation: u64,
    next_source: usize,
}

impl CompletionQueue {
    pub(crate) fn new(channel: Option<&CompletionChannel>) -> Result<Self, AllocError> {
        let notify = SharedMapping::create("rdma-mock-cq", page_size()).map_err(|source| {
            AllocError::SharedMemory {
                what: "a completion queue",
                source,
            }
        })?;
        Ok(Self {
            shared: Arc::new(CqShared {
                notify,
                channel: channel.cloned(),
                sources: Mutex::new(Vec::new()),
                generation: AtomicU64::new(0),
            }),
            sources: Vec::new(),
            seen_generation: 0,
            next_source: 0,
        })
    }

    pub(crate) fn shared(&self) -> &Arc<CqShared> {
        &self.shared
    }

    /// Moves up to `out.len()` completions into `out`; returns how many. Never blocks, never
    /// allocates (unless QPs were attached or detached since the last call), takes no lock.
    #[inline]
    pub fn poll(&mut self, out: &mut [WorkCompletion]) -> usize {
        if self.shared.generation.load(Ordering::Acquire) != self.seen_generation {
            self.refresh();
        }
        let count = self.sources.len();
        let mut filled = 0;
        for i in 0..count {
            if filled == out.len() {
                break;
            }
            let source = &self.sources[(self.next_source + i) % count];
            filled += source
                .qp
                .poll_into(source.send, source.recv, &mut out[filled..]);
        }
        if count > 0 {
            self.next_source = (self.next_source + 1) % count;
        }
        filled
    }

    #[cold]
    fn refresh(&mut self) {
        let sources = self
            .shared
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.seen_generation = self.shared.generation.load(Ordering::Acquire);
        self.sources = sources.clone();
        self.next_source = 0;
    }

    /// Arms the queue: the next completion signals its channel (`ibv_req_notify_cq`).
    /// Poll once more after arming, as with verbs, before you sleep on the channel.
    pub fn req_notify(&self) {
        notify_page(&self.shared.notify)
            .armed
            .store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Prepares to sleep on the channel from an event loop (tokio's `AsyncFd`, epoll):
    /// arms the queue and, on tcp, hands progress to the connections' threads. Poll once
    /// more after `arm` and sleep only if that poll found nothing; [`Self::wait`] does
    /// exactly this for a blocking thread.
    pub fn arm(&mut self) {
        self.req_notify();
        self.hand_over_progress();
    }

    /// On tcp the progress thread must take over before the application sleeps (after its
    /// last poll, which counts as polling).
    fn hand_over_progress(&mut self) {
        if self.shared.generation.load(Ordering::Acquire) != self.seen_generation {
            self.refresh();
        }
        for source in &self.sources {
            if let Some(conn) = source.qp.tcp.get() {
                conn.app_stops_polling();
            }
        }
    }

    /// The channel this queue signals, if it has one.
    pub fn channel(&self) -> Option<&CompletionChannel> {
        self.shared.channel.as_ref()
    }

    /// Polls; if nothing is there, arms the queue and sleeps on its channel until a
    /// completion arrives or `timeout` passes. Uses no CPU while it sleeps.
    ///
    /// # Errors
    /// [`WaitError::NoChannel`] if the queue was created without a channel,
    /// [`WaitError::Timeout`] if nothing arrived in time.
    pub fn wait(
        &mut self,
        out: &mut [WorkCompletion],
        timeout: Option<Duration>,
    ) -> Result<usize, WaitError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let n = self.poll(out);
            if n > 0 {
                return Ok(n);
            }
            let channel = self.shared.channel.clone().ok_or(WaitError::NoChannel)?;
            self.req_notify();
            let n = self.poll(out);
            if n > 0 {
                return Ok(n);
            }
            self.hand_over_progress();
            let remaining = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => return Err(WaitError::Timeout(timeout.unwrap_or_default())),
                },
            };
            match channel.get_event(remaining) {
                Ok(_) => {}
                Err(WaitError::Timeout(_)) => {
                    let n = self.poll(out);
                    return if n > 0 {
                        Ok(n)
                    } else {
                        Err(WaitError::Timeout(timeout.unwrap_or_default()))
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl std::fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("sources", &self.sources.len())
            .finish()
    }
}
