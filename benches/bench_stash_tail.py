"""How big the stash must be, for each bucket size Z: the tail of the stash occupancy, measured
and extrapolated.

Run: ``make bench-stash`` (or ``python benches/bench_stash_tail.py [--z 3 4 5 6]
[--blocks N ...] [--accesses M]``).

For each Z and N, a PathORAM of N one-byte blocks (every block written: full utilisation,
N/Z leaves, the whole tree in trusted memory so that only the ORAM logic runs) does M uniformly
random accesses after a warm-up of 2N, recording how many blocks the stash holds after each.
The tail P(stash > R) falls geometrically in R for Z >= 3 (Stefanov et al., CCS 2013, prove a
bound of that form for Z >= 5 and measure Z = 3, 4); a least-squares fit of log2 P(stash > R)
over the far tail (P <= 1/8, at least ``--min-count`` samples above R) gives its line, and from
it the capacity where an overflow falls below 2^-64 per access. ``min_stash_size`` takes twice
that. For Z = 2 the typical occupancy itself grows with N, so no fixed capacity works: the run
over several N shows it.

The stash's floor is lifted for the run (the measurement needs Z = 2, which PathORAM refuses).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from rich.progress import track

from oramstore import PathORAM
from oramstore.oram import path as path_module

TARGET_BITS = 64


def measure(n: int, z: int, accesses: int, seed: int) -> tuple[np.ndarray, float]:
    """Counts of the stash occupancy after each access, and the time per access."""
    rng = np.random.default_rng(seed)
    oram = PathORAM(n, 1, bucket_size=z, stash_size=4096, treetop_bytes=1 << 40)
    assert oram.tree.untrusted is None
    for i in range(n):
        oram.write(i, b"x")
    for i in rng.integers(0, n, 2 * n).tolist():
        oram.read(i)
    counts = np.zeros(oram.stash_size + 1, np.int64)
    chunk = 10_000
    start = time.perf_counter()
    for _ in track(range(0, accesses, chunk), description=f"N={n} Z={z}", transient=True):
        for i in rng.integers(0, n, chunk).tolist():
            oram.read(i)
            counts[oram.stash_len] += 1
    elapsed = (time.perf_counter() - start) / max(1, int(counts.sum()))
    oram.close()
    return counts, elapsed


def fit_tail(counts: np.ndarray, min_count: int) -> tuple[float, float, int, int] | None:
    """(intercept, slope, first R, last R) of log2 P(stash > R) over the far tail."""
    total = int(counts.sum())
    above = total - np.cumsum(counts)  # above[r]: samples with stash > r
    rs = np.flatnonzero((above >= min_count) & (above <= total / 8))
    if len(rs) < 3:
        return None
    slope, intercept = np.polyfit(rs, np.log2(above[rs] / total), 1)
    return float(intercept), float(slope), int(rs[0]), int(rs[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--z", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1 << 12])
    parser.add_argument("--accesses", type=int, default=1_000_000)
    parser.add_argument("--min-count", type=int, default=30, help="tail points fitted need this")
    args = parser.parse_args()
    library_size = path_module.min_stash_size
    path_module.min_stash_size = lambda z: 0  # type: ignore[assignment]
    print(
        f"{'N':>7} {'Z':>2} {'mean':>6} {'peak':>5} {'fit: log2 P(stash > R)':>26} "
        f"{'over R in':>10} {'2^-64 at':>9} {'x2':>5} {'library':>7} {'us/acc':>6}"
    )
    for z in args.z:
        for n in args.blocks:
            counts, per_access = measure(n, z, args.accesses, seed=7)
            mean = float((np.arange(len(counts)) * counts).sum() / counts.sum())
            peak = int(np.max(np.flatnonzero(counts)))
            fit = fit_tail(counts, args.min_count)
            try:
                library = str(library_size(z))
            except ValueError:
                library = "refused"
            if fit is None:
                print(f"{n:>7} {z:>2} {mean:>6.1f} {peak:>5} {'too few tail points':>26}")
                continue
            a, b, first, last = fit
            needed = math.ceil((-TARGET_BITS - a) / b)
            print(
                f"{n:>7} {z:>2} {mean:>6.1f} {peak:>5} {f'{a:.2f} {b:+.3f} R':>26} "
                f"{f'[{first}, {last}]':>10} {needed:>9} {2 * needed:>5} "
                f"{library:>7} {per_access * 1e6:>6.0f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
