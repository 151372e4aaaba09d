"""UntrustedStorage against a plain model: a bytearray for metadata, a dict for written data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from oramstore import StorageReleasedError, UntrustedStorage

COUNT, D, M = 40, 24, 8

# Indices reach past the end so that refused calls are part of the run.
index = st.integers(min_value=-3, max_value=COUNT + 3)


class StorageModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.storage = UntrustedStorage(COUNT, D, M)
        self.meta = bytearray(COUNT * M)
        self.data: dict[int, bytes] = {}
        self.released = False

    def expect_refusal(self, indices: list[int], *, distinct: bool) -> type[Exception] | None:
        if any(i < 0 or i >= COUNT for i in indices):
            return IndexError
        if distinct and len(set(indices)) != len(indices):
            return ValueError
        return None

    @precondition(lambda self: not self.released)
    @rule(indices=st.lists(index, max_size=8), seed=st.binary(min_size=1, max_size=1))
    def checkin(self, indices: list[int], seed: bytes) -> None:
        rng = np.random.default_rng(seed[0])
        data = rng.integers(0, 256, (len(indices), D), np.uint8)
        meta = rng.integers(0, 256, (len(indices), M), np.uint8)
        refusal = self.expect_refusal(indices, distinct=True)
        if refusal is not None:
            with pytest.raises(refusal):
                self.storage.checkin(indices, data, meta)
            return
        self.storage.checkin(indices, data, meta.tobytes())
        for k, i in enumerate(indices):
            self.data[i] = data[k].tobytes()
            self.meta[i * M : (i + 1) * M] = meta[k].tobytes()

    @precondition(lambda self: not self.released)
    @rule(indices=st.lists(index, max_size=8), into=st.booleans())
    def checkout(self, indices: list[int], into: bool) -> None:
        refusal = self.expect_refusal(indices, distinct=False)
        if refusal is not None:
            with pytest.raises(refusal):
                self.storage.checkout(indices)
            return
        if into:
            data = np.empty((len(indices), D), np.uint8)
            meta_buf = bytearray(len(indices) * M)
            self.storage.checkout_into(np.array(indices, np.int64), data, meta_buf)
            meta = np.frombuffer(meta_buf, np.uint8).reshape(len(indices), M)
        else:
            data, meta = self.storage.checkout(indices)
        for k, i in enumerate(indices):
            assert meta[k].tobytes() == self.meta[i * M : (i + 1) * M]
            if i in self.data:
                assert data[k].tobytes() == self.data[i]

    @precondition(lambda self: not self.released)
    @rule(k=st.integers(1, 3), extra=st.sampled_from([-1, 1]))
    def wrong_length_is_refused(self, k: int, extra: int) -> None:
        indices = list(range(k))
        with pytest.raises(ValueError, match="data buffer holds"):
            self.storage.checkin(indices, bytes(k * D + extra), bytes(k * M))

    @rule()
    def release(self) -> None:
        self.storage.release()
        self.released = True

    @precondition(lambda self: self.released)
    @rule()
    def released_refuses(self) -> None:
        with pytest.raises(StorageReleasedError):
            self.storage.checkout([0])

    @invariant()
    def released_flag_matches(self) -> None:
        assert self.storage.released == self.released

    def teardown(self) -> None:
        self.storage.release()


TestStorageModel = StorageModel.TestCase
