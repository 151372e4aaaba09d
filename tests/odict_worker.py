"""A process that works on a durable ObliviousDict until it is killed: the crash tests run it.

Usage: ``python odict_worker.py DIR SEED OPS COMMIT_EVERY DURABILITY``.

It creates the map (or opens it, if DIR already holds one), then does OPS random stores and
deletes drawn from ``random.Random(SEED)`` (see :func:`workload`), committing after every
COMMIT_EVERY of them, and prints ``done N`` after each operation returns and ``commit N E``
after each commit returns (N operations done, epoch E), flushing stdout each time. The parent
rebuilds what was durable from the last lines it read.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from oramstore import ObliviousDict

KEY = bytes(range(32))
CAPACITY, KEY_SIZE, VALUE_SIZE = 120, 6, 12
UNIVERSE = 100  # keys k0 .. k99: never more than the capacity


def workload(seed: int, ops: int) -> Iterator[tuple[bytes, bytes | None]]:
    """The operations the worker does, in order: (key, value), or (key, None) for a delete."""
    rng = random.Random(seed)
    for _ in range(ops):
        key = b"k%d" % rng.randrange(UNIVERSE)
        if rng.random() < 0.3:
            yield key, None
        else:
            yield key, rng.randbytes(rng.randrange(VALUE_SIZE + 1))


def model_after(base: Mapping[bytes, bytes], seed: int, ops: int) -> dict[bytes, bytes]:
    """The map after the first ``ops`` operations on ``base``."""
    model = dict(base)
    for key, value in workload(seed, ops):
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value
    return model


def main() -> None:
    directory, seed, ops, every, durability = sys.argv[1:6]
    path = Path(directory)
    if (path / "state").exists():
        d = ObliviousDict.open(path, key=KEY, durability=durability)  # type: ignore[arg-type]
    else:
        d = ObliviousDict(
            CAPACITY,
            KEY_SIZE,
            VALUE_SIZE,
            key=KEY,
            path=path,
            durability=durability,  # type: ignore[arg-type]
            slots_per_bucket=4,
            relocate_every=4,
            treetop_bytes=2 * 4 * 4 * (8 + KEY_SIZE + VALUE_SIZE + 16),
        )
    print(f"commit 0 {d.epoch}", flush=True)
    for n, (key, value) in enumerate(workload(int(seed), int(ops)), 1):
        if value is None:
            d.pop(key, None)
        else:
            d[key] = value
        print(f"done {n}", flush=True)
        if n % int(every) == 0:
            epoch = d.commit()
            print(f"commit {n} {epoch}", flush=True)
    d.close()
    print("closed", flush=True)


if __name__ == "__main__":
    main()
