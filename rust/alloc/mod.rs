//! The untrusted allocator.
//!
//! Untrusted memory does not only come from anonymous mappings: a device shares a buffer with
//! the program, another process hands over shared memory, a file is mapped. An
//! [`UntrustedAllocator`] manages such *inserted* ranges together with *chunks* it maps itself,
//! serves blocks big and small from them, answers "is this address mine, and which block is
//! it?", and can place a [`Storage`] in its blocks.
//!
//! # Design
//!
//! - **Buddy system.** Blocks are powers of two from [`MIN_BLOCK`] bytes up, naturally aligned,
//!   split and merged with their buddies ([`buddy`]). Each range has its own buddy structure
//!   whose free sets are hierarchical bitmaps, so allocating and freeing cost a few word
//!   operations per order crossed, never a scan, whatever the number of live blocks.
//! - **Out-of-band bookkeeping.** Nothing the allocator relies on is stored in the ranges it
//!   manages: the host can rewrite untrusted memory at any moment, so a free list kept there
//!   would let it steer the allocator. Free bitmaps and per-granule tags ([`range`]) live in the
//!   allocator's own lazily mapped memory.
//! - **Thread caches.** Blocks up to [`CACHE_MAX`] (1 MiB) are served from per-thread caches
//!   that are refilled and flushed in batches ([`cache`]): hundreds of blocks at a time for the
//!   small sizes, one at a time for the largest. The common allocation and free take no lock,
//!   only a store and one compare-and-swap on the block's tag. A block may be freed on any
//!   thread.
//! - **One lock** guards the shared structures ([`heap`]): refills and flushes, blocks over
//!   1 MiB, range insertion and removal, chunk mapping and release.
//!
//! Own chunks are [`AllocConfig::chunk_size`] bytes (16 MiB by default) and aligned to their
//! size; a request larger than a chunk gets a chunk of its own. Empty chunks are given back to
//! the kernel, except for [`AllocConfig::reserve_chunks`] standard ones kept for reuse.
//!
//! # Safety of inserted ranges
//!
//! [`UntrustedAllocator::insert_range`] is `unsafe`: the caller promises the memory stays mapped
//! and writable until the range is removed (or the allocator dropped). The allocator refuses
//! to remove a range that has live blocks, so a [`Block`] never outlives its memory.

mod bitmap;
mod buddy;
mod cache;
mod fence;
mod heap;
mod lazy;
mod range;

use std::any::Any;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::segment::{Region, Segment};
use crate::storage::{Layout, Storage, StorageError};

use heap::{Graveyard, Heap};

/// The smallest block, and the alignment that inserted ranges need for start and length.
pub const MIN_BLOCK: usize = 1 << MIN_ORDER;
/// The largest block served from thread caches.
pub const CACHE_MAX: usize = 1 << cache::CACHE_MAX_ORDER;
/// The default size of the allocator's own chunks.
pub const DEFAULT_CHUNK_SIZE: usize = 16 << 20;
/// Blocks that hold storage segments are aligned to this many bytes.
pub const STORAGE_ALIGN: usize = 64;

const MIN_ORDER: u32 = 4;
/// The order of the largest block that can be asked for: 2^62 bytes (`isize::MAX / 2 + 1`).
const MAX_ORDER: u32 = 62;
/// The smallest chunk size accepted; smaller chunks would make the bookkeeping dominate.
const MIN_CHUNK_SIZE: usize = 64 << 10;

/// The object that keeps an inserted range alive, dropped when the range is removed.
pub type RangeOwner = Box<dyn Any + Send + Sync>;

/// Everything that can go wrong in the allocator.
///
/// [`AllocError::is_out_of_memory`] tells the errors that mean "no memory" (for Python's
/// `MemoryError`) from those that mean "bad argument" (`ValueError`).
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// A block must have at least one byte.
    #[error("cannot allocate a block of 0 bytes")]
    ZeroSize,
    /// The alignment is not a power of two.
    #[error("alignment {align} is not a power of two")]
    BadAlignment {
        /// The alignment asked for.
        align: usize,
    },
    /// Rounding the request up to a power of two overflows the address space.
    #[error("a block of {size} bytes aligned to {align} bytes does not fit the address space")]
    SizeOverflow {
        /// Bytes asked for.
        size: usize,
        /// Alignment asked for.
        align: usize,
    },
    /// No managed range has room and no chunk could be mapped.
    #[error("out of untrusted memory for {size} bytes (a {block}-byte block): {reason}")]
    OutOfMemory {
        /// Bytes asked for.
        size: usize,
        /// The power-of-two block the request needs.
        block: usize,
        /// Why no chunk could be mapped.
        reason: String,
    },
    /// The address lies in no range this allocator manages.
    #[error("address {addr:#x} is not in any range managed by this allocator")]
    UnknownAddress {
        /// The address.
        addr: usize,
    },
    /// The address lies in a managed range but no live block starts there.
    #[error("address {addr:#x} is not the start of a live block of this allocator")]
    NotLive {
        /// The address.
        addr: usize,
    },
    /// The block belongs to an owned [`Block`], which frees it when dropped.
    #[error("the block at {addr:#x} is held by an owned Block and is freed when that is dropped")]
    OwnedByBlock {
        /// The address.
        addr: usize,
    },
    /// An inserted range must have a non-null start and a length that are multiples of
    /// [`MIN_BLOCK`].
    #[error(
        "range {start:#x}+{len:#x} is not aligned: start and length must be non-zero multiples \
         of {align} bytes"
    )]
    UnalignedRange {
        /// Start of the range.
        start: usize,
        /// Length of the range.
        len: usize,
        /// The required alignment ([`MIN_BLOCK`]).
        align: usize,
    },
    /// An inserted range must not be empty.
    #[error("cannot insert an empty range")]
    EmptyRange,
    /// The range's end does not fit the address space.
    #[error("range {start:#x}+{len:#x} wraps around the end of the address space")]
    RangeOverflow {
        /// Start of the range.
        start: usize,
        /// Length of the range.
        len: usize,
    },
    /// The range overlaps one that is already managed.
    #[error(
        "range {start:#x}+{len:#x} overlaps the managed range {other_start:#x}+{other_len:#x}"
    )]
    RangeOverlaps {
        /// Start of the new range.
        start: usize,
        /// Length of the new range.
        len: usize,
        /// Start of the managed range it overlaps.
        other_start: usize,
        /// Length of the managed range it overlaps.
        other_len: usize,
    },
    /// No managed range starts at the address.
    #[error("no managed range starts at {start:#x}")]
    UnknownRange {
        /// The address given.
        start: usize,
    },
    /// The range is one of the allocator's own chunks, which only the allocator gives back.
    #[error("the range at {start:#x} is one of the allocator's own chunks; only inserted ranges can be removed")]
    NotInserted {
        /// Start of the chunk.
        start: usize,
    },
    /// The range still has live blocks.
    #[error(
        "range {start:#x}+{len:#x} still has {live} live block(s); free them before removing it"
    )]
    RangeBusy {
        /// Start of the range.
        start: usize,
        /// Length of the range.
        len: usize,
        /// How many blocks in it are live.
        live: usize,
    },
    /// The configuration is unusable.
    #[error("invalid allocator configuration: {0}")]
    BadConfig(String),
    /// The allocator could not map its own bookkeeping for a range.
    #[error("could not map bookkeeping memory for a range: {0}")]
    Bookkeeping(#[source] io::Error),
    /// Placing a storage failed on the storage's side (its shape, or its segments).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl AllocError {
    /// Whether the error means memory ran out rather than that an argument was wrong.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(
            self,
            AllocError::OutOfMemory { .. }
                | AllocError::Bookkeeping(_)
                | AllocError::Storage(StorageError::Map { .. })
        )
    }
}

/// Tunables of an allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocConfig {
    /// Size of the chunks the allocator maps itself: a power of two of at least 64 KiB.
    pub chunk_size: usize,
    /// How many empty standard chunks to keep mapped for reuse instead of giving them back.
    pub reserve_chunks: usize,
    /// The most bytes of own chunks mapped at once; 0 serves only inserted ranges.
    pub chunk_limit: usize,
    /// Whether blocks up to [`CACHE_MAX`] bytes go through per-thread caches.
    pub thread_cache: bool,
}

impl Default for AllocConfig {
    fn default() -> Self {
        AllocConfig {
            chunk_size: DEFAULT_CHUNK_SIZE,
            reserve_chunks: 1,
            chunk_limit: usize::MAX,
            thread_cache: true,
        }
    }
}

/// Whether a range was inserted by a caller or mapped by the allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RangeKind {
    /// One of the allocator's own chunks.
    Chunk,
    /// A committed range a caller inserted.
    Inserted,
}

/// A managed range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeInfo {
    /// An identifier unique for the allocator's lifetime.
    pub id: u64,
    /// The first byte.
    pub start: usize,
    /// Length in bytes.
    pub len: usize,
    /// Inserted or own.
    pub kind: RangeKind,
}

impl RangeInfo {
    /// One past the last byte.
    pub fn end(&self) -> usize {
        self.start + self.len
    }
}

/// A live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveBlock {
    /// The first byte.
    pub start: usize,
    /// The block's size: the request rounded up to a power of two.
    pub size: usize,
    /// The size that was asked for.
    pub requested: usize,
    /// Whether an owned [`Block`] holds it.
    pub owned: bool,
}

/// The answer to "whose is this address?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// The managed range that contains the address.
    pub range: RangeInfo,
    /// The live block that contains it, if any.
    pub block: Option<LiveBlock>,
}

/// A removed range, handed back with its owner.
#[derive(Debug)]
pub struct RemovedRange {
    /// What the range was.
    pub range: RangeInfo,
    /// The owner given to [`UntrustedAllocator::insert_range`]; dropping it releases the memory.
    pub owner: Option<RangeOwner>,
}

/// Statistics of one managed range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeStats {
    /// The range.
    pub range: RangeInfo,
    /// Bytes in free blocks of its buddy structure.
    pub free_bytes: usize,
    /// Bytes out of its buddy structure: live blocks and blocks sitting in thread caches.
    pub used_bytes: usize,
}

/// Statistics of an allocator.
///
/// Thread caches update their counters without synchronisation, so while other threads are
/// allocating the numbers are a moment's approximation; when they are quiet the numbers are
/// exact and `free_bytes + allocated_bytes + cached_bytes == managed_bytes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocStats {
    /// Every managed range, by address.
    pub ranges: Vec<RangeStats>,
    /// Bytes of all managed ranges.
    pub managed_bytes: usize,
    /// Bytes of inserted ranges.
    pub inserted_bytes: usize,
    /// Bytes of own chunks.
    pub chunk_bytes: usize,
    /// Bytes in free blocks of all buddy structures.
    pub free_bytes: usize,
    /// Own chunks mapped now.
    pub chunks: usize,
    /// Own chunks mapped since the allocator was created.
    pub chunks_mapped: u64,
    /// Own chunks given back since the allocator was created.
    pub chunks_released: u64,
    /// Live blocks.
    pub live_blocks: u64,
    /// Bytes asked for by the live blocks.
    pub requested_bytes: u64,
    /// Bytes of the live blocks, rounded up to their block sizes.
    pub allocated_bytes: u64,
    /// Free blocks sitting in thread caches.
    pub cached_blocks: u64,
    /// Bytes of the blocks sitting in thread caches.
    pub cached_bytes: u64,
    /// Small allocations served by a thread cache without refilling it.
    pub cache_hits: u64,
    /// Batches fetched by thread caches from the shared structure.
    pub cache_refills: u64,
    /// Batches given back by thread caches to the shared structure.
    pub cache_flushes: u64,
}

static NEXT_ALLOCATOR_ID: AtomicU64 = AtomicU64::new(1);

/// The state shared by all handles of one allocator and its blocks.
pub(crate) struct Inner {
    id: u64,
    config: AllocConfig,
    /// Bumped whenever the set of ranges changes; thread caches compare it on every operation.
    epoch: AtomicU64,
    /// Whether removal issues a process-wide barrier, so publishing needs no fence of its own.
    asymmetric: bool,
    heap: Mutex<Heap>,
}

impl Inner {
    /// Runs `f` under the lock, publishes the epoch if `f` moved it, and drops whatever `f`
    /// buried only after unlocking. Everything that changes the heap goes through here.
    fn with_heap<R>(&self, f: impl FnOnce(&mut Heap, &mut Graveyard) -> R) -> R {
        let mut grave = Graveyard::new();
        let result = {
            let mut heap = self.heap.lock();
            let result = f(&mut heap, &mut grave);
            if heap.epoch != self.epoch.load(Ordering::Relaxed) {
                self.epoch.store(heap.epoch, Ordering::Release);
            }
            result
        };
        drop(grave);
        result
    }
}

/// An allocator of untrusted memory over its own chunks and inserted ranges.
///
/// Cheap to clone: clones share the allocator. It lives as long as any clone or [`Block`].
#[derive(Clone)]
pub struct UntrustedAllocator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for UntrustedAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UntrustedAllocator")
            .field("id", &self.inner.id)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Default for UntrustedAllocator {
    fn default() -> Self {
        UntrustedAllocator::new()
    }
}

/// The order of the block that serves `size` bytes aligned to `align`.
#[inline]
fn order_for(size: usize, align: usize) -> Result<u32, AllocError> {
    if size == 0 {
        return Err(AllocError::ZeroSize);
    }
    if !align.is_power_of_two() {
        return Err(AllocError::BadAlignment { align });
    }
    // `align` is a power of two, so the smallest power of two that is at least `size` and at
    // least `align` is the one at least `max(size, align)`; its order is the bit length of
    // `max(size, align) - 1` (which cannot underflow, as `size > 0`).
    let order = usize::BITS - (size.max(align) - 1).leading_zeros();
    if order > MAX_ORDER {
        // Built only here: an error built eagerly would be constructed and dropped, an
        // out-of-line call, on every allocation.
        return Err(AllocError::SizeOverflow { size, align });
    }
    Ok(order.max(MIN_ORDER))
}

impl UntrustedAllocator {
    /// An allocator with the default configuration.
    pub fn new() -> UntrustedAllocator {
        UntrustedAllocator::with_config(AllocConfig::default())
            .expect("the default configuration is valid")
    }

    /// An allocator with the given configuration.
    pub fn with_config(config: AllocConfig) -> Result<UntrustedAllocator, AllocError> {
        if !config.chunk_size.is_power_of_two()
            || config.chunk_size < MIN_CHUNK_SIZE
            || config.chunk_size > isize::MAX as usize / 2 + 1
        {
            return Err(AllocError::BadConfig(format!(
                "chunk_size must be a power of two of at least {MIN_CHUNK_SIZE} bytes, got {}",
                config.chunk_size
            )));
        }
        let inner = Inner {
            id: NEXT_ALLOCATOR_ID.fetch_add(1, Ordering::Relaxed),
            config,
            heap: Mutex::new(Heap::new(config)),
            epoch: AtomicU64::new(0),
            asymmetric: fence::asymmetric(),
        };
        Ok(UntrustedAllocator {
            inner: Arc::new(inner),
        })
    }

    /// The configuration.
    pub fn config(&self) -> AllocConfig {
        self.inner.config
    }

    /// An identifier unique among the allocators of this process.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Allocates `size` bytes aligned to `align` and returns the block's start.
    ///
    /// The memory is untrusted and its contents arbitrary. Give it back with
    /// [`UntrustedAllocator::deallocate`].
    pub fn allocate(&self, size: usize, align: usize) -> Result<NonNull<u8>, AllocError> {
        let addr = self.allocate_addr(size, align, false)?;
        Ok(NonNull::new(addr as *mut u8).expect("managed ranges never contain address 0"))
    }

    /// Frees the block that starts at `ptr`, returning what it was.
    ///
    /// Any address is accepted: one that is not the start of a live block allocated with
    /// [`UntrustedAllocator::allocate`] is an error, and nothing changes.
    pub fn deallocate(&self, ptr: *const u8) -> Result<LiveBlock, AllocError> {
        self.free_addr(ptr as usize, false)
    }

    /// Allocates an owned block that frees itself when dropped.
    pub fn alloc_block(&self, size: usize, align: usize) -> Result<Block, AllocError> {
        let order = order_for(size, align)?;
        let addr = self.allocate_addr(size, align, true)?;
        Ok(Block {
            alloc: self.clone(),
            ptr: NonNull::new(addr as *mut u8).expect("managed ranges never contain address 0"),
            size,
            order,
        })
    }

    #[inline]
    fn allocate_addr(&self, size: usize, align: usize, owned: bool) -> Result<usize, AllocError> {
        let order = order_for(size, align)?;
        let inner = &self.inner;
        if inner.config.thread_cache && order <= cache::CACHE_MAX_ORDER {
            if let Some(addr) = cache::alloc_fast(inner, order, size, owned) {
                return Ok(addr);
            }
        }
        self.allocate_slow(order, size, owned)
    }

    /// Everything but a cache hit: the cache's slow path (refills, refreshes, a first
    /// allocation on this thread), then the lock.
    #[cold]
    #[inline(never)]
    fn allocate_slow(&self, order: u32, size: usize, owned: bool) -> Result<usize, AllocError> {
        let inner = &self.inner;
        if inner.config.thread_cache && order <= cache::CACHE_MAX_ORDER {
            if let Some(addr) = cache::alloc(inner, order, size, owned) {
                return Ok(addr);
            }
        }
        match inner.with_heap(|heap, _| heap.alloc(order, size, owned)) {
            // Free blocks in this thread's cache may be what keeps a larger block from forming
            // or a chunk from being reused; give them back and try once more.
            Err(AllocError::OutOfMemory { .. }) if inner.config.thread_cache => {
                cache::flush(inner);
                inner.with_heap(|heap, _| heap.alloc(order, size, owned))
            }
            result => result,
        }
    }

    #[inline]
    fn free_addr(&self, addr: usize, allow_owned: bool) -> Result<LiveBlock, AllocError> {
        let inner = &self.inner;
        let block = match inner.config.thread_cache {
            true => cache::free_fast(inner, addr, allow_owned),
            false => None,
        };
        let block = match block {
            Some(block) => block,
            None => self.free_slow(addr, allow_owned)?,
        };
        Ok(LiveBlock {
            start: block.start,
            size: block.rounded(),
            requested: block.requested(),
            owned: block.owned,
        })
    }

    /// Everything but a free onto a stack with room: the cache's slow path, then the lock,
    /// which gives the authoritative answer for any address.
    #[cold]
    #[inline(never)]
    fn free_slow(&self, addr: usize, allow_owned: bool) -> Result<range::TaggedBlock, AllocError> {
        let inner = &self.inner;
        if inner.config.thread_cache {
            if let Some(block) = cache::free(inner, addr, allow_owned) {
                return Ok(block);
            }
        }
        inner.with_heap(|heap, grave| heap.free(addr, allow_owned, grave))
    }

    /// Brings the committed range `[start, start + len)` under management.
    ///
    /// `start` must be non-null and `start` and `len` multiples of [`MIN_BLOCK`]; the range must
    /// not overlap any managed range. `owner` is kept until the range is removed or the
    /// allocator dropped; on error it is dropped before returning.
    ///
    /// # Safety
    ///
    /// The whole range must be mapped, readable and writable, and stay so until the range is
    /// removed or the allocator dropped; nothing else may hand out the same memory meanwhile.
    pub unsafe fn insert_range(
        &self,
        start: *mut u8,
        len: usize,
        owner: Option<RangeOwner>,
    ) -> Result<RangeInfo, AllocError> {
        let start = start as usize;
        if len == 0 {
            return Err(AllocError::EmptyRange);
        }
        if start == 0 || start % MIN_BLOCK != 0 || len % MIN_BLOCK != 0 {
            return Err(AllocError::UnalignedRange {
                start,
                len,
                align: MIN_BLOCK,
            });
        }
        if start.checked_add(len).is_none() {
            return Err(AllocError::RangeOverflow { start, len });
        }
        let info = self
            .inner
            .with_heap(|heap, grave| heap.insert(start, len, owner, grave))?;
        log::info!(
            target: "oramstore",
            "inserted untrusted range {:#x}+{:#x} (id {})",
            info.start,
            info.len,
            info.id
        );
        Ok(info)
    }

    /// Removes the inserted range that starts at `start` and hands back its owner.
    ///
    /// Refused while any block in the range is live. Blocks of the range sitting free in thread
    /// caches do not hold it up; they are never handed out again.
    pub fn remove_range(&self, start: *const u8) -> Result<RemovedRange, AllocError> {
        let (range, owner) = self
            .inner
            .with_heap(|heap, _| heap.remove(start as usize, None))?;
        Ok(RemovedRange { range, owner })
    }

    /// Removes exactly the range `range` describes, as [`UntrustedAllocator::remove_range`]
    /// does.
    ///
    /// A range removed earlier is unknown even if another range now starts at the same address,
    /// so a stale description can never remove someone else's range.
    pub fn remove_exact(&self, range: &RangeInfo) -> Result<RemovedRange, AllocError> {
        let (range, owner) = self
            .inner
            .with_heap(|heap, _| heap.remove(range.start, Some(range.id)))?;
        Ok(RemovedRange { range, owner })
    }

    /// Whether `addr` lies in a range this allocator manages.
    pub fn owns(&self, addr: *const u8) -> bool {
        self.inner.heap.lock().range_at(addr as usize).is_some()
    }

    /// The managed range that contains `addr` and the live block that contains it, if any.
    pub fn find(&self, addr: *const u8) -> Option<Found> {
        let addr = addr as usize;
        let table = self.inner.heap.lock().table.clone();
        let meta = table.lookup(addr)?;
        Some(Found {
            range: meta.info(),
            block: meta.find(addr).map(|b| LiveBlock {
                start: b.start,
                size: b.rounded(),
                requested: b.requested(),
                owned: b.owned,
            }),
        })
    }

    /// Gives every block in the calling thread's cache back to the shared structure.
    ///
    /// Never needed for correctness; useful before measuring or to let own chunks go.
    pub fn flush_thread_cache(&self) {
        cache::flush(&self.inner);
    }

    /// Current statistics (see [`AllocStats`] for how exact they are).
    pub fn stats(&self) -> AllocStats {
        cache::sync(&self.inner);
        self.inner.heap.lock().stats()
    }

    /// Creates a storage of `count` items whose data and metadata segments are blocks of this
    /// allocator.
    ///
    /// The metadata segment is zeroed once here, because the range it comes from may hold
    /// anything; the data segment is used as it is, like any untrusted storage's.
    pub fn place_storage(
        &self,
        count: u64,
        data_size: u64,
        meta_size: u64,
    ) -> Result<Storage, AllocError> {
        let layout = Layout::new(count, data_size, meta_size)?;
        storage_in_blocks(
            layout,
            self.alloc_block(layout.data_bytes(), STORAGE_ALIGN)?,
            self.alloc_block(layout.meta_bytes(), STORAGE_ALIGN)?,
        )
    }
}

/// Builds a storage whose data and metadata segments are the given blocks.
///
/// The metadata block is zeroed (by `Storage::with_segments`, since it is not a fresh anonymous
/// mapping); the data block gets no initialising pass.
pub fn storage_in_blocks(layout: Layout, data: Block, meta: Block) -> Result<Storage, AllocError> {
    Ok(Storage::with_segments(
        layout,
        Segment::from_region(Box::new(data)),
        Segment::from_region(Box::new(meta)),
    )?)
}

/// A block owned by the value: it is freed when the value is dropped and cannot be freed
/// through [`UntrustedAllocator::deallocate`] meanwhile. It keeps its allocator alive.
pub struct Block {
    alloc: UntrustedAllocator,
    ptr: NonNull<u8>,
    size: usize,
    order: u32,
}

// SAFETY: a `Block` is the unique owner of its memory (the tags refuse any other free of it),
// and it only hands out raw pointers; the allocator handle is itself Send and Sync.
unsafe impl Send for Block {}
// SAFETY: see `Send`; shared references give out nothing but the pointer and sizes.
unsafe impl Sync for Block {}

impl Block {
    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bytes asked for.
    pub fn len(&self) -> usize {
        self.size
    }

    /// Always false: blocks have at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The block's full size, a power of two; all of it is usable.
    pub fn capacity(&self) -> usize {
        1 << self.order
    }

    /// The allocator the block came from.
    pub fn allocator(&self) -> &UntrustedAllocator {
        &self.alloc
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("ptr", &self.ptr)
            .field("len", &self.size)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Err(e) = self.alloc.free_addr(self.ptr.as_ptr() as usize, true) {
            // Only an allocator bug can get here: the tags let no one else free the block.
            log::error!(target: "oramstore", "could not free an owned block: {e}");
            debug_assert!(false, "could not free an owned block: {e}");
        }
    }
}

// SAFETY: the block's memory is `len()` bytes from `as_ptr()`, inside a managed range that
// cannot be removed while the block is live and whose memory the allocator (own chunks) or the
// inserter (inserted ranges, by `insert_range`'s contract) keeps mapped and writable; the tags
// guarantee no other allocation overlaps it and no other party can free it.
unsafe impl Region for Block {
    fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    fn len(&self) -> usize {
        self.size
    }
}

#[cfg(test)]
mod tests;
