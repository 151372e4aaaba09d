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
    "ORAMRun",
    "StorageRow",
    "creation_cost",
    "fill_storage",
    "median_seconds",
    "oram_untrusted_resident",
    "peak_rss_bytes",
    "process_rss_bytes",
    "random_batches",
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
