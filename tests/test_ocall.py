"""The OCALL C ABI, called through ctypes from the extension's own shared object."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

import oramstore._native

u64 = ctypes.c_uint64
size_t = ctypes.c_size_t
P64 = ctypes.POINTER(u64)

UNKNOWN_ID, BAD_SIZE, BAD_BUFFER, INDEX_OUT_OF_RANGE, DUPLICATE_INDEX = 1, 2, 3, 4, 5


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(oramstore._native.__file__)
    lib.allocate_oram_storage.argtypes = [u64, u64, u64, P64]
    lib.allocate_oram_storage.restype = None
    lib.release_oram_storage.argtypes = [u64]
    lib.release_oram_storage.restype = None
    for name in ("checkout_oram_storage", "checkin_oram_storage"):
        fn = getattr(lib, name)
        fn.argtypes = [u64, P64, size_t, P64, size_t, P64, size_t]
        fn.restype = None
    lib.oram_storage_last_error.restype = ctypes.c_int32
    lib.oram_storage_last_error_message.argtypes = [ctypes.c_char_p, size_t]
    lib.oram_storage_last_error_message.restype = size_t
    return lib


def ptr(a: npt.NDArray[np.uint64]) -> ctypes._Pointer[ctypes.c_uint64]:
    return a.ctypes.data_as(P64)


class Storage:
    def __init__(self, lib: ctypes.CDLL, count: int, data: int, meta: int) -> None:
        self.lib = lib
        out = u64(12345)
        lib.allocate_oram_storage(count, data, meta, ctypes.byref(out))
        self.id = out.value
        self.data_words, self.meta_words = data // 8, meta // 8

    def checkout(self, idx: list[int]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        i = np.array(idx, np.uint64)
        d = np.full(len(idx) * self.data_words, 0xAA, np.uint64)
        m = np.full(len(idx) * self.meta_words, 0xAA, np.uint64)
        self.lib.checkout_oram_storage(self.id, ptr(i), len(i), ptr(d), len(d), ptr(m), len(m))
        return d, m

    def checkin(self, idx: list[int], d: npt.NDArray[np.uint64], m: npt.NDArray[np.uint64]) -> None:
        i = np.array(idx, np.uint64)
        self.lib.checkin_oram_storage(self.id, ptr(i), len(i), ptr(d), len(d), ptr(m), len(m))


def last_error(lib: ctypes.CDLL) -> tuple[int, str]:
    buf = ctypes.create_string_buffer(512)
    lib.oram_storage_last_error_message(buf, len(buf))
    return lib.oram_storage_last_error(), buf.value.decode()


@pytest.fixture
def storage(lib: ctypes.CDLL) -> Iterator[Storage]:
    s = Storage(lib, 1000, 256, 32)
    assert s.id != 0
    yield s
    lib.release_oram_storage(s.id)


def test_round_trip(lib: ctypes.CDLL, storage: Storage) -> None:
    _, meta = storage.checkout([5, 999])
    assert last_error(lib) == (0, "")
    assert not meta.any()
    d = np.arange(2 * 32, dtype=np.uint64)
    m = np.arange(2 * 4, dtype=np.uint64) + 1000
    storage.checkin([999, 5], d, m)
    got_d, got_m = storage.checkout([5, 999, 5])
    np.testing.assert_array_equal(got_d, np.concatenate([d[32:], d[:32], d[32:]]))
    np.testing.assert_array_equal(got_m, np.concatenate([m[4:], m[:4], m[4:]]))


def test_allocation_failures_give_id_zero(lib: ctypes.CDLL) -> None:
    for count, data, meta in [(10, 12, 8), (10, 8, 4), (0, 8, 8), (2**62, 64, 8)]:
        s = Storage(lib, count, data, meta)
        assert s.id == 0
        assert last_error(lib)[0] == BAD_SIZE


def test_checks_apply_and_nothing_is_written(lib: ctypes.CDLL, storage: Storage) -> None:
    d, m = storage.checkout([1, 1000])
    code, message = last_error(lib)
    assert code == INDEX_OUT_OF_RANGE and "index 1000" in message
    assert (d == 0xAA).all() and (m == 0xAA).all()
    storage.checkin([3, 3], np.zeros(64, np.uint64), np.zeros(8, np.uint64))
    assert last_error(lib)[0] == DUPLICATE_INDEX
    storage.checkin([3], np.zeros(31, np.uint64), np.zeros(4, np.uint64))
    assert last_error(lib)[0] == BAD_BUFFER


def test_released_and_forged_ids_are_detected(lib: ctypes.CDLL) -> None:
    s = Storage(lib, 10, 8, 8)
    lib.release_oram_storage(s.id)
    assert last_error(lib)[0] == 0
    d, _ = s.checkout([0])
    assert last_error(lib)[0] == UNKNOWN_ID
    assert (d == 0xAA).all()
    lib.release_oram_storage(s.id)
    assert last_error(lib)[0] == UNKNOWN_ID
    s.id = 2**63 + 17
    s.checkout([0])
    assert last_error(lib)[0] == UNKNOWN_ID


def at(base: npt.NDArray[np.uint64], word: int) -> ctypes._Pointer[ctypes.c_uint64]:
    """A pointer to word ``word`` of ``base``, or anywhere near it: nothing is dereferenced."""
    return ctypes.cast(base.ctypes.data + 8 * word, P64)


def test_outputs_that_overlap_each_other_or_idx_are_refused(lib: ctypes.CDLL) -> None:
    s = Storage(lib, 16, 32, 16)  # items of 4 data words and 2 metadata words
    s.checkin([1, 2], np.full(8, 5, np.uint64), np.full(4, 6, np.uint64))
    idx = np.array([1, 2], np.uint64)
    arena = np.empty(32, np.uint64)
    # (idx position in the arena or None for a separate list, databuf start, metabuf start)
    cases = [(None, 0, 0), (None, 0, 3), (None, 8, 6), (4, 0, 16), (17, 0, 16), (15, 0, 12)]
    for idx_at, data_at, meta_at in cases:
        arena[:] = 0xAA
        i = ptr(idx)
        if idx_at is not None:
            arena[idx_at : idx_at + 2] = idx
            i = at(arena, idx_at)
        before = arena.copy()
        lib.checkout_oram_storage(s.id, i, 2, at(arena, data_at), 8, at(arena, meta_at), 4)
        code, message = last_error(lib)
        assert code == BAD_BUFFER and "overlap" in message, (idx_at, data_at, meta_at, message)
        np.testing.assert_array_equal(arena, before)
    # Adjacent buffers are fine.
    arena[:] = 0xAA
    lib.checkout_oram_storage(s.id, ptr(idx), 2, at(arena, 0), 8, at(arena, 8), 4)
    assert last_error(lib) == (0, "")
    assert (arena[:8] == 5).all() and (arena[8:12] == 6).all() and (arena[12:] == 0xAA).all()
    lib.release_oram_storage(s.id)


def test_huge_lengths_are_refused_without_touching_the_pointer(
    lib: ctypes.CDLL, storage: Storage
) -> None:
    dangling = ctypes.cast(8, P64)  # aligned, non-null, and nothing is mapped there
    idx = np.array([1], np.uint64)
    d = np.full(32, 0xAA, np.uint64)
    m = np.full(4, 0xAA, np.uint64)
    for huge in (2**64 - 1, 2**61, 2**60):
        for fn in (lib.checkout_oram_storage, lib.checkin_oram_storage):
            for args in (
                (dangling, huge, ptr(d), 32, ptr(m), 4),
                (ptr(idx), 1, dangling, huge, ptr(m), 4),
                (ptr(idx), 1, ptr(d), 32, dangling, huge),
            ):
                fn(storage.id, *args)
                code, message = last_error(lib)
                assert code == BAD_BUFFER and "PTRDIFF_MAX" in message, message
    assert (d == 0xAA).all() and (m == 0xAA).all()
    # Lengths that fit but disagree with the batch are refused before any slice is made.
    lib.checkout_oram_storage(storage.id, ptr(idx), 1, dangling, 2**59, dangling, 2**59)
    code, message = last_error(lib)
    assert code == BAD_BUFFER and "expected 256" in message, message


def test_null_and_misaligned_pointers_are_refused(lib: ctypes.CDLL, storage: Storage) -> None:
    idx = np.array([1], np.uint64)
    d = np.full(33, 0xAA, np.uint64)
    m = np.full(5, 0xAA, np.uint64)
    null = P64()
    odd_d = ctypes.cast(d.ctypes.data + 4, P64)
    for args, part in [
        ((null, 1, ptr(d), 32, ptr(m), 4), "idx is null"),
        ((ptr(idx), 1, null, 32, ptr(m), 4), "databuf is null"),
        ((ptr(idx), 1, ptr(d), 32, null, 4), "metabuf is null"),
        ((ptr(idx), 1, odd_d, 32, ptr(m), 4), "not aligned"),
    ]:
        storage.lib.checkout_oram_storage(storage.id, *args)
        code, message = last_error(lib)
        assert code == BAD_BUFFER and part in message, message
        assert (d == 0xAA).all() and (m == 0xAA).all()
        storage.lib.checkin_oram_storage(storage.id, *args)
        assert last_error(lib)[0] == BAD_BUFFER
    _, meta = storage.checkout([1])
    assert not meta.any(), "the refused checkins wrote nothing"
