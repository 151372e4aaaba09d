"""The stash: bounded, far from full in normal use, sized for Z, and an overflow is fatal."""

from __future__ import annotations

import numpy as np
import pytest

from oram_layout import check_invariant, random_accesses
from oramstore import PathORAM, PoisonedError, StashOverflowError
from oramstore.oram import DEFAULT_STASH_SIZE, MIN_BUCKET_SIZE, min_stash_size
from oramstore.oram import path as path_module


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


def test_overflow_raises_then_poisons(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only a stash far below the safe size overflows in a test's lifetime: lift the floor.
    monkeypatch.setattr(path_module, "min_stash_size", lambda z: 0)
    n, size = 64, 8
    rng = np.random.default_rng(4)
    with PathORAM(n, size, bucket_size=1, stash_size=1, treetop_bytes=0) as oram:

        def fill() -> None:
            for _ in range(2000):
                oram.write(int(rng.integers(n)), rng.integers(0, 256, size, np.uint8))
                assert oram.stash_len <= 1

        with pytest.raises(StashOverflowError, match="capacity of 1"):
            fill()
        # The block that overflowed already has a new leaf the host will never see it under:
        # the ORAM refuses to go on rather than serve anything from an inconsistent state.
        with pytest.raises(PoisonedError, match="StashOverflowError") as info:
            oram.read(0)
        assert isinstance(info.value.__cause__, StashOverflowError)
        with pytest.raises(PoisonedError):
            oram.write(1, bytes(size))


def test_stash_sizes_follow_the_bucket_size() -> None:
    for z in (0, 1, 2, 3):
        with pytest.raises(ValueError, match="bucket_size"):
            PathORAM(64, 8, bucket_size=z)
    with pytest.raises(ValueError, match="at least 4"):
        min_stash_size(3)
    sizes = [min_stash_size(z) for z in range(MIN_BUCKET_SIZE, 12)]
    # Larger buckets never need a larger stash, and the default Z gets the default size.
    assert sizes == sorted(sizes, reverse=True)
    assert min_stash_size(4) == DEFAULT_STASH_SIZE
    for z in (4, 5, 6, 8):
        least = min_stash_size(z)
        with PathORAM(64, 8, bucket_size=z) as oram:
            assert oram.stash_size == least
        with pytest.raises(ValueError, match="too small"):
            PathORAM(64, 8, bucket_size=z, stash_size=least - 1)
        with pytest.raises(ValueError, match="too small"):
            PathORAM(64, 8, bucket_size=z, stash_size=0)
        with PathORAM(64, 8, bucket_size=z, stash_size=least + 10) as oram:
            assert oram.stash_size == least + 10
