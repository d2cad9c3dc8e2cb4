//! What an operation does at its target, written once for both fabrics.
//!
//! On shm the *initiator* runs this code over the target's memory, which it has mapped: a
//! one-sided operation needs no thread of the target. On tcp the target's progress thread
//! runs it over its own memory. Either way every check happens before a byte of the target
//! moves, so a refused operation leaves the target's memory untouched.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cq::notify;
use crate::memory::ArenaView;
use crate::queue::RecvQueue;
use crate::sys::{EventFd, SharedMapping};
use crate::types::{Access, QpState, RemoteAddr, Sge, WcOpcode, WcStatus, MAX_SGE};

/// Bytes to deliver, as raw pieces (local registered memory, an inline buffer, or a tcp
/// receive buffer).
#[derive(Clone, Copy)]
pub(crate) struct Gather {
    parts: [(*const u8, usize); MAX_SGE],
    count: usize,
    total: usize,
}

impl Gather {
    pub(crate) const EMPTY: Gather = Gather {
        parts: [(std::ptr::null(), 0); MAX_SGE],
        count: 0,
        total: 0,
    };

    pub(crate) fn one(ptr: *const u8, len: usize) -> Gather {
        let mut g = Gather::EMPTY;
        g.push(ptr, len);
        g
    }

    pub(crate) fn push(&mut self, ptr: *const u8, len: usize) {
        self.parts[self.count] = (ptr, len);
        self.count += 1;
        self.total += len;
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    pub(crate) fn parts(&self) -> &[(*const u8, usize)] {
        &self.parts[..self.count]
    }

    /// Copies all pieces, in order, to `dst`, which has room for `total()` bytes.
    ///
    /// # Safety
    /// Every piece must be readable and `dst` writable for `total()` bytes.
    unsafe fn copy_to(&self, mut dst: *mut u8) {
        for &(src, len) in self.parts() {
            // SAFETY: guaranteed by the caller; pieces of registered memory may alias other
            // processes' writes, never this copy's destination in a way Rust could observe.
            unsafe {
                std::ptr::copy(src, dst, len);
                dst = dst.add(len);
            }
        }
    }
}

/// Where returned bytes go (READ results, atomic old values), as raw pieces of local memory.
#[derive(Clone, Copy)]
pub(crate) struct Scatter {
    parts: [(*mut u8, usize); MAX_SGE],
    count: usize,
    total: usize,
}

impl Scatter {
    pub(crate) const EMPTY: Scatter = Scatter {
        parts: [(std::ptr::null_mut(), 0); MAX_SGE],
        count: 0,
        total: 0,
    };

    pub(crate) fn push(&mut self, ptr: *mut u8, len: usize) {
        self.parts[self.count] = (ptr, len);
        self.count += 1;
        self.total += len;
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Copies `total()` bytes from `src` across the pieces.
    ///
    /// # Safety
    /// `src` must be readable for `total()` bytes and every piece writable.
    pub(crate) unsafe fn fill_from(&self, mut src: *const u8) {
        for &(dst, len) in &self.parts[..self.count] {
            // SAFETY: guaranteed by the caller.
            unsafe {
                std::ptr::copy(src, dst, len);
                src = src.add(len);
            }
        }
    }
}

// SAFETY: Gather/Scatter are lists of pointers into registered memory that the posting QP
// keeps mapped until the request completes; moving them to a progress thread is fine.
unsafe impl Send for Gather {}
// SAFETY: as above.
unsafe impl Send for Scatter {}

/// Why a delivery did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The operation failed with this status for the requester.
    Failed(WcStatus),
    /// No receive was posted: retry after the RNR timer.
    NotReady,
}

impl From<WcStatus> for Refusal {
    fn from(s: WcStatus) -> Self {
        Refusal::Failed(s)
    }
}

/// The atomic operations.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AtomicOp {
    FetchAdd(u64),
    CmpSwap { compare: u64, swap: u64 },
}

/// The target of an operation, as seen from the code that executes it.
pub(crate) struct Target<'a> {
    pub(crate) arena: ArenaView<'a>,
    pub(crate) rq: &'a RecvQueue,
    pub(crate) cq_notify: &'a SharedMapping,
    pub(crate) cq_event: Option<&'a EventFd>,
    /// Number of the next receive to consume (private to the single delivering thread).
    pub(crate) rq_next: &'a mut u64,
}

impl Target<'_> {
    fn remote(&self, remote: RemoteAddr, len: usize, need: Access) -> Result<*mut u8, WcStatus> {
        self.arena
            .resolve(remote.rkey, remote.addr, len, need)
            .ok_or(WcStatus::RemoteAccessError)
    }

    /// RDMA WRITE.
    pub(crate) fn write(&mut self, remote: RemoteAddr, src: &Gather) -> Result<(), Refusal> {
        let dst = self.remote(remote, src.total(), Access::REMOTE_WRITE)?;
        // SAFETY: `dst` has room for total() bytes (resolve checked the range); the source
        // pieces were resolved by the caller.
        unsafe { src.copy_to(dst) };
        Ok(())
    }

    /// RDMA WRITE_WITH_IMM: the write, then the receive completion with `imm`.
    pub(crate) fn write_with_imm(
        &mut self,
        remote: RemoteAddr,
        src: &Gather,
        imm: u32,
    ) -> Result<(), Refusal> {
        let dst = self.remote(remote, src.total(), Access::REMOTE_WRITE)?;
        let n = self.claim_receive()?;
        // SAFETY: as in `write`.
        unsafe { src.copy_to(dst) };
        self.complete(
            n,
            WcStatus::Success,
            WcOpcode::RecvRdmaWithImm,
            src.total() as u32,
            Some(imm),
        );
        Ok(())
    }

    /// SEND (with or without immediate): lands in the buffers of the next posted receive.
    pub(crate) fn send(&mut self, src: &Gather, imm: Option<u32>) -> Result<(), Refusal> {
        let n = self.claim_receive()?;
        let mut sgl = [Sge::default(); MAX_SGE];
        let count = self.rq.scatter_list(n, &mut sgl);
        let mut dst = Scatter::EMPTY;
        for sge in &sgl[..count] {
            match self
                .arena
                .resolve(sge.lkey, sge.addr, sge.length as usize, Access::LOCAL_WRITE)
            {
                Some(ptr) => dst.push(ptr, sge.length as usize),
                None => {
                    return Err(self.fail_receive(
                        n,
                        WcStatus::LocalProtectionError,
                        WcStatus::RemoteOperationError,
                    ))
                }
            }
        }
        if dst.total() < src.total() {
            return Err(self.fail_receive(
                n,
                WcStatus::LocalLengthError,
                WcStatus::RemoteInvalidRequest,
            ));
        }
        let mut remaining = src.total();
        let mut pieces = src.parts().iter().copied();
        let mut current = pieces.next().unwrap_or((std::ptr::null(), 0));
        for &(mut out, room) in &dst.parts[..dst.count] {
            let mut room = room;
            while room > 0 && remaining > 0 {
                while current.1 == 0 {
                    current = pieces.next().unwrap_or((std::ptr::null(), 0));
                }
                let chunk = room.min(current.1);
                // SAFETY: `out` has `room` writable bytes (resolved above), `current` has
                // `current.1` readable bytes; chunk is at most both.
                unsafe {
                    std::ptr::copy(current.0, out, chunk);
                    out = out.add(chunk);
                    current.0 = current.0.add(chunk);
                }
                current.1 -= chunk;
                room -= chunk;
                remaining -= chunk;
            }
        }
        self.complete(
            n,
            WcStatus::Success,
            WcOpcode::Recv,
            src.total() as u32,
            imm,
        );
        Ok(())
    }

    /// RDMA READ of `dst.total()` bytes at `remote` into `dst`.
    pub(crate) fn read(&mut self, remote: RemoteAddr, dst: &Scatter) -> Result<(), Refusal> {
        let src = self.remote(remote, dst.total(), Access::REMOTE_READ)?;
        // SAFETY: `src` is readable for total() bytes (checked by resolve); the pieces of
        // `dst` were resolved by the caller.
        unsafe { dst.fill_from(src) };
        Ok(())
    }

    /// FETCH_ADD or CMP_SWAP on the 8-byte word at `remote`; returns its old value.
    pub(crate) fn atomic(&mut self, remote: RemoteAddr, op: AtomicOp) -> Result<u64, Refusal> {
        if remote.addr % 8 != 0 {
            return Err(WcStatus::RemoteInvalidRequest.into());
        }
        let ptr = self.remote(remote, 8, Access::REMOTE_ATOMIC)?;
        // A corrupt peer table could shift the region off its page alignment.
        if ptr as usize % 8 != 0 {
            return Err(WcStatus::RemoteInvalidRequest.into());
        }
        // SAFETY: the word is inside the region (resolve), 8-byte aligned (regions are page
        // aligned in their arena and the address is a multiple of 8), and shared memory is
        // the documented use of AtomicU64 across processes.
        let word = unsafe { &*ptr.cast::<AtomicU64>() };
        Ok(match op {
            AtomicOp::FetchAdd(add) => word.fetch_add(add, Ordering::AcqRel),
            AtomicOp::CmpSwap { compare, swap } => {
                match word.compare_exchange(compare, swap, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(old) | Err(old) => old,
                }
            }
        })
    }

    /// Claims the next posted receive, or says why not.
    fn claim_receive(&mut self) -> Result<u64, Refusal> {
        if self.rq.state() == QpState::Error {
            return Err(WcStatus::RetryExceeded.into());
        }
        let n = *self.rq_next;
        if !self.rq.claim(n) {
            return Err(Refusal::NotReady);
        }
        *self.rq_next = n + 1;
        Ok(n)
    }

    /// The receive side failed: complete the receive with `local`, move the target QP to the
    /// error state (as RC hardware does), and report `remote` to the requester.
    fn fail_receive(&mut self, n: u64, local: WcStatus, remote: WcStatus) -> Refusal {
        self.rq.fail();
        self.complete(n, local, WcOpcode::Recv, 0, None);
        Refusal::Failed(remote)
    }

    fn complete(&mut self, n: u64, status: WcStatus, opcode: WcOpcode, len: u32, imm: Option<u32>) {
        self.rq.complete(n, status, opcode, len, imm);
        notify(self.cq_notify, self.cq_event);
    }
}

/// Runs `attempt` until it is not refused for want of a receive, at most `rnr_retry` more
/// times, waiting `rnr_timer` between tries; gives up early once `still_there` says the peer
/// is gone.
pub(crate) fn with_rnr_retry(
    config: &crate::QpConfig,
    still_there: impl Fn() -> bool,
    mut attempt: impl FnMut() -> Result<(), Refusal>,
) -> Result<(), WcStatus> {
    let mut retries = 0;
    loop {
        match attempt() {
            Ok(()) => return Ok(()),
            Err(Refusal::Failed(status)) => return Err(status),
            Err(Refusal::NotReady) if retries < config.rnr_retry => {
                retries += 1;
                std::thread::sleep(config.rnr_timer);
                if !still_there() {
                    return Err(WcStatus::RetryExceeded);
                }
            }
            Err(Refusal::NotReady) => return Err(WcStatus::RnrRetryExceeded),
        }
    }
}
