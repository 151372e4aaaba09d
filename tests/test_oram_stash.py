"""The stash: bounded, far from full in normal use, and an overflow undoes the access."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from oram_layout import check_invariant, random_accesses
from oramstore import PathORAM, StashOverflowError
from oramstore.oram import DEFAULT_STASH_SIZE


def test_a_full_oram_keeps_its_stash_small() -> None:
    n, size = 1 << 10, 8
    rng = np.random.default_rng(3)
    with PathORAM(n, size, treetop_bytes=0) as oram:
        assert oram.stash_size == DEFAULT_STASH_SIZE
        model = {}
        for i in range(n):  # every block written: full utilisation
            block = rng.integers(0, 256, size, np.uint8).tobytes()
            oram.write(i, block)
            model[i] = block
        random_accesses(oram, model, rng, 8 * n)
        # Path ORAM with Z=4 keeps a few blocks in its stash; the capacity is for the far tail.
        assert oram.stash_peak <= DEFAULT_STASH_SIZE // 4
        check_invariant(oram, model)


def test_overflow_raises_and_undoes_the_access() -> None:
    n, size = 64, 8
    rng = np.random.default_rng(4)
    with PathORAM(n, size, bucket_size=1, stash_size=1, treetop_bytes=0) as oram:
        model: dict[int, bytes] = {}
        overflows = 0
        for _ in range(1500):
            i = int(rng.integers(n))
            block = rng.integers(0, 256, size, np.uint8).tobytes()
            before_stash, before_count = oram.stash_len, oram.access_count
            try:
                if rng.random() < 0.7:
                    oram.write(i, block)
                    model[i] = block
                else:
                    assert oram.read(i) == model.get(i, bytes(size))
            except StashOverflowError as error:
                overflows += 1
                message = str(error)
                assert "capacity of 1" in message
                assert oram.stash_len == before_stash and oram.access_count == before_count
                if overflows <= 5:
                    check_invariant(oram, model)
            assert oram.stash_len <= 1
        assert overflows > 0, "a stash of one block under Z=1 should overflow"
        # Everything written before and between overflows is still there.
        check_invariant(oram, model)
        for i, block in model.items():
            with contextlib.suppress(StashOverflowError):
                assert oram.read(i) == block


def test_stash_size_zero_is_allowed_and_enforced() -> None:
    rng = np.random.default_rng(5)
    with PathORAM(64, 4, bucket_size=1, stash_size=0, treetop_bytes=0) as oram:
        # Each write succeeds only if the branch has room for every candidate; with Z=1 a
        # random branch soon has none.
        def fill() -> None:
            for _ in range(2000):
                oram.write(int(rng.integers(64)), b"abcd")

        with pytest.raises(StashOverflowError, match="capacity of 0"):
            fill()
        assert oram.stash_len == 0
