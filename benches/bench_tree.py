"""TreeStorage branch access against its cryptographic floor.

Run: ``make bench-python`` (or ``python benches/bench_tree.py``). For trees of height 16 and 20
with buckets of 4 x 4 KiB (plus 64 bytes of metadata), times checkout_branch + checkin_branch of
random leaves after the branches were written once (also in place, as Path ORAM uses the tree,
where the treetop is not copied), and the floor: the same number of AES-GCM
decrypt_into and encrypt_into calls on buffers of the same size, with nothing else around them.
Target: within 1.5x of the floor.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from oramstore import TreeStorage
from oramstore.bench import median_seconds

BUCKET, META = 4 * 4096, 64


def measure(height: int) -> tuple[float, float, float, float, int]:
    rng = np.random.default_rng(height)
    with TreeStorage(height, BUCKET, META) as ts:
        leaves = [int(x) for x in rng.integers(0, ts.leaf_count, 256)]
        for leaf in leaves:  # every measured branch holds written (sealed) buckets
            d, m = ts.checkout_branch(leaf)
            ts.checkin_branch(leaf, d, m)
        cycle = itertools.cycle(leaves)
        buf = np.empty((ts.levels, BUCKET + META), np.uint8)

        def access() -> None:
            leaf = next(cycle)
            d, m = ts.checkout_branch(leaf)
            ts.checkin_branch(leaf, d, m)

        def access_into() -> None:
            leaf = next(cycle)
            d, m = ts.checkout_branch_into(leaf, buf)
            ts.checkin_branch(leaf, d, m)

        def access_in_place() -> None:
            leaf = next(cycle)
            ts.checkout_lower(leaf)
            ts.checkin_lower(leaf)

        sealed_levels = ts.levels - ts.treetop_levels
        tree_time = median_seconds(access, rounds=9, round_time=0.2)
        into_time = median_seconds(access_into, rounds=9, round_time=0.2)
        in_place_time = median_seconds(access_in_place, rounds=9, round_time=0.2)

    aead = AESGCM(os.urandom(32))
    nonce, aad = os.urandom(12), os.urandom(64)
    plain = np.zeros(BUCKET + META, np.uint8)
    sealed = np.frombuffer(aead.encrypt(nonce, plain.data, aad), np.uint8).copy()
    buf = np.empty_like(plain)

    def floor() -> None:
        for _ in range(sealed_levels):
            aead.decrypt_into(nonce, sealed.data, aad, buf.data)
            aead.encrypt_into(nonce, buf.data, aad, sealed.data)

    floor_time = median_seconds(floor, rounds=9, round_time=0.2)
    return tree_time, into_time, in_place_time, floor_time, sealed_levels


def main() -> None:
    print(f"buckets of {BUCKET} + {META} bytes; medians of 9 rounds")
    for height in (16, 20):
        tree_time, into_time, in_place_time, floor_time, sealed = measure(height)
        print(
            f"height {height}: floor ({sealed} decrypt + {sealed} encrypt) "
            f"{floor_time * 1e6:6.1f} us (target: within 1.5x)"
        )
        for name, seconds in (
            ("checkout_branch + checkin_branch", tree_time),
            ("checkout_branch_into + checkin_branch", into_time),
            ("checkout_lower + checkin_lower (in place)", in_place_time),
        ):
            print(f"  {name:42} {seconds * 1e6:6.1f} us = {seconds / floor_time:.2f}x")


if __name__ == "__main__":
    main()
