//! The buddy structure of one managed range.
//!
//! Blocks are powers of two from [`MIN_BLOCK`](super::MIN_BLOCK) bytes up, and a block of
//! order `k` (2^k bytes) always starts at an address that is a multiple of 2^k, so its buddy is
//! found by flipping bit `k` of its address. A range need not be aligned to anything larger than
//! the minimum block: it is first cut into the largest naturally aligned blocks that fit, and a
//! merge only happens when the buddy lies inside the range and is free at the same order.
//!
//! The free blocks of each order form a [`BitTree`] indexed by `address >> k`, kept in the
//! allocator's own lazily mapped memory and never in the range itself: the host can rewrite
//! untrusted memory at will, so nothing read from it may steer the allocator. Every operation
//! is a constant number of bitmap updates per order it crosses, so allocating and freeing are
//! O(number of orders) whatever the number of live blocks, and finding a free block costs one
//! word per bitmap level.

use std::io;

use super::bitmap::BitTree;
use super::lazy::ZeroedMap;
use super::MIN_ORDER;

/// The free set of one order.
struct OrderSet {
    /// `address >> order` of the first block of this order that fits in the range.
    first_index: usize,
    /// How many blocks of this order fit in the range.
    capacity: usize,
    /// How many of them are free.
    free: usize,
    tree: BitTree,
}

/// Free blocks of one range, by order.
pub(crate) struct Buddy {
    base: usize,
    len: usize,
    max_order: u32,
    /// Indexed by `order - MIN_ORDER`, up to `max_order`.
    sets: Vec<OrderSet>,
    words: ZeroedMap,
    /// Bit `k` is set when some block of order `k` is free.
    nonempty: u64,
    free_bytes: usize,
}

impl Buddy {
    /// Builds the structure for `[base, base + len)` with every byte free.
    ///
    /// `base` and `len` must be non-zero multiples of the minimum block size and the range must
    /// not wrap around the address space; the caller checks this.
    pub(crate) fn new(base: usize, len: usize) -> io::Result<Buddy> {
        let end = base + len;
        let mut sets = Vec::new();
        let mut next_word = 0;
        for order in MIN_ORDER..usize::BITS {
            let first_index = base.div_ceil(1 << order);
            let end_index = end >> order;
            if end_index <= first_index {
                break;
            }
            let capacity = end_index - first_index;
            sets.push(OrderSet {
                first_index,
                capacity,
                free: 0,
                tree: BitTree::layout(capacity, &mut next_word),
            });
        }
        debug_assert!(!sets.is_empty(), "the range holds no minimum block");
        let max_order = MIN_ORDER + sets.len() as u32 - 1;
        let words = ZeroedMap::new(next_word * 8)?;
        let mut buddy = Buddy {
            base,
            len,
            max_order,
            sets,
            words,
            nonempty: 0,
            free_bytes: 0,
        };
        let mut at = base;
        while at < end {
            let mut order = at.trailing_zeros().min(max_order);
            while (1usize << order) > end - at {
                order -= 1;
            }
            buddy.put(order, at);
            at += 1 << order;
        }
        Ok(buddy)
    }

    /// The largest order a block of this range can have.
    #[cfg(test)]
    pub(crate) fn max_order(&self) -> u32 {
        self.max_order
    }

    /// Bit `k` is set when a block of order `k` is free.
    pub(crate) fn nonempty(&self) -> u64 {
        self.nonempty
    }

    /// Bytes in free blocks.
    pub(crate) fn free_bytes(&self) -> usize {
        self.free_bytes
    }

    /// Whether every byte of the range is free.
    pub(crate) fn is_empty(&self) -> bool {
        self.free_bytes == self.len
    }

    /// Takes a block of exactly `order`, splitting the smallest larger free block if needed.
    pub(crate) fn alloc(&mut self, order: u32) -> Option<usize> {
        let candidates = self.nonempty & (u64::MAX << order);
        if candidates == 0 {
            return None;
        }
        let mut k = candidates.trailing_zeros();
        let set = &self.sets[(k - MIN_ORDER) as usize];
        let index = set.tree.first(self.words.words())?;
        let addr = (set.first_index + index) << k;
        let taken = self.take(k, addr);
        debug_assert!(taken);
        while k > order {
            k -= 1;
            self.put(k, addr + (1 << k));
        }
        Some(addr)
    }

    /// Returns the block of `order` at `addr`, merging it with free buddies.
    ///
    /// The block must have come from [`Buddy::alloc`] with the same order and not have been
    /// returned since.
    pub(crate) fn free(&mut self, mut addr: usize, mut order: u32) {
        while order < self.max_order {
            let buddy = addr ^ (1 << order);
            if !self.take(order, buddy) {
                break;
            }
            addr &= !(1 << order);
            order += 1;
        }
        self.put(order, addr);
    }

    /// Whether the block of `order` at `addr` is free as a whole block of that order.
    #[cfg(test)]
    pub(crate) fn is_free(&self, addr: usize, order: u32) -> bool {
        self.index(order, addr).is_some_and(|i| {
            self.sets[(order - MIN_ORDER) as usize]
                .tree
                .contains(self.words.words(), i)
        })
    }

    /// The bit index of the block of `order` at `addr`, if such a block fits in the range.
    #[inline]
    fn index(&self, order: u32, addr: usize) -> Option<usize> {
        if order < MIN_ORDER || order > self.max_order || addr < self.base {
            return None;
        }
        let set = &self.sets[(order - MIN_ORDER) as usize];
        let i = (addr >> order).checked_sub(set.first_index)?;
        (i < set.capacity).then_some(i)
    }

    /// Marks the block free.
    #[inline]
    fn put(&mut self, order: u32, addr: usize) {
        let i = self
            .index(order, addr)
            .expect("a block handed to the buddy structure lies inside its range");
        let set = &mut self.sets[(order - MIN_ORDER) as usize];
        debug_assert!(
            !set.tree.contains(self.words.words(), i),
            "block freed twice"
        );
        set.tree.insert(self.words.words_mut(), i);
        set.free += 1;
        self.nonempty |= 1 << order;
        self.free_bytes += 1 << order;
    }

    /// Removes the block from the free set if it is there; returns whether it was.
    #[inline]
    fn take(&mut self, order: u32, addr: usize) -> bool {
        let Some(i) = self.index(order, addr) else {
            return false;
        };
        let set = &mut self.sets[(order - MIN_ORDER) as usize];
        if !set.tree.remove(self.words.words_mut(), i) {
            return false;
        }
        set.free -= 1;
        if set.free == 0 {
            self.nonempty &= !(1 << order);
        }
        self.free_bytes -= 1 << order;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unaligned_range_is_cut_into_natural_blocks() {
        // [0x3000, 0x8000): a 4 KiB block at 0x3000, then a 16 KiB block at 0x4000.
        let mut b = Buddy::new(0x3000, 0x5000).unwrap();
        assert_eq!(b.free_bytes(), 0x5000);
        assert!(b.is_free(0x3000, 12));
        assert!(b.is_free(0x4000, 14));
        assert_eq!(b.max_order(), 14);
        let big = b.alloc(14).unwrap();
        assert_eq!(big, 0x4000);
        assert_eq!(b.alloc(13), None, "only a 4 KiB block is left");
        let small = b.alloc(4).unwrap();
        assert_eq!(small, 0x3000);
        b.free(small, 4);
        b.free(big, 14);
        assert!(b.is_empty());
        // Merging stops at the range's edge: 0x3000's buddy 0x2000 is outside.
        assert!(b.is_free(0x3000, 12));
        assert!(!b.is_free(0x2000, 13));
    }

    #[test]
    fn splitting_and_merging_round_trip() {
        let mut b = Buddy::new(1 << 20, 1 << 20).unwrap();
        assert_eq!(b.nonempty(), 1 << 20);
        let a = b.alloc(4).unwrap();
        assert_eq!(a, 1 << 20);
        // Every order from 4 to 19 now has exactly the upper half of a split free.
        assert_eq!(b.nonempty(), ((1u64 << 20) - 1) & !((1 << 4) - 1));
        b.free(a, 4);
        assert_eq!(b.nonempty(), 1 << 20);
        assert!(b.is_free(1 << 20, 20));
    }

    proptest! {
        #[test]
        fn blocks_never_overlap_and_all_memory_comes_back(
            start in 1usize..4096,
            granules in 1usize..4096,
            orders in prop::collection::vec(4u32..14, 1..120),
            frees in prop::collection::vec(any::<prop::sample::Index>(), 0..120),
        ) {
            let base = start * 16;
            let len = granules * 16;
            let mut b = Buddy::new(base, len).unwrap();
            let mut live: Vec<(usize, u32)> = Vec::new();
            for (step, &order) in orders.iter().enumerate() {
                if let Some(addr) = b.alloc(order) {
                    prop_assert_eq!(addr % (1 << order), 0);
                    prop_assert!(addr >= base && addr + (1 << order) <= base + len);
                    for &(other, o) in &live {
                        prop_assert!(addr + (1 << order) <= other || other + (1 << o) <= addr);
                    }
                    live.push((addr, order));
                }
                if let Some(ix) = frees.get(step) {
                    if !live.is_empty() {
                        let (addr, order) = live.swap_remove(ix.index(live.len()));
                        b.free(addr, order);
                    }
                }
                let used: usize = live.iter().map(|&(_, o)| 1usize << o).sum();
                prop_assert_eq!(b.free_bytes() + used, len);
            }
            for (addr, order) in live.drain(..) {
                b.free(addr, order);
            }
            prop_assert!(b.is_empty());
        }
    }
}
