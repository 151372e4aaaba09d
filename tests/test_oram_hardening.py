"""The host's attacks on the trusted layer's state: nonces across instances, and failures.

No (key, nonce) pair may ever be used twice, however the caller reuses keys, forks or copies;
and once an access fails part-way the ORAM refuses every later call, so the host never sees
a block's branch twice.
"""

from __future__ import annotations

import copy
import os
import pickle
import threading
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from oram_layout import Recorder, record, small_recursive_oram, stash_contents, trees
from oramstore import (
    IntegrityError,
    PathORAM,
    PoisonedError,
    StashOverflowError,
    TreeStorage,
)
from oramstore.enclave import crypto
from oramstore.enclave import sealed as sealed_module
from oramstore.enclave.crypto import BucketSealer
from oramstore.oram import ArrayPositionMap, RecursivePositionMap
from oramstore.oram import path as path_module

Pairs = list[tuple[bytes, bytes]]


class RecordingAESGCM:
    """AES-GCM that logs the (key, nonce) pair of every encryption."""

    log: ClassVar[Pairs] = []

    def __init__(self, key: bytes) -> None:
        self.key = bytes(key)
        self.inner = AESGCM(key)

    def encrypt_into(self, nonce: bytes, data: Any, aad: Any, out: Any) -> Any:
        RecordingAESGCM.log.append((self.key, bytes(nonce)))
        return self.inner.encrypt_into(nonce, data, aad, out)

    def decrypt_into(self, nonce: bytes, data: Any, aad: Any, out: Any) -> Any:
        return self.inner.decrypt_into(nonce, data, aad, out)

    def encrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
        RecordingAESGCM.log.append((self.key, bytes(nonce)))
        return self.inner.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
        return self.inner.decrypt(nonce, data, aad)


@pytest.fixture
def sealed_pairs(monkeypatch: pytest.MonkeyPatch) -> Pairs:
    """Every (key, nonce) pair sealed under from now on, in this process."""
    log: Pairs = []
    monkeypatch.setattr(RecordingAESGCM, "log", log)
    monkeypatch.setattr(crypto, "AESGCM", RecordingAESGCM)
    return log


def repeated(pairs: Pairs) -> list[tuple[bytes, bytes]]:
    return [pair for pair, count in Counter(pairs).items() if count > 1]


def same_workload(oram: PathORAM) -> None:
    n = len(oram)
    for k in range(200):
        oram.write(k % n, bytes([k % 256]) * oram.block_size)
        if k % 4:
            oram.read((7 * k) % n)
        else:  # an update holds a block in the stash across accesses: sealed the same way
            oram.update([(7 * k) % n, (7 * k + 1) % n], lambda blocks: blocks[1].fill(1))


# --- nonces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("position_map", ["array", "recursive"])
def test_two_instances_under_one_key_share_no_nonce(sealed_pairs: Pairs, position_map: str) -> None:
    key = bytes(range(32))
    orams = [small_recursive_oram(position_map, key=key) for _ in range(3)]
    for oram in orams:
        same_workload(oram)
    # Trees of their own, under the same key, with the same writes.
    for _ in range(2):
        with TreeStorage(4, 32, 8, key=key, treetop_bytes=0) as tree:
            for leaf in range(16):
                data, meta = tree.checkout_branch(leaf)
                tree.checkin_branch(leaf, np.ones_like(data), meta)
    # 3 ORAMs x 400 accesses x (data tree + maps) branches, plus the two trees' 16 branches.
    assert len(sealed_pairs) > 3 * 400 * 5
    assert repeated(sealed_pairs) == []
    for oram in orams:
        oram.close()


def test_a_bucket_of_one_instance_never_verifies_in_another() -> None:
    # Same key, and the host even arranges the same session id and counter: the salt in the
    # key derivation and in the associated data still tells the instances apart.
    key = bytes(range(32))
    a, b = BucketSealer(key, label="t"), BucketSealer(key, label="t")
    b._session = a.session
    sealed = bytearray(32)
    a.seal_into(a.reserve(1), bytes(16), a.salt + b"node", sealed)
    out = bytearray(16)
    with pytest.raises(InvalidTag):
        b.open_into(a.session, 1, sealed, b.salt + b"node", out)
    with pytest.raises(InvalidTag):
        b.open_into(a.session, 1, sealed, a.salt + b"node", out)


def test_no_nonce_repeats_across_reopen_crash_and_replay(
    sealed_pairs: Pairs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Buckets, state files and journal records: every encryption of a durable store's life,
    # through a crash (the journal replayed on new keys) and clean reopenings.
    monkeypatch.setattr(sealed_module, "AESGCM", RecordingAESGCM)
    key = bytes(range(32))
    store = tmp_path / "store"
    oram = small_recursive_oram("recursive", key=key, path=store)
    same_workload(oram)
    oram.commit()
    same_workload(oram)
    crashed = oram._store
    assert crashed is not None
    oram._closed = True
    crashed.close()  # killed: no commit, the journal holds 400 accesses
    for _ in range(2):
        again = PathORAM.open(store, key=key)
        same_workload(again)
        again.close()
    assert len(sealed_pairs) > 4 * 400 * 3
    assert repeated(sealed_pairs) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_seals_under_its_own_keys_and_draws_its_own_leaves(
    sealed_pairs: Pairs,
) -> None:
    key = bytes(32)
    with small_recursive_oram("recursive", key=key) as oram:
        same_workload(oram)
        log = record(oram)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: the same workload, then report what it sealed and read
            try:
                del sealed_pairs[:]
                del log[:]
                same_workload(oram)
                report = pickle.dumps((list(sealed_pairs), list(log)))
                with os.fdopen(write_end, "wb") as pipe:
                    pipe.write(report)
            finally:
                os._exit(0)
        os.close(write_end)
        before = len(sealed_pairs)
        same_workload(oram)
        with os.fdopen(read_end, "rb") as pipe:
            child_pairs, child_log = pickle.loads(pipe.read())
        os.waitpid(pid, 0)
        parent_pairs = sealed_pairs[before:]
        assert len(child_pairs) == len(parent_pairs) > 0
        assert set(child_pairs).isdisjoint(parent_pairs)
        assert repeated(sealed_pairs + child_pairs) == []
        # Same workload after the fork, yet not the same branches: the leaf pools were
        # dropped in the child.
        assert len(child_log) == len(log) and child_log != log


@pytest.mark.parametrize(
    "make",
    [
        lambda: PathORAM(16, 8),
        lambda: TreeStorage(3, 16, 8),
        lambda: BucketSealer(),
    ],
    ids=["PathORAM", "TreeStorage", "BucketSealer"],
)
def test_copies_and_pickles_are_refused(make: Any) -> None:
    obj = make()
    for duplicate in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="reuse the original's nonces"):
            duplicate(obj)
    if hasattr(obj, "close"):
        obj.close()


# --- failing closed -------------------------------------------------------------------------


def host_memory(oram: PathORAM) -> Any:
    """The data tree's untrusted storage, past any recorder (the host's own writes are not
    the ORAM's calls)."""
    untrusted = oram.tree.untrusted
    assert untrusted is not None
    return getattr(untrusted, "inner", untrusted)


def tamper_everything(oram: PathORAM) -> tuple[Any, Any]:
    """Flip a bit in every untrusted bucket of the data tree; returns the honest bytes."""
    untrusted = host_memory(oram)
    everything = range(untrusted.count)
    data, meta = untrusted.checkout(everything)
    bad = data.copy()
    bad[:, 0] ^= 1
    untrusted.checkin(everything, bad, meta)
    return data, meta


def restore(oram: PathORAM, honest: tuple[Any, Any]) -> None:
    untrusted = host_memory(oram)
    untrusted.checkin(range(untrusted.count), *honest)


@pytest.mark.parametrize("position_map", ["array", "recursive"])
def test_the_retry_after_a_failed_access_never_fetches_the_seen_branch(position_map: str) -> None:
    with small_recursive_oram(position_map) as oram:
        for i in range(600):
            oram.write(i, bytes([i % 256]) * 16)
        log = record(oram)
        honest = tamper_everything(oram)
        with pytest.raises(IntegrityError):
            oram.read(42)
        seen = len(log)
        # The host puts everything back and waits for the retry: there is none.
        restore(oram, honest)
        for _ in range(3):
            with pytest.raises(PoisonedError):
                oram.read(42)
            with pytest.raises(PoisonedError):
                oram.write(42, bytes(16))
        assert len(log) == seen, "a poisoned ORAM touched untrusted memory"


def test_the_retry_after_a_stash_overflow_never_fetches_the_seen_branch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(path_module, "min_stash_size", lambda z: 0)
    rng = np.random.default_rng(9)
    with PathORAM(64, 8, bucket_size=1, stash_size=1, treetop_bytes=0) as oram:
        log = record(oram)
        written: list[int] = []

        def fill() -> None:
            for _ in range(5000):
                written.append(int(rng.integers(64)))
                oram.write(written[-1], bytes(8))

        with pytest.raises(StashOverflowError):
            fill()
        index = written[-1]
        seen = len(log)
        # The overflowing access still looked like any other: one branch out and back.
        assert [op for _, op, _ in log[-2:]] == ["checkout", "checkin"]
        assert log[-1][2] == log[-2][2]
        with pytest.raises(PoisonedError, match="StashOverflowError"):
            oram.read(index)
        assert len(log) == seen


def test_a_failed_lookup_in_a_recursive_map_poisons_every_level_and_never_reads_zeros() -> None:
    # The host breaks the position map's own tree: the lookup fails inside the inner ORAM,
    # after which neither it nor the outer ORAM serves anything, least of all zeros.
    with small_recursive_oram("recursive") as oram:
        for i in range(600):
            oram.write(i, (i + 1).to_bytes(2, "little") * 8)
        levels = [o for _, o in trees(oram)]
        assert len(levels) == 3
        inner = levels[1]
        honest = tamper_everything(inner)
        with pytest.raises(IntegrityError):
            oram.read(5)
        restore(inner, honest)
        for level in levels:
            assert level.poisoned is not None
            with pytest.raises(PoisonedError):
                level.read(0)
        assert oram.poisoned is not None and "IntegrityError" in oram.poisoned


def test_a_failure_after_the_lookup_poisons_the_maps_too() -> None:
    # The data tree fails after the position map already moved the block: the maps are
    # poisoned with it, so no later lookup can hand out the moved position.
    with small_recursive_oram("recursive") as oram:
        for i in range(600):
            oram.write(i, (i + 1).to_bytes(2, "little") * 8)
        honest = tamper_everything(oram)
        with pytest.raises(IntegrityError):
            oram.read(5)
        restore(oram, honest)
        for _, level in trees(oram):
            with pytest.raises(PoisonedError):
                level.read(5)


class FailingStorage(Recorder):
    """A host whose storage call fails once, as an OCALL may, with ``error``."""

    def __init__(self, inner: Any, error: BaseException, when: str) -> None:
        super().__init__(inner, "data", [])
        self.error, self.when, self.armed = error, when, False

    def checkout_into(self, indices: Any, data: Any, meta: Any) -> None:
        if self.armed and self.when == "checkout":
            self.armed = False
            raise self.error
        super().checkout_into(indices, data, meta)

    def checkin(self, indices: Any, data: Any, meta: Any) -> None:
        if self.armed and self.when == "checkin":
            self.armed = False
            raise self.error
        super().checkin(indices, data, meta)


@pytest.mark.parametrize("when", ["checkout", "checkin"])
@pytest.mark.parametrize(
    "error",
    [OSError(5, "Input/output error"), MemoryError(), KeyboardInterrupt(), RuntimeError("x")],
    ids=["OSError", "MemoryError", "KeyboardInterrupt", "RuntimeError"],
)
@pytest.mark.parametrize("position_map", ["array", "recursive"])
def test_a_storage_call_that_raises_poisons_the_oram(
    when: str, error: BaseException, position_map: str
) -> None:
    with small_recursive_oram(position_map) as oram:
        model = {i: bytes([i % 256]) * 16 for i in range(0, 600, 7)}
        for i, block in model.items():
            oram.write(i, block)
        failing = FailingStorage(oram.tree.untrusted, error, when)
        oram.tree.untrusted = failing  # type: ignore[assignment]
        failing.armed = True
        with pytest.raises(type(error)):
            oram.write(7, bytes(16))
        # Nothing is ever served again, so no block can read as zeros or as stale data.
        for i in model:
            with pytest.raises(PoisonedError, match=type(error).__name__):
                oram.read(i)
        assert len(failing.log) <= 2


def test_close_from_another_thread_mid_access_poisons_not_loses() -> None:
    # The tree is closed while an access holds its branch: the checkin fails, and the ORAM
    # refuses to go on instead of dropping the blocks it held.
    with small_recursive_oram("array") as oram:
        for i in range(600):
            oram.write(i, bytes([i % 256]) * 16)
        inner = oram.tree.untrusted
        closer = threading.Thread(target=oram.tree.close)

        class ClosingHost(Recorder):
            def checkout_into(self, indices: Any, data: Any, meta: Any) -> None:
                super().checkout_into(indices, data, meta)
                closer.start()  # blocks on the tree's lock until the checkout returns

        oram.tree.untrusted = ClosingHost(inner, "data", [])  # type: ignore[assignment,arg-type]
        original = oram.tree.checkin_lower

        def checkin_after_close(leaf: int) -> None:
            closer.join()
            original(leaf)

        oram.tree.checkin_lower = checkin_after_close  # type: ignore[method-assign]
        with pytest.raises(ValueError, match="closed"):
            oram.read(3)
        with pytest.raises((PoisonedError, ValueError)):
            oram.read(3)
        assert oram.poisoned is not None


def test_a_block_missing_from_its_branch_is_an_integrity_error_not_zeros() -> None:
    # Whatever breaks the invariant (here: the block vanishes from trusted memory), an
    # assigned block that is nowhere to be found is an error.
    with PathORAM(64, 8, treetop_bytes=1 << 20) as oram:
        assert oram.tree.untrusted is None
        for i in range(64):
            oram.write(i, bytes([i + 1]) * 8)
        if 5 in stash_contents(oram):
            k = oram._stash_ids.index(6)
            for column in (oram._stash_ids, oram._stash_leaves, oram._stash_rows):
                del column[k]
        else:
            heads = oram._heads
            heads[np.flatnonzero(heads[:, 0] == 6)] = 0
        with pytest.raises(IntegrityError, match="neither on its branch nor in the stash"):
            oram.read(5)
        with pytest.raises(PoisonedError):
            oram.read(6)


def test_a_block_stored_where_the_map_does_not_put_it_is_an_integrity_error() -> None:
    with PathORAM(64, 8, treetop_bytes=1 << 20) as oram:
        oram.write(9, b"ninenine")
        positions = oram.position_map
        assert isinstance(positions, ArrayPositionMap)
        # Entries hold leaf + 1: move the block to the neighbouring leaf, still assigned.
        positions._entries[9] = ((int(positions._entries[9]) - 1) ^ 1) + 1
        # Found off its branch, or not found on the branch the map names: an error either way.
        with pytest.raises(IntegrityError, match=r"position map|neither on its branch"):
            oram.read(9)


def test_an_access_cut_short_without_a_handler_poisons() -> None:
    with PathORAM(16, 8) as oram:
        oram.write(1, bytes(8))
        oram._in_flight = True  # what an exception between two statements would leave
        with pytest.raises(PoisonedError, match="interrupted"):
            oram.read(1)


def test_bad_arguments_poison_nothing() -> None:
    with PathORAM(16, 8) as oram:
        for call in (
            lambda: oram.read(16),
            lambda: oram.read(-1),
            lambda: oram.write(0, b"short"),
            lambda: oram.read_many([1, 2, 99]),
            lambda: oram.write_many([1], [b"x" * 9]),
        ):
            with pytest.raises((IndexError, ValueError)):
                call()
        assert oram.poisoned is None and oram.access_count == 0
        oram.write(0, b"eightbyt")
        assert oram.read(0) == b"eightbyt"


def test_read_many_checks_every_index_before_any_access() -> None:
    with small_recursive_oram("recursive") as oram:
        log = record(oram)
        with pytest.raises(IndexError):
            oram.read_many([0, 1, 600])
        assert log == []
        assert isinstance(oram.position_map, RecursivePositionMap)
