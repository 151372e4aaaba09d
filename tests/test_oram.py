"""PathORAM: the user-facing behaviour, arguments and position maps."""

from __future__ import annotations

import numpy as np
import pytest

from oram_layout import random_accesses, small_recursive_oram
from oramstore import IntegrityError, PathORAM, PoisonedError, StorageReleasedError
from oramstore.oram import ArrayPositionMap, RecursivePositionMap


def test_never_written_blocks_read_as_zeros() -> None:
    with PathORAM(100, 32) as oram:
        assert oram.read(0) == bytes(32)
        assert oram.read(99) == bytes(32)
        assert oram.stash_len == 0  # reading creates nothing


def test_reads_return_the_last_write() -> None:
    rng = np.random.default_rng(0)
    with PathORAM(64, 48, treetop_bytes=0) as oram:
        random_accesses(oram, {}, rng, 2000)


def test_shape_follows_block_count_over_bucket_size() -> None:
    with PathORAM(1 << 12, 64, bucket_size=4) as oram:
        tree = oram.tree
        assert tree.leaf_count == (1 << 12) // 4
        assert tree.bucket_size == 4 * (64 + 16) and tree.meta_size == 0
        slots = tree.bucket_count * 4
        assert 2 * (1 << 12) - 4 <= slots <= 2 * (1 << 12)  # about twice the user's blocks
        assert len(oram) == 1 << 12
        assert oram.block_size == 64 and oram.bucket_size == 4
    with PathORAM(1, 8) as tiny:
        assert tiny.tree.height == 0
        tiny.write(0, b"12345678")
        assert tiny.read(0) == b"12345678"


def test_creation_touches_no_untrusted_memory() -> None:
    with PathORAM(1 << 16, 4096) as oram:
        assert oram.tree.untrusted is not None
        assert oram.tree.untrusted.resident_bytes() == 0
        oram.write(5, bytes(4096))
        assert oram.tree.untrusted.resident_bytes() > 0


@pytest.mark.parametrize(
    "wrap",
    [bytes, bytearray, memoryview, lambda b: np.frombuffer(b, np.uint8).copy()],
    ids=["bytes", "bytearray", "memoryview", "numpy"],
)
def test_write_accepts_bytes_like_blocks(wrap: object) -> None:
    with PathORAM(8, 16) as oram:
        oram.write(3, wrap(b"0123456789abcdef"))  # type: ignore[operator]
        assert oram.read(3) == b"0123456789abcdef"


def test_batches() -> None:
    with PathORAM(32, 8) as oram:
        blocks = np.arange(5 * 8, dtype=np.uint8).reshape(5, 8)
        oram.write_many([4, 1, 30, 2, 9], blocks)
        got = oram.read_many([30, 4, 7])
        assert got.shape == (3, 8) and got.dtype == np.uint8
        np.testing.assert_array_equal(got[0], blocks[2])
        np.testing.assert_array_equal(got[1], blocks[0])
        assert not got[2].any()
        oram.write_many(range(2), [b"a" * 8, bytearray(b"b" * 8)])
        assert oram.read(1) == b"b" * 8
        assert oram.read_many([]).shape == (0, 8)


def test_write_many_checks_everything_before_writing() -> None:
    with PathORAM(32, 8) as oram:
        with pytest.raises(ValueError, match="8 bytes"):
            oram.write_many([1, 2], [b"x" * 8, b"y" * 7])
        with pytest.raises(IndexError):
            oram.write_many([1, 32], [b"x" * 8, b"y" * 8])
        with pytest.raises(ValueError, match="2 indices but 1 blocks"):
            oram.write_many([1, 2], [b"x" * 8])
        assert oram.read(1) == bytes(8)
        assert oram.access_count == 1


def test_bad_arguments() -> None:
    with PathORAM(10, 8) as oram:
        for index in (-1, 10, 1 << 80):
            with pytest.raises(IndexError, match="out of range"):
                oram.read(index)
        with pytest.raises(TypeError, match="index must be an int"):
            oram.read(1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="must be 8 bytes, got 9"):
            oram.write(1, b"123456789")
        with pytest.raises(ValueError, match="must be 8 bytes, got 7"):
            oram.write(1, b"1234567")
        with pytest.raises(TypeError, match="bytes-like"):
            oram.write(1, "12345678")
        with pytest.raises(ValueError, match="contiguous"):
            oram.write(1, np.zeros(16, np.uint8)[::2])
        assert oram.access_count == 0  # nothing bad got as far as an access
    for kwargs, exc in [
        ({"block_count": 0, "block_size": 8}, ValueError),
        ({"block_count": 8, "block_size": 0}, ValueError),
        ({"block_count": 8, "block_size": 8, "bucket_size": 0}, ValueError),
        ({"block_count": 8, "block_size": 8, "stash_size": -1}, ValueError),
        ({"block_count": 8.0, "block_size": 8}, TypeError),
        ({"block_count": 8, "block_size": 8, "position_map": "tree"}, ValueError),
        ({"block_count": 8, "block_size": 8, "key": b"short"}, ValueError),
        ({"block_count": 8, "block_size": 8, "key": [0] * 32}, TypeError),
        ({"block_count": 8, "block_size": 8, "key": np.zeros(32, np.int64)}, TypeError),
        ({"block_count": 8, "block_size": 8, "key": np.zeros(4, np.int64)}, TypeError),
        ({"block_count": 8, "block_size": 8, "key": "k" * 32}, TypeError),
        ({"block_count": 8, "block_size": 8, "key": 12345}, TypeError),
        ({"block_count": 8, "block_size": 8, "bucket_size": 2}, ValueError),
        ({"block_count": 8, "block_size": 8, "stash_size": 10}, ValueError),
    ]:
        with pytest.raises(exc):
            PathORAM(**kwargs)  # type: ignore[arg-type]


def test_use_after_close() -> None:
    oram = PathORAM(10, 8)
    oram.close()
    oram.close()
    with pytest.raises(StorageReleasedError):
        oram.read(1)
    with pytest.raises(ValueError, match="closed"):
        oram.write(1, bytes(8))


def test_tampering_surfaces_as_integrity_error() -> None:
    with PathORAM(64, 16, treetop_bytes=0) as oram:
        for i in range(64):
            oram.write(i, bytes([i]) * 16)
        untrusted = oram.tree.untrusted
        assert untrusted is not None
        data, meta = untrusted.checkout(range(untrusted.count))
        data[:, :] ^= 1
        untrusted.checkin(range(untrusted.count), data, meta)
        with pytest.raises(IntegrityError):
            oram.read(3)


@pytest.mark.parametrize("position_map", ["array", "recursive"])
def test_a_refused_access_poisons_the_oram(position_map: str) -> None:
    # The host corrupts every bucket, an access fails, the host puts the bytes back: the ORAM
    # refuses everything from then on, and says why.
    with small_recursive_oram(position_map) as oram:
        for i in range(600):
            oram.write(i, i.to_bytes(2, "little") * 8)
        untrusted = oram.tree.untrusted
        assert untrusted is not None
        everything = range(untrusted.count)
        data, meta = untrusted.checkout(everything)
        tampered = data.copy()
        tampered[:, 0] ^= 0x80
        untrusted.checkin(everything, tampered, meta)
        with pytest.raises(IntegrityError):
            oram.read(3)
        untrusted.checkin(everything, data, meta)
        assert oram.poisoned is not None and "IntegrityError" in oram.poisoned
        for call in (lambda: oram.read(3), lambda: oram.write(0, bytes(16))):
            with pytest.raises(PoisonedError, match="trusted copy") as info:
                call()
            assert isinstance(info.value.__cause__, IntegrityError)
        with pytest.raises(PoisonedError):
            oram.read_many([1, 2])
        # Arguments are still checked first, and close still works.
        with pytest.raises(PoisonedError):
            oram.read(599)
        inner = oram.position_map
        if isinstance(inner, RecursivePositionMap):
            assert inner.inner.poisoned is not None
            with pytest.raises(PoisonedError):
                inner.inner.read(0)
        with pytest.raises(PoisonedError):
            oram.tree.checkout_branch(0)
    with pytest.raises(StorageReleasedError):
        oram.read(0)


def test_position_map_choice() -> None:
    with PathORAM(1000, 8) as oram:
        assert isinstance(oram.position_map, ArrayPositionMap)
    with PathORAM(1000, 8, position_map_threshold=100) as oram:
        assert isinstance(oram.position_map, RecursivePositionMap)
    with PathORAM(1000, 8, position_map="recursive") as oram:
        assert isinstance(oram.position_map, RecursivePositionMap)
    with PathORAM(1000, 8, position_map="array", position_map_threshold=10) as oram:
        assert isinstance(oram.position_map, ArrayPositionMap)


def test_recursive_position_maps_nest_and_agree_with_a_model() -> None:
    rng = np.random.default_rng(1)
    # 5000 blocks -> 20 position blocks -> array (threshold 16 would recurse once more).
    with PathORAM(5000, 8, position_map="recursive", position_map_threshold=16) as oram:
        inner = oram.position_map
        assert isinstance(inner, RecursivePositionMap)
        assert isinstance(inner.inner.position_map, RecursivePositionMap)
        model: dict[int, bytes] = {}
        random_accesses(oram, model, rng, 600, write_share=0.6)
        for i, block in model.items():
            assert oram.read(i) == block
        assert inner.inner.access_count == oram.access_count  # one lookup per access


def test_keys_of_every_bytes_like_kind_work() -> None:
    key = bytes(range(32))
    for form in (key, bytearray(key), memoryview(key), np.frombuffer(key, np.uint8)):
        with PathORAM(16, 8, key=form, treetop_bytes=0) as oram:
            oram.write(3, b"abcdefgh")
            assert oram.read(3) == b"abcdefgh"


def test_trusted_bytes_are_accounted() -> None:
    with PathORAM(1 << 10, 64, treetop_bytes=0) as oram:
        assert oram.trusted_bytes >= (1 << 10) * 4  # at least the position map


def test_item_access_and_types() -> None:
    with PathORAM(16, 4) as oram:
        oram[3] = b"abcd"
        assert oram[3] == b"abcd" and isinstance(oram[3], bytes)
        assert oram[0] == bytes(4)
        assert len(oram) == 16
        many = oram.read_many([3, 0])
        assert isinstance(many, np.ndarray) and many.dtype == np.uint8 and many.shape == (2, 4)
        with pytest.raises(IndexError):
            oram[16]
        with pytest.raises(IndexError):
            oram[-1] = b"abcd"
        with pytest.raises(TypeError, match="read_many"):
            oram[1:3]  # type: ignore[index]
        with pytest.raises(TypeError, match="write_many"):
            oram[1:3] = b"abcdabcd"  # type: ignore[index]
        with pytest.raises(TypeError):
            oram["3"]  # type: ignore[index]
        assert oram.poisoned is None
