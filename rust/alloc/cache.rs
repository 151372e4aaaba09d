//! Per-thread caches of small blocks.
//!
//! Each thread keeps, for each allocator it has used, a stack of free blocks per small order
//! (16 bytes to 1 MiB). The blocks were lent by the shared buddy structure in batches under the
//! lock; handing one out and taking one back needs no lock: only the block's tag (see
//! [`range`](super::range)) is updated with one atomic instruction, which is also what proves a
//! freed address is live. A block freed on another thread goes to that thread's cache, so
//! caches exchange blocks freely; when a stack grows past its capacity half of it goes back to
//! the buddy structure in one locked batch.
//!
//! # Ranges that go away
//!
//! A cache also keeps the range table it last saw, with the allocator's epoch at the time. Every
//! change to the set of ranges, and every refused removal, bumps the epoch; a cache that notices
//! a new epoch takes the new table and drops the blocks of ranges that are gone (they were free,
//! and their range no longer exists). Between a removal and that moment a cache may still pop a
//! block of the removed range; publishing it then finds the range retired and the block is
//! withdrawn instead of handed out, so nothing is ever served from a removed range.
//!
//! The counters that statistics need are written only by the owning thread, as plain atomic
//! stores, and read by whoever asks for statistics.

use std::cell::{Cell, RefCell};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use super::heap::{Counters, Graveyard, Heap};
use super::range::{RangeMeta, RangeTable, TaggedBlock};
use super::{Inner, MIN_ORDER};

/// The largest order served from thread caches: 1 MiB.
pub(crate) const CACHE_MAX_ORDER: u32 = 20;
const CLASSES: usize = (CACHE_MAX_ORDER - MIN_ORDER + 1) as usize;
/// A cache holds about this many bytes of one order: up to 512 blocks of the smallest orders,
/// and at least one block of the largest, so a thread that keeps allocating and freeing a
/// block of any cached size rarely needs the lock. Requests of mixed sizes refill the medium
/// orders most: with sizes from 8 bytes to 64 KiB, one allocation in 76 needed a refill at
/// 256 KiB per order, one in 26 at 128 KiB. One thread holds at most about 4.3 MiB per
/// allocator; [`flush_thread_cache`](super::UntrustedAllocator::flush_thread_cache) gives it
/// back early, and running out of memory does so too.
const CLASS_BYTES: usize = 256 << 10;
const MAX_CAPACITY: usize = 512;

/// How many blocks of `order` a cache holds before it gives some back.
#[inline]
fn capacity(order: u32) -> usize {
    CAPACITIES[(order - MIN_ORDER) as usize] as usize
}

/// [`capacity`] of every cached order, looked up on every free.
const CAPACITIES: [u16; CLASSES] = {
    let mut table = [0; CLASSES];
    let mut class = 0;
    while class < CLASSES {
        let blocks = CLASS_BYTES >> (MIN_ORDER as usize + class);
        table[class] = if blocks < 1 {
            1
        } else if blocks > MAX_CAPACITY {
            MAX_CAPACITY as u16
        } else {
            blocks as u16
        };
        class += 1;
    }
    table
};

/// How many blocks a refill fetches and a flush returns.
#[inline]
fn batch(order: u32) -> usize {
    (capacity(order) / 2).max(1)
}

/// Statistics of one thread cache, written only by its thread.
///
/// The struct is aligned to two cache lines so that the counters of two threads never share
/// one and their updates do not slow each other down.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct CacheCounters {
    live_blocks: AtomicU64,
    requested: AtomicU64,
    rounded: AtomicU64,
    hits: AtomicU64,
    refills: AtomicU64,
    flushes: AtomicU64,
}

/// Adds `delta` (wrapping) to a counter that only the calling thread writes. A load and a store
/// are enough, and unlike a read-modify-write they cost no more than ordinary memory accesses.
#[inline]
fn bump(counter: &AtomicU64, delta: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(delta),
        Ordering::Relaxed,
    );
}

impl CacheCounters {
    pub(crate) fn snapshot(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            live_blocks: get(&self.live_blocks),
            requested: get(&self.requested),
            rounded: get(&self.rounded),
            hits: get(&self.hits),
            refills: get(&self.refills),
            flushes: get(&self.flushes),
        }
    }
}

/// One thread's cache for one allocator.
struct LocalCache {
    alloc_id: u64,
    owner: Weak<Inner>,
    epoch: u64,
    table: Arc<RangeTable>,
    /// The range of the last lookup, kept here so that the common case of one busy range
    /// needs no search and no pointer chasing through the table: `hot_start..hot_start +
    /// hot_len`, and its meta (from `table`, so it is dropped on refresh).
    hot_start: usize,
    hot_len: usize,
    hot_meta: Option<Arc<RangeMeta>>,
    stacks: [Vec<usize>; CLASSES],
    /// Blocks withdrawn because their range was being removed, with their order. They count as
    /// cached until the removal is decided.
    deferred: Vec<(usize, u32)>,
    counters: Arc<CacheCounters>,
}

/// All caches of one thread, most recently used first. Dropped when the thread exits, which
/// gives every block back.
///
/// Each cache is leaked from a `Box` when created, so that its address stays put while
/// [`FRONT`] points at it, and freed here on drop.
struct ThreadCaches {
    caches: Vec<NonNull<LocalCache>>,
}

impl Drop for ThreadCaches {
    fn drop(&mut self) {
        // From here on no fast path reaches the caches.
        let _ = FRONT.try_with(|front| front.set(ptr::null_mut()));
        for cache in self.caches.drain(..) {
            // SAFETY: every pointer in `caches` came from `Box::into_raw` and is freed only
            // here, once; `FRONT` no longer points at it and no reference to it is live.
            let mut cache = unsafe { Box::from_raw(cache.as_ptr()) };
            if let Some(inner) = cache.owner.upgrade() {
                cache.retire(&inner);
            }
        }
    }
}

thread_local! {
    static CACHES: RefCell<ThreadCaches> = const {
        RefCell::new(ThreadCaches { caches: Vec::new() })
    };
    /// This thread's most recently used cache, for the fast paths, or null while none may be
    /// used.
    ///
    /// Invariant: while it is non-null it points to the first cache of [`CACHES`] and no
    /// reference to that cache exists. The slow paths set it to null before they borrow a
    /// cache and point it at the first cache again when they are done; the fast paths hold
    /// their reference only while they run, and call nothing that could reach a cache.
    ///
    /// A `Cell` of a raw pointer needs no destructor, so reading it is a plain thread-local
    /// load, without the registration check that the `RefCell` above costs.
    static FRONT: Cell<*mut LocalCache> = const { Cell::new(ptr::null_mut()) };
}

/// Runs `f` on the front cache if it serves `inner` and has seen its latest ranges.
#[inline(always)]
fn with_front<R>(inner: &Inner, f: impl FnOnce(&mut LocalCache) -> Option<R>) -> Option<R> {
    let cache = FRONT.with(Cell::get);
    if cache.is_null() {
        return None;
    }
    // SAFETY: by `FRONT`'s invariant the cache is alive and unreferenced. The reference lives
    // only while `f` runs, and the fast paths run no code that could reach `FRONT` or `CACHES`
    // (no allocation, no lock, no drop of anything but plain values).
    let cache = unsafe { &mut *cache };
    if cache.alloc_id != inner.id || inner.epoch.load(Ordering::Acquire) != cache.epoch {
        return None;
    }
    f(cache)
}

/// Allocates a block of a cached `order` from the top of this thread's cache, if that needs
/// nothing but the tag's update: no refill, no refresh, no new range to look up.
#[inline(always)]
pub(crate) fn alloc_fast(inner: &Inner, order: u32, request: usize, owned: bool) -> Option<usize> {
    with_front(inner, |cache| {
        let class = (order - MIN_ORDER) as usize;
        let addr = *cache.stacks[class].last()?;
        let meta = cache.hot(addr)?;
        let slack = ((1usize << order) - request) as u64;
        // A refusal clears the tag again and leaves the block on the stack for the slow path,
        // which withdraws it.
        if !meta.publish(addr, order, slack, owned, inner.asymmetric) {
            return None;
        }
        cache.stacks[class].pop();
        cache.count_alloc(order, request, true);
        Some(addr)
    })
}

/// Frees the block at `addr` onto this thread's cache, if that needs nothing but the tag's
/// update and a push: the block is live, cached-sized, in the hot range, and its stack has
/// room. `None` changes nothing; the slow path then gives the answer.
#[inline(always)]
pub(crate) fn free_fast(inner: &Inner, addr: usize, allow_owned: bool) -> Option<TaggedBlock> {
    with_front(inner, |cache| {
        let meta = cache.hot(addr)?;
        let (block, head) = meta.peek(addr)?;
        if block.order > CACHE_MAX_ORDER {
            return None;
        }
        let class = (block.order - MIN_ORDER) as usize;
        let stack = &cache.stacks[class];
        if stack.len() >= capacity(block.order) || stack.len() == stack.capacity() {
            return None;
        }
        let block = meta.release_peeked(block, head, allow_owned).ok()?;
        cache.count_free(&block);
        // The length was checked against the allocated capacity: no reallocation.
        cache.stacks[class].push(addr);
        Some(block)
    })
}

/// Runs `f` on this thread's cache for `inner`, creating it if `create` is set.
///
/// Returns `None` when the cache cannot be used (the thread is exiting, or a cache operation is
/// already running on this thread further up the stack); the caller then takes the locked path.
fn with_cache<R>(
    inner: &Arc<Inner>,
    create: bool,
    f: impl FnOnce(&mut LocalCache) -> R,
) -> Option<R> {
    CACHES
        .try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            // The fast paths keep out while this borrow lasts (see `FRONT`); if `f` panics,
            // they stay out.
            FRONT.set(ptr::null_mut());
            let caches = &mut *caches;
            let hit = caches.caches.first().is_some_and(|c| {
                // SAFETY: the pointers in `caches` are live (freed only on drop) and, with
                // `FRONT` null and the `RefCell` borrowed, unreferenced.
                unsafe { c.as_ref() }.alloc_id == inner.id
            });
            if !hit && !select(caches, inner, create) {
                // Nothing moved: the first cache may serve the fast paths again.
                if let Some(first) = caches.caches.first() {
                    FRONT.set(first.as_ptr());
                }
                return None;
            }
            let front = caches.caches[0];
            // SAFETY: as above; the reference ends before `FRONT` is set again.
            let result = f(unsafe { &mut *front.as_ptr() });
            FRONT.set(front.as_ptr());
            Some(result)
        })
        .ok()
        .flatten()
}

/// Moves the cache for `inner` to the front, creating it if asked to. Returns whether the
/// front is now that cache.
#[cold]
fn select(caches: &mut ThreadCaches, inner: &Arc<Inner>, create: bool) -> bool {
    let pos = caches.caches.iter().position(|c| {
        // SAFETY: the pointers are live and unreferenced, as in `with_cache`.
        unsafe { c.as_ref() }.alloc_id == inner.id
    });
    match pos {
        Some(pos) => {
            let cache = caches.caches.remove(pos);
            caches.caches.insert(0, cache);
        }
        None if create => {
            // Forget caches of allocators that no longer exist.
            caches.caches.retain(|c| {
                // SAFETY: as above.
                let alive = unsafe { c.as_ref() }.owner.strong_count() > 0;
                if !alive {
                    // SAFETY: from `Box::into_raw`, and dropped from the list right here. A
                    // cache of a dropped allocator holds no blocks anyone could still use.
                    drop(unsafe { Box::from_raw(c.as_ptr()) });
                }
                alive
            });
            let cache = Box::new(LocalCache::register(inner));
            caches.caches.insert(0, NonNull::from(Box::leak(cache)));
        }
        None => return false,
    }
    true
}

/// Allocates a block of a cached `order` from this thread's cache when the fast path could
/// not. `None`: the cache could not serve it (no cache, or no memory for a refill); the locked
/// path decides.
#[inline(never)]
pub(crate) fn alloc(inner: &Arc<Inner>, order: u32, request: usize, owned: bool) -> Option<usize> {
    with_cache(inner, true, |cache| {
        cache.alloc(inner, order, request, owned)
    })
    .flatten()
}

/// Frees the block at `addr` through this thread's cache when the fast path could not.
/// `None`: the cache could not prove the address live; the locked path gives the
/// authoritative answer.
#[inline(never)]
pub(crate) fn free(inner: &Arc<Inner>, addr: usize, allow_owned: bool) -> Option<TaggedBlock> {
    with_cache(inner, true, |cache| cache.free(inner, addr, allow_owned)).flatten()
}

/// Gives every block in this thread's cache for `inner` back to the shared structure.
pub(crate) fn flush(inner: &Arc<Inner>) {
    with_cache(inner, false, |cache| {
        inner.with_heap(|heap, grave| cache.give_all_back(heap, grave))
    });
}

/// Brings this thread's cache (if it has one) up to date with the allocator's ranges, so its
/// counters no longer include blocks of removed ranges.
pub(crate) fn sync(inner: &Arc<Inner>) {
    with_cache(inner, false, |cache| cache.sync(inner));
}

impl LocalCache {
    fn register(inner: &Arc<Inner>) -> LocalCache {
        let counters = Arc::new(CacheCounters::default());
        let mut heap = inner.heap.lock();
        heap.caches.push(counters.clone());
        LocalCache {
            alloc_id: inner.id,
            owner: Arc::downgrade(inner),
            epoch: heap.epoch,
            table: heap.table.clone(),
            hot_start: 0,
            hot_len: 0,
            hot_meta: None,
            stacks: Default::default(),
            deferred: Vec::new(),
            counters,
        }
    }

    fn alloc(&mut self, inner: &Inner, order: u32, request: usize, owned: bool) -> Option<usize> {
        self.sync(inner);
        let class = (order - MIN_ORDER) as usize;
        let slack = ((1usize << order) - request) as u64;
        let mut refilled = false;
        loop {
            let Some(addr) = self.stacks[class].pop() else {
                if !self.refill(inner, order) {
                    return None;
                }
                refilled = true;
                continue;
            };
            let Some(meta) = self.lookup(addr) else {
                // Only a block of a range removed since the last refresh can be missing.
                continue;
            };
            if !meta.publish(addr, order, slack, owned, inner.asymmetric) {
                self.deferred.push((addr, order));
                continue;
            }
            self.count_alloc(order, request, !refilled);
            return Some(addr);
        }
    }

    #[inline(always)]
    fn count_free(&self, block: &TaggedBlock) {
        let c = &*self.counters;
        bump(&c.live_blocks, 1u64.wrapping_neg());
        bump(&c.requested, (block.requested() as u64).wrapping_neg());
        bump(&c.rounded, (block.rounded() as u64).wrapping_neg());
    }

    #[inline(always)]
    fn count_alloc(&self, order: u32, request: usize, hit: bool) {
        let c = &*self.counters;
        bump(&c.live_blocks, 1);
        bump(&c.requested, request as u64);
        bump(&c.rounded, 1 << order);
        if hit {
            bump(&c.hits, 1);
        }
    }

    #[inline]
    fn free(&mut self, inner: &Inner, addr: usize, allow_owned: bool) -> Option<TaggedBlock> {
        self.sync(inner);
        let meta = self.lookup(addr)?;
        let block = meta.release(addr, allow_owned).ok()?;
        let meta_id = meta.id;
        self.count_free(&block);
        if block.order <= CACHE_MAX_ORDER {
            let class = (block.order - MIN_ORDER) as usize;
            self.stacks[class].push(addr);
            if self.stacks[class].len() > capacity(block.order) {
                self.flush_class(inner, class);
            }
        } else {
            inner.with_heap(|heap, grave| heap.give_back(addr, block.order, Some(meta_id), grave));
        }
        Some(block)
    }

    /// The hot range, if it contains `addr`.
    #[inline(always)]
    fn hot(&self, addr: usize) -> Option<&RangeMeta> {
        if addr.wrapping_sub(self.hot_start) < self.hot_len {
            self.hot_meta.as_deref()
        } else {
            None
        }
    }

    /// The range that contains `addr`, from the hot range or the table.
    #[inline(always)]
    fn lookup(&mut self, addr: usize) -> Option<&RangeMeta> {
        if addr.wrapping_sub(self.hot_start) >= self.hot_len {
            self.heat(addr)?;
        }
        self.hot_meta.as_deref()
    }

    /// Makes the range that contains `addr` the hot one.
    #[cold]
    fn heat(&mut self, addr: usize) -> Option<()> {
        let meta = self.table.lookup(addr)?.clone();
        self.hot_start = meta.base;
        self.hot_len = meta.len;
        self.hot_meta = Some(meta);
        Some(())
    }

    /// Takes the newest range table if the epoch moved.
    #[inline]
    fn sync(&mut self, inner: &Inner) {
        if inner.epoch.load(Ordering::Acquire) != self.epoch {
            self.sync_slow(inner);
        }
    }

    #[cold]
    fn sync_slow(&mut self, inner: &Inner) {
        let heap = inner.heap.lock();
        self.refresh(&heap);
    }

    /// Switches to the heap's current table, dropping blocks whose range is gone and taking
    /// back withdrawn blocks whose range stayed.
    fn refresh(&mut self, heap: &Heap) {
        if heap.epoch == self.epoch {
            return;
        }
        let old = std::mem::replace(&mut self.table, heap.table.clone());
        self.hot_len = 0;
        self.hot_meta = None;
        let new = &self.table;
        let same_range = |addr: usize| {
            let id = old.id_at(addr);
            id.is_some() && id == new.id_at(addr)
        };
        for stack in self.stacks.iter_mut() {
            stack.retain(|&addr| same_range(addr));
        }
        for (addr, order) in std::mem::take(&mut self.deferred) {
            if !same_range(addr) {
                // The range is gone, and the block with it.
            } else if new
                .lookup(addr)
                .is_some_and(|m| m.retired.load(Ordering::SeqCst))
            {
                self.deferred.push((addr, order));
            } else {
                self.stacks[(order - MIN_ORDER) as usize].push(addr);
            }
        }
        self.epoch = heap.epoch;
    }

    /// Fetches a batch of blocks of `order` from the shared structure. Returns false if none
    /// could be had.
    #[cold]
    fn refill(&mut self, inner: &Inner, order: u32) -> bool {
        let mut fresh = Vec::with_capacity(batch(order));
        let lent = inner.with_heap(|heap, _| {
            self.refresh(heap);
            let lent = heap.lend(order, batch(order), &mut fresh);
            // Lending may have mapped a chunk; the new blocks must be checked against a table
            // that has it, and the blocks already cached against the table they came from.
            self.refresh(heap);
            lent
        });
        if lent.is_err() {
            return false;
        }
        bump(&self.counters.refills, 1);
        // Pop the lowest addresses first, which keeps allocations packed.
        let stack = &mut self.stacks[(order - MIN_ORDER) as usize];
        stack.extend(fresh.into_iter().rev());
        true
    }

    /// Gives the oldest part of a stack back to the shared structure.
    #[cold]
    fn flush_class(&mut self, inner: &Inner, class: usize) {
        inner.with_heap(|heap, grave| {
            self.refresh(heap);
            let order = MIN_ORDER + class as u32;
            let stack = &mut self.stacks[class];
            let n = batch(order).min(stack.len());
            for addr in stack.drain(..n) {
                heap.give_back(addr, order, None, grave);
            }
            bump(&self.counters.flushes, 1);
        });
    }

    /// Gives every cached block back; the heap lock is held by the caller.
    fn give_all_back(&mut self, heap: &mut Heap, grave: &mut Graveyard) {
        // Under the lock no removal is deciding, so refreshing settles every withdrawn block:
        // dropped if its range is gone, back on a stack if not.
        self.refresh(heap);
        debug_assert!(self.deferred.is_empty());
        for (class, stack) in self.stacks.iter_mut().enumerate() {
            let order = MIN_ORDER + class as u32;
            for addr in stack.drain(..) {
                heap.give_back(addr, order, None, grave);
            }
        }
    }

    /// Gives everything back and folds the counters into the heap, as the thread exits.
    fn retire(&mut self, inner: &Inner) {
        inner.with_heap(|heap, grave| {
            self.give_all_back(heap, grave);
            heap.caches.retain(|c| !Arc::ptr_eq(c, &self.counters));
            let counters = self.counters.snapshot();
            heap.counters.add(&counters);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_stay_within_bounds() {
        assert_eq!(capacity(MIN_ORDER), MAX_CAPACITY);
        assert_eq!(capacity(12), 64);
        assert_eq!(capacity(CACHE_MAX_ORDER), 1);
        let most: usize = (MIN_ORDER..=CACHE_MAX_ORDER)
            .map(|order| capacity(order) << order)
            .sum();
        assert!(most < 9 << 19, "{most}");
        for order in MIN_ORDER..=CACHE_MAX_ORDER {
            assert!((1..=capacity(order)).contains(&batch(order)));
        }
    }
}
