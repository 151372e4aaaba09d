"""One PathORAM access against its floor: the work the design cannot avoid, in the same run.

Run: ``python benches/bench_floor.py [--blocks 2^16] [--block-size 4096] [--treetop-bytes B]
[--rounds 9] [--accesses 400]`` (``make bench-floor`` runs the configurations the README
reports).

The floor of one access is what any implementation of this design must do for it, with nothing
around it: for each sealed level of the branch, one AES-256-GCM ``decrypt_into`` and one
``encrypt_into`` of a bucket of the same size (with associated data of the same size, under a
key already set up), and one ``checkout_into`` and one ``checkin`` of the branch's sealed items
(data and metadata, the same sizes) through an ``UntrustedStorage``. The ORAM runs with every
block written first, so that every sealed bucket on a branch is really opened.

Rounds interleave the two: ``--accesses`` random accesses (half reads, half writes), then the
floor of as many accesses. The ratio access / floor is printed per round, with its median and
range, so that a busy machine slows both sides alike.

``--breakdown`` then times the parts of further accesses (median over rounds, in µs per access;
the timing wrappers add a little to each part): AES-GCM calls, the untrusted storage's copies,
the tree layer's Python around them, the ORAM's serve step (finding the block, placing the
candidates, moving rows in trusted memory) and the API around an access (argument checks,
locks, position map, leaves).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from oramstore import PathORAM, UntrustedStorage
from oramstore.cli import machine
from oramstore.enclave.crypto import TAG_BYTES
from oramstore.enclave.tree import _META_ITEM, DEFAULT_TREETOP_BYTES


def parse_count(text: str) -> int:
    if "^" in text:
        base, exp = text.split("^")
        return int(int(base) ** int(exp))
    return int(text)


class Floor:
    """The unavoidable work of one access of ``oram``, ready to be timed."""

    def __init__(self, oram: PathORAM) -> None:
        tree = oram.tree
        self.sealed_levels = tree.levels - tree.treetop_levels
        plain = tree.bucket_size + tree.meta_size
        self.aead = AESGCM(bytes(32))
        self.aad = bytes(16 + 8 + _META_ITEM)  # salt, node index, metadata item
        self.plain = np.zeros((self.sealed_levels, plain), np.uint8)
        self.sealed = np.zeros((self.sealed_levels, plain + TAG_BYTES), np.uint8)
        for j in range(self.sealed_levels):
            self.aead.encrypt_into(bytes(12), self.plain[j], self.aad, self.sealed[j])
        self.heads = np.zeros((self.sealed_levels, _META_ITEM), np.uint8)
        count = max(1, (1 << tree.levels) - tree.untrusted_offset)
        self.storage = UntrustedStorage(count, plain + TAG_BYTES, _META_ITEM)
        # Every item is written once, in chunks, so that the floor's checkouts read memory that
        # is really there, as the ORAM's (whose blocks were all written) do.
        chunk = max(1, (64 << 20) // (plain + TAG_BYTES))
        zeros = np.zeros((chunk, plain + TAG_BYTES), np.uint8)
        zero_heads = np.zeros((chunk, _META_ITEM), np.uint8)
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            self.storage.checkin(range(start, start + n), zeros[:n], zero_heads[:n])
        self.count = count
        # Branches: the untrusted items of the sealed levels of each leaf's branch, as an access
        # of the ORAM reads them.
        leaves = np.arange(tree.leaf_count, dtype=np.int64) + tree.leaf_count
        shifts = np.arange(self.sealed_levels - 1, -1, -1, dtype=np.int64)
        self.branches = (leaves[:, None] >> shifts) - tree.untrusted_offset
        self.out = np.empty_like(self.sealed)
        self.out_heads = np.empty_like(self.heads)

    def run(self, accesses: int, rng: np.random.Generator) -> None:
        levels, aead, aad, nonce = self.sealed_levels, self.aead, self.aad, bytes(12)
        plain, sealed, out = self.plain, self.sealed, self.out
        if levels == 0:
            return
        branches = [self.branches[leaf] for leaf in rng.integers(0, len(self.branches), accesses)]
        for items in branches:
            self.storage.checkout_into(items, out, self.out_heads)
            for j in range(levels):
                aead.decrypt_into(nonce, sealed[j], aad, plain[j])
            for j in range(levels):
                aead.encrypt_into(nonce, plain[j], aad, out[j])
            self.storage.checkin(items, out, self.heads)


def workload(oram: PathORAM, accesses: int, rng: np.random.Generator, pool: np.ndarray) -> None:
    n = len(oram)
    for k, i in enumerate(rng.integers(0, n, accesses).tolist()):
        if k & 1:
            oram.write(i, pool[k & 63])
        else:
            oram.read(i)


class _Timed:
    """Forwards every call to ``inner``, adding the time each method in ``names`` takes to
    ``totals[key]``."""

    def __init__(self, inner: Any, names: tuple[str, ...], totals: dict[str, float], key: str):
        self._inner, self._names, self._totals, self._key = inner, names, totals, key

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name not in self._names:
            return value
        return _timed(value, self._totals, self._key)


def _timed(function: Callable[..., Any], totals: dict[str, float], key: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    return call


class _TimedAead:
    """An AES-GCM object whose two calls add their time to ``totals["aes"]``."""

    def __init__(self, inner: AESGCM, totals: dict[str, float]) -> None:
        self._inner, self._totals = inner, totals

    def decrypt_into(self, *args: Any) -> None:
        start = time.perf_counter()
        try:
            self._inner.decrypt_into(*args)
        finally:
            self._totals["aes"] += time.perf_counter() - start

    def encrypt_into(self, *args: Any) -> None:
        start = time.perf_counter()
        self._inner.encrypt_into(*args)
        self._totals["aes"] += time.perf_counter() - start


class _TimedSealer(_Timed):
    def aead(self, session: bytes) -> Any:
        return _TimedAead(self._inner.aead(session), self._totals)


def breakdown(
    oram: PathORAM, accesses: int, rounds: int, rng: np.random.Generator, pool: np.ndarray
) -> dict[str, float]:
    """Median µs per access of each part (see the module's docstring)."""
    tree = oram.tree
    totals = dict.fromkeys(("aes", "copies", "tree", "serve"), 0.0)
    saved = tree.untrusted, tree._sealer
    if tree.untrusted is not None:
        tree.untrusted = _Timed(tree.untrusted, ("checkout_into", "checkin"), totals, "copies")  # type: ignore[assignment]
    tree._sealer = _TimedSealer(tree._sealer, (), totals, "")  # type: ignore[assignment]
    tree._checkout_lower_locked = _timed(tree._checkout_lower_locked, totals, "tree")  # type: ignore[method-assign]
    tree.checkin_lower = _timed(tree.checkin_lower, totals, "tree")  # type: ignore[method-assign]
    oram._serve = _timed(oram._serve, totals, "serve")  # type: ignore[method-assign]
    parts: dict[str, list[float]] = {}
    try:
        for _ in range(rounds):
            for key in totals:
                totals[key] = 0.0
            start = time.perf_counter()
            workload(oram, accesses, rng, pool)
            total = time.perf_counter() - start
            split = {
                "AES-GCM": totals["aes"],
                "untrusted copies": totals["copies"],
                "tree Python": totals["tree"] - totals["aes"] - totals["copies"],
                "ORAM serve Python": totals["serve"] - totals["tree"],
                "API Python": total - totals["serve"],
                "total": total,
            }
            for name, value in split.items():
                parts.setdefault(name, []).append(value / accesses * 1e6)
    finally:
        tree.untrusted, tree._sealer = saved
        del tree._checkout_lower_locked, tree.checkin_lower, oram._serve
    return {name: statistics.median(values) for name, values in parts.items()}


def measure(
    blocks: int,
    block_size: int,
    treetop_bytes: int,
    rounds: int,
    accesses: int,
    parts: dict[str, float] | None = None,
) -> dict[str, float]:
    rng = np.random.default_rng(1)
    pool = rng.integers(0, 256, (64, block_size), np.uint8)
    oram = PathORAM(blocks, block_size, treetop_bytes=treetop_bytes)
    for first in range(0, blocks, 4096):
        for i in range(first, min(blocks, first + 4096)):
            oram.write(i, pool[i & 63])
    floor = Floor(oram)
    ratios, access_us, floor_us = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        workload(oram, accesses, rng, pool)
        a = (time.perf_counter() - start) / accesses
        start = time.perf_counter()
        floor.run(accesses, rng)
        f = (time.perf_counter() - start) / accesses
        access_us.append(a * 1e6)
        floor_us.append(f * 1e6)
        ratios.append(a / f if f else float("inf"))
    if parts is not None:
        parts.update(breakdown(oram, accesses, rounds, rng, pool))
    oram.close()
    return {
        "sealed_levels": floor.sealed_levels,
        "access_us": statistics.median(access_us),
        "floor_us": statistics.median(floor_us),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=parse_count, default=1 << 16)
    parser.add_argument("--block-size", type=parse_count, default=4096)
    parser.add_argument(
        "--treetop-bytes", type=parse_count, nargs="+", default=[DEFAULT_TREETOP_BYTES]
    )
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--accesses", type=int, default=400)
    parser.add_argument("--breakdown", action="store_true", help="time the parts of an access")
    parser.add_argument(
        "--json", metavar="FILE", help="with --breakdown: write records for oramstore report"
    )
    args = parser.parse_args()
    records = []
    print(f"{'N':>8} {'block':>6} {'treetop':>10} {'sealed':>6} {'access µs':>10} "
          f"{'floor µs':>9} {'ratio (median, range)':>24}")  # fmt: skip
    for treetop in args.treetop_bytes:
        parts: dict[str, float] | None = {} if args.breakdown else None
        r = measure(args.blocks, args.block_size, treetop, args.rounds, args.accesses, parts)
        print(
            f"{args.blocks:>8} {args.block_size:>6} {treetop:>10} {r['sealed_levels']:>6} "
            f"{r['access_us']:>10.1f} {r['floor_us']:>9.1f} "
            f"{r['ratio']:>10.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
        )
        if parts:
            print("    " + ", ".join(f"{name} {value:.1f}" for name, value in parts.items()))
            records.append(
                {
                    "workload": "floor",
                    "machine": machine(),
                    "parameters": {
                        "blocks": args.blocks,
                        "block_size": args.block_size,
                        "treetop_bytes": treetop,
                    },
                    "figures": {
                        **r,
                        "aes_us": parts["AES-GCM"],
                        "copies_us": parts["untrusted copies"],
                        "parts_us": parts,
                    },
                }
            )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(records, file, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
