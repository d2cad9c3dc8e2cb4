//! Invocation ids and request-slot credits of a client connection.

use std::num::NonZeroU64;

use super::geometry::SlotGeometry;

/// Invocation ids of one client connection: 1, 2, 3, … up to `u64::MAX`, each handed out
/// once. After `u64::MAX` the generator is exhausted rather than wrapping (at one id per
/// nanosecond that takes 584 years), so an id is never reused on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdGenerator {
    /// The next id to hand out; 0 once `u64::MAX` has been handed out.
    next: u64,
}

impl IdGenerator {
    /// A generator whose first id is 1.
    pub const fn new() -> IdGenerator {
        IdGenerator { next: 1 }
    }

    /// A generator whose first id is `first` (tests use it to cross the 2^16, 2^32 and
    /// 2^64 boundaries without making billions of calls).
    pub const fn starting_at(first: NonZeroU64) -> IdGenerator {
        IdGenerator { next: first.get() }
    }

    /// The id the next call to [`IdGenerator::next_id`] returns, or `None` when exhausted.
    pub const fn peek(&self) -> Option<u64> {
        if self.next == 0 {
            None
        } else {
            Some(self.next)
        }
    }

    /// Hands out the next id, or `None` when all ids up to `u64::MAX` have been used.
    pub fn next_id(&mut self) -> Option<u64> {
        let id = self.peek()?;
        self.next = id.wrapping_add(1);
        Some(id)
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

/// The credits of one worker connection: which request slots are free.
///
/// A fixed-size stack of free slot indices plus a per-slot flag, both allocated by
/// [`SlotPool::new`]; [`acquire`](SlotPool::acquire) and [`release`](SlotPool::release)
/// are O(1) and never allocate. The most recently released slot is handed out first, so
/// a lightly loaded connection keeps reusing the same, cache-warm slot.
#[derive(Clone, Debug)]
pub struct SlotPool {
    /// `free[..free_len]` are the free slots, the top of the stack last.
    free: Box<[u16]>,
    free_len: u32,
    in_use: Box<[bool]>,
}

impl SlotPool {
    /// A pool in which every slot of `geometry` is free.
    pub fn new(geometry: SlotGeometry) -> SlotPool {
        let n = geometry.slots();
        // Slot 0 on top of the stack: handed out first.
        let free: Box<[u16]> = (0..n).rev().map(|s| s as u16).collect();
        SlotPool {
            free,
            free_len: n,
            in_use: vec![false; n as usize].into_boxed_slice(),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> u32 {
        self.in_use.len() as u32
    }

    /// Slots free to acquire.
    pub fn available(&self) -> u32 {
        self.free_len
    }

    /// Slots acquired and not released.
    pub fn in_flight(&self) -> u32 {
        self.capacity() - self.free_len
    }

    /// Whether `slot` is acquired (false for an index outside the pool).
    pub fn is_in_flight(&self, slot: u16) -> bool {
        self.in_use.get(slot as usize).copied().unwrap_or(false)
    }

    /// Takes a free slot, or `None` when every slot is in flight.
    pub fn acquire(&mut self) -> Option<u16> {
        if self.free_len == 0 {
            return None;
        }
        self.free_len -= 1;
        let slot = self.free[self.free_len as usize];
        self.in_use[slot as usize] = true;
        Some(slot)
    }

    /// Returns `slot` to the pool. Returns false, and changes nothing, when `slot` is out of
    /// range or not in flight (a double release).
    pub fn release(&mut self, slot: u16) -> bool {
        match self.in_use.get_mut(slot as usize) {
            Some(used) if *used => {
                *used = false;
                self.free[self.free_len as usize] = slot;
                self.free_len += 1;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_count_up_from_one_and_stop_at_the_end() {
        let mut g = IdGenerator::new();
        assert_eq!(g.next_id(), Some(1));
        assert_eq!(g.next_id(), Some(2));
        let mut g = IdGenerator::starting_at(NonZeroU64::new(u64::MAX - 1).unwrap());
        assert_eq!(g.next_id(), Some(u64::MAX - 1));
        assert_eq!(g.peek(), Some(u64::MAX));
        assert_eq!(g.next_id(), Some(u64::MAX));
        assert_eq!(g.peek(), None);
        assert_eq!(g.next_id(), None);
        assert_eq!(g.next_id(), None);
    }

    #[test]
    fn pool_hands_out_each_slot_once() {
        let mut p = SlotPool::new(SlotGeometry::new(3, 128).unwrap());
        assert_eq!((p.capacity(), p.available(), p.in_flight()), (3, 3, 0));
        let a = p.acquire().unwrap();
        let b = p.acquire().unwrap();
        let c = p.acquire().unwrap();
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(p.acquire(), None);
        assert_eq!(p.in_flight(), 3);
        assert!(p.release(b));
        assert!(!p.release(b), "double release");
        assert!(!p.release(3), "out of range");
        assert!(!p.is_in_flight(b) && p.is_in_flight(a) && !p.is_in_flight(99));
        assert_eq!(p.acquire(), Some(b));
        assert_eq!(p.acquire(), None);
    }

    #[test]
    fn pool_of_65536_slots() {
        let g = SlotGeometry::new(65536, 128).unwrap();
        let mut p = SlotPool::new(g);
        let mut seen = vec![false; 65536];
        while let Some(s) = p.acquire() {
            assert!(!std::mem::replace(&mut seen[s as usize], true));
        }
        assert!(seen.iter().all(|&s| s));
        assert!(p.release(65535));
        assert_eq!(p.acquire(), Some(65535));
    }
}
