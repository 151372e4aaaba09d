"""PathORAM against PyORAM 0.2.1: random accesses per second, setup time and peak memory.

Run: ``make bench-oram`` (which sets up PyORAM in ``.venv-pyoram``), or
``python benches/bench_oram.py [--pyoram-python PATH] [--seconds S] [--json FILE]``.
``--json FILE`` writes every run as a record that ``oramstore report`` draws.

oramstore runs twice per size: with its default 32 MiB treetop, and with only 3 cached levels
(PyORAM's default); PyORAM runs in its ctr mode (its default) and its gcm mode.

Each configuration runs in a fresh process of its own, so that its peak resident memory is its
own. Both sides do the same workload: uniformly random blocks, half reads and half writes (the
written bytes drawn from a pool of 64 random blocks), for a fixed time after setup. oramstore runs
with its defaults: Z=4, N/4 leaves, AES-GCM with Merkle freshness checks, a 32 MiB treetop.
PyORAM runs ``PathORAM.setup(..., storage_type="ram")`` with its defaults (encryption, no
freshness); it is left out where its setup alone would take more than ``--pyoram-max-setup``
seconds, estimated from its setup rate at 2^12 blocks.

Targets (issue 5): at N=2^16, 4 KiB: 5x PyORAM's accesses per second and 100x faster setup; at
N=2^20 at least 1,000 accesses per second; peak resident growth under 1.25x the untrusted bytes
touched plus the trusted memory (treetop, stash, position map).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from oramstore.enclave.tree import DEFAULT_TREETOP_BYTES

CONFIGS = [(1 << 12, 4096), (1 << 16, 4096), (1 << 16, 64), (1 << 20, 4096)]

PYORAM_WORKER = r"""
import json, os, random, resource, sys, time
from pyoram.oblivious_storage.tree.path_oram import PathORAM

n, size, seconds, mode = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
# Optional: a storage type and a file for it (PyORAM's "file" device); "ram" by default.
storage_type, path = (sys.argv[5], sys.argv[6]) if len(sys.argv) > 6 else ("ram", None)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
baseline = rss()
start = time.perf_counter()
with PathORAM.setup(path, size, n, storage_type=storage_type, ignore_existing=True,
                    aes_mode=mode) as oram:
    setup = time.perf_counter() - start
    rng = random.Random(1)
    pool = [os.urandom(size) for _ in range(64)]
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
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"setup": setup, "accesses": done, "seconds": elapsed,
                  "growth": peak - baseline}))
"""


def oramstore_worker(n: int, size: int, seconds: float, treetop: int) -> None:
    from oramstore.bench import run_oram

    run = run_oram(n, size, accesses=10**7, seconds=seconds, treetop_bytes=treetop)
    print(
        json.dumps(
            {
                "setup": run.setup_seconds,
                "accesses": run.accesses,
                "seconds": run.access_seconds,
                "growth": run.memory_growth,
                "touched": run.untrusted_resident,
                "trusted": run.trusted_bytes,
                "stash_peak": run.stash_peak,
                "latencies_us": [round(t * 1e6, 2) for t in run.latencies],
            }
        )
    )


def three_levels(size: int) -> int:
    """treetop_bytes that keep exactly 3 levels (7 buckets of Z = 4 slots) in trusted memory."""
    return 7 * 4 * (size + 16)


def record(
    workload: str, n: int, size: int, result: dict[str, Any], **parameters: Any
) -> dict[str, Any]:
    """A run as ``oramstore report`` reads it."""
    from oramstore.cli import machine

    figures = {
        "setup_seconds": result["setup"],
        "accesses_per_second": result["accesses"] / result["seconds"],
        "peak_resident_growth_bytes": result["growth"],
    }
    if "latencies_us" in result:
        figures["latencies_us"] = result["latencies_us"]
    return {
        "workload": workload,
        "machine": machine(),
        "parameters": {"blocks": n, "block_size": size, **parameters},
        "figures": figures,
    }


def spawn(cmd: list[str]) -> dict[str, Any] | None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_pyoram = Path(__file__).resolve().parent.parent / ".venv-pyoram" / "bin" / "python"
    parser.add_argument("--pyoram-python", default=str(default_pyoram))
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring time per run")
    parser.add_argument("--pyoram-max-setup", type=float, default=300.0)
    parser.add_argument("--json", metavar="FILE", help="also write every run as a record")
    parser.add_argument(
        "--worker", nargs=4, metavar=("N", "SIZE", "SECONDS", "TREETOP"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        n, size, seconds, treetop = args.worker
        oramstore_worker(int(n), int(size), float(seconds), int(treetop))
        return 0
    records: list[dict[str, Any]] = []

    have_pyoram = os.path.exists(args.pyoram_python)
    if not have_pyoram:
        print(f"PyORAM interpreter {args.pyoram_python} not found: oramstore only.")
    setup_rate: float | None = None  # PyORAM setup seconds per stored byte, from the first run
    for n, size in CONFIGS:
        ours = spawn(
            [sys.executable, __file__, "--worker", str(n), str(size), str(args.seconds),
             str(DEFAULT_TREETOP_BYTES)]
        )  # fmt: skip
        cached = spawn(
            [sys.executable, __file__, "--worker", str(n), str(size), str(args.seconds),
             str(three_levels(size))]
        )  # fmt: skip
        theirs: dict[str, dict[str, Any] | None] = {}
        if have_pyoram:
            estimate = None if setup_rate is None else setup_rate * n * size
            if estimate is None or estimate <= args.pyoram_max_setup:
                for mode in ("ctr", "gcm"):
                    theirs[mode] = spawn(
                        [args.pyoram_python, "-c", PYORAM_WORKER, str(n), str(size),
                         str(args.seconds), mode]
                    )  # fmt: skip
                ctr = theirs["ctr"]
                if ctr is not None and setup_rate is None:
                    setup_rate = ctr["setup"] / (n * size)
            else:
                print(f"PyORAM skipped at N={n}, {size} B: setup estimated at {estimate:.0f} s")
        report(n, size, ours, cached, theirs)
        if ours is not None:
            records.append(record("oram", n, size, ours))
        if cached is not None:
            records.append(record("oram", n, size, cached, cached_levels=3))
        for mode, result in theirs.items():
            if result is not None:
                records.append(record("pyoram", n, size, result, aes_mode=mode, cached_levels=3))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(records, file)
        print(f"\nrecords written to {args.json}")
    return 0


def report(
    n: int,
    size: int,
    ours: dict[str, Any] | None,
    cached: dict[str, Any] | None,
    theirs: dict[str, dict[str, Any] | None],
) -> None:
    print(f"\nN = 2^{n.bit_length() - 1}, {size} B blocks ({mib(n * size)} of user data)")
    if ours is None:
        print("  oramstore: failed")
        return
    rate = ours["accesses"] / ours["seconds"]
    need = ours["touched"] + ours["trusted"]
    print(
        f"  oramstore: setup {ours['setup'] * 1e3:8.2f} ms  {rate:8.0f} accesses/s  "
        f"peak growth {mib(ours['growth'])} = {ours['growth'] / need:.2f}x "
        f"(untrusted touched {mib(ours['touched'])} + trusted {mib(ours['trusted'])}), "
        f"stash peak {ours['stash_peak']:.0f}"
    )
    cached_rate = None if cached is None else cached["accesses"] / cached["seconds"]
    if cached_rate is not None:
        print(f"  oramstore, 3 cached levels:        {cached_rate:8.0f} accesses/s")
    for mode, result in theirs.items():
        if result is None:
            print(f"  PyORAM {mode}: failed")
            continue
        their_rate = result["accesses"] / result["seconds"]
        print(
            f"  PyORAM {mode}: setup {result['setup'] * 1e3:8.0f} ms  "
            f"{their_rate:8.0f} accesses/s  peak growth {mib(result['growth'])}"
        )
        print(
            f"  ratio to PyORAM {mode}: setup {result['setup'] / ours['setup']:.0f}x faster, "
            f"{rate / their_rate:.2f}x the accesses per second"
            + (
                ""
                if cached_rate is None
                else f" ({cached_rate / their_rate:.2f}x with 3 cached levels)"
            )
            + f", {result['growth'] / max(ours['growth'], 1):.2f}x less memory"
        )


if __name__ == "__main__":
    sys.exit(main())
