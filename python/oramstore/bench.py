"""Throughput measurements shared by the ``oramstore bench`` command and ``benches/``.

Every figure is a median over several rounds, and every comparison is measured side by side in
the same run, because single timings on a shared machine are noise.
"""

from __future__ import annotations

import itertools
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from oramstore._native import UntrustedStorage

if TYPE_CHECKING:
    from oramstore.oram import PathORAM

__all__ = [
    "DictRun",
    "ORAMRun",
    "StorageRow",
    "creation_cost",
    "fill_storage",
    "median_seconds",
    "oram_untrusted_resident",
    "peak_rss_bytes",
    "process_rss_bytes",
    "random_batches",
    "run_dict",
    "run_oram",
    "storage_rows",
]


def median_seconds(fn: Callable[[], object], *, rounds: int = 7, round_time: float = 0.05) -> float:
    """Median seconds per call of ``fn``, over ``rounds`` rounds of about ``round_time`` each."""
    fn()
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= round_time or calls >= 1 << 20:
            break
        calls = max(calls * 2, int(calls * round_time / max(elapsed, 1e-9)))
    samples = [elapsed / calls]
    for _ in range(rounds - 1):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def process_rss_bytes() -> int:
    """Resident set size of this process, from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The most resident memory this process has held so far (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def random_batches(
    count: int, k: int, n: int, rng: np.random.Generator
) -> list[npt.NDArray[np.int64]]:
    """``n`` batches of ``k`` distinct random indices below ``count``."""
    return [rng.choice(count, size=k, replace=False).astype(np.int64) for _ in range(n)]


def fill_storage(storage: UntrustedStorage, chunk: int = 4096) -> None:
    """Write every item once, so that later measurements see no page faults."""
    data = np.full((chunk, storage.data_size), 0x5A, np.uint8)
    meta = np.full((chunk, storage.meta_size), 0xA5, np.uint8)
    for start in range(0, storage.count, chunk):
        stop = min(start + chunk, storage.count)
        storage.checkin(range(start, stop), data[: stop - start], meta[: stop - start])


@dataclass(frozen=True)
class StorageRow:
    """One batch size: seconds per batch for the storage and for numpy fancy indexing."""

    batch: int
    checkout: float
    checkin: float
    numpy_take: float
    numpy_put: float
    checkout_into: float
    contiguous_into: float
    numpy_contiguous: float

    def speedup_over_numpy(self) -> float:
        """(numpy take + put) / (checkout + checkin): above 1 means the storage is faster."""
        return (self.numpy_take + self.numpy_put) / (self.checkout + self.checkin)

    def random_vs_contiguous(self) -> float:
        """Bandwidth of checkout_into at random indices relative to a run of adjacent items
        of the same storage (one copy, split across threads for large batches)."""
        return self.contiguous_into / self.checkout_into

    def random_vs_plain_copy(self) -> float:
        """Bandwidth of checkout_into at random indices relative to one plain (single-thread)
        copy of the same number of contiguous bytes out of a numpy array."""
        return self.numpy_contiguous / self.checkout_into


def storage_rows(
    storage: UntrustedStorage,
    data_ref: npt.NDArray[np.uint8],
    meta_ref: npt.NDArray[np.uint8],
    batches: Sequence[int],
    *,
    seed: int = 1,
    rounds: int = 7,
    progress: Callable[[], None] | None = None,
) -> Iterator[StorageRow]:
    """Measure each batch size on ``storage`` and on numpy arrays of the same shape.

    ``data_ref`` and ``meta_ref`` are the arrays a user would otherwise keep the items in,
    ``(count, data_size)`` and ``(count, meta_size)``, already filled.
    """
    rng = np.random.default_rng(seed)
    for k in batches:
        yield _storage_row(storage, data_ref, meta_ref, k, rng, rounds, progress)


def _storage_row(
    storage: UntrustedStorage,
    data_ref: npt.NDArray[np.uint8],
    meta_ref: npt.NDArray[np.uint8],
    k: int,
    rng: np.random.Generator,
    rounds: int,
    progress: Callable[[], None] | None,
) -> StorageRow:
    count = storage.count
    pool = random_batches(count, k, 32, rng)
    starts = [int(s) for s in rng.integers(0, count - k + 1, size=32)]
    cycle = itertools.cycle(pool)
    runs = itertools.cycle([np.arange(s, s + k, dtype=np.int64) for s in starts])
    plain_starts = itertools.cycle(starts)
    d_out = np.empty((k, storage.data_size), np.uint8)
    m_out = np.empty((k, storage.meta_size), np.uint8)
    d_in, m_in = storage.checkout(pool[0])

    def checkout() -> None:
        storage.checkout(next(cycle))

    def checkin() -> None:
        storage.checkin(next(cycle), d_in, m_in)

    def take() -> None:
        idx = next(cycle)
        data_ref[idx]
        meta_ref[idx]

    def put() -> None:
        idx = next(cycle)
        data_ref[idx] = d_in
        meta_ref[idx] = m_in

    def into_random() -> None:
        storage.checkout_into(next(cycle), d_out, m_out)

    def into_run() -> None:
        storage.checkout_into(next(runs), d_out, m_out)

    def numpy_contiguous() -> None:
        s = next(plain_starts)
        np.copyto(d_out, data_ref[s : s + k])
        np.copyto(m_out, meta_ref[s : s + k])

    timings = []
    for fn in (checkout, checkin, take, put, into_random, into_run, numpy_contiguous):
        timings.append(median_seconds(fn, rounds=rounds))
        if progress is not None:
            progress()
    return StorageRow(k, *timings)


def creation_cost(
    count: int = 1 << 20, data_size: int = 4096, meta_size: int = 64, repeat: int = 21
) -> tuple[float, int]:
    """Median seconds to create a storage, and the most resident bytes one held right after."""
    seconds = []
    resident = 0
    for _ in range(repeat):
        start = time.perf_counter()
        s = UntrustedStorage(count, data_size, meta_size)
        seconds.append(time.perf_counter() - start)
        resident = max(resident, s.resident_bytes())
        s.release()
    return statistics.median(seconds), resident


@dataclass(frozen=True)
class ORAMRun:
    """One ORAM workload: setup, throughput and memory."""

    block_count: int
    block_size: int
    setup_seconds: float
    accesses: int
    access_seconds: float
    baseline_rss: int  # before the ORAM was created
    peak_rss: int  # the process's peak after the run
    untrusted_resident: int  # untrusted bytes touched (mincore over every tree)
    trusted_bytes: int  # treetops, stash, position map and buffers
    stash_peak: int
    stash_size: int
    latencies: tuple[float, ...] = ()  # seconds of single accesses (the first 20,000)

    @property
    def accesses_per_second(self) -> float:
        return self.accesses / self.access_seconds

    @property
    def memory_growth(self) -> int:
        """Peak resident memory the ORAM added to the process."""
        return self.peak_rss - self.baseline_rss

    def memory_ratio(self) -> float:
        """Memory growth over what the ORAM needs: untrusted bytes touched + trusted bytes."""
        return self.memory_growth / (self.untrusted_resident + self.trusted_bytes)


def oram_untrusted_resident(oram: PathORAM) -> int:
    """Resident bytes of the untrusted storages of ``oram`` and of its position-map ORAMs."""
    from oramstore.oram import RecursivePositionMap

    total = 0
    while True:
        if oram.tree.untrusted is not None:
            total += oram.tree.untrusted.resident_bytes()
        positions = oram.position_map
        if not isinstance(positions, RecursivePositionMap):
            return total
        oram = positions.inner


def run_oram(
    block_count: int,
    block_size: int,
    *,
    accesses: int,
    seconds: float = float("inf"),
    seed: int = 1,
    progress: Callable[[int], None] | None = None,
    **options: Any,
) -> ORAMRun:
    """Create a :class:`~oramstore.PathORAM` and run random accesses on it, half reads and half
    writes of uniformly random blocks, until ``accesses`` are done or ``seconds`` have passed.

    ``progress`` is called with the number of accesses done since its last call. ``options``
    go to :class:`~oramstore.PathORAM`.
    """
    from oramstore.oram import PathORAM

    rng = np.random.default_rng(seed)
    baseline = process_rss_bytes()
    start = time.perf_counter()
    oram = PathORAM(block_count, block_size, **options)
    setup = time.perf_counter() - start
    with oram:
        pool = [rng.integers(0, 256, block_size, np.uint8).tobytes() for _ in range(64)]
        latencies: list[float] = []
        clock = time.perf_counter
        done = 0
        chunk = max(1, min(1000, accesses // 100))
        start = time.perf_counter()
        deadline = start + seconds
        while done < accesses and time.perf_counter() < deadline:
            step = min(chunk, accesses - done)
            indices = rng.integers(0, block_count, step).tolist()
            writes = (rng.random(step) < 0.5).tolist()
            for k in range(step):
                before = clock()
                if writes[k]:
                    oram.write(indices[k], pool[k & 63])
                else:
                    oram.read(indices[k])
                if len(latencies) < 20_000:
                    latencies.append(clock() - before)
            done += step
            if progress is not None:
                progress(step)
        elapsed = time.perf_counter() - start
        return ORAMRun(
            block_count,
            block_size,
            setup,
            done,
            elapsed,
            baseline,
            peak_rss_bytes(),
            oram_untrusted_resident(oram),
            oram.trusted_bytes,
            oram.stash_peak,
            oram.stash_size,
            tuple(latencies),
        )


@dataclass(frozen=True)
class DictRun:
    """One :class:`~oramstore.ObliviousDict` workload, beside a PathORAM of the same geometry
    (one block per bucket) and a plain dict doing the same operations."""

    capacity: int
    key_size: int
    value_size: int
    bucket_count: int  # blocks of the map's PathORAM
    block_size: int  # bytes per bucket
    load_factor: float
    accesses_per_operation: float  # ORAM accesses per operation, relocation steps included
    setup_seconds: float
    filled: int  # entries stored before the measurement
    fill_seconds: float
    operations: int
    operation_seconds: float
    oram_accesses: int
    oram_access_seconds: float  # for all of them, on PathORAM(bucket_count, block_size)
    plain_seconds: float  # the same operations on a dict
    baseline_rss: int  # before the map was created
    peak_rss: int  # the process's peak after the map's run (before the PathORAM's)
    untrusted_resident: int  # untrusted bytes the map's ORAM touched
    trusted_bytes: int  # the map's ORAM's trusted memory, and its stash at capacity
    stash_peak: int
    stash_size: int

    @property
    def operations_per_second(self) -> float:
        return self.operations / self.operation_seconds

    @property
    def oram_accesses_per_second(self) -> float:
        return self.oram_accesses / self.oram_access_seconds

    @property
    def plain_operations_per_second(self) -> float:
        return self.operations / self.plain_seconds

    def ratio_to_oram_access(self) -> float:
        """Seconds per map operation over seconds per ORAM access: at least
        :attr:`accesses_per_operation`."""
        return (self.operation_seconds / self.operations) / (
            self.oram_access_seconds / self.oram_accesses
        )

    @property
    def memory_growth(self) -> int:
        """Peak resident memory the map added to the process."""
        return self.peak_rss - self.baseline_rss


_ORAM_OPTIONS = ("bucket_size", "treetop_bytes", "position_map", "position_map_threshold")


def _dict_workload(
    rng: np.random.Generator, present: list[bytes], count: int, key_size: int, capacity: int
) -> list[tuple[int, bytes]]:
    """``count`` operations (kind, key) on a map holding ``present``: 40% lookups of present
    keys, 10% lookups of missing ones, 25% updates, 12.5% deletes, 12.5% inserts of new keys
    (updates when full). Kinds: 0 lookup, 1 store, 2 delete."""
    present = list(present)
    operations: list[tuple[int, bytes]] = []
    choices = rng.random(count).tolist()
    for r in choices:
        if not present or r >= 0.875:
            if len(present) < capacity:
                present.append(rng.bytes(key_size))
                operations.append((1, present[-1]))
                continue
            r = 0.6
        if r < 0.4:
            operations.append((0, present[int(rng.integers(len(present)))]))
        elif r < 0.5:
            operations.append((0, rng.bytes(key_size)))
        elif r < 0.75:
            operations.append((1, present[int(rng.integers(len(present)))]))
        else:
            k = int(rng.integers(len(present)))
            present[k], present[-1] = present[-1], present[k]
            operations.append((2, present.pop()))
    return operations


def run_dict(
    capacity: int,
    key_size: int = 32,
    value_size: int = 256,
    *,
    operations: int = 5000,
    fill: int | None = None,
    oram_accesses: int | None = None,
    seconds: float = float("inf"),
    seed: int = 1,
    progress: Callable[[str, int], None] | None = None,
    **options: Any,
) -> DictRun:
    """Create an :class:`~oramstore.ObliviousDict`, store ``fill`` entries (``capacity`` by
    default, with ``set_many`` in batches of 256), then time ``operations`` single operations
    (see :func:`_dict_workload`; values of ``value_size`` random bytes) until they are done or
    ``seconds`` have passed. Then the same operations on a dict, and ``oram_accesses`` random
    accesses (half reads, half writes; by default as many as the map's operations made) on a
    PathORAM with one block per bucket of the map, after writing each of its blocks once, as
    the map's filling did.

    ``progress`` is called with a phase (``"fill"``, ``"operations"``, ``"oram"``) and the
    number of entries, operations or accesses done since its last call. ``options`` go to
    :class:`~oramstore.ObliviousDict`; its ORAM options (``bucket_size``, ``treetop_bytes``,
    ``position_map``, ``position_map_threshold``) also to the PathORAM.
    """
    from oramstore.oram import ObliviousDict, PathORAM

    def advance(phase: str, n: int) -> None:
        if progress is not None:
            progress(phase, n)

    rng = np.random.default_rng(seed)
    fill = capacity if fill is None else fill
    pool = [rng.bytes(value_size) for _ in range(64)]
    baseline = process_rss_bytes()
    start = time.perf_counter()
    d = ObliviousDict(capacity, key_size, value_size, **options)
    setup = time.perf_counter() - start
    with d:
        present = [rng.bytes(key_size) for _ in range(fill)]
        start = time.perf_counter()
        for at in range(0, fill, 256):
            batch = present[at : at + 256]
            d.set_many([(key, pool[k & 63]) for k, key in enumerate(batch)])
            advance("fill", len(batch))
        fill_seconds = time.perf_counter() - start
        workload = _dict_workload(rng, present, operations, key_size, capacity)
        done = 0
        start = time.perf_counter()
        deadline = start + seconds
        for kind, key in workload:
            if kind == 0:
                d.get(key)
            elif kind == 1:
                d[key] = pool[done & 63]
            else:
                del d[key]
            done += 1
            if done % 100 == 0:
                advance("operations", 100)
                if time.perf_counter() > deadline:
                    break
        elapsed = time.perf_counter() - start
        advance("operations", done % 100)
        peak = peak_rss_bytes()
        untrusted = oram_untrusted_resident(d.oram)
        shape = (d.bucket_count, d.oram.block_size, d.load_factor, d.stash_peak, d.stash_size)
        trusted = d.trusted_bytes
        per_operation = 2 + 2 / d.relocate_every

    plain = dict.fromkeys(present, pool[0])
    start = time.perf_counter()
    for n, (kind, key) in enumerate(workload[:done]):
        if kind == 0:
            plain.get(key)
        elif kind == 1:
            plain[key] = pool[n & 63]
        else:
            del plain[key]
    plain_seconds = time.perf_counter() - start

    buckets, block_size = shape[0], shape[1]
    wanted = round(done * per_operation) if oram_accesses is None else oram_accesses
    oram_options = {k: v for k, v in options.items() if k in _ORAM_OPTIONS}
    with PathORAM(buckets, block_size, **oram_options) as oram:
        block = rng.integers(0, 256, block_size, np.uint8)
        for at in range(0, buckets, 256):
            count = min(256, buckets - at)
            oram.write_many(range(at, at + count), [block] * count)
        indices = rng.integers(0, buckets, wanted).tolist()
        writes = (rng.random(wanted) < 0.5).tolist()
        accessed = 0
        start = time.perf_counter()
        deadline = start + seconds
        for index, write in zip(indices, writes, strict=True):
            if write:
                oram.write(index, block)
            else:
                oram.read(index)
            accessed += 1
            if accessed % 100 == 0:
                advance("oram", 100)
                if time.perf_counter() > deadline:
                    break
        oram_seconds = time.perf_counter() - start
        advance("oram", accessed % 100)

    return DictRun(
        capacity, key_size, value_size, buckets, block_size, shape[2], per_operation, setup,
        fill, fill_seconds, done, elapsed, accessed, oram_seconds, plain_seconds, baseline,
        peak, untrusted, trusted, shape[3], shape[4],
    )  # fmt: skip
