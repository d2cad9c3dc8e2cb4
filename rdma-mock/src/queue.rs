//! The two queues of a queue pair.
//!
//! **Receive queue** (shared memory, one memfd per QP, mapped by the peer): a ring of slots.
//! The owner posts receive `n` into slot `n % depth`; the peer (or, on tcp, the owner's
//! progress thread) consumes receives in order and writes the completion into the same slot;
//! the owner's completion queue polls the slots in order. So a receive and its completion
//! share one cache line, and a message costs the minimum of line transfers. Each slot's
//! `seq` word walks through `posted(n) -> claimed(n) -> done(n)`; the owner flushes a posted
//! slot with a compare-and-swap, so a flush and a late completion from the peer never both
//! land.
//!
//! **Send completions** (private memory): a single-producer single-consumer ring from the
//! thread that finishes send requests to the thread that polls the completion queue.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::sys::{page_size, round_up, SharedMapping};
use crate::types::{QpState, Sge, WcOpcode, WcStatus, WorkCompletion, MAX_SGE};

const fn posted(n: u64) -> u64 {
    4 * n + 1
}
const fn claimed(n: u64) -> u64 {
    4 * n + 2
}
const fn done(n: u64) -> u64 {
    4 * n + 3
}

/// Header of a QP's shared block: state words the peer reads and may set.
#[repr(C, align(64))]
struct BlockHeader {
    /// The owner's [`QpState`]; the peer reads it before delivering, and sets `Error` when it
    /// delivers a SEND that fails on the owner's side.
    state: AtomicU32,
    depth: AtomicU32,
}

/// One receive slot. The first cache line is what moves per message; the scatter list sits
/// in the second and is only read for SEND.
#[repr(C, align(64))]
struct RecvSlot {
    seq: AtomicU64,
    wr_id: AtomicU64,
    byte_len: AtomicU32,
    imm: AtomicU32,
    has_imm: AtomicU32,
    status: AtomicU32,
    opcode: AtomicU32,
    num_sge: AtomicU32,
    sge: [SlotSge; MAX_SGE],
}

#[repr(C)]
struct SlotSge {
    addr: AtomicU64,
    length: AtomicU32,
    lkey: AtomicU32,
}

/// Byte size of a receive queue block of `depth` slots.
pub(crate) fn block_len(depth: u32) -> usize {
    round_up(
        std::mem::size_of::<BlockHeader>() + depth as usize * std::mem::size_of::<RecvSlot>(),
        page_size(),
    )
}

/// A typed view of a receive-queue block (ours or the peer's), bounds-safe whatever the
/// shared words say.
pub(crate) struct RecvQueue {
    map: SharedMapping,
    depth: u32,
}

impl RecvQueue {
    /// Creates the block of a new QP.
    pub(crate) fn create(depth: u32) -> std::io::Result<Self> {
        let map = SharedMapping::create("rdma-mock-qp", block_len(depth))?;
        let rq = Self { map, depth };
        // The file starts zeroed: state 0 is `Init`, every slot's seq 0 is "never posted".
        rq.header().depth.store(depth, Ordering::Relaxed);
        Ok(rq)
    }

    /// Wraps a peer's block received at connection time.
    pub(crate) fn from_peer(map: SharedMapping, depth: u32) -> std::io::Result<Self> {
        if depth == 0 || !depth.is_power_of_two() || map.len() < block_len(depth) {
            return Err(std::io::Error::other(
                "peer's receive queue block is malformed",
            ));
        }
        Ok(Self { map, depth })
    }

    pub(crate) fn mapping(&self) -> &SharedMapping {
        &self.map
    }

    pub(crate) fn depth(&self) -> u32 {
        self.depth
    }

    fn header(&self) -> &BlockHeader {
        // SAFETY: the block starts with a header (block_len reserves it); all atomics.
        unsafe { &*self.map.as_ptr().cast::<BlockHeader>() }
    }

    fn slot(&self, n: u64) -> &RecvSlot {
        let index = (n & (self.depth as u64 - 1)) as usize;
        // SAFETY: index < depth and the block holds depth slots after the header (checked at
        // creation and in from_peer); RecvSlot is all atomics.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(std::mem::size_of::<BlockHeader>())
                .cast::<RecvSlot>()
                .add(index)
        }
    }

    pub(crate) fn state(&self) -> QpState {
        QpState::from_u32(self.header().state.load(Ordering::Acquire))
    }

    /// Moves from `Init` to `ReadyToSend`, unless the QP failed meanwhile (a peer can fail
    /// it while `connect` finishes): an error is never overwritten.
    pub(crate) fn mark_connected(&self) {
        let _ = self.header().state.compare_exchange(
            QpState::Init as u32,
            QpState::ReadyToSend as u32,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Moves to `Error` unless already there; returns whether this call did it.
    pub(crate) fn fail(&self) -> bool {
        self.header()
            .state
            .swap(QpState::Error as u32, Ordering::AcqRel)
            != QpState::Error as u32
    }

    // ---- owner side -------------------------------------------------------------------

    /// Writes receive `n` (the caller checked there is room).
    pub(crate) fn post(&self, n: u64, wr_id: u64, sgl: &[Sge]) {
        let slot = self.slot(n);
        slot.wr_id.store(wr_id, Ordering::Relaxed);
        slot.num_sge.store(sgl.len() as u32, Ordering::Relaxed);
        for (dst, src) in slot.sge.iter().zip(sgl) {
            dst.addr.store(src.addr, Ordering::Relaxed);
            dst.length.store(src.length, Ordering::Relaxed);
            dst.lkey.store(src.lkey, Ordering::Relaxed);
        }
        slot.seq.store(posted(n), Ordering::Release);
    }

    /// Takes the completion of receive `n` if it is there. When the QP is in error, a receive
    /// still posted is flushed instead. `None`: receive `n` is still pending (or not posted).
    #[inline]
    pub(crate) fn take_completion(
        &self,
        n: u64,
        qp_num: u32,
        deliverer_gone: bool,
    ) -> Option<WorkCompletion> {
        let slot = self.slot(n);
        let seq = slot.seq.load(Ordering::Acquire);
        if seq != done(n) {
            // Only a QP in error flushes: a receive still posted, or one claimed by a peer
            // that died before completing it (it can never write again). A claim by a live
            // peer is completed shortly; a later poll takes it (never spin here).
            let flushable = seq == posted(n) || (seq == claimed(n) && deliverer_gone);
            if !flushable || self.state() != QpState::Error {
                return None;
            }
            match slot
                .seq
                .compare_exchange(seq, done(n), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(WorkCompletion {
                        wr_id: slot.wr_id.load(Ordering::Relaxed),
                        status: WcStatus::WrFlushError,
                        opcode: WcOpcode::Recv,
                        byte_len: 0,
                        imm: None,
                        qp_num,
                    })
                }
                // The peer claimed or completed it meanwhile: take it when it is done.
                Err(now) if now != done(n) => return None,
                Err(_) => {}
            }
        }
        Some(WorkCompletion {
            wr_id: slot.wr_id.load(Ordering::Relaxed),
            status: WcStatus::from_u32(slot.status.load(Ordering::Relaxed)),
            opcode: WcOpcode::from_u32(slot.opcode.load(Ordering::Relaxed)),
            byte_len: slot.byte_len.load(Ordering::Relaxed),
            imm: (slot.has_imm.load(Ordering::Relaxed) != 0)
                .then(|| slot.imm.load(Ordering::Relaxed)),
            qp_num,
        })
    }

    // ---- delivering side (the peer on shm, the progress thread on tcp) -----------------

    /// Claims receive `n` for delivery. `false`: nothing posted there (receiver not ready).
    #[inline]
    pub(crate) fn claim(&self, n: u64) -> bool {
        self.slot(n)
            .seq
            .compare_exchange(posted(n), claimed(n), Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// The scatter list of claimed receive `n` (clamped to [`MAX_SGE`]).
    pub(crate) fn scatter_list(&self, n: u64, out: &mut [Sge; MAX_SGE]) -> usize {
        let slot = self.slot(n);
        let count = (slot.num_sge.load(Ordering::Relaxed) as usize).min(MAX_SGE);
        for (dst, src) in out.iter_mut().zip(&slot.sge[..count]) {
            *dst = Sge {
                addr: src.addr.load(Ordering::Relaxed),
                length: src.length.load(Ordering::Relaxed),
                lkey: src.lkey.load(Ordering::Relaxed),
            };
        }
        count
    }

    /// Completes claimed receive `n`.
    #[inline]
    pub(crate) fn complete(
        &self,
        n: u64,
        status: WcStatus,
        opcode: WcOpcode,
        byte_len: u32,
        imm: Option<u32>,
    ) {
        let slot = self.slot(n);
        slot.status.store(status as u32, Ordering::Relaxed);
        slot.opcode.store(opcode as u32, Ordering::Relaxed);
        slot.byte_len.store(byte_len, Ordering::Relaxed);
        slot.imm.store(imm.unwrap_or(0), Ordering::Relaxed);
        slot.has_imm.store(imm.is_some() as u32, Ordering::Relaxed);
        slot.seq.store(done(n), Ordering::Release);
    }
}

/// Single-producer single-consumer ring of send completions. The producer side is used by
/// one thread at a time (the poster on shm; on tcp the progress thread and the poster, under
/// the connection's outstanding-requests lock), the consumer side by the completion queue's
/// poller.
pub(crate) struct SendRing {
    slots: Box<[UnsafeCell<WorkCompletion>]>,
    mask: u64,
    head: AtomicU64,
    tail: AtomicU64,
}

// SAFETY: a slot is written by the producer only while tail has not passed it and read by
// the consumer only after the producer's Release store of tail; head/tail are atomics.
unsafe impl Sync for SendRing {}

impl SendRing {
    pub(crate) fn new(capacity: u32) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        Self {
            slots: (0..capacity)
                .map(|_| UnsafeCell::new(WorkCompletion::EMPTY))
                .collect(),
            mask: capacity as u64 - 1,
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
        }
    }

    /// Completions pushed and not yet popped.
    #[inline]
    pub(crate) fn len(&self) -> u64 {
        self.tail.load(Ordering::Relaxed) - self.head.load(Ordering::Acquire)
    }

    /// Appends a completion. The caller is the only producer and checked that the ring has
    /// room (`len()` stays below the QP's `max_send_wr`, at most the capacity).
    #[inline]
    pub(crate) fn push(&self, wc: WorkCompletion) {
        let tail = self.tail.load(Ordering::Relaxed);
        debug_assert!(tail - self.head.load(Ordering::Acquire) <= self.mask);
        // SAFETY: the slot at `tail` is not visible to the consumer until the store below,
        // and the consumer has released it (room was checked by the single producer).
        unsafe { *self.slots[(tail & self.mask) as usize].get() = wc };
        self.tail.store(tail + 1, Ordering::Release);
    }

    /// Takes the oldest completion, if any. Only the consumer calls this.
    #[inline]
    pub(crate) fn pop(&self) -> Option<WorkCompletion> {
        let head = self.head.load(Ordering::Relaxed);
        if head == self.tail.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: head < tail, so the producer published this slot with a Release store of
        // tail that our Acquire load observed; it will not rewrite it until head moves on.
        let wc = unsafe { *self.slots[(head & self.mask) as usize].get() };
        self.head.store(head + 1, Ordering::Release);
        Some(wc)
    }
}
