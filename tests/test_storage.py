"""UntrustedStorage: behaviour a caller relies on, and every bad input it must refuse."""

from __future__ import annotations

import array
import gc
import logging
import mmap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import oramstore
from oramstore import StorageReleasedError, UntrustedStorage

D, M = 64, 16


@pytest.fixture
def st() -> Iterator[UntrustedStorage]:
    with UntrustedStorage(100, D, M) as s:
        yield s


def pattern(indices: list[int], size: int, salt: int = 0) -> npt.NDArray[np.uint8]:
    """Distinct, recognisable content per (index, salt)."""
    rows = [(np.arange(size, dtype=np.uint32) * 7 + i * 131 + salt * 17) % 251 for i in indices]
    return np.array(rows, dtype=np.uint8).reshape(len(indices), size)


# --- creation, shape and accounting -------------------------------------------------------


def test_attributes_describe_the_storage(st: UntrustedStorage) -> None:
    assert (st.count, st.data_size, st.meta_size) == (100, D, M)
    assert len(st) == 100
    assert st.nbytes == 100 * (D + M)
    assert not st.released
    assert repr(st) == "UntrustedStorage(count=100, data_size=64, meta_size=16)"


def test_a_large_storage_is_created_without_touching_memory() -> None:
    with UntrustedStorage(1 << 20, 4096, 64) as s:
        assert s.nbytes == (1 << 20) * (4096 + 64)
        assert s.resident_bytes() < 1 << 20


def test_resident_memory_grows_only_with_written_items() -> None:
    with UntrustedStorage(1 << 16, 4096, 64) as s:
        idx = list(range(0, 1 << 16, 1 << 10))  # 64 items, far apart
        s.checkin(idx, pattern(idx, 4096), pattern(idx, 64))
        resident = s.resident_bytes()
        # Each item's data is one page; its metadata shares a page with its neighbours.
        assert 64 * 4096 <= resident <= 64 * 4096 * 2 + 64 * 4096
        s.checkout(list(range(1000, 1064)))  # reading fresh pages maps the shared zero page
        assert s.resident_bytes() <= resident + 2 * 64 * 4096


def test_allocated_bytes_accounts_for_live_storages() -> None:
    before = oramstore.allocated_bytes()
    a = UntrustedStorage(1000, 4096, 64)
    b = UntrustedStorage(10, 8, 8)
    assert oramstore.allocated_bytes() == before + a.nbytes + b.nbytes
    a.release()
    assert oramstore.allocated_bytes() == before + b.nbytes
    del b
    gc.collect()
    assert oramstore.allocated_bytes() == before


def test_allocation_and_release_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="oramstore")
    before = oramstore.allocated_bytes()
    s = UntrustedStorage(1000, 4096, 64)
    s.release()
    records = [r for r in caplog.records if r.name == "oramstore"]
    assert len(records) == 2
    alloc, release = (r.getMessage() for r in records)
    for message in (alloc, release):
        for part in ("count=1000", "data_size=4096", "meta_size=64", f"bytes={s.nbytes}"):
            assert part in message
    assert f"total={before + s.nbytes}" in alloc
    assert f"total={before}" in release


# --- round trips ------------------------------------------------------------------------


def test_never_written_metadata_reads_zero(st: UntrustedStorage) -> None:
    _, meta = st.checkout([0, 50, 99])
    assert meta.shape == (3, M)
    assert not meta.any()


def test_checkout_returns_items_in_request_order_with_repeats(st: UntrustedStorage) -> None:
    idx = [5, 99, 0, 42]
    st.checkin(idx, pattern(idx, D), pattern(idx, M, 1))
    order = [42, 5, 5, 0, 99]
    data, meta = st.checkout(order)
    assert data.dtype == np.uint8 and meta.dtype == np.uint8
    assert data.shape == (5, D) and meta.shape == (5, M)
    assert data.flags.c_contiguous and data.flags.writeable
    np.testing.assert_array_equal(data, pattern(order, D))
    np.testing.assert_array_equal(meta, pattern(order, M, 1))


def test_checkout_into_fills_caller_buffers(st: UntrustedStorage) -> None:
    idx = [3, 1, 4]
    st.checkin(idx, pattern(idx, D), pattern(idx, M))
    data = np.zeros((3, D), np.uint8)
    meta = bytearray(3 * M)
    st.checkout_into(idx, data, meta)
    np.testing.assert_array_equal(data, pattern(idx, D))
    assert bytes(meta) == pattern(idx, M).tobytes()
    # A memoryview over a larger buffer works too, as long as its length is exact.
    backing = bytearray(10 * D)
    st.checkout_into([4], memoryview(backing)[D : 2 * D], memoryview(bytearray(M)))
    assert backing[D : 2 * D] == pattern([4], D).tobytes()


def test_later_checkin_overwrites(st: UntrustedStorage) -> None:
    st.checkin([7], pattern([7], D, 1), pattern([7], M, 1))
    st.checkin([7], pattern([7], D, 2), pattern([7], M, 2))
    data, meta = st.checkout([7])
    np.testing.assert_array_equal(data, pattern([7], D, 2))
    np.testing.assert_array_equal(meta, pattern([7], M, 2))


def test_empty_batches_are_allowed(st: UntrustedStorage) -> None:
    data, meta = st.checkout([])
    assert data.shape == (0, D) and meta.shape == (0, M)
    st.checkin([], b"", b"")
    st.checkout_into([], bytearray(), bytearray())


# --- every byte-taking API accepts any C-contiguous buffer ------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        bytes,
        bytearray,
        lambda b: memoryview(bytes(b)),
        lambda b: np.frombuffer(b, np.uint8).copy(),
        lambda b: np.frombuffer(b, np.float64).copy(),  # dtype does not matter, bytes do
        lambda b: array.array("Q", b),
        lambda b: np.frombuffer(b, np.uint8).reshape(2, -1).copy(),
    ],
    ids=["bytes", "bytearray", "memoryview", "uint8", "float64", "array", "2d"],
)
def test_checkin_accepts_any_contiguous_buffer(
    st: UntrustedStorage, wrap: Callable[[bytes], Any]
) -> None:
    idx = [10, 20]
    data = pattern(idx, D).tobytes()
    meta = pattern(idx, M, 3).tobytes()
    st.checkin(idx, wrap(data), wrap(meta))
    got_data, got_meta = st.checkout(idx)
    assert got_data.tobytes() == data
    assert got_meta.tobytes() == meta


def test_checkin_accepts_an_mmap(st: UntrustedStorage) -> None:
    with mmap.mmap(-1, D) as data, mmap.mmap(-1, M) as meta:
        data[:] = pattern([1], D).tobytes()
        st.checkin([1], data, meta)
        got, _ = st.checkout([1])
        assert got.tobytes() == data[:]


@pytest.mark.parametrize("extra", [-1, 1, D])
def test_checkin_refuses_a_data_buffer_of_the_wrong_length(
    st: UntrustedStorage, extra: int
) -> None:
    with pytest.raises(ValueError, match="data buffer holds"):
        st.checkin([1, 2], bytes(2 * D + extra), bytes(2 * M))
    with pytest.raises(ValueError, match="meta buffer holds"):
        st.checkin([1, 2], bytes(2 * D), bytes(2 * M + extra))


def test_oversize_output_buffers_are_refused_and_untouched(st: UntrustedStorage) -> None:
    data = np.full(2 * D + 1, 0xEE, np.uint8)
    meta = np.full(2 * M, 0xEE, np.uint8)
    with pytest.raises(ValueError, match="expected 128"):
        st.checkout_into([1, 2], data, meta)
    assert (data == 0xEE).all() and (meta == 0xEE).all()


def test_a_huge_batch_is_refused_without_a_huge_allocation(st: UntrustedStorage) -> None:
    with pytest.raises(ValueError, match="data buffer holds"):
        st.checkin(np.zeros(1 << 20, np.int64), bytes(D), bytes(M))


def test_non_contiguous_buffers_are_refused(st: UntrustedStorage) -> None:
    strided = np.zeros((2, 2 * D), np.uint8)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        st.checkin([1, 2], strided, bytes(2 * M))
    with pytest.raises(ValueError, match="C-contiguous"):
        st.checkout_into([1, 2], strided, bytearray(2 * M))
    fortran = np.asfortranarray(np.zeros((2, D), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        st.checkout_into([1, 2], fortran, bytearray(2 * M))


def test_read_only_output_buffers_are_refused(st: UntrustedStorage) -> None:
    with pytest.raises(TypeError, match="read-only"):
        st.checkout_into([1], bytes(D), bytearray(M))
    frozen = np.zeros(M, np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(TypeError, match="read-only"):
        st.checkout_into([1], bytearray(D), frozen)


@pytest.mark.parametrize("bad", ["text", 12, None, [1, 2]])
def test_non_buffers_are_refused(st: UntrustedStorage, bad: object) -> None:
    with pytest.raises(TypeError, match="buffer protocol"):
        st.checkin([1], bad, bytes(M))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="buffer protocol"):
        st.checkout_into([1], bytearray(D), bad)  # type: ignore[arg-type]


def test_output_buffers_must_not_overlap(st: UntrustedStorage) -> None:
    shared = bytearray(D + M)
    view = memoryview(shared)
    with pytest.raises(ValueError, match="overlap"):
        st.checkout_into([1], view[:D], view[D - 1 : D - 1 + M])
    # Metadata and data of the same size in the very same buffer.
    buf = bytearray(8)
    with UntrustedStorage(4, 8, 8) as s, pytest.raises(ValueError, match="distinct"):
        s.checkout_into([1], buf, buf)


# --- indices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        list,
        tuple,
        lambda i: (x for x in i),
        lambda i: np.array(i, np.int64),
        lambda i: np.array(i, np.uint64),
        lambda i: np.array(i, np.int8),
        lambda i: np.array(i, np.uint16),
        lambda i: np.array(i, ">i4"),
        lambda i: np.array(i + i, np.int32)[::2],
        lambda i: [np.int64(x) for x in i],
    ],
    ids=["list", "tuple", "gen", "i8", "u8", "int8", "uint16", "big-endian", "strided", "np-ints"],
)
def test_indices_may_be_any_int_sequence_or_array(
    st: UntrustedStorage, make: Callable[[list[int]], Any]
) -> None:
    idx = [9, 3, 77]
    st.checkin(make(idx), pattern(idx, D), pattern(idx, M))
    data, _ = st.checkout(make(idx))
    np.testing.assert_array_equal(data, pattern(idx, D))


def test_range_indices(st: UntrustedStorage) -> None:
    st.checkin(range(10, 13), pattern([10, 11, 12], D), pattern([10, 11, 12], M))
    data, _ = st.checkout(range(10, 13))
    np.testing.assert_array_equal(data, pattern([10, 11, 12], D))


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([1, 100], "index 100 \\(position 1\\) is out of range"),
        ([-1], "index -1 \\(position 0\\) is negative"),
        ([2**64], "out of range"),
        ([-(2**70)], "negative"),
        (np.array([0, -5], np.int64), "index -5 \\(position 1\\) is negative"),
        (np.array([2**64 - 1], np.uint64), "out of range"),
    ],
)
def test_bad_indices_raise_index_error_naming_them(
    st: UntrustedStorage, indices: Any, message: str
) -> None:
    k = len(indices)
    with pytest.raises(IndexError, match=message):
        st.checkout(indices)
    with pytest.raises(IndexError, match=message):
        st.checkin(indices, bytes(k * D), bytes(k * M))
    with pytest.raises(IndexError, match=message):
        st.checkout_into(indices, bytearray(k * D), bytearray(k * M))


@pytest.mark.parametrize(
    "indices",
    [5, "ab", b"\x01", [1.0], [None], np.array([1.0]), np.array([True]), [1, "2"], object()],
)
def test_non_integer_indices_raise_type_error(st: UntrustedStorage, indices: Any) -> None:
    with pytest.raises(TypeError):
        st.checkout(indices)


def test_multidimensional_index_arrays_are_refused(st: UntrustedStorage) -> None:
    with pytest.raises(ValueError, match="one-dimensional"):
        st.checkout(np.zeros((2, 2), np.int64))


def test_a_failed_checkin_writes_nothing(st: UntrustedStorage) -> None:
    st.checkin([1, 2], pattern([1, 2], D), pattern([1, 2], M))
    with pytest.raises(IndexError):
        st.checkin([1, 2, 100], pattern([1, 2, 100], D, 9), pattern([1, 2, 100], M, 9))
    with pytest.raises(ValueError, match="appears twice"):
        st.checkin([1, 2, 1], pattern([1, 2, 1], D, 9), pattern([1, 2, 1], M, 9))
    data, meta = st.checkout([1, 2])
    np.testing.assert_array_equal(data, pattern([1, 2], D))
    np.testing.assert_array_equal(meta, pattern([1, 2], M))


def test_duplicates_are_found_in_long_checkins(st: UntrustedStorage) -> None:
    idx = [*range(90), 45]
    with pytest.raises(ValueError, match="index 45 appears twice"):
        st.checkin(idx, bytes(len(idx) * D), bytes(len(idx) * M))


# --- sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "exc", "message"),
    [
        ((0, 8, 8), ValueError, "count must be positive"),
        ((8, 0, 8), ValueError, "data_size must be positive"),
        ((8, 8, 0), ValueError, "meta_size must be positive"),
        ((-1, 8, 8), ValueError, "count must be a positive integer"),
        ((8, -8, 8), ValueError, "data_size must be a positive integer"),
        ((2**64, 8, 8), ValueError, "count must be a positive integer"),
        ((2**62, 4, 8), ValueError, "overflow the address space"),
        ((2**40, 2**30, 8), ValueError, "overflow the address space"),
        ((8.0, 8, 8), TypeError, "int"),
        (("8", 8, 8), TypeError, "int"),
    ],
)
def test_bad_sizes_are_refused(
    args: tuple[Any, Any, Any], exc: type[Exception], message: str
) -> None:
    with pytest.raises(exc, match=message):
        UntrustedStorage(*args)


def test_a_mapping_the_kernel_refuses_raises_memory_error() -> None:
    before = oramstore.allocated_bytes()
    with pytest.raises(MemoryError, match="could not map"):
        UntrustedStorage(1 << 48, 1 << 12, 8)
    assert oramstore.allocated_bytes() == before


# --- release ------------------------------------------------------------------------------


def test_every_call_after_release_raises(st: UntrustedStorage) -> None:
    st.release()
    assert st.released
    calls: list[Callable[[], object]] = [
        lambda: st.checkout([1]),
        lambda: st.checkin([1], bytes(D), bytes(M)),
        lambda: st.checkout_into([1], bytearray(D), bytearray(M)),
        st.resident_bytes,
    ]
    for call in calls:
        with pytest.raises(StorageReleasedError, match="released"):
            call()
    with pytest.raises(ValueError, match="released"):  # also a ValueError, as documented
        st.checkout([])
    st.release()  # idempotent
    assert st.count == 100  # the description stays readable
    assert "released" in repr(st)


def test_context_manager_releases_even_on_error() -> None:
    s = UntrustedStorage(10, 8, 8)

    def fail_inside() -> None:
        with s:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert s.released


# --- threads ------------------------------------------------------------------------------


def test_threads_share_a_storage_without_corruption() -> None:
    with UntrustedStorage(256, 1024, 8) as s:
        errors: list[BaseException] = []

        def worker(t: int) -> None:
            try:
                own = list(range(t * 64, (t + 1) * 64))
                for r in range(200):
                    batch = own[r % 48 : r % 48 + 16]
                    fill = (t * 50 + r) % 256
                    s.checkin(
                        batch, np.full((16, 1024), fill, np.uint8), np.full((16, 8), fill, np.uint8)
                    )
                    data, meta = s.checkout(batch)
                    assert (data == fill).all() and (meta == fill).all()
                    # Reading another thread's items sees whole items, never a mix.
                    other, _ = s.checkout(list(range(((t + 1) % 4) * 64, ((t + 1) % 4) * 64 + 8)))
                    assert all(len(set(row.tolist())) == 1 for row in other)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors


def test_release_while_other_threads_copy_is_safe() -> None:
    s = UntrustedStorage(1024, 4096, 64)
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def reader() -> None:
        start.wait()
        for _ in range(200):
            try:
                s.checkout(list(range(0, 1024, 4)))
            except StorageReleasedError:
                outcomes.append("released")
                return
        outcomes.append("finished")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for th in threads:
        th.start()
    start.wait()
    s.release()
    for th in threads:
        th.join()
    assert len(outcomes) == 3
    assert s.released
