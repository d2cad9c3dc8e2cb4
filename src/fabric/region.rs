//! Registered memory, as every backend exposes it.

use std::sync::atomic::AtomicU64;

use super::{Access, RemoteAddr, Sge};

/// A registered memory region: `len()` bytes at `as_ptr()` that this process accesses
/// directly and peers reach through `rkey()`. Deregistered on drop.
///
/// Peers may change the bytes at any time, so the region hands out raw pointers and copying
/// accessors; a completion orders what it reports (after `poll` returns a receive
/// completion, the bytes it announces are visible).
///
/// # Safety
/// Implementors guarantee that `as_ptr()` is valid for reads and writes of `len()` bytes,
/// page aligned, for as long as the region lives. The provided methods rely on it.
pub unsafe trait MemoryRegion: Send + Sync + std::fmt::Debug {
    /// Virtual address of the first byte (what peers put in a [`RemoteAddr`]).
    fn addr(&self) -> u64;
    fn len(&self) -> usize;
    /// Key for local scatter/gather elements.
    fn lkey(&self) -> u32;
    /// Key that peers use to reach this region.
    fn rkey(&self) -> u32;
    fn access(&self) -> Access;
    /// The first byte in this process.
    fn as_ptr(&self) -> *mut u8;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A scatter/gather element for `len` bytes at `offset`.
    ///
    /// # Panics
    /// If the range is outside the region or longer than `u32::MAX`.
    fn sge(&self, offset: usize, len: usize) -> Sge {
        check(self.len(), offset, len);
        Sge {
            addr: self.addr() + offset as u64,
            length: u32::try_from(len).expect("a scatter/gather element holds < 4 GiB"),
            lkey: self.lkey(),
        }
    }

    /// The remote address of `offset`, for a peer's one-sided operations.
    fn remote(&self, offset: usize) -> RemoteAddr {
        RemoteAddr {
            addr: self.addr() + offset as u64,
            rkey: self.rkey(),
        }
    }

    /// Copies `data` into the region at `offset`.
    ///
    /// # Panics
    /// If the range is outside the region.
    fn write(&self, offset: usize, data: &[u8]) {
        check(self.len(), offset, data.len());
        // SAFETY: the range is inside the region (checked), which the trait's contract
        // keeps valid; `data` is a Rust slice, so it cannot overlap shared region memory
        // that we only reach through raw pointers.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len())
        }
    }

    /// Copies `out.len()` bytes at `offset` into `out`.
    ///
    /// # Panics
    /// If the range is outside the region.
    fn read(&self, offset: usize, out: &mut [u8]) {
        check(self.len(), offset, out.len());
        // SAFETY: as in `write`, in the other direction.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len())
        }
    }

    /// Copies the whole region into a new vector.
    fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len()];
        self.read(0, &mut out);
        out
    }

    /// The bytes at `offset..offset + len` as a slice, for validating and reading an input
    /// in place (zero copy).
    ///
    /// # Safety
    /// Nobody may write the range while the slice lives: no peer operation targets it and
    /// no local request writes it. The invocation protocol guarantees this for a request
    /// slot between its receive completion and the response.
    ///
    /// # Panics
    /// If the range is outside the region.
    unsafe fn slice(&self, offset: usize, len: usize) -> &[u8] {
        check(self.len(), offset, len);
        // SAFETY: the range is inside the region, valid while `&self` lives; the caller
        // guarantees nobody writes it meanwhile.
        unsafe { std::slice::from_raw_parts(self.as_ptr().add(offset), len) }
    }

    /// The bytes at `offset..offset + len` as a mutable slice, to build an output in place
    /// before posting it.
    ///
    /// # Safety
    /// Nobody else may read or write the range while the slice lives.
    ///
    /// # Panics
    /// If the range is outside the region.
    #[allow(clippy::mut_from_ref)] // shared memory; exclusivity is the caller's contract
    unsafe fn slice_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        check(self.len(), offset, len);
        // SAFETY: as in `slice`, and the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr().add(offset), len) }
    }

    /// The 8-byte word at `offset` as an atomic (a flag, or a word peers update with
    /// FETCH_ADD / CMP_SWAP).
    ///
    /// # Panics
    /// If `offset` is not 8-byte aligned or the word is outside the region.
    fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        check(self.len(), offset, 8);
        assert!(
            offset % 8 == 0,
            "atomic word at offset {offset} is not 8-byte aligned"
        );
        // SAFETY: inside the region (checked), aligned (page-aligned base, offset a multiple
        // of 8), valid while `&self` lives; all access to it is atomic or by the device.
        unsafe { &*self.as_ptr().add(offset).cast::<AtomicU64>() }
    }
}

fn check(region_len: usize, offset: usize, len: usize) {
    assert!(
        offset.checked_add(len).is_some_and(|end| end <= region_len),
        "range {offset}..{offset}+{len} is outside the {region_len}-byte memory region"
    );
}
