//! Slot regions: registered memory cut into equal slots that the invocation protocol hands
//! back and forth between two processes. The protocol's credit rule — a slot is written
//! again only after the answer to its previous contents arrived — is what makes the
//! borrowed views below sound; this module is where that argument is made, once.

use super::{Access, FabricError, MemoryRegion, ProtectionDomain, RemoteAddr, Sge};

/// `slots` slots of `slot_size` bytes in one registered region.
#[derive(Debug)]
pub struct SlotRegion<M: MemoryRegion> {
    region: M,
    slot_size: usize,
    slots: usize,
}

impl<M: MemoryRegion> SlotRegion<M> {
    /// Registers `slots × slot_size` zeroed bytes with `access`.
    ///
    /// # Errors
    /// When the region cannot be registered (or the size overflows).
    pub fn register<P>(
        pd: &P,
        slots: usize,
        slot_size: usize,
        access: Access,
    ) -> Result<Self, FabricError>
    where
        P: ProtectionDomain,
        P::Fabric: super::Fabric<Mr = M>,
    {
        let len = slots
            .checked_mul(slot_size)
            .filter(|&l| l > 0)
            .ok_or_else(|| FabricError::Config(format!("{slots} slots of {slot_size} bytes")))?;
        Ok(Self {
            region: pd.register(len, access)?,
            slot_size,
            slots,
        })
    }

    pub fn region(&self) -> &M {
        &self.region
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// The first `len` bytes of slot `slot`, as the peer wrote them: read them in place.
    ///
    /// The borrow is sound under the credit rule: the peer writes a slot only while the
    /// slot is its own turn (before the completion that announced it, and never again
    /// before our answer). A peer that breaks the rule can tear the bytes it sent; whatever
    /// they are, they are validated before use, and nothing else is reachable through the
    /// slice. On the shm fabric peers are one user's cooperating processes (see
    /// docs/rdma-mock.md, trust model).
    ///
    /// # Panics
    /// If the slot or `len` is out of range.
    pub fn incoming(&self, slot: usize, len: usize) -> &[u8] {
        let at = self.at(slot, len);
        // SAFETY: the range lies inside the region (checked by `at`), which lives as long
        // as `&self`; by the credit rule above no write targets it while the slice lives.
        unsafe { self.region.slice(at, len) }
    }

    /// Starts fetching the bytes `range` of slot `slot` into this core's cache, all lines
    /// at once: the loads are independent, so their cache misses overlap instead of being
    /// paid one after the other when the bytes are read in order (header first, then the
    /// payload it describes). Call it as soon as a completion announces the bytes. The
    /// range is clipped to the slot.
    ///
    /// A hint, not a load: nothing waits for the lines, so bytes nobody reads later (a
    /// function that ignores its input) cost no stall.
    #[inline]
    pub fn prefetch(&self, slot: usize, range: std::ops::Range<usize>) {
        let end = range.end.min(self.slot_size);
        let bytes = &self.incoming(slot, end)[range.start.min(end)..];
        for line in bytes.chunks(64) {
            prefetch_line(line.as_ptr());
        }
    }

    /// The first `len` bytes of slot `slot` of a local staging region, to build an outgoing
    /// message in place (header, then payload or output).
    ///
    /// Exclusive through `&mut self`. The device may still be reading the slot for the
    /// previous message only if that message's answer has not arrived, and the protocol
    /// reuses a slot only after it has.
    ///
    /// # Panics
    /// If the slot or `len` is out of range.
    pub fn staging_mut(&mut self, slot: usize, len: usize) -> &mut [u8] {
        let at = self.at(slot, len);
        // SAFETY: inside the region (checked), which lives as long as the borrow; `&mut
        // self` excludes other slices; a staging region is registered without remote
        // access, and the credit rule keeps the device's reads of an earlier message from
        // overlapping this borrow.
        unsafe { self.region.slice_mut(at, len) }
    }

    /// A scatter/gather element for the first `len` bytes of slot `slot`.
    pub fn sge(&self, slot: usize, len: usize) -> Sge {
        self.sge_at(slot, 0, len)
    }

    /// A scatter/gather element for `len` bytes of slot `slot` from byte `from`.
    ///
    /// # Panics
    /// If the slot or the range is out of range.
    pub fn sge_at(&self, slot: usize, from: usize, len: usize) -> Sge {
        let end = from.checked_add(len).expect("slot range overflows");
        self.region.sge(self.at(slot, end) + from, len)
    }

    /// The remote address of the region's first byte.
    pub fn remote(&self) -> RemoteAddr {
        self.region.remote(0)
    }

    fn at(&self, slot: usize, len: usize) -> usize {
        assert!(
            slot < self.slots && len <= self.slot_size,
            "slot {slot} / length {len} outside {} slots of {} bytes",
            self.slots,
            self.slot_size
        );
        slot * self.slot_size
    }
}

/// Asks the core to fetch the cache line at `at` for reading, without waiting for it.
#[inline(always)]
fn prefetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults and reads nothing the program sees;
    // `at` points into a live slot anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
