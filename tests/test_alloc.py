"""UntrustedAllocator: blocks, ranges, queries, statistics, storages, bad input, threads, and a
stateful test against a shadow model."""

from __future__ import annotations

import ctypes
import gc
import itertools
import mmap
import queue
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import oramstore
from oramstore import (
    Allocation,
    RangeHandle,
    RangeInUseError,
    UntrustedAllocator,
    UntrustedStorage,
)

KIB, MIB = 1 << 10, 1 << 20
MIN_BLOCK = 16
#: The smallest chunk size an allocator accepts; small chunks make chunk turnover visible.
SMALL_CHUNK = 64 * KIB


def block_size(size: int, align: int = 16) -> int:
    """The power-of-two block the allocator serves ``size`` bytes aligned to ``align`` from."""
    return max(1 << (size - 1).bit_length(), align, MIN_BLOCK)


def u8(blk: Allocation) -> npt.NDArray[np.uint8]:
    """``numpy.frombuffer(blk, dtype=numpy.uint8)``: a writable array over the block."""
    # numpy's stubs accept any buffer only from Python 3.12 on; before that they list types.
    return np.frombuffer(blk, dtype=np.uint8)  # type: ignore[call-overload,no-any-return]


def assert_consistent(alloc: UntrustedAllocator) -> None:
    """The identities that hold whenever no other thread is allocating."""
    s = alloc.stats()
    assert s.managed_bytes == sum(r.range.length for r in s.ranges)
    assert s.inserted_bytes == sum(r.range.length for r in s.ranges if r.range.inserted)
    assert s.chunk_bytes == s.managed_bytes - s.inserted_bytes
    assert s.free_bytes == sum(r.free_bytes for r in s.ranges)
    assert s.free_bytes + s.allocated_bytes + s.cached_bytes == s.managed_bytes
    for r in s.ranges:
        assert r.free_bytes + r.used_bytes == r.range.length
    assert s.requested_bytes <= s.allocated_bytes
    assert s.chunks == sum(1 for r in s.ranges if not r.range.inserted)


@pytest.fixture
def alloc() -> UntrustedAllocator:
    return UntrustedAllocator()


@pytest.fixture
def inserted_only() -> Iterator[tuple[UntrustedAllocator, mmap.mmap, RangeHandle]]:
    """An allocator that maps nothing itself and manages one 1 MiB inserted mapping."""
    a = UntrustedAllocator(chunk_limit=0)
    m = mmap.mmap(-1, MIB)
    handle = a.insert_range(m)
    yield a, m, handle
    gc.collect()


# --- blocks -------------------------------------------------------------------------------


def test_allocation_is_a_writable_buffer_with_address_and_size(alloc: UntrustedAllocator) -> None:
    blk = alloc.alloc(100)
    assert isinstance(blk, Allocation)
    assert (blk.size, len(blk), blk.freed) == (100, 100, False)
    assert blk.address % 16 == 0
    arr = u8(blk)
    assert arr.shape == (100,) and arr.flags.writeable
    arr[:] = np.arange(100, dtype=np.uint8)
    with memoryview(blk) as view:
        assert not view.readonly and view.nbytes == 100
        assert bytes(view[:4]) == b"\x00\x01\x02\x03"
    del arr
    blk.free()
    assert blk.freed
    assert "freed" in repr(blk)


@pytest.mark.parametrize("align", [1, 2, 16, 64, 4096, 1 << 16, 1 << 21])
def test_alignment_is_honoured(alloc: UntrustedAllocator, align: int) -> None:
    blocks = [alloc.alloc(size, align) for size in (1, 24, 1000, 5000)]
    for blk in blocks:
        assert blk.address % max(align, MIN_BLOCK) == 0


def test_blocks_are_disjoint_and_keep_their_contents(alloc: UntrustedAllocator) -> None:
    rng = random.Random(5)
    blocks = [alloc.alloc(rng.choice([1, 8, 16, 100, 4096, 70_000])) for _ in range(300)]
    for i, blk in enumerate(blocks):
        u8(blk)[:] = i % 251
    spans = sorted((b.address, b.address + b.size) for b in blocks)
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))
    for i, blk in enumerate(blocks):
        assert (u8(blk) == i % 251).all()


def test_garbage_collection_frees_blocks(alloc: UntrustedAllocator) -> None:
    blocks = [alloc.alloc(64) for _ in range(10)]
    assert alloc.stats().live_blocks == 10
    del blocks
    gc.collect()
    assert alloc.stats().live_blocks == 0


def test_a_view_keeps_the_block_alive_and_refuses_free(alloc: UntrustedAllocator) -> None:
    blk = alloc.alloc(64)
    arr = u8(blk)
    view = memoryview(blk)
    with pytest.raises(BufferError, match=r"2 buffer view\(s\)"):
        blk.free()
    view.release()
    with pytest.raises(BufferError, match=r"1 buffer view\(s\)"):
        blk.free()
    # Dropping the last Python reference to the allocation leaves it to the array.
    del blk
    gc.collect()
    assert alloc.stats().live_blocks == 1
    arr[:] = 9
    assert int(arr.sum()) == 9 * 64
    del arr
    gc.collect()
    assert alloc.stats().live_blocks == 0


def test_allocations_outlive_the_allocator_object() -> None:
    a = UntrustedAllocator(SMALL_CHUNK)
    blk = a.alloc(100)
    del a
    gc.collect()
    u8(blk)[:] = 1
    assert int(u8(blk).sum()) == 100
    blk.free()


def test_an_allocation_inserted_elsewhere_stays_pinned_until_removed() -> None:
    first, second = UntrustedAllocator(SMALL_CHUNK), UntrustedAllocator(chunk_limit=0)
    blk = first.alloc(64 * KIB, align=64 * KIB)
    h = second.insert_range(blk)
    inner = second.alloc(1000)
    assert blk.address <= inner.address < blk.address + blk.size
    # The second allocator holds a view of the block: freeing it would pull the range away.
    with pytest.raises(BufferError, match="still alive"):
        blk.free()
    inner.free()
    second.remove_range(h)
    blk.free()
    assert first.stats().live_blocks == 0


def test_use_after_free_raises(alloc: UntrustedAllocator) -> None:
    blk = alloc.alloc(32)
    blk.free()
    with pytest.raises(ValueError, match="already freed"):
        blk.free()
    with pytest.raises(ValueError, match="was freed"):
        _ = blk.address
    with pytest.raises(ValueError, match="was freed"):
        _ = blk.size
    with pytest.raises(ValueError, match="was freed"):
        len(blk)
    with pytest.raises(ValueError, match="was freed"):
        memoryview(blk)
    with pytest.raises(ValueError, match="was freed"):
        u8(blk)


def test_an_allocation_is_a_buffer_for_storages(alloc: UntrustedAllocator) -> None:
    data, meta = alloc.alloc(2 * 64), alloc.alloc(2 * 16)
    with UntrustedStorage(10, 64, 16) as s:
        s.checkin([3, 4], np.full((2, 64), 5, np.uint8), np.full((2, 16), 6, np.uint8))
        s.checkout_into([4, 3], data, meta)
    assert bytes(memoryview(data)) == b"\x05" * 128
    assert bytes(memoryview(meta)) == b"\x06" * 32


# --- ranges and queries -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: mmap.mmap(-1, 256 * KIB), id="mmap"),
        pytest.param(lambda: np.zeros(256 * KIB, np.uint8), id="numpy-uint8"),
        pytest.param(lambda: np.zeros(32 * KIB, np.float64), id="numpy-float64"),
        pytest.param(lambda: memoryview(mmap.mmap(-1, 256 * KIB)), id="memoryview"),
    ],
)
def test_inserted_buffers_serve_blocks(make: object) -> None:
    a = UntrustedAllocator(chunk_limit=0)
    buf = make()  # type: ignore[operator]
    h = a.insert_range(buf)
    assert h.inserted and h.length == 256 * KIB and h.end == h.start + h.length
    blk = a.alloc(1000)
    assert h.start <= blk.address < h.end
    u8(blk)[:] = 0x5A
    with memoryview(buf) as whole:
        raw = whole.cast("B")
        off = blk.address - h.start
        assert bytes(raw[off : off + 1000]) == b"\x5a" * 1000
    blk.free()
    a.remove_range(h)


def test_ownership_queries(
    inserted_only: tuple[UntrustedAllocator, mmap.mmap, RangeHandle],
) -> None:
    a, _, h = inserted_only
    blk = a.alloc(300)  # a 512-byte block
    for addr in (blk.address, blk.address + 299, blk.address + 511):
        assert a.owns(addr)
        info = a.find(addr)
        assert info is not None
        assert info.range == h
        assert info.block == (blk.address, 512)
    past = a.find(blk.address + 512)
    assert past is not None and past.range == h and past.block is None
    assert a.find(h.end) is None and not a.owns(h.end)
    assert a.find(h.start - 1) is None and not a.owns(h.start - 1)
    for outside in (0, -1, 2**64, 2**70):
        assert not a.owns(outside)
        assert a.find(outside) is None
    with pytest.raises(TypeError):
        a.owns("0x1000")  # type: ignore[arg-type]
    assert "block=(" in repr(a.find(blk.address))


def test_removal_waits_for_live_blocks(
    inserted_only: tuple[UntrustedAllocator, mmap.mmap, RangeHandle],
) -> None:
    a, m, h = inserted_only
    blocks = [a.alloc(100), a.alloc(5000), a.alloc(16)]
    with pytest.raises(RangeInUseError, match=r"3 live block\(s\)") as err:
        a.remove_range(h)
    assert err.value.live_blocks == 3
    assert isinstance(err.value, ValueError)
    # The allocator holds a view of the mapping, so it cannot be closed under it.
    with pytest.raises(BufferError):
        m.close()
    blocks.pop().free()
    with pytest.raises(RangeInUseError) as err:
        a.remove_range(h)
    assert err.value.live_blocks == 2
    del blocks
    gc.collect()
    a.remove_range(h)
    assert not a.owns(h.start)
    # Nothing is served from the removed range, even blocks this thread had cached.
    with pytest.raises(MemoryError):
        a.alloc(16)
    m.close()
    assert_consistent(a)


def test_a_range_is_served_again_after_reinsertion() -> None:
    a = UntrustedAllocator(chunk_limit=0)
    arr = np.zeros(64 * KIB, np.uint8)
    first = a.insert_range(arr)
    a.alloc(16).free()
    a.remove_range(first)
    second = a.insert_range(arr)
    assert second != first and second.start == first.start
    assert len({first, second}) == 2
    with pytest.raises(ValueError, match="no managed range"):
        a.remove_range(first)
    assert a.owns(arr.ctypes.data)
    a.remove_range(second)


def foreign(address: int, length: int) -> ctypes.Array[ctypes.c_char]:
    """``length`` bytes at ``address`` as a buffer, the way memory from a foreign library is
    inserted: the caller vouches that they stay mapped and writable."""
    return (ctypes.c_char * length).from_address(address)


def test_foreign_ranges_are_the_callers_to_keep_mapped() -> None:
    a = UntrustedAllocator(chunk_limit=0)
    m = mmap.mmap(-1, 128 * KIB)
    addr = np.frombuffer(m, dtype=np.uint8).ctypes.data
    h = a.insert_range(foreign(addr, 128 * KIB))
    assert (h.start, h.length, h.inserted) == (addr, 128 * KIB, True)
    blk = a.alloc(4096)
    assert h.start <= blk.address < h.end
    u8(blk)[:] = 0x5A
    offset = blk.address - addr
    assert m[offset : offset + 4096] == b"\x5a" * 4096
    # The view held is of the ctypes array, not of the mapping: the mapping can be closed,
    # which is why removal must come first.
    blk.free()
    a.remove_range(h)
    gc.collect()
    m.close()


def test_chunks_come_and_go() -> None:
    a = UntrustedAllocator(SMALL_CHUNK)
    assert a.chunk_size == SMALL_CHUNK and a.chunk_limit is None
    big = a.alloc(SMALL_CHUNK * 4)  # larger than a chunk: a chunk of its own
    small = [a.alloc(32 * KIB) for _ in range(6)]
    s = a.stats()
    assert s.chunks == 4 and s.chunks_mapped == 4
    own = a.find(big.address)
    assert own is not None and not own.range.inserted
    with pytest.raises(ValueError, match="own chunks"):
        a.remove_range(own.range)
    big.free()
    del small
    gc.collect()
    a.flush_thread_cache()
    s = a.stats()
    # Only the reserve chunk stays mapped.
    assert s.chunks == 1 and s.chunks_released == 3
    assert_consistent(a)


def test_stats_count_requests_and_cache_hits(alloc: UntrustedAllocator) -> None:
    blocks = [alloc.alloc(n) for n in (1, 17, 300, 5000)]
    s = alloc.stats()
    assert s.live_blocks == 4
    assert s.requested_bytes == 1 + 17 + 300 + 5000
    assert s.allocated_bytes == 16 + 32 + 512 + 8192
    assert s.cache_refills >= 1
    for _ in range(10):
        alloc.alloc(24).free()
    assert alloc.stats().cache_hits >= 10
    assert_consistent(alloc)
    del blocks
    assert "live_blocks=" in repr(alloc.stats())


# --- storages -----------------------------------------------------------------------------


def test_dirty_inserted_range_gives_zero_metadata_and_untouched_data() -> None:
    a = UntrustedAllocator(chunk_limit=0)
    m = mmap.mmap(-1, 4 * MIB)
    m.write(b"\xff" * len(m))
    a.insert_range(m)
    count, d, md = 1000, 1024, 64
    s = UntrustedStorage(count, d, md, allocator=a)
    data, meta = s.checkout(list(range(count)))
    assert not meta.any()
    # The data segment got no initialising pass: it still holds what the range held.
    assert (data == 0xFF).all()
    s.checkin([7], np.full((1, d), 3, np.uint8), np.full((1, md), 4, np.uint8))
    data, meta = s.checkout([7, 8])
    assert (data[0] == 3).all() and (meta[0] == 4).all() and not meta[1].any()
    s.release()


def test_storage_outlives_the_allocator_object() -> None:
    a = UntrustedAllocator(SMALL_CHUNK)
    s = UntrustedStorage(64, 256, 16, allocator=a)
    assert a.stats().live_blocks == 2
    del a
    gc.collect()
    s.checkin([1, 2], np.ones((2, 256), np.uint8), np.ones((2, 16), np.uint8))
    data, meta = s.checkout([2, 3])
    assert (data[0] == 1).all() and meta[0].all() and not meta[1].any()
    s.release()


def test_storage_blocks_pin_their_range() -> None:
    a = UntrustedAllocator(chunk_limit=0)
    arr = np.zeros(MIB, np.uint8)
    h = a.insert_range(arr)
    s = UntrustedStorage(100, 4096, 32, allocator=a)
    with pytest.raises(RangeInUseError) as err:
        a.remove_range(h)
    assert err.value.live_blocks == 2
    # Too big for what is left of the range, and no chunk may be mapped.
    with pytest.raises(MemoryError):
        UntrustedStorage(1000, 4096, 32, allocator=a)
    s.release()
    a.remove_range(h)
    assert_consistent(a)


def test_storage_shape_errors_with_an_allocator(alloc: UntrustedAllocator) -> None:
    with pytest.raises(ValueError, match="count"):
        UntrustedStorage(0, 8, 8, allocator=alloc)
    with pytest.raises(ValueError, match="overflow the address space"):
        UntrustedStorage(2**40, 2**40, 8, allocator=alloc)
    with pytest.raises(TypeError):
        UntrustedStorage(1, 8, 8, allocator=object())  # type: ignore[arg-type]
    assert alloc.stats().live_blocks == 0


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "align", "match"),
    [
        (0, 16, "0 bytes"),
        (-1, 16, "size must be"),
        (2**64, 16, "size must be"),
        (2**63, 16, "does not fit"),
        (2**63 + 1, 16, "does not fit"),
        (8, 2**63, "does not fit"),
        (8, 2**64, "align must be"),
        (8, -16, "align must be"),
        (8, 0, "not a power of two"),
        (8, 3, "not a power of two"),
        (8, 24, "not a power of two"),
    ],
)
def test_bad_requests_raise_value_error(
    alloc: UntrustedAllocator, size: int, align: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        alloc.alloc(size, align)
    assert alloc.stats().live_blocks == 0


def test_non_int_arguments_raise_type_error(alloc: UntrustedAllocator) -> None:
    with pytest.raises(TypeError):
        alloc.alloc("8")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        alloc.alloc(8, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        alloc.remove_range(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("chunk_size", [0, 1000, 32 * KIB, 3 * MIB, -1, 2**64])
def test_bad_chunk_size_is_refused(chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        UntrustedAllocator(chunk_size)


def test_running_out_of_memory_leaves_the_allocator_consistent(
    inserted_only: tuple[UntrustedAllocator, mmap.mmap, RangeHandle],
) -> None:
    a, _, h = inserted_only
    # The mapping is only page aligned, so its largest naturally aligned blocks are smaller
    # than it; a few 256 KiB blocks use up all of those.
    held: list[Allocation] = []
    for _ in range(4):
        try:
            held.append(a.alloc(256 * KIB))
        except MemoryError:
            break
    with pytest.raises(MemoryError, match="out of untrusted memory"):
        a.alloc(256 * KIB)
    assert held
    assert_consistent(a)
    assert a.stats().live_blocks == len(held)
    held.pop().free()
    blk = a.alloc(4 * KIB)
    assert h.start <= blk.address < h.end
    del held
    gc.collect()
    a.alloc(256 * KIB).free()
    # A request the kernel refuses is an error too, and nothing changes.
    with pytest.raises(MemoryError):
        UntrustedAllocator().alloc(2**62)
    assert_consistent(a)


def test_read_only_buffers_are_refused(alloc: UntrustedAllocator) -> None:
    frozen = np.zeros(4096, np.uint8)
    frozen.flags.writeable = False
    m = mmap.mmap(-1, 4096, access=mmap.ACCESS_READ)
    for buf in (bytes(4096), frozen, m, memoryview(bytearray(4096)).toreadonly()):
        with pytest.raises(TypeError, match="writable"):
            alloc.insert_range(buf)
    with pytest.raises(TypeError, match="buffer protocol"):
        alloc.insert_range(4096)  # type: ignore[arg-type]
    assert alloc.stats().managed_bytes == 0


def test_empty_unaligned_and_strided_buffers_are_refused(alloc: UntrustedAllocator) -> None:
    base = np.zeros(8192, np.uint8)
    assert base.ctypes.data % 16 == 0
    cases: list[tuple[npt.NDArray[np.uint8] | bytearray, str]] = [
        (bytearray(), "empty"),
        (base[:0], "empty"),
        (base[1:4097], "not aligned"),
        (base[:4095], "not aligned"),
        (base[::2], "C-contiguous"),
    ]
    for buf, match in cases:
        with pytest.raises(ValueError, match=match):
            alloc.insert_range(buf)
    assert alloc.stats().managed_bytes == 0


def test_overlapping_ranges_are_refused(alloc: UntrustedAllocator) -> None:
    base = np.zeros(64 * KIB, np.uint8)
    h = alloc.insert_range(base[16 * KIB : 32 * KIB])
    for part in (base, base[: 16 * KIB + 16], base[32 * KIB - 16 :], base[20 * KIB : 24 * KIB]):
        with pytest.raises(ValueError, match="overlaps"):
            alloc.insert_range(part)
    with pytest.raises(ValueError, match="overlaps"):
        alloc.insert_range(foreign(base.ctypes.data, 64 * KIB))
    # Touching edges do not overlap.
    alloc.insert_range(base[: 16 * KIB])
    alloc.insert_range(base[32 * KIB :])
    # A block of the allocator's own chunk is managed memory already.
    blk = alloc.alloc(4096)
    with pytest.raises(ValueError, match="overlaps"):
        alloc.insert_range(blk)
    blk.free()  # the refused insert released its view again
    alloc.remove_range(h)


def test_bad_foreign_ranges_are_refused(alloc: UntrustedAllocator) -> None:
    m = mmap.mmap(-1, 64 * KIB)
    addr = np.frombuffer(m, dtype=np.uint8).ctypes.data
    gc.collect()
    for address, length, match in [
        (addr, 0, "empty"),
        (addr + 8, 4096, "not aligned"),
        (addr, 4100, "not aligned"),
        (0, 4096, "not aligned"),
        (2**64 - 4096, 8192, "wraps around"),
    ]:
        with pytest.raises(ValueError, match=match):
            alloc.insert_range(foreign(address, length))
    m.close()
    # The mapping is gone: inserting it would let blocks point at unmapped memory.
    with pytest.raises(ValueError, match="not entirely mapped"):
        alloc.insert_range(foreign(addr, 64 * KIB))
    assert alloc.stats().managed_bytes == 0


def test_the_python_api_has_no_raw_insertion(alloc: UntrustedAllocator) -> None:
    # Plain integers never become managed memory: a foreign address must be wrapped
    # explicitly, as a ctypes array, so that the unsafety shows in the caller's code.
    assert not hasattr(alloc, "insert_range_raw")
    with pytest.raises(TypeError):
        alloc.insert_range(4096)  # type: ignore[arg-type]


def test_unknown_ranges_cannot_be_removed() -> None:
    a, b = UntrustedAllocator(chunk_limit=0), UntrustedAllocator(chunk_limit=0)
    arr = np.zeros(64 * KIB, np.uint8)
    h = a.insert_range(arr)
    with pytest.raises(ValueError, match="another allocator"):
        b.remove_range(h)
    a.remove_range(h)
    with pytest.raises(ValueError, match="no managed range"):
        a.remove_range(h)


# --- threads ------------------------------------------------------------------------------


def stamp(blk: Allocation, value: int) -> None:
    view = u8(blk)
    view[0] = view[-1] = value


def check_stamp(blk: Allocation, value: int) -> None:
    view = u8(blk)
    assert view[0] == value and view[-1] == value, hex(blk.address)


def run_stress(seconds: float, workers: int) -> int:
    """Workers allocate, stamp and free, handing a third of their blocks to other workers to
    free; meanwhile one thread inserts and removes mapped ranges, retrying while busy. Returns
    how many ranges came and went."""
    a = UntrustedAllocator(SMALL_CHUNK)
    handoff: queue.Queue[tuple[Allocation, int]] = queue.Queue()
    stop = threading.Event()
    errors: list[BaseException] = []
    swaps = [0]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[tuple[Allocation, int]] = []
        try:
            while not stop.is_set():
                # Few, short-lived blocks per worker, so that a range being swapped is now and
                # then free of live blocks and its removal can succeed.
                if len(mine) < 8 and rng.random() < 0.5:
                    blk = a.alloc(rng.choice([8, 16, 100, 1000, 4096, 20_000]), rng.choice([8, 64]))
                    value = rng.randrange(1, 256)
                    stamp(blk, value)
                    (handoff.put if rng.random() < 0.33 else mine.append)((blk, value))
                else:
                    try:
                        blk, value = handoff.get_nowait()
                    except queue.Empty:
                        if not mine:
                            continue
                        blk, value = mine.pop(rng.randrange(len(mine)))
                    check_stamp(blk, value)
                    blk.free()
            for blk, value in mine:
                check_stamp(blk, value)
                blk.free()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def swapper() -> None:
        rng = random.Random(99)
        try:
            while not stop.is_set():
                m = mmap.mmap(-1, rng.choice([64, 256]) * KIB)
                h = a.insert_range(m)
                while True:
                    try:
                        a.remove_range(h)
                        break
                    except RangeInUseError:
                        if stop.is_set():
                            return
                        threading.Event().wait(0.001)
                m.close()
                swaps[0] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    threads.append(threading.Thread(target=swapper))
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    while not handoff.empty():
        blk, value = handoff.get_nowait()
        check_stamp(blk, value)
        blk.free()
    assert swaps[0] > 0
    gc.collect()
    s = a.stats()
    assert s.live_blocks == 0 and s.requested_bytes == 0
    assert_consistent(a)
    return swaps[0]


def test_threads_allocate_free_across_threads_and_swap_ranges() -> None:
    run_stress(seconds=2.0, workers=4)


@pytest.mark.soak
def test_threads_soak() -> None:
    run_stress(seconds=60.0, workers=8)


# --- a shadow model -----------------------------------------------------------------------


@dataclass
class Live:
    blk: Allocation
    size: int
    align: int
    value: int


@dataclass
class Inserted:
    handle: RangeHandle
    buffer: mmap.mmap | npt.NDArray[np.uint8]


sizes = st.integers(min_value=0, max_value=17).flatmap(
    lambda bits: st.integers(min_value=max(1, (1 << bits) // 2), max_value=1 << bits)
)
aligns = st.sampled_from([1, 8, 16, 64, 256, 4096, 65536])


class AllocatorModel(RuleBasedStateMachine):
    """Random allocations, frees, inserts and removals against a plain model of what is live
    and what is inserted. Own chunks are small and capped, so both chunk mapping and running
    out of memory happen."""

    def __init__(self) -> None:
        super().__init__()
        self.alloc = UntrustedAllocator(SMALL_CHUNK, chunk_limit=4 * SMALL_CHUNK)
        self.live: list[Live] = []
        self.inserted: list[Inserted] = []
        self.counter = 0

    def in_range(self, lv: Live, h: RangeHandle) -> bool:
        return h.start <= lv.blk.address < h.end

    @rule(size=sizes, align=aligns)
    def allocate(self, size: int, align: int) -> None:
        try:
            blk = self.alloc.alloc(size, align)
        except MemoryError:
            # No managed range had room and the chunk limit is reached; the invariants check
            # that nothing changed.
            event("out of memory")
            return
        self.counter = self.counter % 255 + 1
        stamp(blk, self.counter)
        self.live.append(Live(blk, size, align, self.counter))

    # No preconditions on the rules below: which blocks are live, and so which ranges can be
    # removed, depends on where the kernel put the ranges (their alignment decides which blocks
    # fit), and hypothesis needs the same rules to be open every time it replays a case.
    @rule(pick=st.integers(min_value=0))
    def free(self, pick: int) -> None:
        if not self.live:
            return
        lv = self.live.pop(pick % len(self.live))
        check_stamp(lv.blk, lv.value)
        lv.blk.free()
        with pytest.raises(ValueError, match="already freed"):
            lv.blk.free()

    @rule(kind=st.sampled_from(["mmap", "numpy"]), kib=st.sampled_from([16, 64, 256]))
    def insert(self, kind: str, kib: int) -> None:
        buf: mmap.mmap | npt.NDArray[np.uint8]
        if kind == "mmap":
            buf = mmap.mmap(-1, kib * KIB)
            buf.write(b"\xee" * len(buf))
        else:
            buf = np.full(kib * KIB, 0xEE, np.uint8)
        self.inserted.append(Inserted(self.alloc.insert_range(buf), buf))

    @rule(pick=st.integers(min_value=0))
    def insert_overlapping(self, pick: int) -> None:
        if not self.inserted:
            return
        ins = self.inserted[pick % len(self.inserted)]
        with pytest.raises(ValueError, match="overlaps"):
            self.alloc.insert_range(ins.buffer)

    @rule(pick=st.integers(min_value=0))
    def remove(self, pick: int) -> None:
        if not self.inserted:
            return
        ins = self.inserted[pick % len(self.inserted)]
        inside = sum(1 for lv in self.live if self.in_range(lv, ins.handle))
        if inside:
            with pytest.raises(RangeInUseError) as err:
                self.alloc.remove_range(ins.handle)
            assert err.value.live_blocks == inside
            event("removal refused")
            return
        event("range removed")
        self.alloc.remove_range(ins.handle)
        self.inserted.remove(ins)
        if isinstance(ins.buffer, mmap.mmap):
            ins.buffer.close()
        with pytest.raises(ValueError, match="no managed range"):
            self.alloc.remove_range(ins.handle)

    @invariant()
    def live_blocks_are_aligned_disjoint_and_managed(self) -> None:
        s = self.alloc.stats()
        ranges = [r.range for r in s.ranges]
        spans = []
        for lv in self.live:
            addr, rounded = lv.blk.address, block_size(lv.size, lv.align)
            assert addr % lv.align == 0 and addr % MIN_BLOCK == 0
            info = self.alloc.find(addr + lv.size - 1)
            assert info is not None and info.block == (addr, rounded)
            assert info.range in ranges
            assert info.range.start <= addr and addr + rounded <= info.range.end
            spans.append((addr, addr + rounded))
        spans.sort()
        assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))

    @invariant()
    def stats_add_up(self) -> None:
        s = self.alloc.stats()
        assert s.live_blocks == len(self.live)
        assert s.requested_bytes == sum(lv.size for lv in self.live)
        assert s.allocated_bytes == sum(block_size(lv.size, lv.align) for lv in self.live)
        assert s.inserted_bytes == sum(ins.handle.length for ins in self.inserted)
        assert {r.range for r in s.ranges if r.range.inserted} == {
            ins.handle for ins in self.inserted
        }
        assert s.chunk_bytes <= 4 * SMALL_CHUNK
        assert_consistent(self.alloc)

    def teardown(self) -> None:
        for lv in self.live:
            check_stamp(lv.blk, lv.value)
            lv.blk.free()
        for ins in self.inserted:
            self.alloc.remove_range(ins.handle)
            if isinstance(ins.buffer, mmap.mmap):
                ins.buffer.close()


AllocatorModel.TestCase.settings = settings(
    AllocatorModel.TestCase.settings, stateful_step_count=50
)
test_allocator_model = AllocatorModel.TestCase


def test_exports_match_the_native_module() -> None:
    for name in ("UntrustedAllocator", "Allocation", "RangeHandle", "AllocatorStats"):
        assert getattr(oramstore, name) is getattr(oramstore._native, name)
