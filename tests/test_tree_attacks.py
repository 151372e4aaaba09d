"""A malicious host against TreeStorage.

The test plays the host through ``storage.untrusted``: after honest writes it flips, zeroes,
swaps, replays or rolls back untrusted bytes, then reads every branch. The oracle:

* a branch through an *effectively* tampered bucket must raise IntegrityError, where effective
  means its metadata changed, or its sealed bytes changed while it holds a written version
  (the data of a never-written bucket is ignored by design and reads as zeros);
* every branch that reads without error returns exactly what was last written.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from oramstore import IntegrityError, TreeStorage

HEIGHT, BUCKET, META = 5, 24, 8
Snapshot = tuple[np.ndarray, np.ndarray]


class Host:
    """The honest state of a tree plus the tools of an attacker."""

    def __init__(self, seed: int, treetop_bytes: int = 3 * (BUCKET + META)) -> None:
        self.rng = np.random.default_rng(seed)
        self.ts = TreeStorage(HEIGHT, BUCKET, META, treetop_bytes=treetop_bytes)
        assert self.ts.untrusted is not None
        self.store = self.ts.untrusted
        self.truth: dict[int, tuple[bytes, bytes]] = {}
        self.all = np.arange(self.store.count)

    def write(self, leaf: int | None = None) -> None:
        leaf = int(self.rng.integers(self.ts.leaf_count)) if leaf is None else leaf
        self.ts.checkout_branch(leaf)
        data = self.rng.integers(0, 256, (self.ts.levels, BUCKET), np.uint8)
        meta = self.rng.integers(0, 256, (self.ts.levels, META), np.uint8)
        self.ts.checkin_branch(leaf, data, meta)
        for d, node in enumerate(self.ts.path(leaf).tolist()):
            self.truth[node] = (data[d].tobytes(), meta[d].tobytes())

    def snapshot(self) -> Snapshot:
        return self.store.checkout(self.all)

    def restore(self, snap: Snapshot) -> None:
        self.store.checkin(self.all, snap[0], snap[1])

    def node_of(self, item: int) -> int:
        return item + self.ts.untrusted_offset

    def tampered_nodes(self, honest: Snapshot) -> set[int]:
        now = self.snapshot()
        meta_changed = (now[1] != honest[1]).any(axis=1)
        written = honest[1].any(axis=1)
        data_changed = (now[0] != honest[0]).any(axis=1) & written
        return {self.node_of(int(i)) for i in np.flatnonzero(meta_changed | data_changed)}

    def check_every_branch(self, tampered: set[int]) -> int:
        """Read every leaf; return how many raised. Asserts the oracle."""
        raised = 0
        for leaf in range(self.ts.leaf_count):
            path = self.ts.path(leaf).tolist()
            through = tampered.intersection(path)
            if through:
                with pytest.raises(IntegrityError) as caught:
                    self.ts.checkout_branch(leaf)
                assert caught.value.index in through, (caught.value.index, through)
                raised += 1
                continue
            data, meta = self.ts.checkout_branch(leaf)  # an IntegrityError here is a false alarm
            for d, node in enumerate(path):
                want = self.truth.get(node, (bytes(BUCKET), bytes(META)))
                assert data[d].tobytes() == want[0], f"wrong data in bucket {node}"
                assert meta[d].tobytes() == want[1], f"wrong meta in bucket {node}"
        return raised


def flip_data_bit(h: Host) -> None:
    i = int(h.rng.integers(h.store.count))
    data, meta = h.store.checkout([i])
    bit = int(h.rng.integers(data.size * 8))
    data.reshape(-1)[bit // 8] ^= 1 << (bit % 8)
    h.store.checkin([i], data, meta)


def flip_meta_bit(h: Host) -> None:
    i = int(h.rng.integers(h.store.count))
    data, meta = h.store.checkout([i])
    bit = int(h.rng.integers(meta.size * 8))
    meta.reshape(-1)[bit // 8] ^= 1 << (bit % 8)
    h.store.checkin([i], data, meta)


def written_item(h: Host) -> int:
    _, meta = h.store.checkout(h.all)
    written = np.flatnonzero(meta.any(axis=1))
    return int(h.rng.choice(written))


def zero_meta(h: Host) -> None:
    i = written_item(h)
    data, meta = h.store.checkout([i])
    h.store.checkin([i], data, np.zeros_like(meta))


def zero_data(h: Host) -> None:
    i = written_item(h)
    data, meta = h.store.checkout([i])
    h.store.checkin([i], np.zeros_like(data), meta)


def swap_two(h: Host) -> None:
    i = written_item(h)
    j = int(h.rng.integers(h.store.count))
    while j == i:
        j = int(h.rng.integers(h.store.count))
    data, meta = h.store.checkout([i, j])
    h.store.checkin([j, i], data, meta)


ATTACKS: list[Callable[[Host], None]] = [
    flip_data_bit,
    flip_meta_bit,
    zero_meta,
    zero_data,
    swap_two,
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.__name__)
def test_every_in_place_attack_is_caught(attack: Callable[[Host], None]) -> None:
    h = Host(seed=ATTACKS.index(attack))
    for _ in range(40):
        h.write()
    caught = 0
    for _ in range(400):
        honest = h.snapshot()
        attack(h)
        tampered = h.tampered_nodes(honest)
        caught += h.check_every_branch(tampered)
        h.restore(honest)
        if h.rng.random() < 0.3:
            h.write()
    assert caught > 0


def test_replaying_an_older_version_of_a_bucket_is_caught() -> None:
    h = Host(seed=11)
    for _ in range(30):
        h.write()
    caught = 0
    for _ in range(300):
        leaf = int(h.rng.integers(h.ts.leaf_count))
        path = h.ts.path(leaf)
        depth = int(h.rng.integers(h.ts.treetop_levels, h.ts.levels))
        item = int(path[depth]) - h.ts.untrusted_offset
        old = h.store.checkout([item])
        h.write(leaf)  # the bucket gets a new version
        honest = h.snapshot()
        h.store.checkin([item], old[0], old[1])  # the host serves the old one again
        tampered = h.tampered_nodes(honest)
        assert int(path[depth]) in tampered
        caught += h.check_every_branch(tampered)
        h.restore(honest)
    assert caught >= 300


def test_rolling_back_all_untrusted_memory_is_caught() -> None:
    h = Host(seed=12)
    for _ in range(20):
        h.write()
    for _ in range(40):
        old = h.snapshot()
        for _ in range(int(h.rng.integers(1, 6))):
            h.write()
        honest = h.snapshot()
        h.restore(old)  # a consistent, older state of the whole tree
        tampered = h.tampered_nodes(honest)
        assert tampered
        assert h.check_every_branch(tampered) > 0
        h.restore(honest)


def test_garbage_where_nothing_was_written_is_caught() -> None:
    h = Host(seed=13, treetop_bytes=0)
    h.write(0)
    honest = h.snapshot()
    # The host scribbles metadata into a bucket that was never written.
    never = int(np.flatnonzero(~honest[1].any(axis=1))[0])
    h.store.checkin(
        [never],
        np.zeros((1, h.store.data_size), np.uint8),
        np.ones((1, h.store.meta_size), np.uint8),
    )
    tampered = h.tampered_nodes(honest)
    assert h.check_every_branch(tampered) > 0


def test_a_failed_checkout_leaves_the_tree_usable() -> None:
    h = Host(seed=14)
    for _ in range(10):
        h.write()
    leaf = 3
    h.write(leaf)
    honest = h.snapshot()
    item = int(h.ts.path(leaf)[-1]) - h.ts.untrusted_offset
    data, meta = h.store.checkout([item])
    data[0, 0] ^= 0x80
    h.store.checkin([item], data, meta)
    with pytest.raises(IntegrityError) as err:
        h.ts.checkout_branch(leaf)
    assert err.value.index == int(h.ts.path(leaf)[-1])
    assert str(err.value.index) in str(err.value)
    with pytest.raises(ValueError, match="must follow"):
        h.ts.checkin_branch(leaf, bytes(h.ts.levels * BUCKET), bytes(h.ts.levels * META))
    h.restore(honest)
    assert h.check_every_branch(set()) == 0
    h.write(leaf)
    assert h.check_every_branch(set()) == 0
