"""PathORAM against a dict, with Path ORAM's invariant checked on the real tree as it runs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from oram_layout import check_invariant
from oramstore import PathORAM, StorageReleasedError

COUNT, SIZE = 50, 24

# Indices reach past both ends so that refused calls are part of the run.
index = st.integers(min_value=-2, max_value=COUNT + 2)
block = st.binary(min_size=SIZE, max_size=SIZE)


class ORAMModel(RuleBasedStateMachine):
    position_map = "array"

    def __init__(self) -> None:
        super().__init__()
        self.oram = PathORAM(
            COUNT,
            SIZE,
            bucket_size=4,
            treetop_bytes=200,
            position_map=self.position_map,  # type: ignore[arg-type]
            position_map_threshold=2,
        )
        self.model: dict[int, bytes] = {}
        self.closed = False

    def teardown(self) -> None:
        self.oram.close()

    @precondition(lambda self: not self.closed)
    @rule(i=index, data=block)
    def write(self, i: int, data: bytes) -> None:
        if not 0 <= i < COUNT:
            with pytest.raises(IndexError):
                self.oram.write(i, data)
            return
        self.oram.write(i, data)
        self.model[i] = data

    @precondition(lambda self: not self.closed)
    @rule(i=index)
    def read(self, i: int) -> None:
        if not 0 <= i < COUNT:
            with pytest.raises(IndexError):
                self.oram.read(i)
            return
        assert self.oram.read(i) == self.model.get(i, bytes(SIZE))

    @precondition(lambda self: not self.closed)
    @rule(pairs=st.lists(st.tuples(index, block), max_size=6))
    def write_many(self, pairs: list[tuple[int, bytes]]) -> None:
        indices = [i for i, _ in pairs]
        blocks = [b for _, b in pairs]
        if any(not 0 <= i < COUNT for i in indices):
            before = dict(self.model)
            with pytest.raises(IndexError):
                self.oram.write_many(indices, blocks)
            assert self.model == before  # nothing was written: checked up front
            return
        self.oram.write_many(indices, np.frombuffer(b"".join(blocks), np.uint8).reshape(-1, SIZE))
        for i, b in pairs:
            self.model[i] = b

    @precondition(lambda self: not self.closed)
    @rule(indices=st.lists(st.integers(0, COUNT - 1), max_size=6))
    def read_many(self, indices: list[int]) -> None:
        out = self.oram.read_many(indices)
        assert out.shape == (len(indices), SIZE)
        for row, i in zip(out, indices, strict=True):
            assert row.tobytes() == self.model.get(i, bytes(SIZE))

    @precondition(lambda self: not self.closed)
    @rule(i=st.integers(0, COUNT - 1), size=st.sampled_from([0, SIZE - 1, SIZE + 1]))
    def wrong_size(self, i: int, size: int) -> None:
        with pytest.raises(ValueError, match=f"must be {SIZE} bytes"):
            self.oram.write(i, bytes(size))

    @precondition(lambda self: self.position_map == "array" and not self.closed)
    @rule()
    def path_invariant(self) -> None:
        check_invariant(self.oram, self.model)

    @rule()
    def close(self) -> None:
        self.oram.close()
        self.closed = True
        with pytest.raises(StorageReleasedError):
            self.oram.read(0)
        with pytest.raises(ValueError, match="closed"):  # StorageReleasedError is a ValueError
            self.oram.write(0, bytes(SIZE))

    @invariant()
    def stash_within_capacity(self) -> None:
        assert 0 <= self.oram.stash_len <= self.oram.stash_size


class RecursiveORAMModel(ORAMModel):
    position_map = "recursive"


TestArrayPositionMap = ORAMModel.TestCase
TestRecursivePositionMap = RecursiveORAMModel.TestCase
