"""PyORAM's Path ORAM on its "file" device and on "oramstore", beside oramstore's own PathORAM.

Run: ``make bench-pyoram-device``, or
``python benches/bench_pyoram_device.py [--seconds S] [--log2-blocks 12 14 16] [--dir DIR]``
in an environment with ``oramstore[pyoram]``.

For each N (2^12, 2^14 and 2^16 blocks of 4 KiB by default), one run after the other:

* PyORAM 0.2.1's ``PathORAM.setup(path, 4096, N, storage_type=...)`` with its defaults (Z=4,
  AES-CTR, the top three levels cached), on its ``"file"`` device and on ``"oramstore"``
  (:mod:`oramstore.compat.pyoram`), each in a file of ``--dir``;
* oramstore's own :class:`~oramstore.PathORAM` in memory, with its defaults (Z=4, N/4 leaves,
  AES-GCM with freshness checks, a 32 MiB treetop).

Each does uniformly random blocks, half reads and half writes (the written bytes drawn from a
pool of 64 random blocks), for ``--seconds`` after its setup. The table gives setup times,
accesses per second and their ratios. PyORAM writes and encrypts its whole tree at setup: about
a minute at 2^16 on each device.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

BLOCK = 4096


@dataclass
class Run:
    """One configuration's setup time and accesses."""

    setup: float
    accesses: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.accesses / self.seconds


def pyoram_run(storage_type: str, n: int, seconds: float, folder: str) -> Run:
    """PyORAM's Path ORAM on ``storage_type``, in a file of ``folder`` that it removes."""
    from pyoram.oblivious_storage.tree.path_oram import PathORAM

    import oramstore.compat.pyoram  # noqa: F401 (registers "oramstore")

    path = os.path.join(folder, f"pyoram-{storage_type}-{n}.bin")
    try:
        start = time.perf_counter()
        oram: Any = PathORAM.setup(path, BLOCK, n, storage_type=storage_type, ignore_existing=True)
        setup = time.perf_counter() - start
        with oram:
            rng = random.Random(1)
            pool = [rng.randbytes(BLOCK) for _ in range(64)]
            done = 0
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                for _ in range(20):
                    i = rng.randrange(n)
                    if rng.random() < 0.5:
                        oram.write_block(i, pool[done & 63])
                    else:
                        oram.read_block(i)
                    done += 1
            elapsed = time.perf_counter() - start
        return Run(setup, done, elapsed)
    finally:
        if os.path.exists(path):
            os.remove(path)


def oramstore_run(n: int, seconds: float) -> Run:
    """oramstore's PathORAM in memory, with the same workload."""
    from oramstore.bench import run_oram

    run = run_oram(n, BLOCK, accesses=10**9, seconds=seconds)
    return Run(run.setup_seconds, run.accesses, run.access_seconds)


def seconds_text(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.1f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per run")
    parser.add_argument("--log2-blocks", type=int, nargs="+", default=[12, 14, 16])
    parser.add_argument("--dir", default=None, help="where PyORAM's files go (default: temp)")
    args = parser.parse_args()

    results: list[tuple[int, Run, Run, Run]] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-pyoram-device-") as folder:
        for log2 in args.log2_blocks:
            n = 1 << log2
            print(f"N = 2^{log2}, 4 KiB blocks ({n * BLOCK >> 20} MiB of user data)", flush=True)
            file_run = pyoram_run("file", n, args.seconds, folder)
            print(f"  PyORAM on file:      {report(file_run)}", flush=True)
            device_run = pyoram_run("oramstore", n, args.seconds, folder)
            print(f"  PyORAM on oramstore: {report(device_run)}", flush=True)
            own_run = oramstore_run(n, args.seconds)
            print(f"  oramstore PathORAM:  {report(own_run)}", flush=True)
            results.append((log2, file_run, device_run, own_run))

    print()
    print(
        "| N, 4 KiB blocks | PyORAM on file: setup, accesses/s "
        "| PyORAM on oramstore: setup, accesses/s | oramstore PathORAM: setup, accesses/s "
        "| oramstore device / file device | oramstore PathORAM / PyORAM on oramstore |"
    )
    print("|---|---|---|---|---|---|")
    for log2, file_run, device_run, own_run in results:
        print(
            f"| 2^{log2} "
            f"| {seconds_text(file_run.setup)}, {file_run.rate:,.0f} "
            f"| {seconds_text(device_run.setup)}, {device_run.rate:,.0f} "
            f"| {seconds_text(own_run.setup)}, {own_run.rate:,.0f} "
            f"| {device_run.rate / file_run.rate:.2f}x accesses/s, "
            f"{file_run.setup / device_run.setup:.2f}x setup "
            f"| {own_run.rate / device_run.rate:.1f}x accesses/s |"
        )
    return 0


def report(run: Run) -> str:
    return (
        f"setup {seconds_text(run.setup):>9}, {run.rate:8,.0f} accesses/s "
        f"({run.accesses} in {run.seconds:.1f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
