"""10^5 random operations over ORAMs of mixed shapes, against dict models (`make soak`)."""

from __future__ import annotations

import numpy as np
import pytest

from oram_layout import check_invariant
from oramstore import PathORAM

# (block_count, block_size, bucket_size, position map): tiny and odd block sizes, Z from 4 to
# 6, and recursive position maps two levels deep, each with the default stash for its Z.
SHAPES = [
    (1000, 1, 4, "array"),
    (3000, 64, 4, "recursive"),
    (777, 1000, 5, "array"),
    (512, 4096, 4, "array"),
    (70000, 24, 4, "recursive"),
    (200, 333, 6, "array"),
]
OPERATIONS = 100_000


@pytest.mark.soak
def test_mixed_shapes_agree_with_their_models() -> None:
    rng = np.random.default_rng(2026)
    orams = [
        PathORAM(
            n,
            size,
            bucket_size=z,
            position_map=pm,  # type: ignore[arg-type]
            position_map_threshold=64,
        )
        for n, size, z, pm in SHAPES
    ]
    models: list[dict[int, bytes]] = [{} for _ in SHAPES]
    try:
        for step in range(OPERATIONS):
            k = int(rng.integers(len(SHAPES)))
            oram, model = orams[k], models[k]
            n, size = SHAPES[k][0], SHAPES[k][1]
            # Hot blocks half the time, so blocks are overwritten and re-read often.
            i = int(rng.integers(min(n, 32))) if rng.random() < 0.5 else int(rng.integers(n))
            if rng.random() < 0.5:
                block = rng.integers(0, 256, size, np.uint8).tobytes()
                oram.write(i, block)
                model[i] = block
            else:
                assert oram.read(i) == model.get(i, bytes(size)), (step, k, i)
            assert oram.stash_len <= oram.stash_size
        for (_, _, z, pm), oram, model in zip(SHAPES, orams, models, strict=True):
            for i, block in model.items():
                assert oram.read(i) == block
            if pm == "array":
                check_invariant(oram, model)
            if z >= 4:
                assert oram.stash_peak < oram.stash_size // 4
    finally:
        for oram in orams:
            oram.close()
