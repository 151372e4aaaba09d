"""Test helpers for PathORAM: random workloads checked against a dict, and reading its tree
the way only a test may (every bucket, decrypted and verified)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from oramstore import PathORAM, UntrustedStorage
from oramstore.oram import ArrayPositionMap, RecursivePositionMap

SLOT_META = 16


class Recorder:
    """Plays the host: stands in for an UntrustedStorage and logs (tree, operation, indices)
    per call."""

    def __init__(
        self, inner: UntrustedStorage, name: str, log: list[tuple[str, str, tuple[int, ...]]]
    ):
        self.inner, self.name, self.log = inner, name, log

    def checkout_into(self, indices: Any, data: Any, meta: Any) -> None:
        self.log.append((self.name, "checkout", tuple(np.asarray(indices).tolist())))
        self.inner.checkout_into(indices, data, meta)

    def checkin(self, indices: Any, data: Any, meta: Any) -> None:
        self.log.append((self.name, "checkin", tuple(np.asarray(indices).tolist())))
        self.inner.checkin(indices, data, meta)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def trees(oram: PathORAM) -> Iterator[tuple[str, PathORAM]]:
    name = "data"
    while True:
        yield name, oram
        positions = oram.position_map
        if not isinstance(positions, RecursivePositionMap):
            return
        oram, name = positions.inner, name + "/positions"


def record(oram: PathORAM) -> list[tuple[str, str, tuple[int, ...]]]:
    log: list[tuple[str, str, tuple[int, ...]]] = []
    for name, o in trees(oram):
        assert o.tree.treetop_levels == 0 and o.tree.untrusted is not None
        o.tree.untrusted = Recorder(o.tree.untrusted, name, log)  # type: ignore[assignment]
    return log


def small_recursive_oram(
    position_map: str, *, key: bytes | None = None, path: Path | None = None
) -> PathORAM:
    """600 blocks of 16 bytes, all in untrusted memory (or files, with ``path``); with
    ``"recursive"``, position maps nest two levels deep."""
    return PathORAM(
        600,
        16,
        key=key,
        path=path,
        treetop_bytes=0,
        position_map=position_map,  # type: ignore[arg-type]
        position_map_threshold=2,
    )


def random_accesses(
    oram: PathORAM,
    model: dict[int, bytes],
    rng: np.random.Generator,
    count: int,
    *,
    write_share: float = 0.5,
) -> None:
    """``count`` accesses of uniformly random blocks, ``write_share`` of them writes of random
    bytes (recorded in ``model``), the rest reads checked against ``model``."""
    n, size = len(oram), oram.block_size
    for _ in range(count):
        i = int(rng.integers(n))
        if rng.random() < write_share:
            block = rng.integers(0, 256, size, np.uint8).tobytes()
            oram.write(i, block)
            model[i] = block
        else:
            assert oram.read(i) == model.get(i, bytes(size))


def blocks_in_tree(oram: PathORAM) -> dict[int, tuple[int, bytes, int]]:
    """Every real block in the tree: index -> (tree node, contents, recorded leaf).

    A bucket is Z slots of ``block_size`` bytes followed by 16 bytes of metadata (index + 1,
    leaf). Fails the test if a block appears in two slots.
    """
    tree, z, size = oram.tree, oram.bucket_size, oram.block_size
    assert tree.bucket_size == z * (size + SLOT_META) and tree.meta_size == 0
    found: dict[int, tuple[int, bytes, int]] = {}
    seen_nodes: set[int] = set()
    for leaf in range(tree.leaf_count):
        data, meta = tree.checkout_branch(leaf)
        tree.checkin_branch(leaf, data, meta)
        for level, node in enumerate(tree.path(leaf).tolist()):
            if node in seen_nodes:
                continue
            seen_nodes.add(node)
            bucket = data[level].reshape(z, size + SLOT_META)
            for k in range(z):
                ident, slot_leaf = bucket[k, size:].view("<u8").tolist()
                if ident == 0:
                    assert slot_leaf == 0, "an empty slot records a leaf"
                    continue
                assert ident - 1 not in found, f"block {ident - 1} stored twice"
                found[ident - 1] = (node, bucket[k, :size].tobytes(), slot_leaf)
    return found


def stash_contents(oram: PathORAM) -> dict[int, tuple[bytes, int]]:
    ids, leaves, rows = oram._stash_ids, oram._stash_leaves, oram._stash_rows
    assert len(ids) == len(leaves) == len(rows) == oram.stash_len
    assert len(set(ids)) == len(ids) and 0 not in ids, "stash holds a duplicate or an empty entry"
    assert len(set(rows)) == len(rows), "two stash blocks share a row"
    assert not set(rows) & set(oram._free_rows), "a stash row is also free"
    for ident, leaf, row in zip(ids, leaves, rows, strict=True):
        assert oram._stash_heads[row].tolist() == [ident, leaf], "a stash row's metadata is stale"
    return {
        ident - 1: (oram._stash_data[row, : oram.block_size].tobytes(), leaf)
        for ident, leaf, row in zip(ids, leaves, rows, strict=True)
    }


def check_invariant(oram: PathORAM, model: dict[int, bytes]) -> None:
    """Path ORAM's invariant: every written block is exactly once in the tree or the stash, on
    the branch to the leaf the position map gives it, holding what was last written."""
    positions = oram.position_map
    assert isinstance(positions, ArrayPositionMap)
    entries = positions._entries
    tree = oram.tree
    in_tree = blocks_in_tree(oram)
    in_stash = stash_contents(oram)
    assert not in_tree.keys() & in_stash.keys(), "a block is both in the tree and the stash"
    assert in_tree.keys() | in_stash.keys() == model.keys()
    for index, (node, contents, leaf) in in_tree.items():
        assert contents == model[index]
        assert leaf == int(entries[index]) - 1
        assert node in tree.path(leaf).tolist(), f"block {index} is off its branch"
    for index, (contents, leaf) in in_stash.items():
        assert contents == model[index]
        assert leaf == int(entries[index]) - 1
    # Read-only accesses assign leaves too, so every assigned leaf is a valid one.
    assert int(np.max(entries, initial=0)) <= tree.leaf_count
