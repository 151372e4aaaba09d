"""PathORAM against PyORAM 0.2.1: random accesses per second, setup time and peak memory.

Run: ``make bench-oram`` (which sets up PyORAM in ``.venv-pyoram``), or
``python benches/bench_oram.py [--pyoram-python PATH] [--seconds S]``.

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

CONFIGS = [(1 << 12, 4096), (1 << 16, 4096), (1 << 16, 64), (1 << 20, 4096)]

PYORAM_WORKER = r"""
import json, os, random, resource, sys, time
from pyoram.oblivious_storage.tree.path_oram import PathORAM

n, size, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
baseline = rss()
start = time.perf_counter()
with PathORAM.setup(None, size, n, storage_type="ram", ignore_existing=True) as oram:
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


def oramstore_worker(n: int, size: int, seconds: float) -> None:
    from oramstore.bench import run_oram

    run = run_oram(n, size, accesses=10**7, seconds=seconds)
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
            }
        )
    )


def spawn(cmd: list[str]) -> dict[str, float] | None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return None
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_pyoram = Path(__file__).resolve().parent.parent / ".venv-pyoram" / "bin" / "python"
    parser.add_argument("--pyoram-python", default=str(default_pyoram))
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring time per run")
    parser.add_argument("--pyoram-max-setup", type=float, default=300.0)
    parser.add_argument(
        "--worker", nargs=3, metavar=("N", "SIZE", "SECONDS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        oramstore_worker(int(args.worker[0]), int(args.worker[1]), float(args.worker[2]))
        return 0

    have_pyoram = os.path.exists(args.pyoram_python)
    if not have_pyoram:
        print(f"PyORAM interpreter {args.pyoram_python} not found: oramstore only.")
    setup_rate: float | None = None  # PyORAM setup seconds per stored byte, from the first run
    for n, size in CONFIGS:
        ours = spawn([sys.executable, __file__, "--worker", str(n), str(size), str(args.seconds)])
        theirs = None
        if have_pyoram:
            estimate = None if setup_rate is None else setup_rate * n * size
            if estimate is None or estimate <= args.pyoram_max_setup:
                theirs = spawn(
                    [args.pyoram_python, "-c", PYORAM_WORKER, str(n), str(size), str(args.seconds)]
                )
                if theirs is not None and setup_rate is None:
                    setup_rate = theirs["setup"] / (n * size)
            else:
                print(f"PyORAM skipped at N={n}, {size} B: setup estimated at {estimate:.0f} s")
        report(n, size, ours, theirs)
    return 0


def report(
    n: int, size: int, ours: dict[str, float] | None, theirs: dict[str, float] | None
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
    if theirs is None:
        return
    their_rate = theirs["accesses"] / theirs["seconds"]
    print(
        f"  PyORAM:    setup {theirs['setup'] * 1e3:8.0f} ms  {their_rate:8.0f} accesses/s  "
        f"peak growth {mib(theirs['growth'])}"
    )
    print(
        f"  ratio:     setup {theirs['setup'] / ours['setup']:.0f}x faster, "
        f"{rate / their_rate:.2f}x the accesses per second, "
        f"{theirs['growth'] / max(ours['growth'], 1):.2f}x less memory than PyORAM"
    )


if __name__ == "__main__":
    sys.exit(main())
