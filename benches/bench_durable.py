"""The durable PathORAM on files, against the same ORAM in memory and PyORAM's file device.

Run: ``make bench-durable`` (which sets up PyORAM in ``.venv-pyoram``), or
``python benches/bench_durable.py [--pyoram-python PATH] [--seconds S] [--dir DIR]``.

All in one run, one configuration after the other, each for ``--seconds`` of uniformly random
accesses (half reads, half writes) after 2,000 warm-up accesses, page cache warm:

* oramstore ``PathORAM`` in memory, on files with ``durability="commit"`` and with
  ``durability="access"``, one access per call; and on files with accesses in batches of 16
  (``read_many``/``write_many``: one journal sync per batch);
* ``commit()``: its median time over 5 commits after the warm-up;
* PyORAM 0.2.1 ``PathORAM.setup(..., storage_type="file")`` with its defaults (setup time and
  accesses per second), in its own interpreter.

The ratios printed are accesses per second over those of the in-memory ORAM, and over PyORAM's
on its file device.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench_oram import PYORAM_WORKER
from oramstore import PathORAM


def workload(oram: PathORAM, seconds: float, batch: int, seed: int = 1) -> float:
    """Random accesses per second, half reads and half writes, for ``seconds``."""
    n, size = len(oram), oram.block_size
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (64, size), np.uint8)

    def run(count: int) -> int:
        if batch == 1:
            for k, i in enumerate(rng.integers(0, n, count).tolist()):
                if k & 1:
                    oram.write(i, pool[k & 63])
                else:
                    oram.read(i)
            return count
        done = 0
        while done < count:
            indices = rng.integers(0, n, batch).tolist()
            if rng.random() < 0.5:
                oram.write_many(indices, pool[:batch])
            else:
                oram.read_many(indices)
            done += batch
        return done

    run(2000)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += run(200)
    return done / (time.perf_counter() - start)


def measure(
    n: int, size: int, seconds: float, where: Path | None, **options: Any
) -> dict[str, Any]:
    batch = options.pop("batch", 1)
    start = time.perf_counter()
    if where is None:
        oram = PathORAM(n, size, **options)
    else:
        oram = PathORAM(n, size, key=os.urandom(32), path=where, **options)
    setup = time.perf_counter() - start
    rate = workload(oram, seconds, batch)
    commits = []
    if where is not None:
        for _ in range(5):
            start = time.perf_counter()
            oram.commit()
            commits.append(time.perf_counter() - start)
    oram.close()
    if where is not None:
        shutil.rmtree(where)
    return {
        "setup": setup,
        "rate": rate,
        "commit": statistics.median(commits) if commits else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pyoram-python", default=None, help="interpreter with pyoram 0.2.1")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--dir", default=None, help="where the stores go (a temporary dir)")
    parser.add_argument("--blocks", type=int, nargs="+", default=[1 << 16, 1 << 20])
    args = parser.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="bench-durable-"))
    size = 4096
    print(f"PathORAM, {size}-byte blocks, random 50/50 accesses; stores in {base}")
    header = (
        f"{'N':>8} {'configuration':<32} {'setup':>9} {'acc/s':>8} {'vs memory':>9} {'commit':>9}"
    )
    for n in args.blocks:
        print(header)
        memory = measure(n, size, args.seconds, None)
        rows = [("in memory", memory)]
        for name, options in (
            ("file, durability=commit", {}),
            ("file, durability=access", {"durability": "access"}),
            ("file, commit, batches of 16", {"batch": 16}),
        ):
            rows.append((name, measure(n, size, args.seconds, base / "store", **options)))
        for name, row in rows:
            commit = "" if row["commit"] is None else f"{row['commit'] * 1e3:.1f} ms"
            print(
                f"{n:>8} {name:<32} {row['setup'] * 1e3:>7.1f}ms {row['rate']:>8.0f} "
                f"{row['rate'] / memory['rate']:>8.2f}x {commit:>9}"
            )
        if args.pyoram_python and n <= 1 << 16:
            out = subprocess.run(
                [args.pyoram_python, "-c", PYORAM_WORKER, str(n), str(size), str(args.seconds),
                 "ctr", "file", str(base / "pyoram.bin")],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            pyoram = json.loads(out.strip().splitlines()[-1])
            pyoram["rate"] = pyoram["accesses"] / pyoram["seconds"]
            (base / "pyoram.bin").unlink(missing_ok=True)
            print(
                f"{n:>8} {'PyORAM 0.2.1, file device':<32} {pyoram['setup']:>8.1f}s "
                f"{pyoram['rate']:>8.0f}"
            )
            for name, row in rows:
                print(
                    f"{'':>8} {name + ' / PyORAM file':<32} {row['rate'] / pyoram['rate']:>26.2f}x"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
