//! What every thread may know about a managed range without taking the allocator's lock: its
//! bounds, its identity, whether it is being removed, and the live-block tags.
//!
//! # Tags
//!
//! Each granule of [`MIN_BLOCK`] bytes has a 16-bit tag in the allocator's own memory. The tag
//! of the first granule of a live block says so (`START`), together with the block's order,
//! whether an owned [`Block`](super::Block) holds it, and how many of its bytes the caller did
//! not ask for (the slack). Every other tag has `START` clear, so:
//!
//! - freeing an address is a compare-and-swap on one tag, which both proves the address is the
//!   start of a live block and makes sure only one of two racing frees wins;
//! - "which live block contains this address" probes one tag per order;
//! - a range may only be removed when none of its tags has `START` set.
//!
//! For blocks of more than 2^8 bytes the slack does not fit in the head tag; it is kept in the
//! next tag of the block (up to 2^15 bytes) or the next five, 15 bits each, so that `START`
//! stays clear in them.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;

use super::fence;
use super::lazy::ZeroedMap;
use super::{RangeInfo, RangeKind, MIN_BLOCK, MIN_ORDER};

const START: u16 = 1 << 15;
const OWNED: u16 = 1 << 14;
const ORDER_SHIFT: u32 = 8;
const ORDER_MASK: u16 = 0x3F;
/// Blocks up to this order keep their slack (less than 2^8) in the head tag.
const INLINE_MAX_ORDER: u32 = 8;
const INLINE_SLACK_MASK: u16 = 0xFF;
const EXTRA_TAGS: usize = 5;
const EXTRA_BITS: u32 = 15;

/// Tags per page of the tag map; the unit in which the allocator remembers where live blocks
/// may be.
pub(crate) const TAGS_PER_PAGE: usize = 4096 / 2;

/// A live block as the tags describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TaggedBlock {
    pub(crate) start: usize,
    pub(crate) order: u32,
    pub(crate) slack: u64,
    pub(crate) owned: bool,
}

impl TaggedBlock {
    pub(crate) fn rounded(&self) -> usize {
        1 << self.order
    }

    pub(crate) fn requested(&self) -> usize {
        (1usize << self.order) - self.slack as usize
    }
}

/// Why a tag refused to be released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No live block starts at the address.
    NotLive,
    /// The block is held by an owned `Block`, and the caller may not free it.
    Owned,
}

/// The lock-free part of a managed range.
pub(crate) struct RangeMeta {
    pub(crate) id: u64,
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) kind: RangeKind,
    tags: ZeroedMap,
    /// Set while a removal is deciding, and for good once the range has been removed or given
    /// back. A thread that publishes a block and then sees this set withdraws the block.
    pub(crate) retired: AtomicBool,
}

impl RangeMeta {
    pub(crate) fn new(
        id: u64,
        base: usize,
        len: usize,
        kind: RangeKind,
    ) -> std::io::Result<RangeMeta> {
        Ok(RangeMeta {
            id,
            base,
            len,
            kind,
            tags: ZeroedMap::new(len / MIN_BLOCK * 2)?,
            retired: AtomicBool::new(false),
        })
    }

    pub(crate) fn info(&self) -> RangeInfo {
        RangeInfo {
            id: self.id,
            start: self.base,
            len: self.len,
            kind: self.kind,
        }
    }

    #[inline]
    pub(crate) fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.base) < self.len
    }

    #[inline]
    fn tag_index(&self, addr: usize) -> usize {
        (addr - self.base) / MIN_BLOCK
    }

    /// The tag page that holds the tag of `addr`.
    pub(crate) fn tag_page(&self, addr: usize) -> usize {
        self.tag_index(addr) / TAGS_PER_PAGE
    }

    /// Writes the tags of a live block. The head is written last, with release ordering, so
    /// whoever reads it also sees the slack.
    #[inline(always)]
    fn write_tags(&self, addr: usize, order: u32, slack: u64, owned: bool) -> &AtomicU16 {
        let tags = self.tags.tags();
        let i = self.tag_index(addr);
        let mut head = START | ((order as u16) << ORDER_SHIFT);
        if owned {
            head |= OWNED;
        }
        if order <= INLINE_MAX_ORDER {
            head |= slack as u16 & INLINE_SLACK_MASK;
        } else if order <= EXTRA_BITS {
            // The slack is less than the block size, 2^15 at most: one tag, `START` clear.
            tags[i + 1].store(slack as u16, Ordering::Relaxed);
        } else {
            self.write_slack(i, slack);
        }
        let tag = &tags[i];
        tag.store(head, Ordering::Release);
        tag
    }

    /// Writes the slack of a block larger than 2^15 bytes into the tags after its head.
    #[inline(always)]
    fn write_slack(&self, i: usize, slack: u64) {
        for (k, tag) in self.tags.tags()[i + 1..i + 1 + EXTRA_TAGS]
            .iter()
            .enumerate()
        {
            let part = (slack >> (EXTRA_BITS * k as u32)) as u16 & !START;
            tag.store(part, Ordering::Relaxed);
        }
    }

    /// Marks the block live while holding the allocator's lock, under which no removal is
    /// deciding and removed ranges are out of reach.
    #[inline]
    pub(crate) fn publish_locked(&self, addr: usize, order: u32, slack: u64, owned: bool) {
        self.write_tags(addr, order, slack, owned);
    }

    /// Marks the block live from a thread cache, then checks that the range is not being
    /// removed.
    ///
    /// Returns false, with the tag cleared again, if it is: the caller must not hand the block
    /// out. Removal does the mirror image (sets `retired`, then reads the tags) with a fence
    /// pair between write and read on both sides (see [`fence`](super::fence)), so at least one
    /// side sees the other: either this call withdraws, or the removal counts the block as live
    /// and refuses. `asymmetric` is [`fence::asymmetric()`](super::fence::asymmetric).
    #[inline(always)]
    pub(crate) fn publish(
        &self,
        addr: usize,
        order: u32,
        slack: u64,
        owned: bool,
        asymmetric: bool,
    ) -> bool {
        let tag = self.write_tags(addr, order, slack, owned);
        fence::light(asymmetric);
        if self.retired.load(Ordering::Relaxed) {
            tag.store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Ends the life of the block that starts at `addr`, if there is one.
    ///
    /// Exactly one of several racing calls for the same block succeeds.
    #[inline(always)]
    pub(crate) fn release(&self, addr: usize, allow_owned: bool) -> Result<TaggedBlock, Refusal> {
        let (block, head) = self.peek(addr).ok_or(Refusal::NotLive)?;
        self.release_peeked(block, head, allow_owned)
    }

    /// The live block that starts at `addr` as its head tag describes it now, and that tag.
    #[inline(always)]
    pub(crate) fn peek(&self, addr: usize) -> Option<(TaggedBlock, u16)> {
        // An address inside a granule finds that granule's tag; `decode` then refuses it, as it
        // is not aligned to the order of a block starting there.
        let offset = addr.wrapping_sub(self.base);
        if offset >= self.len {
            return None;
        }
        let head = self.tags.tags()[offset / MIN_BLOCK].load(Ordering::Acquire);
        Some((self.decode(addr, head)?, head))
    }

    /// Ends the life of `block`, which [`RangeMeta::peek`] found with head tag `head`, unless
    /// the tag changed since (someone else freed it first).
    #[inline(always)]
    pub(crate) fn release_peeked(
        &self,
        block: TaggedBlock,
        head: u16,
        allow_owned: bool,
    ) -> Result<TaggedBlock, Refusal> {
        if block.owned && !allow_owned {
            return Err(Refusal::Owned);
        }
        let tag = &self.tags.tags()[self.tag_index(block.start)];
        tag.compare_exchange(head, 0, Ordering::AcqRel, Ordering::Relaxed)
            .map_err(|_| Refusal::NotLive)?;
        // The slack tags were written before the head was published and nobody else can touch
        // this block between the successful exchange and its return to a free set.
        Ok(TaggedBlock {
            slack: self.slack(block.start, block.order, head),
            ..block
        })
    }

    /// The live block that contains `addr`, if any. Probes one tag per order.
    pub(crate) fn find(&self, addr: usize) -> Option<TaggedBlock> {
        if !self.contains(addr) {
            return None;
        }
        let tags = self.tags.tags();
        for order in MIN_ORDER..usize::BITS {
            let start = addr & !((1usize << order) - 1);
            if start < self.base {
                break;
            }
            let head = tags[self.tag_index(start)].load(Ordering::Acquire);
            if let Some(block) = self.decode(start, head) {
                if block.order == order {
                    return Some(TaggedBlock {
                        slack: self.slack(start, order, head),
                        ..block
                    });
                }
            }
        }
        None
    }

    /// Counts live blocks whose head tag lies on one of the given tag pages. A removal calls
    /// this after raising `retired` and issuing the heavy fence.
    pub(crate) fn count_live_on_pages(&self, pages: impl Iterator<Item = usize>) -> usize {
        let tags = self.tags.tags();
        let total = self.len / MIN_BLOCK;
        let mut live = 0;
        for page in pages {
            let from = page * TAGS_PER_PAGE;
            let to = (from + TAGS_PER_PAGE).min(total);
            live += tags[from..to]
                .iter()
                .filter(|t| t.load(Ordering::Relaxed) & START != 0)
                .count();
        }
        live
    }

    #[inline]
    fn decode(&self, start: usize, head: u16) -> Option<TaggedBlock> {
        if head & START == 0 {
            return None;
        }
        let order = ((head >> ORDER_SHIFT) & ORDER_MASK) as u32;
        if !(MIN_ORDER..usize::BITS).contains(&order) || start % (1usize << order) != 0 {
            return None;
        }
        Some(TaggedBlock {
            start,
            order,
            slack: 0,
            owned: head & OWNED != 0,
        })
    }

    #[inline]
    fn slack(&self, start: usize, order: u32, head: u16) -> u64 {
        if order <= INLINE_MAX_ORDER {
            return (head & INLINE_SLACK_MASK) as u64;
        }
        let tags = self.tags.tags();
        let i = self.tag_index(start);
        if order <= EXTRA_BITS {
            return tags[i + 1].load(Ordering::Relaxed) as u64;
        }
        tags[i + 1..i + 1 + EXTRA_TAGS]
            .iter()
            .enumerate()
            .fold(0u64, |acc, (k, t)| {
                acc | ((t.load(Ordering::Relaxed) as u64) << (EXTRA_BITS * k as u32))
            })
    }
}

/// A consistent picture of all managed ranges, sorted by address.
///
/// The allocator publishes a new table whenever a range comes or goes; thread caches keep the
/// one they last saw and look addresses up in it without a lock.
#[derive(Default)]
pub(crate) struct RangeTable {
    bounds: Vec<(usize, usize)>,
    metas: Vec<Arc<RangeMeta>>,
}

impl RangeTable {
    pub(crate) fn new(metas: Vec<Arc<RangeMeta>>) -> RangeTable {
        debug_assert!(metas.windows(2).all(|w| w[0].base + w[0].len <= w[1].base));
        RangeTable {
            bounds: metas.iter().map(|m| (m.base, m.base + m.len)).collect(),
            metas,
        }
    }

    /// The range that contains `addr`.
    #[inline]
    pub(crate) fn lookup(&self, addr: usize) -> Option<&Arc<RangeMeta>> {
        let i = self.bounds.partition_point(|&(base, _)| base <= addr);
        let i = i.checked_sub(1)?;
        (addr < self.bounds[i].1).then(|| &self.metas[i])
    }

    /// The identity of the range that contains `addr`.
    #[inline]
    pub(crate) fn id_at(&self, addr: usize) -> Option<u64> {
        self.lookup(addr).map(|m| m.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(base: usize, len: usize) -> RangeMeta {
        RangeMeta::new(1, base, len, RangeKind::Inserted).unwrap()
    }

    #[test]
    fn publish_release_and_find_agree() {
        let m = meta(0x10000, 0x10000);
        let asym = fence::asymmetric();
        assert!(m.publish(0x10000 + 0x800, 11, 1000, false, asym));
        m.publish_locked(0x10000 + 0x40, 4, 3, true);
        let big = m.find(0x10000 + 0x800 + 0x7FF).unwrap();
        assert_eq!(
            (big.start, big.order, big.slack, big.owned),
            (0x10800, 11, 1000, false)
        );
        assert_eq!(big.requested(), 2048 - 1000);
        // Probing inside the big block must not mistake its slack tags for block starts.
        for off in (0..0x800).step_by(16) {
            assert_eq!(m.find(0x10800 + off).unwrap().start, 0x10800);
        }
        assert_eq!(m.find(0x10000 + 0x50), None);
        assert_eq!(m.release(0x10040, false), Err(Refusal::Owned));
        assert_eq!(m.release(0x10040, true).unwrap().slack, 3);
        assert_eq!(m.release(0x10040, true), Err(Refusal::NotLive));
        assert_eq!(m.release(0x10810, false), Err(Refusal::NotLive));
        assert_eq!(m.release(0x10801, false), Err(Refusal::NotLive));
        assert_eq!(m.release(0x20000, false), Err(Refusal::NotLive));
        assert_eq!(m.count_live_on_pages(0..1), 1);
        assert_eq!(m.release(0x10800, false).unwrap().requested(), 1048);
        assert_eq!(m.count_live_on_pages(0..1), 0);
    }

    #[test]
    fn retired_range_withdraws_publication() {
        let m = meta(0x10000, 0x1000);
        m.retired.store(true, Ordering::SeqCst);
        assert!(!m.publish(0x10000, 4, 0, false, fence::asymmetric()));
        assert_eq!(m.find(0x10000), None);
    }

    #[test]
    fn table_lookup_respects_bounds() {
        let a = Arc::new(meta(0x1000, 0x1000));
        let b = Arc::new(RangeMeta::new(2, 0x4000, 0x2000, RangeKind::Chunk).unwrap());
        let t = RangeTable::new(vec![a, b]);
        assert_eq!(t.id_at(0xFFF), None);
        assert_eq!(t.id_at(0x1000), Some(1));
        assert_eq!(t.id_at(0x1FFF), Some(1));
        assert_eq!(t.id_at(0x2000), None);
        assert_eq!(t.id_at(0x5FFF), Some(2));
        assert_eq!(t.id_at(0x6000), None);
        assert_eq!(t.id_at(usize::MAX), None);
    }
}
