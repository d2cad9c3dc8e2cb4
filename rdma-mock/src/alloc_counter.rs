//! A global allocator that counts allocations per thread: the tool the hot-path tests of
//! rdma-mock and rafi use to prove that post and poll allocate nothing.
//!
//! Install it in a test binary, then compare [`allocations`] around the code under test:
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: rdma_mock::alloc_counter::CountingAllocator = rdma_mock::alloc_counter::CountingAllocator;
//!
//! let before = rdma_mock::alloc_counter::allocations();
//! let v = std::hint::black_box(vec![1u8; 10]);
//! assert!(rdma_mock::alloc_counter::allocations() > before);
//! # drop(v);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting allocations and reallocations of each thread.
pub struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; it only counts them, in a
// const-initialized thread local that itself never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above, for dealloc.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: as above, for realloc.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations (and reallocations) made by the calling thread so far, when
/// [`CountingAllocator`] is the global allocator; 0 otherwise.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}
