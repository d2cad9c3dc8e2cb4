//! Slot geometry: how many request/response slots a worker connection has and how big they are.

use thiserror::Error;

use super::HEADER_LEN;

/// Number and size of the slots of one worker connection.
///
/// Request slot `i` lives at byte offset `i * slot_size` of the executor's request region
/// for this connection, and pairs with response slot `i` at the same offset of the client's
/// response region. Both regions are `slots * slot_size` bytes long.
///
/// Invariants (checked by [`SlotGeometry::new`]): `1 <= slots <= 65536` (a slot index fits
/// the 16 bits the immediates give it) and `slot_size` is a power of two between
/// [`SlotGeometry::MIN_SLOT_SIZE`] and [`SlotGeometry::MAX_SLOT_SIZE`]. A power of two keeps
/// every slot, and with it every payload at offset 64, aligned to 128 bytes within a
/// page-aligned region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotGeometry {
    slots: u32,
    slot_size: u32,
}

/// Why a slot geometry was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum GeometryError {
    /// Fewer than one or more than 65536 slots.
    #[error("{slots} slots per worker: must be between 1 and {max}")]
    SlotCount { slots: u32, max: u32 },
    /// The slot size is not a power of two.
    #[error("slot size {size} B is not a power of two")]
    SlotSizeNotPowerOfTwo { size: u32 },
    /// The slot size is outside `[MIN_SLOT_SIZE, MAX_SLOT_SIZE]`.
    #[error("slot size {size} B: must be between {min} B and {max} B")]
    SlotSizeOutOfRange { size: u32, min: u32, max: u32 },
}

impl SlotGeometry {
    /// Slots per worker connection unless configured otherwise.
    pub const DEFAULT_SLOTS: u32 = 8;
    /// Slot size unless configured otherwise: 64 KiB.
    pub const DEFAULT_SLOT_SIZE: u32 = 64 * 1024;
    /// Most slots per worker connection: a slot index is 16 bits wide in the immediates.
    pub const MAX_SLOTS: u32 = 1 << 16;
    /// Smallest slot: the 64-byte header plus 64 bytes of payload.
    pub const MIN_SLOT_SIZE: u32 = 128;
    /// Largest slot: 1 GiB, the largest message of the tcp fabric.
    pub const MAX_SLOT_SIZE: u32 = 1 << 30;

    /// The default geometry: 8 slots of 64 KiB.
    pub const DEFAULT: SlotGeometry = SlotGeometry {
        slots: Self::DEFAULT_SLOTS,
        slot_size: Self::DEFAULT_SLOT_SIZE,
    };

    /// A checked geometry.
    ///
    /// # Errors
    /// [`GeometryError`] when `slots` is 0 or above 65536, or `slot_size` is not a power of
    /// two in `[128 B, 1 GiB]`.
    pub const fn new(slots: u32, slot_size: u32) -> Result<SlotGeometry, GeometryError> {
        if slots == 0 || slots > Self::MAX_SLOTS {
            return Err(GeometryError::SlotCount {
                slots,
                max: Self::MAX_SLOTS,
            });
        }
        if !slot_size.is_power_of_two() {
            return Err(GeometryError::SlotSizeNotPowerOfTwo { size: slot_size });
        }
        if slot_size < Self::MIN_SLOT_SIZE || slot_size > Self::MAX_SLOT_SIZE {
            return Err(GeometryError::SlotSizeOutOfRange {
                size: slot_size,
                min: Self::MIN_SLOT_SIZE,
                max: Self::MAX_SLOT_SIZE,
            });
        }
        Ok(SlotGeometry { slots, slot_size })
    }

    /// Number of slots (each side has this many request and response slots).
    pub const fn slots(self) -> u32 {
        self.slots
    }

    /// Bytes per slot, header included.
    pub const fn slot_size(self) -> u32 {
        self.slot_size
    }

    /// Largest payload of a request: `slot_size - 64`.
    pub const fn max_payload(self) -> usize {
        self.slot_size as usize - HEADER_LEN
    }

    /// Largest output of a response: `slot_size - 64`.
    pub const fn max_output(self) -> usize {
        self.slot_size as usize - HEADER_LEN
    }

    /// Bytes of one request (or response) region: `slots * slot_size`.
    pub const fn region_len(self) -> u64 {
        self.slots as u64 * self.slot_size as u64
    }

    /// Whether `slot` is a valid slot index.
    pub const fn contains(self, slot: u16) -> bool {
        (slot as u32) < self.slots
    }

    /// Byte offset of slot `slot` in its region: `slot * slot_size`. Does not check `slot`.
    pub const fn slot_offset(self, slot: u16) -> u64 {
        slot as u64 * self.slot_size as u64
    }
}

impl Default for SlotGeometry {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_eight_slots_of_64k() {
        let g = SlotGeometry::default();
        assert_eq!((g.slots(), g.slot_size()), (8, 65536));
        assert_eq!(g.max_payload(), 65536 - 64);
        assert_eq!(g.region_len(), 8 * 65536);
        assert_eq!(g.slot_offset(3), 3 * 65536);
        assert!(g.contains(7) && !g.contains(8));
    }

    #[test]
    fn limits() {
        assert!(SlotGeometry::new(1, 128).is_ok());
        assert!(SlotGeometry::new(65536, 1 << 30).is_ok());
        assert_eq!(
            SlotGeometry::new(0, 4096),
            Err(GeometryError::SlotCount {
                slots: 0,
                max: 65536
            })
        );
        assert!(matches!(
            SlotGeometry::new(65537, 4096),
            Err(GeometryError::SlotCount { slots: 65537, .. })
        ));
        assert_eq!(
            SlotGeometry::new(8, 1000),
            Err(GeometryError::SlotSizeNotPowerOfTwo { size: 1000 })
        );
        assert!(matches!(
            SlotGeometry::new(8, 64),
            Err(GeometryError::SlotSizeOutOfRange { size: 64, .. })
        ));
        assert!(matches!(
            SlotGeometry::new(8, 1 << 31),
            Err(GeometryError::SlotSizeOutOfRange { .. })
        ));
        assert!(SlotGeometry::new(8, 0).is_err());
        let big = SlotGeometry::new(65536, 1 << 30).unwrap();
        assert_eq!(big.region_len(), 1 << 46);
        assert_eq!(big.slot_offset(65535), 65535 << 30);
    }
}
