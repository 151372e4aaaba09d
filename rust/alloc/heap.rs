//! The shared part of the allocator, kept behind its one lock: every range with its buddy
//! structure, the index that picks a range for a request, the own chunks, and the counters of
//! the blocks that the lock-free paths do not account for.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};

use super::buddy::Buddy;
use super::cache::CacheCounters;
use super::fence;
use super::range::{RangeMeta, RangeTable, Refusal, TaggedBlock, TAGS_PER_PAGE};
use super::{
    AllocConfig, AllocError, AllocStats, RangeInfo, RangeKind, RangeOwner, RangeStats, MIN_BLOCK,
};

/// What keeps a range's memory alive.
pub(crate) enum Backing {
    /// One of the allocator's own mappings; `standard` chunks have the configured size and may
    /// be kept as a reserve when empty, oversized ones never are.
    Chunk { _map: MmapMut, standard: bool },
    /// A range the caller inserted, with the object that keeps it alive.
    Inserted(Option<RangeOwner>),
}

/// Things to drop only once the lock is released: unmapping a chunk or dropping a caller's
/// owner may take a while, and an owner's destructor may even call back into the allocator.
pub(crate) type Graveyard = Vec<Backing>;

/// A managed range as the lock holder sees it.
struct Record {
    meta: Arc<RangeMeta>,
    buddy: Buddy,
    backing: Backing,
    /// Bytes and blocks not in the buddy structure: live blocks, and free blocks sitting in
    /// thread caches.
    out_bytes: usize,
    out_blocks: usize,
    /// One bit per tag page that may hold the head tag of a live block. Removal only needs to
    /// read these pages to count the live blocks, however large the range is.
    touched: Vec<u64>,
}

impl Record {
    fn mark_touched(&mut self, addr: usize) {
        let page = self.meta.tag_page(addr);
        self.touched[page / 64] |= 1 << (page % 64);
    }

    fn touched_pages(&self) -> impl Iterator<Item = usize> + '_ {
        self.touched.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64)
                .filter(move |b| bits >> b & 1 != 0)
                .map(move |b| w * 64 + b)
        })
    }

    fn is_standard_chunk(&self) -> bool {
        matches!(self.backing, Backing::Chunk { standard: true, .. })
    }
}

/// A set of range slots, for the per-order index.
#[derive(Default)]
struct SlotSet(Vec<u64>);

impl SlotSet {
    fn insert(&mut self, slot: usize) {
        if self.0.len() <= slot / 64 {
            self.0.resize(slot / 64 + 1, 0);
        }
        self.0[slot / 64] |= 1 << (slot % 64);
    }

    /// Removes the slot; returns whether the set is now empty.
    fn remove(&mut self, slot: usize) -> bool {
        if let Some(word) = self.0.get_mut(slot / 64) {
            *word &= !(1 << (slot % 64));
        }
        self.0.iter().all(|&w| w == 0)
    }

    fn first(&self) -> Option<usize> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, &w)| w != 0)
            .map(|(i, &w)| i * 64 + w.trailing_zeros() as usize)
    }
}

/// Counters of blocks handed out or taken back under the lock. They wrap: a block allocated
/// through a thread cache may be freed here and the other way round, and only the sum over the
/// heap and all caches is meaningful.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Counters {
    pub(crate) live_blocks: u64,
    pub(crate) requested: u64,
    pub(crate) rounded: u64,
    pub(crate) hits: u64,
    pub(crate) refills: u64,
    pub(crate) flushes: u64,
}

impl Counters {
    pub(crate) fn add(&mut self, other: &Counters) {
        self.live_blocks = self.live_blocks.wrapping_add(other.live_blocks);
        self.requested = self.requested.wrapping_add(other.requested);
        self.rounded = self.rounded.wrapping_add(other.rounded);
        self.hits = self.hits.wrapping_add(other.hits);
        self.refills = self.refills.wrapping_add(other.refills);
        self.flushes = self.flushes.wrapping_add(other.flushes);
    }

    fn count_alloc(&mut self, block: &TaggedBlock) {
        self.live_blocks = self.live_blocks.wrapping_add(1);
        self.requested = self.requested.wrapping_add(block.requested() as u64);
        self.rounded = self.rounded.wrapping_add(block.rounded() as u64);
    }

    fn count_free(&mut self, block: &TaggedBlock) {
        self.live_blocks = self.live_blocks.wrapping_sub(1);
        self.requested = self.requested.wrapping_sub(block.requested() as u64);
        self.rounded = self.rounded.wrapping_sub(block.rounded() as u64);
    }
}

/// Everything behind the allocator's lock.
pub(crate) struct Heap {
    config: AllocConfig,
    slots: Vec<Option<Record>>,
    free_slots: Vec<usize>,
    /// `(start, end, slot)` of every range, sorted by start. Ranges are few, so a sorted vector
    /// beats a tree for lookups, which happen on every locked free.
    by_start: Vec<(usize, usize, usize)>,
    /// For each order, the slots whose buddy structure has a free block of that order.
    by_order: Vec<SlotSet>,
    /// Bit `k` is set when some range has a free block of order `k`.
    order_mask: u64,
    /// The published table and its epoch. The allocator copies the epoch to an atomic that
    /// thread caches check without the lock, before it lets go of the lock.
    pub(crate) table: Arc<RangeTable>,
    pub(crate) epoch: u64,
    next_range_id: u64,
    /// Standard chunks that are entirely free.
    empty_chunks: usize,
    chunk_bytes: usize,
    chunks: usize,
    chunks_mapped: u64,
    chunks_released: u64,
    pub(crate) counters: Counters,
    /// The live counters of every registered thread cache.
    pub(crate) caches: Vec<Arc<CacheCounters>>,
}

impl Heap {
    pub(crate) fn new(config: AllocConfig) -> Heap {
        Heap {
            config,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_start: Vec::new(),
            by_order: (0..64).map(|_| SlotSet::default()).collect(),
            order_mask: 0,
            table: Arc::new(RangeTable::default()),
            epoch: 0,
            next_range_id: 1,
            empty_chunks: 0,
            chunk_bytes: 0,
            chunks: 0,
            chunks_mapped: 0,
            chunks_released: 0,
            counters: Counters::default(),
            caches: Vec::new(),
        }
    }

    /// The slot of the range that contains `addr`.
    #[inline]
    fn slot_at(&self, addr: usize) -> Option<usize> {
        let i = self
            .by_start
            .partition_point(|&(start, _, _)| start <= addr);
        let &(_, end, slot) = self.by_start.get(i.checked_sub(1)?)?;
        (addr < end).then_some(slot)
    }

    fn record(&self, slot: usize) -> &Record {
        self.slots[slot].as_ref().expect("slot is occupied")
    }

    fn record_mut(&mut self, slot: usize) -> &mut Record {
        self.slots[slot].as_mut().expect("slot is occupied")
    }

    /// The first managed range that overlaps `[start, start + len)`.
    fn overlapping(&self, start: usize, len: usize) -> Option<&RangeMeta> {
        let end = start + len;
        // Only the last range starting before `end` can overlap, as ranges are disjoint.
        let i = self.by_start.partition_point(|&(s, _, _)| s < end);
        let &(_, other_end, slot) = self.by_start.get(i.checked_sub(1)?)?;
        (other_end > start).then(|| &*self.record(slot).meta)
    }

    /// Publishes a new range table and tells the thread caches through the epoch.
    fn publish_table(&mut self) {
        let metas = self
            .by_start
            .iter()
            .map(|&(_, _, slot)| self.record(slot).meta.clone())
            .collect();
        self.table = Arc::new(RangeTable::new(metas));
        self.bump_epoch();
    }

    /// Makes every thread cache look at the allocator again on its next operation.
    pub(crate) fn bump_epoch(&mut self) {
        self.epoch += 1;
    }

    /// Brings a new range under management. Checks are done by the caller.
    fn add_range(
        &mut self,
        base: usize,
        len: usize,
        kind: RangeKind,
        backing: Backing,
    ) -> Result<usize, (AllocError, Backing)> {
        let id = self.next_range_id;
        let built =
            RangeMeta::new(id, base, len, kind).and_then(|meta| Ok((meta, Buddy::new(base, len)?)));
        let (meta, buddy) = match built {
            Ok(parts) => parts,
            Err(e) => return Err((AllocError::Bookkeeping(e), backing)),
        };
        self.next_range_id += 1;
        let tag_pages = (len / MIN_BLOCK).div_ceil(TAGS_PER_PAGE);
        let record = Record {
            meta: Arc::new(meta),
            buddy,
            backing,
            out_bytes: 0,
            out_blocks: 0,
            touched: vec![0; tag_pages.div_ceil(64)],
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot] = Some(record);
                slot
            }
            None => {
                self.slots.push(Some(record));
                self.slots.len() - 1
            }
        };
        let at = self.by_start.partition_point(|&(s, _, _)| s < base);
        self.by_start.insert(at, (base, base + len, slot));
        self.index_changes(slot, 0);
        self.publish_table();
        Ok(slot)
    }

    /// Takes a range out of management and retires it for good.
    fn unlink(&mut self, slot: usize) -> Record {
        let nonempty = self.record(slot).buddy.nonempty();
        for order in bits(nonempty) {
            if self.by_order[order as usize].remove(slot) {
                self.order_mask &= !(1 << order);
            }
        }
        let record = self.slots[slot].take().expect("slot is occupied");
        record.meta.retired.store(true, Ordering::SeqCst);
        self.by_start.retain(|&(_, _, s)| s != slot);
        self.free_slots.push(slot);
        self.publish_table();
        record
    }

    /// Updates the per-order index after the buddy structure of `slot` changed from `before`.
    #[inline]
    fn index_changes(&mut self, slot: usize, before: u64) {
        let after = self.record(slot).buddy.nonempty();
        for order in bits(before & !after) {
            if self.by_order[order as usize].remove(slot) {
                self.order_mask &= !(1 << order);
            }
        }
        for order in bits(after & !before) {
            self.by_order[order as usize].insert(slot);
            self.order_mask |= 1 << order;
        }
    }

    /// Inserts a committed range. The caller has checked alignment and emptiness.
    pub(crate) fn insert(
        &mut self,
        start: usize,
        len: usize,
        owner: Option<RangeOwner>,
        grave: &mut Graveyard,
    ) -> Result<RangeInfo, AllocError> {
        if let Some(other) = self.overlapping(start, len) {
            let err = AllocError::RangeOverlaps {
                start,
                len,
                other_start: other.base,
                other_len: other.len,
            };
            grave.push(Backing::Inserted(owner));
            return Err(err);
        }
        match self.add_range(start, len, RangeKind::Inserted, Backing::Inserted(owner)) {
            Ok(slot) => Ok(self.record(slot).meta.info()),
            Err((err, backing)) => {
                grave.push(backing);
                Err(err)
            }
        }
    }

    /// Removes an inserted range if no block in it is live. With `id`, only the range of that
    /// identity is removed.
    pub(crate) fn remove(
        &mut self,
        start: usize,
        id: Option<u64>,
    ) -> Result<(RangeInfo, Option<RangeOwner>), AllocError> {
        let slot = self
            .slot_at(start)
            .filter(|&slot| {
                let meta = &self.record(slot).meta;
                meta.base == start && id.is_none_or(|id| id == meta.id)
            })
            .ok_or(AllocError::UnknownRange { start })?;
        let rec = self.record(slot);
        if rec.meta.kind != RangeKind::Inserted {
            return Err(AllocError::NotInserted { start });
        }
        // Stop thread caches from handing out blocks of this range, then count what is live.
        // See `RangeMeta::publish` for why this order makes the count trustworthy.
        rec.meta.retired.store(true, Ordering::Relaxed);
        if !fence::heavy() {
            rec.meta.retired.store(false, Ordering::Relaxed);
            self.bump_epoch();
            return Err(AllocError::Bookkeeping(std::io::Error::last_os_error()));
        }
        let live = rec.meta.count_live_on_pages(rec.touched_pages());
        if live > 0 {
            let len = rec.meta.len;
            rec.meta.retired.store(false, Ordering::Relaxed);
            // Caches that withdrew a block while the flag was up take it back on their next
            // look at the epoch.
            self.bump_epoch();
            return Err(AllocError::RangeBusy { start, len, live });
        }
        let record = self.unlink(slot);
        let info = record.meta.info();
        log::info!(
            target: "oramstore",
            "removed untrusted range {:#x}+{:#x} (id {})",
            info.start,
            info.len,
            info.id
        );
        match record.backing {
            Backing::Inserted(owner) => Ok((info, owner)),
            Backing::Chunk { .. } => unreachable!("kind was checked"),
        }
    }

    /// Takes a free block of `order` from the best-fitting range, mapping a chunk if none has
    /// one. Returns the block's range and address.
    fn take_block(&mut self, order: u32, request: usize) -> Result<(usize, usize), AllocError> {
        match self.free_slot(order) {
            Some(slot) => Ok(self.take_from(slot, order)),
            None => {
                let slot = self.map_chunk(order, request)?;
                Ok(self.take_from(slot, order))
            }
        }
    }

    /// The best-fitting range with a free block of at least `order`, if any.
    fn free_slot(&self, order: u32) -> Option<usize> {
        let candidates = self.order_mask & (u64::MAX << order);
        if candidates == 0 {
            return None;
        }
        let best = candidates.trailing_zeros();
        let slot = self.by_order[best as usize]
            .first()
            .expect("the order mask matches the per-order index");
        Some(slot)
    }

    /// Takes a block of `order` from the range in `slot`, which has one free.
    fn take_from(&mut self, slot: usize, order: u32) -> (usize, usize) {
        let rec = self.record_mut(slot);
        let was_empty = rec.is_standard_chunk() && rec.buddy.is_empty();
        let before = rec.buddy.nonempty();
        let addr = rec
            .buddy
            .alloc(order)
            .expect("the index only lists ranges with a large enough free block");
        rec.out_bytes += 1 << order;
        rec.out_blocks += 1;
        rec.mark_touched(addr);
        if was_empty {
            self.empty_chunks -= 1;
        }
        self.index_changes(slot, before);
        (slot, addr)
    }

    /// Returns a block to the buddy structure of its range, if that range is still the one
    /// `meta_id` names, and gives back a chunk that became empty.
    pub(crate) fn give_back(
        &mut self,
        addr: usize,
        order: u32,
        meta_id: Option<u64>,
        grave: &mut Graveyard,
    ) {
        let Some(slot) = self.slot_at(addr) else {
            return;
        };
        if meta_id.is_some_and(|id| id != self.record(slot).meta.id) {
            return;
        }
        self.give_back_to(slot, addr, order, grave);
    }

    /// Returns a block to the buddy structure of the range in `slot`.
    fn give_back_to(&mut self, slot: usize, addr: usize, order: u32, grave: &mut Graveyard) {
        let rec = self.record_mut(slot);
        let before = rec.buddy.nonempty();
        rec.buddy.free(addr, order);
        rec.out_bytes -= 1 << order;
        rec.out_blocks -= 1;
        let now_empty = rec.buddy.is_empty();
        let chunk = match rec.backing {
            Backing::Chunk { standard, .. } => Some(standard),
            Backing::Inserted(_) => None,
        };
        self.index_changes(slot, before);
        match chunk {
            Some(standard) if now_empty => {
                if standard && self.empty_chunks < self.config.reserve_chunks {
                    self.empty_chunks += 1;
                } else {
                    self.release_chunk(slot, grave);
                }
            }
            _ => {}
        }
    }

    /// Maps a chunk for a request of `order` and puts it under management.
    fn map_chunk(&mut self, order: u32, request: usize) -> Result<usize, AllocError> {
        let standard = (1usize << order) <= self.config.chunk_size;
        let size = if standard {
            self.config.chunk_size
        } else {
            1usize << order
        };
        let block = 1usize << order;
        let oom = |reason: String| AllocError::OutOfMemory {
            size: request,
            block,
            reason,
        };
        if self.chunk_bytes.saturating_add(size) > self.config.chunk_limit {
            return Err(oom(format!(
                "mapping a {size}-byte chunk would exceed the chunk limit of {} bytes ({} mapped)",
                self.config.chunk_limit, self.chunk_bytes
            )));
        }
        // Map enough to contain a `size`-aligned run of `size` bytes, so the chunk is a single
        // block of the buddy system. The unused head and tail are never touched and cost
        // address space only.
        let map_len = size
            .checked_mul(2)
            .ok_or_else(|| oom("the chunk does not fit the address space".into()))?;
        let map = MmapOptions::new()
            .len(map_len)
            .no_reserve_swap()
            .map_anon()
            .map_err(|e| oom(format!("the kernel refused to map {map_len} bytes: {e}")))?;
        let base = (map.as_ptr() as usize).next_multiple_of(size);
        if self.overlapping(base, size).is_some() {
            return Err(oom(
                "the kernel returned memory that overlaps an inserted range".into(),
            ));
        }
        let slot = self
            .add_range(
                base,
                size,
                RangeKind::Chunk,
                Backing::Chunk {
                    _map: map,
                    standard,
                },
            )
            .map_err(|(e, _)| e)?;
        self.chunk_bytes += size;
        self.chunks += 1;
        self.chunks_mapped += 1;
        if standard {
            self.empty_chunks += 1;
        }
        log::debug!(
            target: "oramstore",
            "mapped a {size}-byte untrusted chunk at {base:#x} ({} chunks, {} bytes)",
            self.chunks,
            self.chunk_bytes
        );
        Ok(slot)
    }

    fn release_chunk(&mut self, slot: usize, grave: &mut Graveyard) {
        let record = self.unlink(slot);
        self.chunk_bytes -= record.meta.len;
        self.chunks -= 1;
        self.chunks_released += 1;
        log::debug!(
            target: "oramstore",
            "gave back the {}-byte untrusted chunk at {:#x}",
            record.meta.len,
            record.meta.base
        );
        grave.push(record.backing);
    }

    /// Allocates a block under the lock and publishes it.
    pub(crate) fn alloc(
        &mut self,
        order: u32,
        request: usize,
        owned: bool,
    ) -> Result<usize, AllocError> {
        let (slot, addr) = self.take_block(order, request)?;
        let slack = ((1usize << order) - request) as u64;
        self.record(slot)
            .meta
            .publish_locked(addr, order, slack, owned);
        self.counters.count_alloc(&TaggedBlock {
            start: addr,
            order,
            slack,
            owned,
        });
        Ok(addr)
    }

    /// Frees a live block under the lock; the authoritative answer for any address.
    pub(crate) fn free(
        &mut self,
        addr: usize,
        allow_owned: bool,
        grave: &mut Graveyard,
    ) -> Result<TaggedBlock, AllocError> {
        let slot = self
            .slot_at(addr)
            .ok_or(AllocError::UnknownAddress { addr })?;
        let block = self
            .record(slot)
            .meta
            .release(addr, allow_owned)
            .map_err(|r| match r {
                Refusal::NotLive => AllocError::NotLive { addr },
                Refusal::Owned => AllocError::OwnedByBlock { addr },
            })?;
        self.counters.count_free(&block);
        self.give_back_to(slot, addr, block.order, grave);
        Ok(block)
    }

    /// Lends up to `count` blocks of `order` to a thread cache. Fails only if none could be had.
    ///
    /// Only the first block may cost a new chunk: the rest of the batch is whatever the managed
    /// ranges have free, so that filling a cache never maps memory nobody asked for.
    pub(crate) fn lend(
        &mut self,
        order: u32,
        count: usize,
        out: &mut Vec<usize>,
    ) -> Result<(), AllocError> {
        let (_, first) = self.take_block(order, 1 << order)?;
        out.push(first);
        for _ in 1..count {
            let Some(slot) = self.free_slot(order) else {
                break;
            };
            let (_, addr) = self.take_from(slot, order);
            out.push(addr);
        }
        Ok(())
    }

    /// The range that contains `addr`, and the table it was found in.
    pub(crate) fn range_at(&self, addr: usize) -> Option<RangeInfo> {
        self.slot_at(addr).map(|slot| self.record(slot).meta.info())
    }

    /// A snapshot of the statistics, with the counters of every thread cache added in.
    ///
    /// Every block out of a buddy structure is either live or free in a thread cache, so the
    /// cached figures are what the ranges have out minus what is live; thread caches need not
    /// count them on every operation.
    pub(crate) fn stats(&self) -> AllocStats {
        let mut totals = self.counters;
        for cache in &self.caches {
            totals.add(&cache.snapshot());
        }
        let ranges: Vec<RangeStats> = self
            .by_start
            .iter()
            .map(|&(_, _, slot)| {
                let rec = self.record(slot);
                RangeStats {
                    range: rec.meta.info(),
                    free_bytes: rec.buddy.free_bytes(),
                    used_bytes: rec.out_bytes,
                }
            })
            .collect();
        let out_blocks: usize = self.slots.iter().flatten().map(|rec| rec.out_blocks).sum();
        let out_bytes: usize = ranges.iter().map(|r| r.used_bytes).sum();
        let sum = |kind: Option<RangeKind>| {
            ranges
                .iter()
                .filter(|r| kind.is_none_or(|k| r.range.kind == k))
                .map(|r| r.range.len)
                .sum()
        };
        AllocStats {
            managed_bytes: sum(None),
            inserted_bytes: sum(Some(RangeKind::Inserted)),
            chunk_bytes: self.chunk_bytes,
            free_bytes: ranges.iter().map(|r| r.free_bytes).sum(),
            chunks: self.chunks,
            chunks_mapped: self.chunks_mapped,
            chunks_released: self.chunks_released,
            live_blocks: totals.live_blocks,
            requested_bytes: totals.requested,
            allocated_bytes: totals.rounded,
            cached_blocks: (out_blocks as u64).saturating_sub(totals.live_blocks),
            cached_bytes: (out_bytes as u64).saturating_sub(totals.rounded),
            cache_hits: totals.hits,
            cache_refills: totals.refills,
            cache_flushes: totals.flushes,
            ranges,
        }
    }
}

/// The positions of the set bits of `mask`, lowest first.
fn bits(mut mask: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let b = mask.trailing_zeros();
        mask &= mask - 1;
        Some(b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_sets_find_the_lowest_slot() {
        let mut s = SlotSet::default();
        assert_eq!(s.first(), None);
        s.insert(70);
        s.insert(3);
        assert_eq!(s.first(), Some(3));
        assert!(!s.remove(3));
        assert_eq!(s.first(), Some(70));
        assert!(s.remove(70));
        assert!(s.remove(1000));
    }

    #[test]
    fn bits_lists_set_positions() {
        assert_eq!(bits(0b1010_0001).collect::<Vec<_>>(), vec![0, 5, 7]);
        assert_eq!(bits(1 << 63).collect::<Vec<_>>(), vec![63]);
        assert_eq!(bits(0).count(), 0);
    }
}
