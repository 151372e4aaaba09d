"""What the host sees: the untrusted storages are wrapped to record every index they are asked
for, and the recorded branches must not depend on which blocks the program touched."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

from oram_layout import record, small_recursive_oram, trees
from oramstore import PathORAM
from oramstore.oram import path as path_module

ACCESSES = 4096


def leaves_of(oram: PathORAM, log: list[tuple[str, str, tuple[int, ...]]]) -> list[int]:
    """The leaf of every branch the data tree was asked for, checking that each access is one
    checkout of a whole branch followed by the checkin of the same branch."""
    tree = oram.tree
    calls = [(op, idx) for name, op, idx in log if name == "data"]
    assert len(calls) % 2 == 0
    leaves = []
    for (op1, out), (op2, back) in zip(calls[::2], calls[1::2], strict=True):
        assert (op1, op2) == ("checkout", "checkin")
        assert out == back
        leaf = out[-1] + tree.untrusted_offset - tree.leaf_count
        assert list(out) == (tree.path(leaf) - tree.untrusted_offset).tolist()
        leaves.append(leaf)
    return leaves


def upper_tail(statistic: float, df: int) -> float:
    """P(X >= statistic) for X ~ chi-square(df), by the Wilson-Hilferty approximation."""
    z = ((statistic / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def uniformity(samples: list[int], cells: int) -> float:
    """p-value of a chi-square test that ``samples`` are uniform over ``range(cells)``."""
    counts = np.bincount(samples, minlength=cells)
    assert len(counts) == cells
    expected = len(samples) / cells
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return upper_tail(statistic, cells - 1)


SEQUENCES: dict[str, Callable[[int], list[int]]] = {
    "one block": lambda n: [7] * ACCESSES,
    "sequential": lambda n: [i % n for i in range(ACCESSES)],
    "random": lambda n: np.random.default_rng(1).integers(0, n, ACCESSES).tolist(),
}

# A false alarm once in a million runs per test; a bias the tests below are shown to catch.
ALPHA = 1e-6


def run(oram: PathORAM, sequence: list[int]) -> list[tuple[str, str, tuple[int, ...]]]:
    log = record(oram)
    for k, i in enumerate(sequence):
        if k % 2:
            oram.write(i, bytes([k % 256]) * oram.block_size)
        else:
            oram.read(i)
    return log


def test_chi_square_catches_a_biased_leaf_source() -> None:
    rng = np.random.default_rng(0)
    fair = rng.integers(0, 64, ACCESSES).tolist()
    assert uniformity(fair, 64) > ALPHA
    biased = [leaf if leaf % 8 else int(rng.integers(0, 64)) for leaf in fair]  # 1 in 8 redrawn
    assert uniformity(biased, 64) < ALPHA
    assert uniformity([leaf // 2 * 2 for leaf in fair], 64) < ALPHA


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_branch_leaves_are_uniform_whatever_the_sequence(name: str) -> None:
    with PathORAM(256, 32, treetop_bytes=0) as oram:
        leaves = leaves_of(oram, run(oram, SEQUENCES[name](256)))
        assert len(leaves) == ACCESSES
        assert uniformity(leaves, oram.tree.leaf_count) > ALPHA
        # Successive branches are independent: the pairs are uniform over all leaf pairs.
        cells = oram.tree.leaf_count
        pairs = [a * cells + b for a, b in itertools.pairwise(leaves)]
        assert uniformity(pairs, cells * cells) > ALPHA


def test_the_same_block_does_not_revisit_its_branch() -> None:
    # Leaves drawn with replacement meet their predecessor 1 time in leaf_count; a scheme that
    # reused the block's leaf would meet it every time.
    with PathORAM(256, 32, treetop_bytes=0) as oram:
        leaves = leaves_of(oram, run(oram, SEQUENCES["one block"](256)))
        repeats = sum(a == b for a, b in itertools.pairwise(leaves))
        assert repeats < 4 * ACCESSES / oram.tree.leaf_count


def test_a_predictable_leaf_source_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    class Cycling:
        def __init__(self, leaf_count: int) -> None:
            self.next, self.count = 0, leaf_count

        def leaf(self) -> int:
            self.next = (self.next + 1) % self.count
            return self.next // 2 * 2  # never an odd leaf

        def pair(self) -> tuple[int, int]:
            return self.leaf(), self.leaf()

    monkeypatch.setattr(path_module, "_Leaves", Cycling)
    with PathORAM(256, 32, treetop_bytes=0) as oram:
        leaves = leaves_of(oram, run(oram, SEQUENCES["one block"](256)))
        assert uniformity(leaves, oram.tree.leaf_count) < ALPHA


@pytest.mark.parametrize("position_map", ["array", "recursive"])
def test_what_the_host_sees_has_the_same_shape_for_every_sequence(position_map: str) -> None:
    shapes = set()
    for name, sequence in SEQUENCES.items():
        with small_recursive_oram(position_map) as oram:
            log = run(oram, sequence(600)[:600])
            # Per access: the same trees, the same operations, the same number of indices.
            shape = tuple((tree, op, len(idx)) for tree, op, idx in log)
            shapes.add(shape)
            per_tree = Counter(tree for tree, _, _ in log)
            depth = len(list(trees(oram)))
            assert len(per_tree) == depth
            assert all(count == 2 * 600 for count in per_tree.values()), (name, per_tree)
    assert len(shapes) == 1
