"""How full the ObliviousDict's overflow stash gets at capacity: the load factor and the stash
size, measured and extrapolated.

Run: ``make bench-dict-overflow`` (or ``python benches/bench_dict_overflow.py [--entries N ...]
[--slots B ...] [--load A ...] [--every T ...] [--churn M]``).

For each configuration, an ObliviousDict of N entries (8-byte keys, empty values) is filled to
its capacity, then M operations of churn follow: a uniformly random entry is deleted and a new
key inserted, so that the map stays full and every insert meets the fullest tables it can. The
stash's length after each operation is counted. The map's own code runs, with its PathORAM
replaced by a plain array of buckets (the ORAM decides nothing about placement; only its time
is left out), and with a stash too large to fill, so that its occupancy can be observed.

Printed per configuration: inserts that found both buckets full while filling, the mean and
peak stash over the churn, and a least-squares line through the far tail of
log2 P(stash > R) (as ``benches/bench_stash_tail.py`` does for Path ORAM), with the R where it
reaches 2^-64 per operation. ``--every 0`` turns relocation off: the stash then grows with N.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.progress import track

from oramstore import ObliviousDict

TARGET_BITS = 64


class MemoryBuckets:
    """Stands in for the map's PathORAM: the buckets in one array, read and written as the map
    asks, with none of the ORAM's work."""

    poisoned = None
    epoch = None
    trusted_bytes = 0

    def __init__(self, count: int, size: int) -> None:
        self.blocks = np.zeros((count, size), np.uint8)

    def _run_updates(
        self, groups: list[list[int]], fn: Callable[[list[npt.NDArray[np.uint8]]], None]
    ) -> None:
        for group in groups:
            fn([self.blocks[i] for i in group])

    def close(self) -> None:
        pass

    def _poison(self, reason: str, cause: BaseException | None) -> None:
        raise AssertionError(f"the map failed: {reason}") from cause


def measure(n: int, slots: int, load: float, every: int, churn: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    d = ObliviousDict(
        n,
        8,
        0,
        slots_per_bucket=slots,
        load_factor=load,
        relocate_every=every or 1 << 62,
        stash_size=1 << 20,
        treetop_bytes=0,
    )
    d.oram.close()
    d._oram = MemoryBuckets(d.bucket_count, slots * (8 + 8))  # type: ignore[assignment]
    keys = [k.to_bytes(8, "little") for k in range(n)]
    filled_to_stash = 0
    for key in track(keys, description=f"fill N={n} B={slots} a={load} T={every}", transient=True):
        before = d.stash_len
        d[key] = b""
        filled_to_stash += d.stash_len > before
    fill_peak = d.stash_peak
    counts = np.zeros(1 << 16, np.int64)
    fresh = n
    chunk = 10_000
    start = time.perf_counter()
    for _ in track(range(0, churn, chunk), description="churn", transient=True):
        for slot in rng.integers(0, n, chunk).tolist():
            del d[keys[slot]]
            keys[slot] = fresh.to_bytes(8, "little")
            fresh += 1
            d[keys[slot]] = b""
            counts[d.stash_len] += 1
    per_op = (time.perf_counter() - start) / (2 * churn)
    assert len(d) == n
    result = {
        "load": d.load_factor,
        "fill_to_stash": filled_to_stash,
        "fill_peak": fill_peak,
        "counts": counts[: int(np.max(np.flatnonzero(counts))) + 1],
        "per_op": per_op,
    }
    d._oram = MemoryBuckets(0, 1)  # type: ignore[assignment]
    d.close()
    return result


def fit_tail(counts: np.ndarray, min_count: int) -> tuple[float, float, int, int] | None:
    """(intercept, slope, first R, last R) of log2 P(stash > R) over the far tail."""
    total = int(counts.sum())
    above = total - np.cumsum(counts)  # above[r]: samples with stash > r
    rs = np.flatnonzero((above >= min_count) & (above <= total / 8))
    if len(rs) < 2:
        return None
    slope, intercept = np.polyfit(rs, np.log2(above[rs] / total), 1)
    return float(intercept), float(slope), int(rs[0]), int(rs[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[1 << 16, 1 << 20])
    parser.add_argument("--slots", type=int, nargs="+", default=[16])
    parser.add_argument("--load", type=float, nargs="+", default=[0.85])
    parser.add_argument("--every", type=int, nargs="+", default=[32])
    parser.add_argument("--churn", type=int, default=1_000_000, help="delete + insert pairs")
    parser.add_argument("--min-count", type=int, default=30, help="tail points fitted need this")
    args = parser.parse_args()
    print(
        f"{'N':>8} {'B':>3} {'load':>5} {'T':>4} {'fill->stash':>11} {'mean':>7} {'peak':>5} "
        f"{'fit: log2 P(stash > R)':>24} {'over R in':>10} {'2^-64 at':>8} {'us/op':>6}"
    )
    for n in args.entries:
        for slots in args.slots:
            for load in args.load:
                for every in args.every:
                    r = measure(n, slots, load, every, args.churn, seed=7)
                    counts = r["counts"]
                    mean = float((np.arange(len(counts)) * counts).sum() / counts.sum())
                    peak = len(counts) - 1
                    line = (
                        f"{n:>8} {slots:>3} {r['load']:>5.3f} {every or '-':>4} "
                        f"{r['fill_to_stash']:>11} {mean:>7.4f} {peak:>5}"
                    )
                    fit = fit_tail(counts, args.min_count)
                    if fit is None:
                        print(f"{line} {'too few tail points':>24}")
                        continue
                    a, b, first, last = fit
                    needed = math.ceil((-TARGET_BITS - a) / b) if b < 0 else -1
                    print(
                        f"{line} {f'{a:.2f} {b:+.3f} R':>24} {f'[{first}, {last}]':>10} "
                        f"{needed:>8} {r['per_op'] * 1e6:>6.0f}"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
