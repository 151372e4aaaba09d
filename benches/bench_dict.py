"""ObliviousDict against one access of a PathORAM of the same geometry, and against a dict.

Run: ``make bench-dict`` (or ``python benches/bench_dict.py [--entries N ...] [--fill F]
[--operations M] [--seconds S]``).

Each size runs in a fresh process of its own, so that its peak resident memory is its own. The
map (32-byte keys, 256-byte values, the defaults: buckets of 16 slots at a load factor of 0.85,
a 32 MiB treetop) is filled to ``--fill`` of its capacity with ``set_many``, then runs single
operations: 40% lookups of present keys, 10% of missing ones, 25% updates, 12.5% deletes and
12.5% inserts. The same operations then run on a dict, and as many random accesses (half reads,
half writes) as the map made run on a PathORAM with one block per bucket of the map, each of
whose blocks was written once first. An operation costs 2 + 2/32 ORAM accesses (an update of
its two buckets, and a relocation step of two every 32 operations): that is the floor of the
ratio.

Target (issue "An oblivious key-value map"): one operation within 2.5x of one PathORAM access
of the same block size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict


def worker(entries: int, fill: float, operations: int, seconds: float) -> None:
    from oramstore.bench import run_dict

    run = run_dict(entries, operations=operations, fill=round(fill * entries), seconds=seconds)
    record = asdict(run)
    record.update(
        ops=run.operations_per_second,
        accesses=run.oram_accesses_per_second,
        plain=run.plain_operations_per_second,
        ratio=run.ratio_to_oram_access(),
        growth=run.memory_growth,
    )
    print(json.dumps(record))


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[1 << 16, 1 << 20])
    parser.add_argument("--fill", type=float, default=1.0, help="share of capacity stored first")
    parser.add_argument("--operations", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="per timed phase")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.entries[0], args.fill, args.operations, args.seconds)
        return 0
    print(
        f"{'N':>8} {'buckets':>8} {'setup':>8} {'fill/s':>7} {'ops/s':>7} {'ORAM acc/s':>10} "
        f"{'ratio':>6} {'floor':>6} {'dict ops/s':>11} {'growth':>10} {'touched':>10} "
        f"{'trusted':>9} {'stash':>6}"
    )
    for n in args.entries:
        cmd = [sys.executable, __file__, "--worker", "--entries", str(n), "--fill",
               str(args.fill), "--operations", str(args.operations), "--seconds",
               str(args.seconds)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.splitlines()[-1])
        print(
            f"{n:>8} {r['bucket_count']:>8} {r['setup_seconds'] * 1e3:>6.1f}ms "
            f"{r['filled'] / r['fill_seconds']:>7.0f} {r['ops']:>7.0f} {r['accesses']:>10.0f} "
            f"{r['ratio']:>5.2f}x {r['accesses_per_operation']:>5.2f}x {r['plain']:>11.3g} "
            f"{size(r['growth']):>10} {size(r['untrusted_resident']):>10} "
            f"{size(r['trusted_bytes']):>9} {r['stash_peak']:>2}/{r['stash_size']}"
        )
    print(
        "ratio: seconds per map operation over seconds per access of a PathORAM with one "
        "block per bucket; floor: ORAM accesses per operation. growth: peak resident memory "
        "the map added; touched: untrusted bytes written; trusted: treetop, stash, position "
        "map and the map's stash at capacity."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
