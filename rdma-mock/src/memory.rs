//! Protection-domain arenas and memory regions.
//!
//! Each protection domain owns one sparse memfd, its *arena*, mapped `MAP_SHARED`. Its first
//! [`TABLE_BYTES`] hold the region table (the "MTT" of this fabric); the rest is carved into
//! memory regions. rdma-mock allocates region memory itself: a peer process must be able to
//! map it, which anonymous memory of the application could not offer. Regions are page
//! aligned (4096 bytes), zero-filled when registered, and their pages are released when they
//! are deregistered.
//!
//! A peer that connects a queue pair maps the whole arena once, so a region registered later
//! is reachable at once by its rkey: the peer finds it in the shared table.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::AllocError;
use crate::sys::{page_size, round_up, SharedMapping};
use crate::types::{Access, Sge};

/// Regions per protection domain at most (the low bits of a key index the table).
pub const MAX_REGIONS: usize = 4096;
const INDEX_BITS: u32 = 12;
const TABLE_BYTES: usize = MAX_REGIONS * std::mem::size_of::<TableEntry>();

/// One row of the shared region table. `key` is written last on registration and cleared
/// first on deregistration, so a reader that sees its key sees the rest.
#[repr(C)]
struct TableEntry {
    key: AtomicU32,
    access: AtomicU32,
    /// The region's virtual address in the owner's process (what peers put in `RemoteAddr`).
    base: AtomicU64,
    /// Where the region starts inside the arena file.
    offset: AtomicU64,
    len: AtomicU64,
}

/// A view of some arena's table and data, in this process's address space: ours, or a peer's
/// that we mapped. All translation from keys and virtual addresses to pointers happens here,
/// and every pointer it hands out lies inside the mapping, whatever the table says.
#[derive(Clone, Copy)]
pub(crate) struct ArenaView<'a> {
    map: &'a SharedMapping,
}

impl<'a> ArenaView<'a> {
    pub(crate) fn new(map: &'a SharedMapping) -> Self {
        Self { map }
    }

    fn entry(&self, key: u32) -> &'a TableEntry {
        let index = (key & ((1 << INDEX_BITS) - 1)) as usize;
        // SAFETY: the table occupies the first TABLE_BYTES of every arena (checked when the
        // arena is created or mapped), `index < MAX_REGIONS`, and TableEntry is all atomics,
        // so concurrent writers in other processes are fine.
        unsafe { &*self.map.as_ptr().cast::<TableEntry>().add(index) }
    }

    /// Translates `[addr, addr + len)` of the region with key `key` into a pointer in this
    /// mapping, if the key is live, the range is inside the region and `need` is granted.
    #[inline]
    pub(crate) fn resolve(&self, key: u32, addr: u64, len: usize, need: Access) -> Option<*mut u8> {
        if key == 0 {
            return None;
        }
        let entry = self.entry(key);
        if entry.key.load(Ordering::Acquire) != key {
            return None;
        }
        let access = Access::from_bits(entry.access.load(Ordering::Relaxed));
        let base = entry.base.load(Ordering::Relaxed);
        let offset = entry.offset.load(Ordering::Relaxed);
        let region_len = entry.len.load(Ordering::Relaxed);
        // The entry may have been reused for another region while we read it (a stale key
        // racing a deregistration): the key, unique per registration, says so.
        std::sync::atomic::fence(Ordering::Acquire);
        if entry.key.load(Ordering::Relaxed) != key || !access.contains(need) {
            return None;
        }
        let start = addr.checked_sub(base)?;
        let end = start.checked_add(len as u64)?;
        if end > region_len {
            return None;
        }
        // The table lives in shared memory: never trust it to stay inside the mapping.
        let file_end = offset.checked_add(region_len)?;
        if offset < TABLE_BYTES as u64 || file_end > self.map.len() as u64 {
            return None;
        }
        // SAFETY: offset + end <= map.len() (checked above), so the pointer stays in bounds.
        Some(unsafe { self.map.as_ptr().add((offset + start) as usize) })
    }
}

/// The arena of one protection domain: its mapping and the allocator of its ranges.
#[derive(Debug)]
pub(crate) struct Arena {
    map: Arc<SharedMapping>,
    alloc: Mutex<Allocator>,
}

#[derive(Debug)]
struct Allocator {
    /// Free ranges `(offset, len)`, sorted by offset, never adjacent.
    free: Vec<(usize, usize)>,
    used_slots: Vec<bool>,
}

impl Arena {
    pub(crate) fn create(size: usize) -> Result<Self, AllocError> {
        let size = round_up(size.max(TABLE_BYTES + page_size()), page_size());
        let map = SharedMapping::create("rdma-mock-arena", size).map_err(|source| {
            AllocError::SharedMemory {
                what: "a protection domain arena",
                source,
            }
        })?;
        Ok(Self {
            map: Arc::new(map),
            alloc: Mutex::new(Allocator {
                free: vec![(TABLE_BYTES, size - TABLE_BYTES)],
                used_slots: vec![false; MAX_REGIONS],
            }),
        })
    }

    pub(crate) fn mapping(&self) -> &Arc<SharedMapping> {
        &self.map
    }

    pub(crate) fn view(&self) -> ArenaView<'_> {
        ArenaView::new(&self.map)
    }

    /// Allocates and publishes a region; returns `(key, base address, arena offset)`.
    ///
    /// `tag` fills the key's high bits: the caller draws it from a device-wide counter, so a
    /// key is never valid in two protection domains, nor again after its region is gone
    /// (until the 20-bit counter wraps).
    fn register(
        &self,
        len: usize,
        access: Access,
        tag: u32,
    ) -> Result<(u32, u64, usize), AllocError> {
        if len == 0 {
            return Err(AllocError::EmptyRegion);
        }
        let rounded = round_up(len, page_size());
        let mut alloc = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (1..MAX_REGIONS)
            .find(|&i| !alloc.used_slots[i])
            .ok_or(AllocError::TooManyRegions(MAX_REGIONS - 1))?;
        let pos = alloc
            .free
            .iter()
            .position(|&(_, free_len)| free_len >= rounded)
            .ok_or(AllocError::ArenaFull {
                len,
                arena: self.map.len(),
            })?;
        let (offset, free_len) = alloc.free[pos];
        if free_len == rounded {
            alloc.free.remove(pos);
        } else {
            alloc.free[pos] = (offset + rounded, free_len - rounded);
        }
        alloc.used_slots[slot] = true;
        let key = (tag << INDEX_BITS) | slot as u32;
        // Zero it now: a peer's write that was in flight when the range was freed may have
        // refilled pages released at deregistration.
        self.map.discard(offset, rounded);
        let base = self.map.as_ptr() as u64 + offset as u64;
        let entry = self.view().entry(key);
        entry.access.store(access.bits(), Ordering::Relaxed);
        entry.base.store(base, Ordering::Relaxed);
        entry.offset.store(offset as u64, Ordering::Relaxed);
        entry.len.store(len as u64, Ordering::Relaxed);
        entry.key.store(key, Ordering::Release);
        Ok((key, base, offset))
    }

    fn deregister(&self, key: u32, offset: usize, len: usize) {
        let entry = self.view().entry(key);
        entry.key.store(0, Ordering::Release);
        // Readers re-check the key after reading the fields (see `resolve`): the cleared key
        // must be visible before the fields are rewritten for another region.
        std::sync::atomic::fence(Ordering::Release);
        let rounded = round_up(len, page_size());
        // Released pages read as zero, so the next region starts clean.
        self.map.discard(offset, rounded);
        let mut alloc = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        alloc.used_slots[(key & ((1 << INDEX_BITS) - 1)) as usize] = false;
        let pos = alloc.free.partition_point(|&(o, _)| o < offset);
        alloc.free.insert(pos, (offset, rounded));
        // Merge with the neighbours so large regions can be allocated again.
        if pos + 1 < alloc.free.len()
            && alloc.free[pos].0 + alloc.free[pos].1 == alloc.free[pos + 1].0
        {
            alloc.free[pos].1 += alloc.free[pos + 1].1;
            alloc.free.remove(pos + 1);
        }
        if pos > 0 && alloc.free[pos - 1].0 + alloc.free[pos - 1].1 == alloc.free[pos].0 {
            alloc.free[pos - 1].1 += alloc.free[pos].1;
            alloc.free.remove(pos);
        }
    }
}

/// Checks that a peer's arena file is large enough to hold a region table.
pub(crate) fn arena_len_is_valid(len: usize) -> bool {
    len > TABLE_BYTES
}

/// A registered memory region: `len` bytes of shared memory that this process may access
/// directly and that peers reach with RDMA through its rkey. Deregistered on drop.
///
/// Peers may change the bytes at any time, so the region hands out raw pointers and copying
/// accessors, never Rust references to its bytes; ordering comes from completions (a
/// completion seen by [`crate::CompletionQueue::poll`] makes the data it reports visible).
#[derive(Debug)]
pub struct MemoryRegion {
    pd: Arc<crate::device::PdShared>,
    key: u32,
    base: u64,
    offset: usize,
    len: usize,
    access: Access,
}

impl MemoryRegion {
    pub(crate) fn register(
        pd: Arc<crate::device::PdShared>,
        len: usize,
        access: Access,
    ) -> Result<Self, AllocError> {
        let (key, base, offset) = pd.arena.register(len, access, pd.device.next_key_tag())?;
        Ok(Self {
            pd,
            key,
            base,
            offset,
            len,
            access,
        })
    }

    /// Virtual address of the first byte, in this process (what peers put in `RemoteAddr`).
    pub fn addr(&self) -> u64 {
        self.base
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Key for local scatter/gather elements.
    pub fn lkey(&self) -> u32 {
        self.key
    }

    /// Key that peers use to reach this region.
    pub fn rkey(&self) -> u32 {
        self.key
    }

    pub fn access(&self) -> Access {
        self.access
    }

    /// Raw pointer to the first byte. Valid for `len()` bytes while the region lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base as *mut u8
    }

    /// A scatter/gather element for `len` bytes at `offset`.
    ///
    /// # Panics
    /// If the range is outside the region or longer than [`crate::MAX_MESSAGE`].
    pub fn sge(&self, offset: usize, len: usize) -> Sge {
        self.check(offset, len);
        assert!(
            len <= crate::MAX_MESSAGE as usize,
            "a scatter/gather element holds at most {} bytes",
            crate::MAX_MESSAGE
        );
        Sge {
            addr: self.base + offset as u64,
            length: len as u32,
            lkey: self.key,
        }
    }

    /// The remote address of `offset`, for a peer's one-sided operations.
    pub fn remote(&self, offset: usize) -> crate::types::RemoteAddr {
        crate::types::RemoteAddr {
            addr: self.base + offset as u64,
            rkey: self.key,
        }
    }

    /// Copies `data` into the region at `offset`.
    ///
    /// # Panics
    /// If the range is outside the region.
    pub fn write(&self, offset: usize, data: &[u8]) {
        self.check(offset, data.len());
        // SAFETY: the range is inside the region's mapping (checked), which outlives `self`;
        // `data` is a separate Rust buffer, so the ranges cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len())
        };
    }

    /// Copies bytes of the region at `offset` into `out`.
    ///
    /// # Panics
    /// If the range is outside the region.
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        self.check(offset, out.len());
        // SAFETY: as in `write`, with the roles of the buffers swapped.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len())
        };
    }

    /// The bytes at `offset..offset + len` as a slice, for zero-copy readers (an rkyv
    /// archive validated in place, a request read where it landed).
    ///
    /// # Safety
    /// No one may write the range while the slice lives: not this process, and not a peer
    /// through RDMA. Protocols guarantee that with ownership, as rafi's credits do: a
    /// request slot is not written again until its response has been sent. The shm fabric
    /// trusts its peers (see the crate docs); a peer that breaks the protocol makes this a
    /// data race.
    ///
    /// # Panics
    /// If the range is outside the region.
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &[u8] {
        self.check(offset, len);
        // SAFETY: the range is inside the region's mapping, which lives as long as `&self`;
        // the caller guarantees nobody writes it meanwhile.
        unsafe { std::slice::from_raw_parts(self.as_ptr().add(offset), len) }
    }

    /// The bytes at `offset..offset + len` as a mutable slice, to build an output in place
    /// before posting it (an rkyv archive serialized straight into a send buffer).
    ///
    /// # Safety
    /// Nobody else may read or write the range while the slice lives: no other slice of
    /// it, no request posted from it that is not complete yet, and no peer operation on it.
    ///
    /// # Panics
    /// If the range is outside the region.
    #[allow(clippy::mut_from_ref)] // the region is shared memory; exclusivity is the caller's contract
    pub unsafe fn slice_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        self.check(offset, len);
        // SAFETY: as in `slice`, and the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr().add(offset), len) }
    }

    /// Copies the whole region into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len];
        self.read(0, &mut out);
        out
    }

    /// The 8-byte word at `offset` as an atomic, for polling flags or reading a word that
    /// peers update with FETCH_ADD / CMP_SWAP.
    ///
    /// # Panics
    /// If `offset` is not 8-byte aligned or the word is outside the region.
    pub fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        self.check(offset, 8);
        assert!(
            offset % 8 == 0,
            "atomic word at offset {offset} is not 8-byte aligned"
        );
        // SAFETY: the word is inside the region (checked), aligned (the region is page
        // aligned and offset is a multiple of 8), and lives as long as `&self`.
        unsafe { &*self.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "range {offset}..{offset}+{len} is outside the {}-byte memory region",
            self.len
        );
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        self.pd.arena.deregister(self.key, self.offset, self.len);
    }
}
