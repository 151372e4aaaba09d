//! Tests of the allocator's public behaviour: requests, ranges, ownership queries, statistics,
//! storages, a model-based property test and a multi-threaded stress test.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};

use memmap2::{MmapMut, MmapOptions};
use proptest::prelude::*;

use super::*;

/// A fresh anonymous mapping to insert, and a pointer to its first byte.
fn mapping(len: usize) -> (MmapMut, *mut u8) {
    let mut map = MmapOptions::new().len(len).map_anon().unwrap();
    let ptr = map.as_mut_ptr();
    (map, ptr)
}

/// Inserts a fresh mapping that the allocator will own.
fn insert_mapping(alloc: &UntrustedAllocator, len: usize) -> RangeInfo {
    let (map, ptr) = mapping(len);
    // SAFETY: the mapping is writable, `len` bytes long, and kept alive by the allocator as the
    // range's owner until the range is removed.
    unsafe { alloc.insert_range(ptr, len, Some(Box::new(map))) }.unwrap()
}

/// An allocator that never maps chunks of its own.
fn inserted_only(thread_cache: bool) -> UntrustedAllocator {
    UntrustedAllocator::with_config(AllocConfig {
        chunk_limit: 0,
        thread_cache,
        ..AllocConfig::default()
    })
    .unwrap()
}

fn small_chunks() -> AllocConfig {
    AllocConfig {
        chunk_size: 64 << 10,
        ..AllocConfig::default()
    }
}

/// Sets a flag when dropped, to observe when an owner goes.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn assert_consistent(stats: &AllocStats) {
    assert_eq!(
        stats.free_bytes as u64 + stats.allocated_bytes + stats.cached_bytes,
        stats.managed_bytes as u64,
        "{stats:#?}"
    );
    assert_eq!(
        stats
            .ranges
            .iter()
            .map(|r| r.free_bytes + r.used_bytes)
            .sum::<usize>(),
        stats.managed_bytes
    );
}

#[test]
fn blocks_are_aligned_disjoint_and_inside_managed_ranges() {
    let alloc = UntrustedAllocator::new();
    let mut blocks: Vec<(usize, usize)> = Vec::new();
    for (i, &(size, align)) in [
        (1, 1),
        (8, 8),
        (24, 16),
        (100, 64),
        (4096, 4096),
        (5000, 8),
        (1 << 20, 1 << 20),
        (3, 1 << 16),
        (20 << 20, 4096),
    ]
    .iter()
    .cycle()
    .take(40)
    .enumerate()
    {
        let ptr = alloc.allocate(size, align).unwrap();
        let addr = ptr.as_ptr() as usize;
        assert_eq!(
            addr % align,
            0,
            "request {i}: {size} bytes aligned to {align}"
        );
        assert_eq!(addr % MIN_BLOCK, 0);
        let found = alloc.find(ptr.as_ptr()).unwrap();
        assert!(found.range.start <= addr && addr + size <= found.range.end());
        let block = found.block.unwrap();
        assert_eq!((block.start, block.requested), (addr, size));
        assert!(block.size >= size && block.size.is_power_of_two());
        for &(other, other_size) in &blocks {
            assert!(addr + size <= other || other + other_size <= addr);
        }
        // The memory is usable from end to end.
        // SAFETY: the block is live and `size` bytes long.
        unsafe {
            ptr.as_ptr().write(0x5A);
            ptr.as_ptr().add(size - 1).write(0xA5);
        }
        blocks.push((addr, size));
    }
    let stats = alloc.stats();
    assert_eq!(stats.live_blocks, 40);
    assert_eq!(
        stats.requested_bytes,
        blocks.iter().map(|&(_, s)| s as u64).sum::<u64>()
    );
    assert_consistent(&stats);
    for (addr, size) in blocks {
        let freed = alloc.deallocate(addr as *const u8).unwrap();
        assert_eq!((freed.start, freed.requested), (addr, size));
    }
    let stats = alloc.stats();
    assert_eq!(
        (
            stats.live_blocks,
            stats.requested_bytes,
            stats.allocated_bytes
        ),
        (0, 0, 0)
    );
    assert_consistent(&stats);
}

#[test]
fn bad_requests_are_errors() {
    let alloc = UntrustedAllocator::new();
    assert!(matches!(alloc.allocate(0, 8), Err(AllocError::ZeroSize)));
    assert!(matches!(
        alloc.allocate(8, 3),
        Err(AllocError::BadAlignment { align: 3 })
    ));
    assert!(matches!(
        alloc.allocate(8, 0),
        Err(AllocError::BadAlignment { align: 0 })
    ));
    for (size, align) in [
        (usize::MAX, 1),
        ((1 << 62) + 1, 1),
        (1, 1 << 63),
        (isize::MAX as usize, 8),
    ] {
        let err = alloc.allocate(size, align).unwrap_err();
        assert!(matches!(err, AllocError::SizeOverflow { .. }), "{err}");
        assert!(!err.is_out_of_memory());
    }
    // A request the kernel cannot satisfy is an error, and the allocator goes on working.
    let err = alloc.allocate(1 << 60, 8).unwrap_err();
    assert!(matches!(err, AllocError::OutOfMemory { .. }), "{err}");
    assert!(err.is_out_of_memory());
    assert!(alloc.allocate(64, 8).is_ok());
    assert_consistent(&alloc.stats());
}

#[test]
fn freeing_anything_but_a_live_block_is_an_error() {
    for thread_cache in [true, false] {
        let alloc = UntrustedAllocator::with_config(AllocConfig {
            thread_cache,
            ..small_chunks()
        })
        .unwrap();
        let small = alloc.allocate(40, 8).unwrap().as_ptr();
        let big = alloc.allocate(10_000, 8).unwrap().as_ptr();
        for addr in [std::ptr::null(), 16 as *const u8, usize::MAX as *const u8] {
            assert!(matches!(
                alloc.deallocate(addr),
                Err(AllocError::UnknownAddress { .. })
            ));
        }
        for inside in [
            small.wrapping_add(16),
            small.wrapping_add(1),
            big.wrapping_add(4096),
        ] {
            assert!(matches!(
                alloc.deallocate(inside),
                Err(AllocError::NotLive { .. })
            ));
        }
        alloc.deallocate(small).unwrap();
        alloc.deallocate(big).unwrap();
        assert!(matches!(
            alloc.deallocate(small),
            Err(AllocError::NotLive { .. })
        ));
        assert!(matches!(
            alloc.deallocate(big),
            Err(AllocError::NotLive { .. })
        ));
        let stats = alloc.stats();
        assert_eq!(stats.live_blocks, 0);
        assert_consistent(&stats);
    }
}

#[test]
fn owned_blocks_free_themselves_and_refuse_raw_frees() {
    let alloc = UntrustedAllocator::new();
    let block = alloc.alloc_block(300, 32).unwrap();
    assert_eq!((block.len(), block.capacity()), (300, 512));
    assert!(matches!(
        alloc.deallocate(block.as_ptr()),
        Err(AllocError::OwnedByBlock { .. })
    ));
    let found = alloc.find(block.as_ptr().wrapping_add(299)).unwrap();
    assert!(found.block.unwrap().owned);
    let ptr = block.as_ptr();
    drop(block);
    assert_eq!(alloc.find(ptr).unwrap().block, None);
    assert_eq!(alloc.stats().live_blocks, 0);
    // A block keeps its allocator alive.
    let block = UntrustedAllocator::new().alloc_block(10, 8).unwrap();
    assert_eq!(block.allocator().stats().live_blocks, 1);
}

#[test]
fn inserted_ranges_are_checked() {
    let alloc = UntrustedAllocator::new();
    let (map, ptr) = mapping(1 << 20);
    let insert = |offset: usize, len: usize| {
        // SAFETY: every range tried lies inside `map`, which outlives the allocator's use of it
        // (all ranges are removed or refused before `map` drops).
        unsafe { alloc.insert_range(ptr.wrapping_add(offset), len, None) }
    };
    assert!(matches!(insert(0, 0), Err(AllocError::EmptyRange)));
    assert!(matches!(
        insert(8, 4096),
        Err(AllocError::UnalignedRange { .. })
    ));
    assert!(matches!(
        insert(0, 4095),
        Err(AllocError::UnalignedRange { .. })
    ));
    // SAFETY: refused before anything is touched.
    let null = unsafe { alloc.insert_range(std::ptr::null_mut(), 4096, None) };
    assert!(matches!(null, Err(AllocError::UnalignedRange { .. })));
    // SAFETY: refused before anything is touched.
    let wraps = unsafe { alloc.insert_range((usize::MAX - 4095) as *mut u8, 8192, None) };
    assert!(matches!(wraps, Err(AllocError::RangeOverflow { .. })));
    let a = insert(4096, 8192).unwrap();
    assert_eq!(
        (a.start, a.len, a.kind),
        (ptr as usize + 4096, 8192, RangeKind::Inserted)
    );
    for (offset, len) in [
        (0, 4096 + 16),
        (4096 + 8192 - 16, 32),
        (8192, 16),
        (0, 1 << 20),
    ] {
        let err = insert(offset, len).unwrap_err();
        assert!(
            matches!(err, AllocError::RangeOverlaps { other_start, .. } if other_start == a.start),
            "{err}"
        );
    }
    // Touching edges is not overlapping; a 16-byte range is the smallest there is.
    insert(0, 4096).unwrap();
    insert(4096 + 8192, 16).unwrap();
    // Own chunks count as managed ranges too (this request fits no inserted range).
    let chunk_block = alloc.allocate(64 << 10, 8).unwrap();
    let chunk = alloc.find(chunk_block.as_ptr()).unwrap().range;
    assert_eq!(chunk.kind, RangeKind::Chunk);
    // SAFETY: refused: it overlaps the chunk.
    let over_chunk = unsafe { alloc.insert_range(chunk.start as *mut u8, 4096, None) };
    assert!(matches!(over_chunk, Err(AllocError::RangeOverlaps { .. })));
    assert!(matches!(
        alloc.remove_range(chunk.start as *const u8),
        Err(AllocError::NotInserted { .. })
    ));
    assert!(matches!(
        alloc.remove_range(ptr.wrapping_add(4096 + 16)),
        Err(AllocError::UnknownRange { .. })
    ));
    let stats = alloc.stats();
    assert_eq!(stats.inserted_bytes, 4096 + 8192 + 16);
    assert_eq!(
        stats.managed_bytes,
        stats.inserted_bytes + stats.chunk_bytes
    );
    drop(alloc);
    drop(map);
}

#[test]
fn removal_waits_for_live_blocks_and_drops_the_owner() {
    for thread_cache in [true, false] {
        let alloc = inserted_only(thread_cache);
        let dropped = Arc::new(AtomicBool::new(false));
        let (map, ptr) = mapping(64 << 10);
        let owner: RangeOwner = Box::new((map, DropFlag(dropped.clone())));
        // SAFETY: the mapping is kept alive by the owner until removal.
        let range = unsafe { alloc.insert_range(ptr, 64 << 10, Some(owner)) }.unwrap();
        let a = alloc.allocate(100, 8).unwrap();
        let b = alloc.alloc_block(20_000, 8).unwrap();
        let c = alloc.allocate(16, 16).unwrap();
        for p in [a.as_ptr(), b.as_ptr(), c.as_ptr()] {
            assert_eq!(alloc.find(p).unwrap().range, range);
        }
        let err = alloc.remove_range(ptr).unwrap_err();
        assert!(
            matches!(err, AllocError::RangeBusy { live: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("3 live block(s)"), "{err}");
        alloc.deallocate(a.as_ptr()).unwrap();
        drop(b);
        let err = alloc.remove_range(ptr).unwrap_err();
        assert!(
            matches!(err, AllocError::RangeBusy { live: 1, .. }),
            "{err}"
        );
        assert!(!dropped.load(Ordering::SeqCst));
        alloc.deallocate(c.as_ptr()).unwrap();
        let removed = alloc.remove_range(ptr).unwrap();
        assert_eq!(removed.range, range);
        assert!(
            !dropped.load(Ordering::SeqCst),
            "the owner comes back to the caller"
        );
        drop(removed);
        assert!(dropped.load(Ordering::SeqCst));
        // After removal nothing is served from the range, even blocks that sat in this
        // thread's cache: with no memory left at all, every request fails.
        assert!(!alloc.owns(ptr));
        assert_eq!(alloc.find(ptr), None);
        for size in [16, 100, 4096, 20_000] {
            assert!(matches!(
                alloc.allocate(size, 8),
                Err(AllocError::OutOfMemory { .. })
            ));
        }
        assert!(matches!(
            alloc.deallocate(c.as_ptr()),
            Err(AllocError::UnknownAddress { .. })
        ));
        let stats = alloc.stats();
        assert_eq!(
            (stats.managed_bytes, stats.cached_bytes, stats.live_blocks),
            (0, 0, 0)
        );
        assert!(matches!(
            alloc.remove_range(ptr),
            Err(AllocError::UnknownRange { .. })
        ));
    }
}

#[test]
fn exact_removal_refuses_a_stale_description() {
    let alloc = inserted_only(true);
    let (map, ptr) = mapping(64 << 10);
    // SAFETY: `map` outlives every use of the range in this test.
    let first = unsafe { alloc.insert_range(ptr, 64 << 10, None) }.unwrap();
    alloc.remove_exact(&first).unwrap();
    // SAFETY: as above; the same memory comes back as a new range.
    let second = unsafe { alloc.insert_range(ptr, 64 << 10, None) }.unwrap();
    assert_eq!(second.start, first.start);
    assert_ne!(second.id, first.id);
    assert!(matches!(
        alloc.remove_exact(&first),
        Err(AllocError::UnknownRange { .. })
    ));
    assert!(alloc.owns(ptr));
    assert_eq!(alloc.remove_exact(&second).unwrap().range, second);
    assert!(!alloc.owns(ptr));
    drop(map);
}

#[test]
fn dropping_the_allocator_drops_inserted_owners() {
    let dropped = Arc::new(AtomicBool::new(false));
    let alloc = UntrustedAllocator::new();
    let (map, ptr) = mapping(4096);
    let owner: RangeOwner = Box::new((map, DropFlag(dropped.clone())));
    // SAFETY: the mapping is kept alive by the owner.
    unsafe { alloc.insert_range(ptr, 4096, Some(owner)) }.unwrap();
    let block = alloc.alloc_block(64, 8).unwrap();
    drop(alloc);
    assert!(
        !dropped.load(Ordering::SeqCst),
        "a live block keeps the allocator"
    );
    drop(block);
    assert!(dropped.load(Ordering::SeqCst));
}

#[test]
fn a_failed_insert_drops_the_owner() {
    let alloc = UntrustedAllocator::new();
    let (map, ptr) = mapping(8192);
    // SAFETY: the mapping outlives the allocator.
    unsafe { alloc.insert_range(ptr, 8192, None) }.unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    // SAFETY: refused because it overlaps.
    let err = unsafe { alloc.insert_range(ptr, 4096, Some(Box::new(DropFlag(dropped.clone())))) };
    assert!(err.is_err());
    assert!(dropped.load(Ordering::SeqCst));
    drop(alloc);
    drop(map);
}

#[test]
fn ownership_queries_cover_ranges_blocks_and_gaps() {
    let alloc = inserted_only(true);
    let range = insert_mapping(&alloc, 1 << 16);
    let base = range.start;
    let big = alloc.allocate(3000, 8).unwrap().as_ptr() as usize;
    let small = alloc.allocate(17, 8).unwrap().as_ptr() as usize;
    for addr in [base, base + (1 << 16) - 1, big, small] {
        assert!(alloc.owns(addr as *const u8));
    }
    for addr in [base - 1, base + (1 << 16), 0, usize::MAX] {
        assert!(!alloc.owns(addr as *const u8));
        assert_eq!(alloc.find(addr as *const u8), None);
    }
    for (addr, start, size, requested) in [
        (big, big, 4096, 3000),
        (big + 4095, big, 4096, 3000),
        (small + 31, small, 32, 17),
    ] {
        let found = alloc.find(addr as *const u8).unwrap();
        assert_eq!(found.range, range);
        let block = found.block.unwrap();
        assert_eq!(
            (block.start, block.size, block.requested),
            (start, size, requested)
        );
    }
    // Just past a block, or in free space, the range is known but no block is.
    let past = alloc.find((big + 4096) as *const u8).unwrap();
    if let Some(block) = past.block {
        assert_ne!(block.start, big);
    }
    alloc.deallocate(big as *const u8).unwrap();
    assert_eq!(alloc.find((big + 100) as *const u8).unwrap().block, None);
}

#[test]
fn chunks_are_mapped_on_demand_and_given_back_beyond_the_reserve() {
    let alloc = UntrustedAllocator::with_config(AllocConfig {
        reserve_chunks: 1,
        ..small_chunks()
    })
    .unwrap();
    assert_eq!(alloc.stats().chunks, 0);
    // Three chunks' worth of 32 KiB blocks, then a block larger than a chunk.
    let blocks: Vec<_> = (0..6)
        .map(|_| alloc.allocate(32 << 10, 8).unwrap())
        .collect();
    let huge = alloc.allocate(200 << 10, 8).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.chunks, 4);
    assert_eq!(stats.chunk_bytes, 3 * (64 << 10) + (256 << 10));
    let huge_range = alloc.find(huge.as_ptr()).unwrap().range;
    assert_eq!(
        (huge_range.len, huge_range.start % (256 << 10)),
        (256 << 10, 0)
    );
    // Freed blocks of up to 1 MiB stay in this thread's cache until it is flushed.
    alloc.deallocate(huge.as_ptr()).unwrap();
    assert_eq!(alloc.stats().chunks, 4);
    alloc.flush_thread_cache();
    assert_eq!(alloc.stats().chunks, 3, "an oversized chunk is never kept");
    for b in &blocks {
        alloc.deallocate(b.as_ptr()).unwrap();
    }
    alloc.flush_thread_cache();
    let stats = alloc.stats();
    assert_eq!(
        (stats.chunks, stats.chunks_mapped, stats.chunks_released),
        (1, 4, 3)
    );
    assert_eq!(stats.free_bytes, 64 << 10);
    // The reserve chunk serves the next request without a new mapping.
    let again = alloc.allocate(32 << 10, 8).unwrap();
    assert_eq!(alloc.stats().chunks_mapped, 4);
    alloc.deallocate(again.as_ptr()).unwrap();
}

#[test]
fn running_out_of_memory_leaves_the_allocator_consistent() {
    let alloc = UntrustedAllocator::with_config(AllocConfig {
        chunk_limit: 128 << 10,
        ..small_chunks()
    })
    .unwrap();
    let mut live = Vec::new();
    let err = loop {
        match alloc.allocate(1000, 8) {
            Ok(p) => live.push(p),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, AllocError::OutOfMemory { .. }), "{err}");
    assert!(err.to_string().contains("chunk limit"), "{err}");
    assert_eq!(live.len(), 128);
    assert_consistent(&alloc.stats());
    // More memory makes requests succeed again; freeing makes room too.
    let range = insert_mapping(&alloc, 4096);
    let p = alloc.allocate(1000, 8).unwrap();
    assert_eq!(alloc.find(p.as_ptr()).unwrap().range, range);
    for p in live {
        alloc.deallocate(p.as_ptr()).unwrap();
    }
    alloc.allocate(50_000, 8).unwrap();
    assert_consistent(&alloc.stats());
}

#[test]
fn configuration_is_checked() {
    for chunk_size in [0, 1000, 4096, (64 << 10) + 1, 1 << 63] {
        let cfg = AllocConfig {
            chunk_size,
            ..AllocConfig::default()
        };
        assert!(matches!(
            UntrustedAllocator::with_config(cfg),
            Err(AllocError::BadConfig(_))
        ));
    }
}

#[test]
fn blocks_freed_on_another_thread_are_reused() {
    let alloc = UntrustedAllocator::with_config(small_chunks()).unwrap();
    let ptrs: Vec<usize> = (0..1000)
        .map(|_| alloc.allocate(48, 16).unwrap().as_ptr() as usize)
        .collect();
    let other = alloc.clone();
    let freer = std::thread::spawn(move || {
        for &p in &ptrs {
            other.deallocate(p as *const u8).unwrap();
        }
        // A second free of the same blocks fails on this thread too.
        for &p in &ptrs[..10] {
            assert!(other.deallocate(p as *const u8).is_err());
        }
        ptrs
    });
    let ptrs = freer.join().unwrap();
    // The freeing thread has exited, so its cache went back to the shared structure.
    let stats = alloc.stats();
    assert_eq!(stats.live_blocks, 0);
    assert_consistent(&stats);
    alloc.flush_thread_cache();
    let stats = alloc.stats();
    assert_eq!(stats.cached_blocks, 0);
    assert_eq!(stats.free_bytes, stats.managed_bytes);
    for p in ptrs {
        assert!(alloc.deallocate(p as *const u8).is_err());
    }
}

#[test]
fn caches_count_hits_refills_and_flushes() {
    let alloc = UntrustedAllocator::new();
    let before = alloc.stats();
    let ptrs: Vec<_> = (0..2000).map(|_| alloc.allocate(8, 8).unwrap()).collect();
    for p in &ptrs {
        alloc.deallocate(p.as_ptr()).unwrap();
    }
    let stats = alloc.stats();
    assert!(stats.cache_refills > before.cache_refills);
    assert!(stats.cache_flushes > before.cache_flushes);
    assert!(stats.cache_hits > 1000);
    assert!(stats.cached_blocks > 0);
    assert_consistent(&stats);
}

#[test]
fn a_dirty_inserted_range_still_gives_zero_metadata() {
    let alloc = inserted_only(true);
    let (mut map, ptr) = mapping(1 << 20);
    map.fill(0xAB);
    // SAFETY: the mapping is kept alive by the allocator as the owner.
    unsafe { alloc.insert_range(ptr, 1 << 20, Some(Box::new(map))) }.unwrap();
    let storage = alloc.place_storage(1000, 256, 16).unwrap();
    let mut data = vec![0u8; 2 * 256];
    let mut meta = vec![0xFFu8; 2 * 16];
    storage.checkout(&[0, 999], &mut data, &mut meta).unwrap();
    assert!(
        meta.iter().all(|&b| b == 0),
        "metadata is zeroed at placement"
    );
    assert!(
        data.iter().all(|&b| b == 0xAB),
        "data gets no initialising pass"
    );
    storage.checkin(&[5], &[7; 256], &[9; 16]).unwrap();
    storage
        .checkout(&[5], &mut data[..256], &mut meta[..16])
        .unwrap();
    assert_eq!((data[0], meta[0]), (7, 9));
    // The storage's segments are live blocks, so its range cannot go away under it.
    let stats = alloc.stats();
    assert_eq!(stats.live_blocks, 2);
    assert_eq!(stats.requested_bytes, 1000 * 256 + 1000 * 16);
    assert!(matches!(
        alloc.remove_range(ptr),
        Err(AllocError::RangeBusy { live: 2, .. })
    ));
    drop(storage);
    assert_eq!(alloc.stats().live_blocks, 0);
    alloc.remove_range(ptr).unwrap();
}

#[test]
fn storages_reject_bad_shapes_and_report_lack_of_room() {
    let alloc = inserted_only(true);
    insert_mapping(&alloc, 64 << 10);
    assert!(matches!(
        alloc.place_storage(0, 8, 8),
        Err(AllocError::Storage(StorageError::ZeroCount))
    ));
    let err = alloc.place_storage(1000, 4096, 16).unwrap_err();
    assert!(err.is_out_of_memory(), "{err}");
    // Nothing leaked from the failed placement (the metadata block was never taken, or was
    // given back when the data block failed).
    assert_eq!(alloc.stats().live_blocks, 0);
    let s = storage_in_blocks(
        Layout::new(4, 16, 16).unwrap(),
        alloc.alloc_block(64, 64).unwrap(),
        alloc.alloc_block(64, 64).unwrap(),
    )
    .unwrap();
    assert_eq!(s.layout().count, 4);
    let too_small = storage_in_blocks(
        Layout::new(4, 16, 16).unwrap(),
        alloc.alloc_block(63, 64).unwrap(),
        alloc.alloc_block(64, 64).unwrap(),
    );
    assert!(matches!(
        too_small,
        Err(AllocError::Storage(StorageError::RegionTooSmall { .. }))
    ));
    drop(s);
    assert_eq!(alloc.stats().live_blocks, 0);
}

#[test]
fn cached_blocks_of_a_removed_range_are_never_served() {
    // This thread's cache holds free blocks of the range when it is removed; another thread
    // removes it. Nothing must come from it afterwards, here or there.
    let alloc = inserted_only(true);
    let first = insert_mapping(&alloc, 64 << 10);
    let p = alloc.allocate(64, 8).unwrap();
    alloc.deallocate(p.as_ptr()).unwrap();
    assert!(alloc.stats().cached_blocks > 0);
    let other = alloc.clone();
    std::thread::spawn(move || other.remove_range(first.start as *const u8).unwrap())
        .join()
        .unwrap();
    let second = insert_mapping(&alloc, 64 << 10);
    for _ in 0..500 {
        let q = alloc.allocate(64, 8).unwrap();
        assert_eq!(alloc.find(q.as_ptr()).unwrap().range, second);
    }
    let stats = alloc.stats();
    assert_eq!(stats.managed_bytes, 64 << 10);
    assert_consistent(&stats);
}

#[test]
fn without_thread_caches_everything_goes_through_the_lock() {
    let alloc = UntrustedAllocator::with_config(AllocConfig {
        thread_cache: false,
        ..small_chunks()
    })
    .unwrap();
    let ptrs: Vec<_> = (0..300)
        .map(|i| alloc.allocate(1 + i * 7, 8).unwrap())
        .collect();
    let stats = alloc.stats();
    assert_eq!((stats.cached_blocks, stats.cache_hits), (0, 0));
    for p in ptrs {
        alloc.deallocate(p.as_ptr()).unwrap();
    }
    let stats = alloc.stats();
    assert_eq!(stats.free_bytes, stats.managed_bytes);
    assert_eq!(stats.chunks, 1);
}

// ---------------------------------------------------------------------------------------------
// Model-based property test.

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
        align_log: u32,
        owned: bool,
    },
    Free(prop::sample::Index),
    FreeBogus(prop::sample::Index, usize),
    Insert {
        slot: usize,
        granules: usize,
    },
    Remove(prop::sample::Index),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        4 => 1usize..=64,
        3 => 65usize..=4096,
        2 => 4097usize..=70_000,
        1 => Just(0usize),
    ];
    prop_oneof![
        6 => (size, 0u32..=12, any::<bool>())
            .prop_map(|(size, align_log, owned)| Op::Alloc { size, align_log, owned }),
        4 => any::<prop::sample::Index>().prop_map(Op::Free),
        1 => (any::<prop::sample::Index>(), 0usize..64).prop_map(|(i, o)| Op::FreeBogus(i, o)),
        1 => (0usize..8, 1usize..=2048).prop_map(|(slot, granules)| Op::Insert { slot, granules }),
        1 => any::<prop::sample::Index>().prop_map(Op::Remove),
        1 => Just(Op::Flush),
    ]
}

/// A live block of the model.
struct ModelBlock {
    size: usize,
    align: usize,
    owned: Option<Block>,
}

/// Inserted ranges come from fixed slots of one big mapping, so overlapping inserts happen.
const SLOT: usize = 16 << 10;

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn allocator_matches_a_shadow_model(
        ops in prop::collection::vec(op(), 1..160),
        thread_cache in any::<bool>(),
        chunk_limit_chunks in 0usize..3,
    ) {
        let (pool, pool_ptr) = mapping(9 * SLOT);
        let alloc = UntrustedAllocator::with_config(AllocConfig {
            chunk_limit: chunk_limit_chunks * (64 << 10),
            thread_cache,
            ..small_chunks()
        }).unwrap();
        let mut live: BTreeMap<usize, ModelBlock> = BTreeMap::new();
        // Inserted ranges by start: length.
        let mut inserted: BTreeMap<usize, usize> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Alloc { size, align_log, owned } => {
                    let align = 1usize << align_log;
                    let result = if owned {
                        alloc.alloc_block(size, align).map(|b| (b.as_ptr() as usize, Some(b)))
                    } else {
                        alloc.allocate(size, align).map(|p| (p.as_ptr() as usize, None))
                    };
                    match result {
                        Ok((addr, block)) => {
                            prop_assert!(size > 0);
                            prop_assert_eq!(addr % align, 0);
                            let found = alloc.find(addr as *const u8).unwrap();
                            prop_assert!(addr + size <= found.range.end());
                            let b = found.block.unwrap();
                            prop_assert_eq!((b.start, b.requested, b.owned), (addr, size, owned));
                            if let Some((&prev, m)) = live.range(..addr).next_back() {
                                prop_assert!(prev + m.size <= addr, "overlaps the block before");
                            }
                            if let Some((&next, _)) = live.range(addr..).next() {
                                prop_assert!(addr + size <= next, "overlaps the block after");
                            }
                            live.insert(addr, ModelBlock { size, align, owned: block });
                        }
                        Err(AllocError::ZeroSize) => prop_assert_eq!(size, 0),
                        Err(e) => prop_assert!(
                            matches!(e, AllocError::OutOfMemory { .. }) && size > 0,
                            "unexpected {}", e
                        ),
                    }
                }
                Op::Free(ix) => {
                    if live.is_empty() {
                        continue;
                    }
                    let addr = *live.keys().nth(ix.index(live.len())).unwrap();
                    let m = live.remove(&addr).unwrap();
                    match m.owned {
                        Some(block) => {
                            let refused = matches!(
                                alloc.deallocate(addr as *const u8),
                                Err(AllocError::OwnedByBlock { .. })
                            );
                            prop_assert!(refused);
                            drop(block);
                        }
                        None => {
                            let freed = alloc.deallocate(addr as *const u8).unwrap();
                            prop_assert_eq!((freed.start, freed.requested), (addr, m.size));
                            prop_assert!(freed.size >= m.size.max(m.align));
                        }
                    }
                    prop_assert!(alloc.deallocate(addr as *const u8).is_err());
                }
                Op::FreeBogus(ix, offset) => {
                    // An address inside a live block (never its start) or inside the pool.
                    let addr = if live.is_empty() {
                        pool_ptr as usize + ix.index(9 * SLOT)
                    } else {
                        let (&start, m) = live.iter().nth(ix.index(live.len())).unwrap();
                        if m.size <= 1 { continue; }
                        start + 1 + offset % (m.size - 1)
                    };
                    if live.contains_key(&addr) {
                        continue;
                    }
                    prop_assert!(alloc.deallocate(addr as *const u8).is_err());
                }
                Op::Insert { slot, granules } => {
                    // Slots are 16 KiB apart and ranges up to 32 KiB long, so some overlap.
                    let start = pool_ptr as usize + slot * SLOT;
                    let len = granules * MIN_BLOCK;
                    let overlaps = inserted
                        .iter()
                        .any(|(&s, &l)| s < start + len && start < s + l);
                    // SAFETY: every range lies in `pool`, which outlives the allocator.
                    let result = unsafe { alloc.insert_range(start as *mut u8, len, None) };
                    match result {
                        Ok(info) => {
                            prop_assert!(!overlaps);
                            prop_assert_eq!((info.start, info.len), (start, len));
                            inserted.insert(start, len);
                        }
                        Err(AllocError::RangeOverlaps { .. }) => prop_assert!(overlaps),
                        Err(e) => prop_assert!(false, "unexpected {}", e),
                    }
                }
                Op::Remove(ix) => {
                    if inserted.is_empty() {
                        continue;
                    }
                    let (&start, &len) = inserted.iter().nth(ix.index(inserted.len())).unwrap();
                    let live_inside = live.range(start..start + len).count();
                    match alloc.remove_range(start as *const u8) {
                        Ok(removed) => {
                            prop_assert_eq!(live_inside, 0);
                            prop_assert_eq!(removed.range.len, len);
                            inserted.remove(&start);
                        }
                        Err(AllocError::RangeBusy { live, .. }) => prop_assert_eq!(live, live_inside),
                        Err(e) => prop_assert!(false, "unexpected {}", e),
                    }
                }
                Op::Flush => {
                    alloc.flush_thread_cache();
                    let stats = alloc.stats();
                    prop_assert_eq!((stats.cached_blocks, stats.cached_bytes), (0, 0));
                }
            }
            let stats = alloc.stats();
            prop_assert_eq!(stats.live_blocks, live.len() as u64);
            prop_assert_eq!(
                stats.requested_bytes,
                live.values().map(|m| m.size as u64).sum::<u64>()
            );
            prop_assert_eq!(
                stats.allocated_bytes,
                live.values().map(|m| m.size.max(m.align).max(MIN_BLOCK).next_power_of_two() as u64).sum::<u64>()
            );
            prop_assert_eq!(stats.inserted_bytes, inserted.values().sum::<usize>());
            prop_assert_eq!(
                stats.free_bytes as u64 + stats.allocated_bytes + stats.cached_bytes,
                stats.managed_bytes as u64
            );
            // Every live block lies inside a managed range that still exists.
            for (&addr, m) in &live {
                let found = alloc.find(addr as *const u8).unwrap();
                prop_assert!(addr + m.size <= found.range.end());
                prop_assert!(stats.ranges.iter().any(|r| r.range == found.range));
            }
        }
        drop(live);
        drop(alloc);
        drop(pool);
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-threaded stress test.

/// The last aligned word of a block of `size` bytes at `addr`.
fn tail_word(addr: usize, size: usize) -> usize {
    (addr + size.max(MIN_BLOCK) - 8) & !7
}

/// Writes a pattern derived from the block's address into its first and last words, so that a
/// block handed out twice (or overlapping another) shows up as a mismatch.
fn stamp(addr: usize, size: usize) {
    let tag = addr.rotate_left(17) ^ size;
    // SAFETY: the block is live, at least MIN_BLOCK bytes are usable from `addr` (blocks are
    // rounded up) and both words lie within its rounded size.
    unsafe {
        (addr as *mut usize).write(tag);
        (tail_word(addr, size) as *mut usize).write(tag);
    }
}

fn check_stamp(addr: usize, size: usize) {
    let tag = addr.rotate_left(17) ^ size;
    // SAFETY: as in `stamp`; the block is still live.
    let (head, tail) = unsafe {
        (
            (addr as *const usize).read(),
            (tail_word(addr, size) as *const usize).read(),
        )
    };
    assert_eq!((head, tail), (tag, tag), "block {addr:#x} was overwritten");
}

#[test]
fn threads_allocate_free_across_threads_and_swap_ranges() {
    const WORKERS: usize = 4;
    const ROUNDS: usize = 20_000;
    let alloc = UntrustedAllocator::with_config(AllocConfig {
        reserve_chunks: 0,
        ..small_chunks()
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let removals = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(WORKERS + 1));
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..WORKERS)
        .map(|_| mpsc::channel::<(usize, usize)>())
        .unzip();
    let workers: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(w, inbox)| {
            let alloc = alloc.clone();
            let next = senders[(w + 1) % WORKERS].clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut rng = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut rand = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut mine: Vec<(usize, usize)> = Vec::new();
                barrier.wait();
                for _ in 0..ROUNDS {
                    let r = rand();
                    let size = match r % 16 {
                        0 => 4097 + (r >> 8) as usize % 60_000,
                        1..=5 => 65 + (r >> 8) as usize % 4000,
                        _ => 1 + (r >> 8) as usize % 64,
                    };
                    let p = alloc.allocate(size, 8).unwrap().as_ptr() as usize;
                    stamp(p, size);
                    let range = alloc.find(p as *const u8).unwrap();
                    assert_eq!(range.block.unwrap().start, p);
                    mine.push((p, size));
                    // Free some blocks here, send some to the next thread, keep some.
                    if mine.len() > 64 {
                        let victim = mine.swap_remove(rand() as usize % mine.len());
                        check_stamp(victim.0, victim.1);
                        if rand() % 2 == 0 {
                            alloc.deallocate(victim.0 as *const u8).unwrap();
                        } else {
                            next.send(victim).unwrap();
                        }
                    }
                    while let Ok((addr, size)) = inbox.try_recv() {
                        check_stamp(addr, size);
                        alloc.deallocate(addr as *const u8).unwrap();
                    }
                }
                for (addr, size) in mine {
                    check_stamp(addr, size);
                    alloc.deallocate(addr as *const u8).unwrap();
                }
                drop(next);
                // Blocks sent by a neighbour that finished later arrive until all senders
                // are gone.
                for (addr, size) in inbox {
                    check_stamp(addr, size);
                    alloc.deallocate(addr as *const u8).unwrap();
                }
            })
        })
        .collect();
    drop(senders);
    // Meanwhile ranges come and go. Each is unmapped as soon as it is removed, so a block
    // served from a removed range would crash the stamping threads.
    let swapper = {
        let alloc = alloc.clone();
        let stop = stop.clone();
        let removals = removals.clone();
        std::thread::spawn(move || {
            let mut ranges: Vec<usize> = Vec::new();
            let mut round = 0usize;
            while !stop.load(Ordering::SeqCst) || !ranges.is_empty() {
                round += 1;
                if !stop.load(Ordering::SeqCst) && ranges.len() < 4 {
                    ranges.push(insert_mapping(&alloc, (32 << 10) * (1 + round % 4)).start);
                }
                if let Some(&start) = ranges.get(round % ranges.len().max(1)) {
                    match alloc.remove_range(start as *const u8) {
                        Ok(removed) => {
                            drop(removed);
                            ranges.retain(|&s| s != start);
                            removals.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(AllocError::RangeBusy { .. }) => {}
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
                std::thread::yield_now();
            }
        })
    };
    barrier.wait();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    swapper.join().unwrap();
    let stats = alloc.stats();
    assert_eq!(
        (
            stats.live_blocks,
            stats.requested_bytes,
            stats.allocated_bytes
        ),
        (0, 0, 0),
        "{stats:#?}"
    );
    assert_eq!(stats.inserted_bytes, 0);
    assert_consistent(&stats);
    assert!(removals.load(Ordering::SeqCst) > 0);
}
