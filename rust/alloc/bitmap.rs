//! Hierarchical bitmaps: sets of small integers with constant-time insert, remove and
//! membership, and a find-first that costs one word per level.
//!
//! Level 0 holds one bit per item. Every higher level holds one bit per word of the level
//! below, set exactly when that word is non-zero, and the top level is a single word. With
//! 64-bit words a set of 2^36 items has six levels, so every operation touches at most six
//! words. The words themselves live in a caller-provided slice, which lets all the sets of one
//! buddy structure share a single lazily mapped buffer.

/// 64^11 exceeds 2^64, so no set that fits the address space needs more levels.
const MAX_LEVELS: usize = 11;

/// Where the levels of one set live inside a shared word buffer.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BitTree {
    offsets: [usize; MAX_LEVELS],
    depth: usize,
}

impl BitTree {
    /// Lays out a set of `bits` items starting at word `*next` and advances `*next` past it.
    pub(crate) fn layout(bits: usize, next: &mut usize) -> BitTree {
        let mut tree = BitTree::default();
        let mut items = bits.max(1);
        loop {
            let words = items.div_ceil(64);
            tree.offsets[tree.depth] = *next;
            *next += words;
            tree.depth += 1;
            if words == 1 {
                return tree;
            }
            items = words;
        }
    }

    /// Adds item `i`. Adding an item that is present changes nothing.
    #[inline]
    pub(crate) fn insert(&self, words: &mut [u64], mut i: usize) {
        for &offset in &self.offsets[..self.depth] {
            let word = &mut words[offset + i / 64];
            let was = *word;
            *word = was | 1 << (i % 64);
            if was != 0 {
                // The word was already non-zero, so every level above already records it.
                return;
            }
            i /= 64;
        }
    }

    /// Removes item `i`; returns whether it was present.
    #[inline]
    pub(crate) fn remove(&self, words: &mut [u64], mut i: usize) -> bool {
        let word = &mut words[self.offsets[0] + i / 64];
        let bit = 1u64 << (i % 64);
        if *word & bit == 0 {
            return false;
        }
        *word &= !bit;
        if *word != 0 {
            return true;
        }
        for &offset in &self.offsets[1..self.depth] {
            i /= 64;
            let word = &mut words[offset + i / 64];
            *word &= !(1u64 << (i % 64));
            if *word != 0 {
                break;
            }
        }
        true
    }

    /// Whether item `i` is present.
    #[inline]
    pub(crate) fn contains(&self, words: &[u64], i: usize) -> bool {
        words[self.offsets[0] + i / 64] >> (i % 64) & 1 != 0
    }

    /// The smallest item present, if any.
    #[inline]
    pub(crate) fn first(&self, words: &[u64]) -> Option<usize> {
        let top = words[self.offsets[self.depth - 1]];
        if top == 0 {
            return None;
        }
        let mut i = top.trailing_zeros() as usize;
        for &offset in self.offsets[..self.depth - 1].iter().rev() {
            i = i * 64 + words[offset + i].trailing_zeros() as usize;
        }
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn layout_sizes_levels() {
        let mut next = 5;
        let t = BitTree::layout(1, &mut next);
        assert_eq!((t.depth, next), (1, 6));
        let t = BitTree::layout(64 * 64 + 1, &mut next);
        // 65 leaf words, 2 words above them, 1 on top.
        assert_eq!(t.depth, 3);
        assert_eq!(next, 6 + 65 + 2 + 1);
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreeset(ops in prop::collection::vec((any::<bool>(), 0usize..300_000), 1..400)) {
            let mut next = 0;
            let tree = BitTree::layout(300_000, &mut next);
            let mut words = vec![0u64; next];
            let mut model = BTreeSet::new();
            for (add, i) in ops {
                if add {
                    tree.insert(&mut words, i);
                    model.insert(i);
                } else {
                    prop_assert_eq!(tree.remove(&mut words, i), model.remove(&i));
                }
                prop_assert_eq!(tree.contains(&words, i), model.contains(&i));
                prop_assert_eq!(tree.first(&words), model.first().copied());
            }
        }
    }
}
