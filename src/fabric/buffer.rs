//! Registered memory that the application fills itself, so that a send reads the bytes in
//! place instead of copying them into a staging slot first (MPI's `MPI_Alloc_mem` idea).

use super::{Access, FabricError, MemoryRegion, ProtectionDomain, Sge};

/// `len` bytes of registered, local-only memory: the application writes into it through
/// [`LocalBuffer::as_mut_slice`], and a send names it with [`LocalBuffer::sge`].
#[derive(Debug)]
pub struct LocalBuffer<M: MemoryRegion> {
    region: M,
}

impl<M: MemoryRegion> LocalBuffer<M> {
    /// Registers `len` zeroed bytes (at least one) with local access only.
    ///
    /// # Errors
    /// When the region cannot be registered.
    pub fn register<P>(pd: &P, len: usize) -> Result<Self, FabricError>
    where
        P: ProtectionDomain,
        P::Fabric: super::Fabric<Mr = M>,
    {
        Ok(Self {
            region: pd.register(len.max(1), Access::LOCAL_WRITE)?,
        })
    }

    pub fn len(&self) -> usize {
        self.region.len()
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// The bytes, to read.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the whole region (valid for its lifetime by the MemoryRegion contract),
        // borrowed from `&self`. It has no remote access, so no peer writes it; only this
        // process does, through `as_mut_slice`, which `&self` excludes meanwhile.
        unsafe { self.region.slice(0, self.region.len()) }
    }

    /// The bytes, to write the next input in place.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes the borrow exclusive. A send that
        // reads the region borrows the buffer (`&self`) until the device is done with it
        // (the caller waits for the answer, which comes after the request was read).
        unsafe { self.region.slice_mut(0, self.region.len()) }
    }

    /// A scatter/gather element for `len` bytes at `offset`.
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn sge(&self, offset: usize, len: usize) -> Sge {
        self.region.sge(offset, len)
    }

    /// A raw pointer to the first byte, for a C caller that fills the buffer itself.
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }
}
