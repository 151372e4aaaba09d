"""TreeStorage: honest use, shapes, arguments and the crypto it promises."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag

from oramstore import StorageReleasedError, TreeStorage
from oramstore.enclave.crypto import BucketSealer


def random_branch(ts: TreeStorage, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    data = rng.integers(0, 256, (ts.levels, ts.bucket_size), np.uint8)
    meta = rng.integers(0, 256, (ts.levels, ts.meta_size), np.uint8)
    return data, meta


def test_shape_and_split() -> None:
    with TreeStorage(10, 1024, 16, treetop_bytes=7 * (1024 + 16)) as ts:
        assert (ts.levels, ts.leaf_count, ts.bucket_count) == (11, 1024, 2047)
        assert ts.treetop_levels == 3  # 7 buckets fit
        assert ts.untrusted is not None
        assert ts.untrusted.count == 2047 - 7
        assert ts.untrusted_offset == 8
        np.testing.assert_array_equal(ts.path(0), [1 << d for d in range(11)])
        np.testing.assert_array_equal(ts.path(1023), [(1 << (d + 1)) - 1 for d in range(11)])


def test_whole_tree_in_the_treetop_uses_no_untrusted_memory() -> None:
    with TreeStorage(3, 64, 8) as ts:
        assert ts.treetop_levels == 4
        assert ts.untrusted is None
        rng = np.random.default_rng(0)
        d, m = random_branch(ts, rng)
        ts.checkout_branch(5)
        ts.checkin_branch(5, d, m)
        got_d, got_m = ts.checkout_branch(5)
        np.testing.assert_array_equal(got_d, d)
        np.testing.assert_array_equal(got_m, m)


def test_never_written_buckets_read_as_zeros() -> None:
    with TreeStorage(8, 256, 8, treetop_bytes=0) as ts:
        data, meta = ts.checkout_branch(77)
        assert data.shape == (9, 256) and meta.shape == (9, 8)
        assert not data.any() and not meta.any()


@pytest.mark.parametrize("treetop_bytes", [0, 3 * 72, 1 << 20])
def test_branches_round_trip_and_share_buckets(treetop_bytes: int) -> None:
    rng = np.random.default_rng(1)
    with TreeStorage(6, 64, 8, treetop_bytes=treetop_bytes) as ts:
        truth: dict[int, tuple[bytes, bytes]] = {}
        for _ in range(300):
            leaf = int(rng.integers(ts.leaf_count))
            data, meta = ts.checkout_branch(leaf)
            for d, node in enumerate(ts.path(leaf).tolist()):
                want = truth.get(node, (bytes(64), bytes(8)))
                assert data[d].tobytes() == want[0]
                assert meta[d].tobytes() == want[1]
            new_d, new_m = random_branch(ts, rng)
            ts.checkin_branch(leaf, new_d, new_m)
            for d, node in enumerate(ts.path(leaf).tolist()):
                truth[node] = (new_d[d].tobytes(), new_m[d].tobytes())


def test_checkout_into_a_reused_buffer() -> None:
    rng = np.random.default_rng(5)
    with TreeStorage(5, 32, 8, treetop_bytes=2 * 40) as ts:
        buf = np.empty((ts.levels, 40), np.uint8)
        d, m = ts.checkout_branch_into(9, buf)
        assert np.shares_memory(d, buf) and np.shares_memory(m, buf)
        d[:] = rng.integers(0, 256, d.shape, np.uint8)
        want = d.copy()
        ts.checkin_branch(9, d, m)
        buf[:] = 0
        d, _ = ts.checkout_branch_into(9, buf)
        np.testing.assert_array_equal(d, want)
        ts.checkin_branch(9, d.copy(), np.zeros((ts.levels, 8), np.uint8))  # copies work too
        np.testing.assert_array_equal(ts.checkout_branch(9)[0], want)
        for bad, exc in [
            (np.empty((ts.levels, 41), np.uint8), ValueError),
            (np.empty((ts.levels, 40), np.int8), TypeError),
            (np.empty((40, ts.levels), np.uint8).T, ValueError),
            (bytearray(ts.levels * 40), TypeError),
        ]:
            with pytest.raises(exc, match="out must be"):
                ts.checkout_branch_into(9, bad)  # type: ignore[arg-type]


def test_checkin_accepts_the_checked_out_views_and_bytes() -> None:
    with TreeStorage(4, 32, 8, treetop_bytes=0) as ts:
        data, meta = ts.checkout_branch(3)
        data[:] = 7
        ts.checkin_branch(3, data, meta)
        ts.checkout_branch(3)
        ts.checkin_branch(3, bytes([9]) * 160, bytearray(40))
        data, meta = ts.checkout_branch(3)
        assert (data == 9).all() and not meta.any()


def test_zero_meta_size_is_allowed() -> None:
    with TreeStorage(4, 32, 0, treetop_bytes=0) as ts:
        data, meta = ts.checkout_branch(1)
        assert meta.shape == (5, 0)
        ts.checkin_branch(1, np.ones_like(data), meta)
        assert (ts.checkout_branch(1)[0] == 1).all()


def test_checkin_must_follow_a_checkout_of_the_same_leaf() -> None:
    with TreeStorage(4, 32, 8, treetop_bytes=0) as ts:
        d = np.zeros((5, 32), np.uint8)
        m = np.zeros((5, 8), np.uint8)
        with pytest.raises(ValueError, match="must follow checkout_branch"):
            ts.checkin_branch(2, d, m)
        ts.checkout_branch(3)
        with pytest.raises(ValueError, match="must follow checkout_branch"):
            ts.checkin_branch(2, d, m)
        ts.checkin_branch(3, d, m)
        with pytest.raises(ValueError, match="must follow checkout_branch"):
            ts.checkin_branch(3, d, m)  # the checkout was used up


@pytest.mark.parametrize("treetop_bytes", [0, 3 * 40, 1 << 20])
def test_in_place_access_agrees_with_branch_access(treetop_bytes: int) -> None:
    rng = np.random.default_rng(5)
    with TreeStorage(5, 32, 8, treetop_bytes=treetop_bytes) as tree:
        rows, top = tree.rows, tree.treetop_levels
        assert rows.shape == ((1 << top) - 1 + tree.levels - top, 40)
        model = np.zeros((tree.bucket_count + 1, 40), np.uint8)  # row n: bucket n
        for step in range(300):
            leaf = int(rng.integers(tree.leaf_count))
            nodes = tree.path(leaf)
            new = rng.integers(0, 256, (tree.levels, 40), np.uint8)
            if step % 2:
                got = tree.checkout_lower(leaf)
                assert got.tolist() == nodes.tolist()
                current = np.concatenate(
                    (rows[nodes[:top] - 1], rows[len(rows) - (tree.levels - top) :])
                )
                assert (current == model[nodes]).all()
                rows[nodes[:top] - 1] = new[:top]
                rows[len(rows) - (tree.levels - top) :] = new[top:]
                tree.checkin_lower(leaf)
            else:
                data, meta = tree.checkout_branch(leaf)
                assert (np.hstack((data, meta)) == model[nodes]).all()
                tree.checkin_branch(leaf, new[:, :32], new[:, 32:])
            model[nodes] = new


def test_in_place_and_copying_checkouts_do_not_mix() -> None:
    with TreeStorage(3, 16, 0, treetop_bytes=16) as tree:
        tree.checkout_lower(2)
        with pytest.raises(ValueError, match="must follow"):
            tree.checkin_branch(2, bytes(4 * 16), b"")
        with pytest.raises(ValueError, match="must follow"):
            tree.checkin_lower(3)
        tree.checkin_lower(2)
        data, meta = tree.checkout_branch(5)
        with pytest.raises(ValueError, match="must follow"):
            tree.checkin_lower(5)
        tree.checkin_branch(5, data, meta)
        with pytest.raises(IndexError):
            tree.checkout_lower(8)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="height"):
        TreeStorage(-1, 32, 8)
    with pytest.raises(ValueError, match="bucket_size"):
        TreeStorage(3, 0, 8)
    with pytest.raises(TypeError, match="height"):
        TreeStorage(2.5, 32, 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key must be 32 bytes"):
        TreeStorage(3, 32, 8, key=b"short")
    with TreeStorage(4, 32, 8, treetop_bytes=0) as ts:
        for leaf in (-1, 16, 1 << 70):
            with pytest.raises(IndexError, match=f"leaf {leaf}"):
                ts.checkout_branch(leaf)
        with pytest.raises(TypeError, match="leaf must be an int"):
            ts.checkout_branch(1.0)  # type: ignore[arg-type]
        ts.checkout_branch(1)
        with pytest.raises(ValueError, match="data must hold 5 x 32 bytes"):
            ts.checkin_branch(1, np.zeros((5, 33), np.uint8), np.zeros((5, 8), np.uint8))
        with pytest.raises(TypeError, match="uint8"):
            ts.checkin_branch(1, np.zeros((5, 32), np.int64), np.zeros((5, 8), np.uint8))
        with pytest.raises(TypeError, match="bytes-like"):
            ts.checkin_branch(1, "text", np.zeros((5, 8), np.uint8))
        # A refused checkin leaves the checkout pending.
        ts.checkin_branch(1, np.zeros((5, 32), np.uint8), np.zeros((5, 8), np.uint8))


def test_use_after_close_raises() -> None:
    ts = TreeStorage(4, 32, 8, treetop_bytes=0)
    ts.close()
    with pytest.raises(StorageReleasedError):
        ts.checkout_branch(0)
    assert ts.untrusted is not None and ts.untrusted.released


def test_creation_does_no_pass_over_the_tree() -> None:
    start = time.perf_counter()
    with TreeStorage(20, 16 << 10, 64) as ts:
        elapsed = time.perf_counter() - start
        assert ts.untrusted is not None
        assert ts.untrusted.resident_bytes() == 0
        assert ts.untrusted.nbytes > 30 << 30
    # Not a timing assertion: a pass over 32 GiB could not finish in a minute here, so this
    # only guards against an accidental initialisation loop.
    assert elapsed < 60


def test_same_plaintext_encrypts_differently_each_time() -> None:
    with TreeStorage(3, 64, 8, treetop_bytes=0) as ts:
        assert ts.untrusted is not None
        data = np.full((4, 64), 0x41, np.uint8)
        meta = np.zeros((4, 8), np.uint8)
        seen = set()
        for _ in range(20):
            ts.checkout_branch(2)
            ts.checkin_branch(2, data, meta)
            sealed, _ = ts.untrusted.checkout(ts.path(2) - ts.untrusted_offset)
            seen.add(sealed.tobytes())
            assert b"AAAAAAAA" not in sealed.tobytes()
        assert len(seen) == 20


def test_nonces_never_repeat() -> None:
    with TreeStorage(5, 16, 8, treetop_bytes=0) as ts:
        assert ts.untrusted is not None
        counters: list[int] = []
        rng = np.random.default_rng(3)
        for _ in range(100):
            leaf = int(rng.integers(ts.leaf_count))
            d, m = ts.checkout_branch(leaf)
            ts.checkin_branch(leaf, d, m)
            _, heads = ts.untrusted.checkout(ts.path(leaf) - ts.untrusted_offset)
            sessions = {bytes(h[:16]) for h in heads}
            assert sessions == {ts.session}
            counters.extend(heads[:, 16:24].copy().view("<u8").ravel().tolist())
        # Every bucket write drew its own counter (the GCM nonce) in the tree's one session.
        assert len(counters) == 100 * ts.levels
        assert len(set(counters)) == len(counters)
        assert ts.write_counter == max(counters) == len(counters)


def test_the_key_is_used_and_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = bytes(range(32))
    a = TreeStorage(3, 16, 8, key=key, treetop_bytes=0)
    b = TreeStorage(3, 16, 8, key=key, treetop_bytes=0)
    assert key.hex() not in repr(a) and str(list(key)) not in repr(a)
    assert "key" not in repr(a._sealer)
    for ts in (a, b):
        d, m = ts.checkout_branch(0)
        ts.checkin_branch(0, np.ones_like(d), m)
    # Same key, same writes, yet nothing in common: each tree has its own salt and session.
    assert a.untrusted is not None and b.untrusted is not None
    assert a.salt != b.salt and a.session != b.session
    assert a.untrusted.checkout([0])[0].tobytes() != b.untrusted.checkout([0])[0].tobytes()
    for record in caplog.records:
        assert key.hex() not in record.getMessage()


def test_the_key_given_is_the_key_used() -> None:
    # A sealer with the same master key and salt opens what another sealed in a session;
    # another master key or another salt does not.
    key, other = bytes(range(32)), bytes(32)
    sealer = BucketSealer(key, label="t")
    sealed = bytearray(16 + 16)
    sealer.seal_into(sealer.reserve(1), b"sixteen bytes!!!", b"aad", sealed)
    out = bytearray(16)
    BucketSealer(key, label="t", salt=sealer.salt).open_into(sealer.session, 1, sealed, b"aad", out)
    assert out == b"sixteen bytes!!!"
    for stranger in (
        BucketSealer(other, label="t", salt=sealer.salt),
        BucketSealer(key, label="t"),
        BucketSealer(key, label="u", salt=sealer.salt),
    ):
        with pytest.raises(InvalidTag):
            stranger.open_into(sealer.session, 1, sealed, b"aad", out)


def test_an_exhausted_counter_starts_a_new_session() -> None:
    sealer = BucketSealer()
    session = sealer.session
    sealer._counter = (1 << 64) - 3
    assert sealer.reserve(2) == (1 << 64) - 2
    assert sealer.session == session
    assert sealer.reserve(2) == 1  # no room for two more: new key, counters from 1
    assert sealer.session != session and sealer.counter == 2


def test_honest_use_never_raises_integrity_errors() -> None:
    """10^5 random branch operations: no false alarm, and the data stays right."""
    rng = np.random.default_rng(4)
    with TreeStorage(7, 16, 8, treetop_bytes=3 * 24) as ts:
        buf = np.empty((ts.levels, 24), np.uint8)
        leaves = rng.integers(0, ts.leaf_count, 100_000).tolist()
        for n, leaf in enumerate(leaves):
            d, m = ts.checkout_branch_into(leaf, buf)
            # The leaf bucket counts how often its branch was written; its parent chain is
            # rewritten by many other branches in between.
            count = int.from_bytes(d[-1, :8].tobytes(), "little")
            d[-1, :8] = np.frombuffer((count + 1).to_bytes(8, "little"), np.uint8)
            d[-1, 8] = n % 251
            ts.checkin_branch(leaf, d, m)
        counts = np.bincount(leaves, minlength=ts.leaf_count)
        for leaf in range(ts.leaf_count):
            d, _ = ts.checkout_branch(leaf)
            assert int.from_bytes(d[-1, :8].tobytes(), "little") == counts[leaf]
