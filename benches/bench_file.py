"""A file storage against fio on the same file, and a warm file against memory.

Run: ``make bench-file`` (installs fio if it is missing, and first runs ``cargo bench --bench
file``, the comparison of the file storage's positioned I/O with a pool of reading threads and
with a shared mapping), or ``python benches/bench_file.py [--dir DIR] [--gib 4] [--items N]``.

* Cold random reads: a file of ``--gib`` GiB of data (4 KiB items, then 16 KiB items, with 64
  bytes of metadata each) is written in full; then random distinct items are read with
  ``checkout_into`` in batches of 16 and of 256, and the same number of random reads of the
  item size are made by ``fio --rw=randread --direct=0`` on the data segment of the same file,
  at the same queue depth: the batch size, since a checkout queues the disk reads of every item
  it misses before it waits on any. fio runs twice, with io_uring at that ``--iodepth`` and with
  that many ``psync`` jobs. Before every run the file's pages are dropped from the page cache
  (``POSIX_FADV_DONTNEED``; fio also gets ``--invalidate=1``). Target: at least 50% of fio's
  better IOPS. A checkout also reads each item's metadata, from a separate segment: a second
  disk read wherever its page is not cached.
* Warm page cache: checkout and checkin of a branch-sized batch (6 items of 16 KiB) from the
  file, all of it cached, against an in-memory storage of the same shape.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from oramstore import UntrustedStorage

META = 64
BATCHES = (16, 256)
REPEAT = 3


def drop_cache(path: Path) -> None:
    """Drop the file's clean pages from the page cache (the storage was flushed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def filled(path: Path, gib: int, data_size: int) -> UntrustedStorage:
    """A file storage of ``gib`` GiB of ``data_size``-byte items, every item written."""
    path.unlink(missing_ok=True)
    count = (gib << 30) // data_size
    storage = UntrustedStorage.open(path, count, data_size, META, create=True)
    chunk = (4 << 20) // data_size
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (chunk, data_size), np.uint8)
    meta = rng.integers(0, 256, (chunk, META), np.uint8)
    for start in range(0, count, chunk):
        k = min(chunk, count - start)
        storage.checkin(range(start, start + k), data[:k], meta[:k])
    storage.flush()
    return storage


def ours(storage: UntrustedStorage, items: npt.NDArray[np.int64], batch: int) -> float:
    """Items per second of cold ``checkout_into`` batches."""
    path = storage.path
    assert path is not None
    data = np.empty((batch, storage.data_size), np.uint8)
    meta = np.empty((batch, META), np.uint8)
    drop_cache(Path(path))
    start = time.perf_counter()
    for at in range(0, len(items), batch):
        idx = items[at : at + batch]
        storage.checkout_into(idx, data[: len(idx)], meta[: len(idx)])
    return len(items) / (time.perf_counter() - start)


def fio(storage: UntrustedStorage, reads: int, depth: int, engine: str) -> float:
    """IOPS of fio's random buffered reads of the item size over the data segment."""
    path = storage.path
    assert path is not None
    jobs = 1 if engine == "io_uring" else depth
    args = [
        "fio",
        "--name=randread",
        f"--filename={path}",
        "--rw=randread",
        f"--bs={storage.data_size}",
        "--direct=0",
        "--invalidate=1",
        "--fadvise_hint=1",
        "--randrepeat=0",
        f"--ioengine={engine}",
        f"--iodepth={depth if engine == 'io_uring' else 1}",
        f"--numjobs={jobs}",
        "--group_reporting",
        "--offset=4096",
        f"--size={storage.count * storage.data_size}",
        f"--number_ios={reads // jobs}",
        "--output-format=json",
    ]
    drop_cache(Path(path))
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    # fio prints notes before the JSON document on some versions.
    report = json.loads(out[out.index("{") :])
    return float(report["jobs"][0]["read"]["iops"])


def cold_reads(directory: Path, gib: int, reads: int) -> None:
    have_fio = shutil.which("fio") is not None
    if not have_fio:
        print("fio is not installed (make bench-file installs it): its columns are left out")
    print(f"cold random reads, {gib} GiB of data, {reads} reads per run, median of {REPEAT} runs")
    print(
        f"{'item':>6} {'batch':>6} {'depth':>6} {'ours items/s':>13} {'fio io_uring':>13} "
        f"{'fio psync':>10} {'ours/best fio':>14}"
    )
    rng = np.random.default_rng(7)
    for data_size in (4096, 16384):
        path = directory / f"oramstore-bench-file-{data_size}.oram"
        storage = filled(path, gib, data_size)
        try:
            n = min(reads, storage.count)
            for batch in BATCHES:
                depth = batch
                mine, uring, psync = [], [], []
                for _ in range(REPEAT):
                    items = rng.choice(storage.count, n, replace=False).astype(np.int64)
                    mine.append(ours(storage, items, batch))
                    if have_fio:
                        uring.append(fio(storage, n, depth, "io_uring"))
                        psync.append(fio(storage, n, depth, "psync"))
                rate = statistics.median(mine)
                line = f"{data_size >> 10:>5}K {batch:>6} {depth:>6} {rate:>13,.0f}"
                if have_fio:
                    best = max(statistics.median(uring), statistics.median(psync))
                    line += (
                        f" {statistics.median(uring):>13,.0f} {statistics.median(psync):>10,.0f}"
                        f" {rate / best:>13.0%}"
                    )
                print(line, flush=True)
        finally:
            storage.release()
            path.unlink()


def median_us(call: Callable[[], object], repeat: int = 2000) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def branch_costs(
    storage: UntrustedStorage, branches: list[npt.NDArray[np.int64]], data_size: int
) -> tuple[float, float]:
    """Median microseconds of ``checkout_into`` and of ``checkin`` of one branch, over
    branches that were all written once (and so are cached and allocated)."""
    k = len(branches[0])
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, (k, data_size), np.uint8)
    meta = rng.integers(0, 256, (k, META), np.uint8)
    for idx in branches:
        storage.checkin(idx, data, meta)
    which = iter(range(1 << 62))

    def checkout() -> None:
        storage.checkout_into(branches[next(which) % len(branches)], data, meta)

    def checkin() -> None:
        storage.checkin(branches[next(which) % len(branches)], data, meta)

    return median_us(checkout), median_us(checkin)


def warm_branch(directory: Path) -> None:
    count, data_size, k = 1 << 16, 16384, 6
    path = directory / "oramstore-bench-file-warm.oram"
    path.unlink(missing_ok=True)
    rng = np.random.default_rng(3)
    branches = [rng.choice(count, k, replace=False).astype(np.int64) for _ in range(256)]
    print(f"warm page cache: {k} items of {data_size >> 10} KiB + {META} bytes, median per call")
    try:
        with UntrustedStorage.open(path, count, data_size, META, create=True) as file:
            file_out, file_in = branch_costs(file, branches, data_size)
        with UntrustedStorage(count, data_size, META) as memory:
            mem_out, mem_in = branch_costs(memory, branches, data_size)
    finally:
        path.unlink(missing_ok=True)
    print(
        f"checkout_into: file {file_out:.1f} us, memory {mem_out:.1f} us "
        f"({file_out / mem_out:.2f}x); checkin: file {file_in:.1f} us, memory {mem_in:.1f} us "
        f"({file_in / mem_in:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="A file storage against fio, and against memory.")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--gib", type=int, default=4, help="GiB of data per file")
    parser.add_argument("--items", type=int, default=32768, help="reads per cold run")
    args = parser.parse_args()
    cold_reads(args.dir, args.gib, args.items)
    warm_branch(args.dir)


if __name__ == "__main__":
    main()
