"""PathORAM.update: a read-modify-write of a few blocks, one access each, that shows the host
what read_many shows it."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from oram_layout import check_invariant, record, small_recursive_oram
from oramstore import IntegrityError, PathORAM, PoisonedError
from oramstore.oram import MAX_UPDATE_BLOCKS
from oramstore.oram import path as path_module
from test_durable import KEY, contents, crash, make
from test_oram_oblivious import ALPHA, leaves_of, uniformity

Bytes = Any


def random_updates(
    oram: PathORAM, model: dict[int, bytes], rng: np.random.Generator, count: int
) -> None:
    """``count`` updates of 1 .. MAX_UPDATE_BLOCKS distinct random blocks, each checking what it
    is given against ``model`` and writing new bytes to a random subset, with reads and writes
    in between."""
    n, size = len(oram), oram.block_size
    for _ in range(count):
        k = int(rng.integers(1, MAX_UPDATE_BLOCKS + 1))
        indices = rng.choice(n, k, replace=False).tolist()
        new = {i: rng.integers(0, 256, size, np.uint8) for i in indices if rng.random() < 0.6}

        def change(
            blocks: list[Bytes], indices: list[int] = indices, new: dict[int, Bytes] = new
        ) -> int:
            assert len(blocks) == len(indices)
            for i, block in zip(indices, blocks, strict=True):
                assert block.dtype == np.uint8 and block.shape == (size,)
                assert block.tobytes() == model.get(i, bytes(size)), i
                if i in new:
                    block[:] = new[i]
            return len(new)

        assert oram.update(indices, change) == len(new)
        for i in indices:
            model[i] = new[i].tobytes() if i in new else model.get(i, bytes(size))
        if rng.random() < 0.3:
            i = int(rng.integers(n))
            assert oram.read(i) == model.get(i, bytes(size))
        if rng.random() < 0.3:
            i = int(rng.integers(n))
            model[i] = rng.integers(0, 256, size, np.uint8).tobytes()
            oram.write(i, model[i])


@pytest.mark.parametrize("position_map", ["array", "recursive"])
def test_updates_match_a_model(position_map: str) -> None:
    rng = np.random.default_rng(3)
    model: dict[int, bytes] = {}
    with small_recursive_oram(position_map) as oram:
        random_updates(oram, model, rng, 600)
        assert oram.stash_len <= oram.stash_size
        if position_map == "array":
            # Every block an update touched is stored once, on its branch or in the stash.
            check_invariant(oram, model)
        blocks = oram.read_many(range(len(oram)))
        for i in range(len(oram)):
            assert blocks[i].tobytes() == model.get(i, bytes(oram.block_size))


def test_updates_with_a_treetop_and_larger_buckets() -> None:
    rng = np.random.default_rng(4)
    model: dict[int, bytes] = {}
    with PathORAM(500, 40, bucket_size=6, treetop_bytes=6 * 56 * 7) as oram:
        assert oram.tree.treetop_levels > 0
        random_updates(oram, model, rng, 500)
        check_invariant(oram, model)


def test_an_update_looks_like_read_many_of_as_many_blocks() -> None:
    shapes = []
    for kind in ("read_many", "update"):
        with small_recursive_oram("recursive", key=KEY) as oram:
            log = record(oram)
            for k in (1, 2, 5, MAX_UPDATE_BLOCKS):
                indices = list(range(10 * k, 11 * k))
                if kind == "update":
                    oram.update(indices, lambda blocks: None)
                else:
                    oram.read_many(indices)
            shapes.append([(tree, op, len(idx)) for tree, op, idx in log])
    assert shapes[0] == shapes[1]


def test_the_branches_of_updates_are_uniform() -> None:
    # The same two blocks, updated over and over: 64 leaves, 4,000 branches.
    with PathORAM(256, 8, treetop_bytes=0) as oram:
        log = record(oram)
        for k in range(2000):

            def change(blocks: list[Bytes], k: int = k) -> None:
                blocks[k % 2].fill(k % 256)

            oram.update([3, 200], change)
        leaves = leaves_of(oram, log)
        cells = oram.tree.leaf_count
        assert len(leaves) == 4000 and cells == 64
        assert uniformity(leaves, cells) > ALPHA
        pairs = [a * cells + b for a, b in itertools.pairwise(leaves)]
        assert uniformity(pairs, cells * cells) > ALPHA


@pytest.mark.parametrize(
    ("indices", "error"),
    [
        ([], ValueError),
        ([1, 2, 1], ValueError),
        (list(range(MAX_UPDATE_BLOCKS + 1)), ValueError),
        ([1, 600], IndexError),
        ([-1], IndexError),
        ([1.0], TypeError),
        (["1"], TypeError),
    ],
)
def test_bad_indices_are_refused_before_any_access(indices: list[Any], error: type) -> None:
    with small_recursive_oram("array") as oram:
        log = record(oram)
        with pytest.raises(error):
            oram.update(indices, lambda blocks: None)
        assert log == [] and oram.poisoned is None
        oram.update([1, 2], lambda blocks: None)


def test_an_exception_in_fn_writes_back_what_it_left_and_keeps_the_oram_usable() -> None:
    model: dict[int, bytes] = {}
    with PathORAM(300, 8, treetop_bytes=0, position_map="array") as oram:
        oram.write(5, b"before!!")
        model[5] = b"before!!"

        def half_done(blocks: list[Bytes]) -> None:
            blocks[0][:] = np.frombuffer(b"changed!", np.uint8)
            raise ValueError("the caller's own bug")

        with pytest.raises(ValueError, match="own bug"):
            oram.update([7, 5], half_done)
        model[7] = b"changed!"
        assert oram.poisoned is None
        assert oram.read(7) == b"changed!" and oram.read(5) == b"before!!"
        check_invariant(oram, model)


def test_an_interrupt_in_fn_poisons_the_oram() -> None:
    with small_recursive_oram("recursive") as oram:

        def interrupted(blocks: list[Bytes]) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            oram.update([1, 2], interrupted)
        with pytest.raises(PoisonedError):
            oram.read(1)
        assert oram.position_map.inner.poisoned is not None  # type: ignore[attr-defined]


# --- durability -----------------------------------------------------------------------------


def test_access_durability_keeps_an_update_that_returned(tmp_path: Path) -> None:
    oram = make(tmp_path / "s", durability="access")
    oram.write(3, b"a" * 24)
    oram.update([3, 4], lambda blocks: blocks[1].fill(ord("b")))
    oram.update([4], lambda blocks: blocks[0].__setitem__(slice(0, 1), ord("c")))
    crash(oram)
    with PathORAM.open(tmp_path / "s", key=KEY) as reopened:
        assert reopened.replayed == 4
        assert contents(reopened) == {3: b"a" * 24, 4: b"c" + b"b" * 23}


def test_commit_durability_replays_updates_on_the_branches_the_host_saw(
    tmp_path: Path,
) -> None:
    oram = make(tmp_path / "s")
    oram.write(3, b"a" * 24)
    oram.commit()
    oram.update([3, 4], lambda blocks: blocks[0].fill(ord("z")))
    crash(oram)
    with PathORAM.open(tmp_path / "s", key=KEY) as reopened:
        assert reopened.replayed == 2
        assert contents(reopened) == {3: b"a" * 24}


def test_an_update_cut_short_before_its_data_is_journaled_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    oram = make(tmp_path / "s", durability="access")
    oram.write(3, b"a" * 24)

    def failing(written: list[tuple[int, bytes]]) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(path_module, "_encode_data", failing)
    with pytest.raises(OSError, match="No space"):
        oram.update([3, 4], lambda blocks: blocks[0].fill(ord("z")))
    assert oram.poisoned is not None
    crash(oram)
    monkeypatch.undo()
    with PathORAM.open(tmp_path / "s", key=KEY) as reopened:
        # The write and the update's two accesses run again; the update's data is not there.
        assert reopened.replayed == 3
        assert contents(reopened) == {3: b"a" * 24}


def test_update_records_that_do_not_match_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encode = path_module._encode_data

    def other_block(written: list[tuple[int, bytes]]) -> bytes:
        return encode([((index + 1) % 300, block) for index, block in written])

    oram = make(tmp_path / "s", durability="access")
    monkeypatch.setattr(path_module, "_encode_data", other_block)
    oram.update([3, 4], lambda blocks: None)
    crash(oram)
    with pytest.raises(IntegrityError, match="update data"):
        PathORAM.open(tmp_path / "s", key=KEY)

    # A record of update data on its own, after a commit.
    monkeypatch.undo()
    oram = make(tmp_path / "t", durability="access")
    store = oram._store
    assert store is not None
    store.journal.append(path_module._encode_data([(3, b"x" * 24)]))
    crash(oram)
    with pytest.raises(IntegrityError, match="follows no update"):
        PathORAM.open(tmp_path / "t", key=KEY)


def test_an_update_journals_a_record_of_read_many_size_then_its_data(tmp_path: Path) -> None:
    oram = make(tmp_path / "s", durability="access")
    journal = oram._store.journal  # type: ignore[union-attr]
    before = journal.bytes
    oram.read_many([1, 2, 3])
    read_size = journal.bytes - before
    sizes = []
    for indices in ([4, 5, 6], [7, 8, 9]):
        records, before = journal.count, journal.bytes

        def probe(blocks: list[Bytes], before: int = before) -> None:
            # The accesses' record is written before the first branch is read.
            sizes.append(journal.bytes - before)

        oram.update(indices, probe)
        assert journal.count == records + 2
        sizes.append(journal.bytes - before - sizes[-1])
    # The accesses' record is the size of read_many's; the data's depends only on the count.
    assert sizes[0] == sizes[2] == read_size
    assert sizes[1] == sizes[3] > 3 * 24
    oram.close()


@pytest.mark.parametrize("block_size", [1, 13, 24])
def test_any_block_size(block_size: int) -> None:
    # Rows of whole 8-byte words and rows of any other size take different paths to their
    # slots' metadata.
    rng = np.random.default_rng(block_size)
    model: dict[int, bytes] = {}
    with PathORAM(200, block_size, treetop_bytes=3 * 4 * (block_size + 16)) as oram:
        random_updates(oram, model, rng, 300)
        check_invariant(oram, model)
