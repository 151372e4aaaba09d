//! Zero-filled bookkeeping memory that costs nothing until it is touched.
//!
//! The allocator keeps one bit per potential free block and one tag per granule of every range
//! it manages. For a multi-GiB inserted range those tables are large but sparse, so they live in
//! anonymous mappings made without reserving swap: the kernel supplies zero pages on first
//! touch, and only the parts that bookkeeping actually uses become resident.

use std::io;
use std::sync::atomic::AtomicU16;

use memmap2::{MmapMut, MmapOptions};

/// A zero-filled, lazily populated anonymous mapping viewed as an array of `u64` words or of
/// `AtomicU16` tags.
pub(crate) struct ZeroedMap {
    map: MmapMut,
}

impl ZeroedMap {
    /// Maps at least `bytes` bytes (at least one page) of zeroed memory.
    pub(crate) fn new(bytes: usize) -> io::Result<ZeroedMap> {
        let map = MmapOptions::new()
            .len(bytes.max(1))
            .no_reserve_swap()
            .map_anon()?;
        Ok(ZeroedMap { map })
    }

    /// The mapping as `u64` words (the trailing bytes of a length that is not a multiple of 8
    /// are not included).
    pub(crate) fn words(&self) -> &[u64] {
        // SAFETY: the mapping is page aligned (so aligned for u64), readable for `len` bytes,
        // zero-initialised (a valid u64 pattern), and borrowed immutably for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<u64>(), self.map.len() / 8) }
    }

    /// The mapping as mutable `u64` words.
    pub(crate) fn words_mut(&mut self) -> &mut [u64] {
        let len = self.map.len() / 8;
        // SAFETY: as in `words`, and `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast::<u64>(), len) }
    }

    /// The mapping as 16-bit atomic tags.
    pub(crate) fn tags(&self) -> &[AtomicU16] {
        // SAFETY: `AtomicU16` has the size and alignment of `u16`; the mapping is page aligned,
        // zero-initialised and lives as long as the borrow. All access through the slice is
        // atomic, so sharing it between threads is sound.
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU16>(), self.map.len() / 2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn reads_zero_and_keeps_writes() {
        let mut m = ZeroedMap::new(100).unwrap();
        assert!(m.words().len() >= 12);
        assert!(m.words().iter().all(|&w| w == 0));
        m.words_mut()[3] = 7;
        assert_eq!(m.words()[3], 7);
        // Word 3 spans tags 12..16; whatever the byte order, exactly one of them holds the 7.
        let tags: Vec<u16> = (12..16)
            .map(|i| m.tags()[i].load(Ordering::Relaxed))
            .collect();
        assert_eq!(tags.iter().map(|&t| t as u64).sum::<u64>(), 7);
    }
}
