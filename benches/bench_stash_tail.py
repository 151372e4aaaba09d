"""How big the stash must be: the tail of the stash occupancy, measured and extrapolated.

Run: ``make bench-stash`` (or ``python benches/bench_stash_tail.py [--blocks N] [--accesses M]``).

A PathORAM of N one-byte blocks (every block written: full utilisation, Z=4, N/4 leaves, the
whole tree in trusted memory so that only the ORAM logic runs) does M uniformly random accesses
after a warm-up of 2N. After each access it records how many blocks the stash holds. The
empirical tail P(stash > R) falls geometrically in R (Stefanov et al., CCS 2013, prove a bound
of that form); a least-squares fit of log2 P(stash > R) over the measured tail gives its slope,
and the size where the fitted tail reaches 2^-80 per access, and 2^-80 over 2^32 accesses.
The default capacity, DEFAULT_STASH_SIZE, must exceed both.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from rich.progress import track

from oramstore import PathORAM
from oramstore.oram import DEFAULT_STASH_SIZE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=1 << 12)
    parser.add_argument("--accesses", type=int, default=400_000)
    parser.add_argument("--bucket-size", type=int, default=4)
    parser.add_argument("--min-count", type=int, default=30, help="tail points fitted need this")
    args = parser.parse_args()
    n = args.blocks
    rng = np.random.default_rng(7)
    oram = PathORAM(n, 1, bucket_size=args.bucket_size, treetop_bytes=1 << 40)
    assert oram.tree.untrusted is None
    for i in range(n):
        oram.write(i, b"x")
    for i in rng.integers(0, n, 2 * n).tolist():
        oram.read(i)
    counts = np.zeros(oram.stash_size + 1, np.int64)
    start = time.perf_counter()
    chunk = 10_000
    for _ in track(range(0, args.accesses, chunk), description="accessing"):
        for i in rng.integers(0, n, chunk).tolist():
            oram.read(i)
            counts[oram.stash_len] += 1
    elapsed = time.perf_counter() - start
    total = int(counts.sum())
    # above[r] = number of samples with stash > r
    above = total - np.cumsum(counts)
    rs = np.flatnonzero(above >= args.min_count)
    print(
        f"N={n}, Z={args.bucket_size}, {oram.tree.leaf_count} leaves, {total} accesses "
        f"({elapsed / total * 1e6:.0f} µs each), stash peak {oram.stash_peak}"
    )
    print("R     P(stash > R)")
    for r in range(int(np.max(np.flatnonzero(counts))) + 1):
        print(f"{r:<5} {above[r] / total:.3g}")
    if len(rs) < 3:
        print("too few tail points to fit; run more accesses")
        return 1
    log_tail = np.log2(above[rs] / total)
    slope, intercept = np.polyfit(rs, log_tail, 1)
    per_access = (-80 - intercept) / slope
    lifetime = (-80 - 32 - intercept) / slope
    print(
        f"fitted log2 P(stash > R) = {intercept:.2f} {slope:+.3f} R over R in [{rs[0]}, {rs[-1]}]"
    )
    print(f"stash for 2^-80 per access:           {math.ceil(per_access)}")
    print(f"stash for 2^-80 over 2^32 accesses:   {math.ceil(lifetime)}")
    print(f"DEFAULT_STASH_SIZE:                   {DEFAULT_STASH_SIZE}")
    return 0 if lifetime <= DEFAULT_STASH_SIZE else 1


if __name__ == "__main__":
    raise SystemExit(main())
