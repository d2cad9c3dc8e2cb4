//! Exact queue accounting: how many requests of a queue pair are outstanding, counted the
//! way verbs defines it, so that every provider refuses at the same depth as rdma-mock.
//!
//! Verbs lets an application have at most `max_send_wr` send requests and `max_recv_wr`
//! receives outstanding, where a request stays outstanding until its completion is polled
//! (an unsignaled request: until the completion of a later signaled one is polled).
//! Providers enforce that differently or not at all: mlx5 frees a slot when its completion
//! is polled; rxe frees it as soon as the request is acknowledged, completion polled or not,
//! so a queue never fills there and unpolled completions can overrun the completion queue;
//! and any provider may grant a deeper queue than asked. So the backend counts itself:
//!
//! ```text
//!  QueuePair (producer, &mut)             Credits (Arc, shared)       CompletionQueue (consumer, &mut)
//!  posted  += 1 per send request ───────▶ ring[signaled % depth] = posted (after this one)
//!  refuse if posted - retired >= depth ◀─ retired ◀──────────────── success send completion:
//!                                                                   retired = ring[tail++]
//!  recv_posted += 1 per receive           recv_retired ◀─────────── success receive completion
//!  refuse if recv_posted - recv_retired >= recv_depth
//!                                          errored ◀─────────────── any error completion,
//!                                                                   or set_error
//! ```
//!
//! Send completions of one queue pair arrive in posting order, so the `k`-th successful send
//! completion belongs to the `k`-th signaled request and retires everything posted up to it.
//! Error completions are not classified (verbs leaves their opcode undefined, so a send
//! cannot be told from a receive): the first one marks the queue pair as in error, after
//! which nothing is counted and the provider takes every request (each is flushed, with
//! one completion).
//!
//! Cost: per post one atomic load (and for a signaled request one store); per completion
//! one hash lookup by `qp_num` and one store. No allocation, lock or system call.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// Counters shared by one queue pair and the completion queues it reports to.
pub(super) struct Credits {
    /// Send requests retired: those whose completion, or a later signaled request's, was
    /// polled. Compared with the queue pair's count of posted requests (both wrap).
    retired: AtomicU32,
    /// Receives whose completion was polled.
    recv_retired: AtomicU32,
    /// The queue pair is in error: nothing is counted any more.
    errored: AtomicBool,
    /// For the signaled send requests outstanding, in posting order (a ring of the send
    /// depth, which bounds them): the count of posted requests that its completion retires.
    ring: Box<[AtomicU32]>,
}

impl Credits {
    pub(super) fn new(send_depth: u32) -> Arc<Self> {
        Arc::new(Self {
            retired: AtomicU32::new(0),
            recv_retired: AtomicU32::new(0),
            errored: AtomicBool::new(false),
            ring: (0..send_depth).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    /// Whether the queue pair is known to be in error.
    #[inline]
    pub(super) fn errored(&self) -> bool {
        self.errored.load(Ordering::Relaxed)
    }

    pub(super) fn set_errored(&self) {
        self.errored.store(true, Ordering::Relaxed);
    }

    /// Send requests outstanding when `posted` have been posted.
    #[inline]
    pub(super) fn outstanding(&self, posted: u32) -> u32 {
        posted.wrapping_sub(self.retired.load(Ordering::Acquire))
    }

    /// Receives outstanding when `posted` have been posted.
    #[inline]
    pub(super) fn recv_outstanding(&self, posted: u32) -> u32 {
        posted.wrapping_sub(self.recv_retired.load(Ordering::Acquire))
    }

    /// Records, before it is posted, that the `index`-th signaled request retires
    /// everything up to `posted_after` when its completion is polled. Release: the
    /// completion queue reads it (Acquire) once the completion arrives, which the
    /// provider's post and poll order anyway.
    #[inline]
    pub(super) fn note_signaled(&self, index: u32, posted_after: u32) {
        let slot = &self.ring[(index % self.ring.len() as u32) as usize];
        slot.store(posted_after, Ordering::Release);
    }
}

/// Which of a queue pair's queues report to one completion queue.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Sides {
    pub(super) send: bool,
    pub(super) recv: bool,
}

struct Registered {
    credits: Arc<Credits>,
    sides: Sides,
    /// Successful send completions polled so far: the ring index of the next.
    tail: u32,
}

/// The queue pairs reporting to one completion queue, by number. Filled through
/// `&CompletionQueue` when a queue pair is created, read through `&mut` when polling, so
/// the two never overlap (the `RefCell` is only ever borrowed mutably through `get_mut`
/// on the hot path).
#[derive(Default)]
pub(super) struct Registry {
    qps: HashMap<u32, Registered, BuildHasherDefault<QpnHasher>>,
}

impl Registry {
    /// Adds a queue pair (replacing a dropped one of the same number) and forgets those
    /// dropped since (only this registry still holds their counters).
    pub(super) fn register(&mut self, qpn: u32, credits: &Arc<Credits>, sides: Sides) {
        self.qps.retain(|_, r| Arc::strong_count(&r.credits) > 1);
        match self.qps.get_mut(&qpn) {
            Some(r) if Arc::ptr_eq(&r.credits, credits) => {
                r.sides.send |= sides.send;
                r.sides.recv |= sides.recv;
            }
            _ => {
                self.qps.insert(
                    qpn,
                    Registered {
                        credits: credits.clone(),
                        sides,
                        tail: 0,
                    },
                );
            }
        }
    }

    /// Accounts for one polled completion: `ok` for a successful one, `recv` for a
    /// receive (known only for successful ones).
    #[inline]
    pub(super) fn completed(&mut self, qpn: u32, ok: bool, recv: bool) {
        let Some(r) = self.qps.get_mut(&qpn) else {
            return;
        };
        if !ok {
            r.credits.set_errored();
        } else if recv {
            if r.sides.recv {
                r.credits.recv_retired.fetch_add(1, Ordering::Release);
            }
        } else if r.sides.send {
            let ring = &r.credits.ring;
            let upto = ring[(r.tail % ring.len() as u32) as usize].load(Ordering::Acquire);
            r.tail = r.tail.wrapping_add(1);
            r.credits.retired.store(upto, Ordering::Release);
        }
    }
}

/// Queue pair numbers are 24-bit and spread by the device: used as their own hash.
#[derive(Default)]
pub(super) struct QpnHasher(u64);

impl Hasher for QpnHasher {
    fn finish(&self) -> u64 {
        // Spread the low bits over the word (hashbrown uses the top 7 bits as a tag).
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}
