"""A process that works on a durable PathORAM until it is killed: the crash tests run it.

Usage: ``python durable_worker.py DIR SEED OPS COMMIT_EVERY DURABILITY POSITION_MAP``.

It creates the store (or opens it, if DIR already holds one), then does OPS random writes
drawn from ``random.Random(SEED)`` (see :func:`workload`), every other one as an ``update`` of
the block and of another that it leaves as it is, committing after every COMMIT_EVERY
of them, and prints ``done N`` after each operation returns and ``commit N E`` after each commit
returns (N operations done, epoch E), flushing stdout each time. The parent rebuilds what was
durable from the last lines it read.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from oramstore import PathORAM

KEY = bytes(range(32))
BLOCKS, BLOCK_SIZE = 300, 24


def workload(seed: int, ops: int) -> Iterator[tuple[int, bytes]]:
    """The writes the worker does, in order: (index, block)."""
    rng = random.Random(seed)
    for _ in range(ops):
        yield rng.randrange(BLOCKS), rng.randbytes(BLOCK_SIZE)


def model_after(seed: int, ops: int) -> dict[int, bytes]:
    """The blocks after the first ``ops`` writes."""
    model: dict[int, bytes] = {}
    for index, block in workload(seed, ops):
        model[index] = block
    return model


class Put:
    """An update's function that replaces its first block with ``block``."""

    def __init__(self, block: bytes) -> None:
        self.block = np.frombuffer(block, np.uint8)

    def __call__(self, blocks: list[np.ndarray]) -> None:
        blocks[0][:] = self.block


def main() -> None:
    directory, seed, ops, every, durability, position_map = sys.argv[1:7]
    path = Path(directory)
    if (path / "state").exists():
        oram = PathORAM.open(path, key=KEY, durability=durability)  # type: ignore[arg-type]
    else:
        oram = PathORAM(
            BLOCKS,
            BLOCK_SIZE,
            key=KEY,
            path=path,
            durability=durability,  # type: ignore[arg-type]
            treetop_bytes=2 * 4 * (BLOCK_SIZE + 16),
            position_map=position_map,  # type: ignore[arg-type]
            position_map_threshold=16,
        )
    print(f"commit 0 {oram.epoch}", flush=True)
    for n, (index, block) in enumerate(workload(int(seed), int(ops)), 1):
        if n % 2:
            oram.write(index, block)
        else:
            oram.update([index, (index + 7) % BLOCKS], Put(block))
        print(f"done {n}", flush=True)
        if n % int(every) == 0:
            epoch = oram.commit()
            print(f"commit {n} {epoch}", flush=True)
    oram.close()
    print("closed", flush=True)


if __name__ == "__main__":
    main()
