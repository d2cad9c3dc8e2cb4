//! Input buffers: registered memory an application fills in place and invokes from, so
//! that the request's WRITE reads the input where it lies instead of copying it into a
//! staging slot first.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::fabric::{Fabric, LocalBuffer};

/// Registered memory of one [`Allocation`](super::Allocation) (from
/// [`Allocation::input_buffer`](super::Allocation::input_buffer)): write the next input into
/// [`InputBuffer::as_mut_slice`], then pass a range of it to
/// [`Allocation::invoke_from`](super::Allocation::invoke_from). Many invocations reuse one
/// registration. Only the allocation that made it can send from it.
pub struct InputBuffer<F: Fabric> {
    pub(super) memory: LocalBuffer<F::Mr>,
    /// The allocation that registered it (its protection domain).
    pub(super) owner: u64,
}

impl<F: Fabric> InputBuffer<F> {
    pub fn len(&self) -> usize {
        self.memory.len()
    }

    pub fn is_empty(&self) -> bool {
        self.memory.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        self.memory.as_slice()
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.memory.as_mut_slice()
    }

    /// The first byte, for a caller in C that fills the buffer through a pointer. Write
    /// only while no invocation from the buffer is in flight.
    pub fn as_ptr(&self) -> *mut u8 {
        self.memory.as_ptr()
    }
}

impl<F: Fabric> std::fmt::Debug for InputBuffer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputBuffer")
            .field("len", &self.len())
            .field("owner", &self.owner)
            .finish()
    }
}

/// A process-wide identity for each allocation, so that a buffer of one is refused by
/// another (its memory is registered in the other's protection domain).
pub(super) fn next_owner() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
