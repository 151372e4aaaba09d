"""UntrustedStorage in a file: durable across processes, sparse, and safe against the host.

The host owns the file: it may truncate or rewrite it at any time. Whatever it does, a call
raises a Python exception or reads zeros, and never crashes the process.
"""

from __future__ import annotations

import array
import errno
import logging
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import strategies as hs
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import oramstore
from oramstore import StorageReleasedError, UntrustedStorage

D, M, COUNT = 64, 16, 100
HEADER = 4096
MAGIC = b"ORAMSTOR"


def pattern(indices: list[int], size: int, salt: int = 0) -> npt.NDArray[np.uint8]:
    """Distinct, recognisable content per (index, salt)."""
    rows = [(np.arange(size, dtype=np.uint32) * 7 + i * 131 + salt * 17 + 1) % 251 for i in indices]
    return np.array(rows, dtype=np.uint8).reshape(len(indices), size)


def meta_offset(count: int, data_size: int) -> int:
    """Where the metadata segment starts, as the README's layout says."""
    return -(-(HEADER + count * data_size) // 4096) * 4096


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "items.oram"


@pytest.fixture
def st(path: Path) -> Iterator[UntrustedStorage]:
    with UntrustedStorage.open(path, COUNT, D, M, create=True) as s:
        yield s


def run_python(script: str, *args: str) -> str:
    """Runs ``script`` in a new interpreter and returns what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- creation and the file's layout ---------------------------------------------------------


def test_create_writes_only_a_header_and_sets_the_length(path: Path) -> None:
    with UntrustedStorage.open(path, COUNT, D, M, create=True) as s:
        assert (s.count, s.data_size, s.meta_size, len(s)) == (COUNT, D, M, COUNT)
        assert s.nbytes == COUNT * (D + M)
        assert s.path == str(path) and isinstance(s.path, str)
        assert s.resident_bytes() == 0
        assert (
            repr(s)
            == f"UntrustedStorage(count=100, data_size=64, meta_size=16, path={str(path)!r})"
        )
    raw = path.read_bytes()
    end = meta_offset(COUNT, D) + COUNT * M
    assert len(raw) == end
    fields = struct.unpack_from("<8sII6Q", raw)
    assert fields == (MAGIC, 1, 0, COUNT, D, M, HEADER, meta_offset(COUNT, D), end)
    assert raw[64:] == bytes(len(raw) - 64)


def test_a_256_gib_storage_is_created_at_once_and_sparse(path: Path) -> None:
    refused: OSError | None = None
    try:
        s = UntrustedStorage.open(path, 1 << 26, 4096, 64, create=True)
    except OSError as e:
        refused = e
    if refused is not None:
        # A file system whose files cannot be this large refuses it cleanly, leaving nothing.
        assert refused.errno in (errno.EFBIG, errno.EINVAL, errno.ENOSPC), refused
        assert not path.exists()
        return
    with s:
        assert s.nbytes == (1 << 26) * (4096 + 64)
        assert os.stat(path).st_size > 256 << 30
        assert os.stat(path).st_blocks * 512 <= 64 << 10
        s.checkin([(1 << 26) - 1], pattern([1], 4096), pattern([1], 64))
        data, meta = s.checkout([(1 << 26) - 1, 12345])
        assert data[0].tobytes() == pattern([1], 4096).tobytes()
        assert not meta[1].any()


def test_a_multi_gib_file_takes_disk_and_memory_only_for_written_items(path: Path) -> None:
    count, size = 1 << 20, 4096  # 4 GiB of data
    rss_before = rss_bytes()
    with UntrustedStorage.open(path, count, size, 64, create=True) as s:
        assert os.stat(path).st_blocks * 512 <= 64 << 10
        rng = np.random.default_rng(5)
        written = [int(i) for i in rng.choice(count, 64, replace=False)]
        s.checkin(written, pattern(written, size), pattern(written, 64))
        s.flush()
        data, meta = s.checkout(written + list(range(1000, 1064)))
        assert data[:64].tobytes() == pattern(written, size).tobytes()
        assert not meta[64:].any()
        blocks = os.stat(path).st_blocks * 512
        # 64 data blocks, at most 64 metadata pages and the header, give or take the file
        # system's own blocks.
        assert 64 * size <= blocks <= 64 * size + 65 * 4096 + (1 << 20)
        assert s.resident_bytes() == 0
        # The items live in the page cache, not in the process: a few buffers of a few
        # hundred KiB at most.
        assert rss_bytes() - rss_before < 32 << 20


def test_the_allocation_is_logged_as_a_file(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="oramstore")
    before = oramstore.allocated_bytes()
    s = UntrustedStorage.open(path, COUNT, D, M, create=True)
    assert oramstore.allocated_bytes() == before + s.nbytes
    s.release()
    assert oramstore.allocated_bytes() == before
    alloc, release = (r.getMessage() for r in caplog.records if r.name == "oramstore")
    assert f"in file {path}:" in alloc
    assert f"count={COUNT}" in alloc and f"bytes={s.nbytes}" in alloc
    assert "released untrusted storage" in release


# --- round trips ---------------------------------------------------------------------------


def test_never_written_items_read_zero(st: UntrustedStorage) -> None:
    data, meta = st.checkout([0, 5, 99, 5])
    assert not data.any() and not meta.any()


def test_round_trip_in_request_order_with_repeats(st: UntrustedStorage) -> None:
    idx = [5, 99, 0, 42, 43, 44]
    st.checkin(idx, pattern(idx, D), pattern(idx, M, 1))
    order = [42, 5, 5, 0, 99, 43, 44]
    data, meta = st.checkout(order)
    np.testing.assert_array_equal(data, pattern(order, D))
    np.testing.assert_array_equal(meta, pattern(order, M, 1))
    out_data = np.zeros((len(order), D), np.uint8)
    out_meta = bytearray(len(order) * M)
    st.checkout_into(np.array(order), out_data, out_meta)
    np.testing.assert_array_equal(out_data, pattern(order, D))
    assert bytes(out_meta) == pattern(order, M, 1).tobytes()


def test_round_trips_across_release_and_a_new_process(path: Path) -> None:
    idx = [3, 97, 50, 51]
    with UntrustedStorage.open(path, COUNT, D, M, create=True) as s:
        s.checkin(idx, pattern(idx, D), pattern(idx, M, 1))
        s.flush()
    assert path.exists()
    child = """
        import sys
        import numpy as np
        from oramstore import UntrustedStorage
        with UntrustedStorage.open(sys.argv[1], 100, 64, 16) as s:
            data, meta = s.checkout([3, 97, 50, 51])
            print(data.tobytes().hex(), meta.tobytes().hex())
            s.checkin([10, 11], np.full((2, 64), 0xAB, np.uint8), np.full((2, 16), 0xCD, np.uint8))
            s.flush()
    """
    data_hex, meta_hex = run_python(child, str(path)).split()
    assert bytes.fromhex(data_hex) == pattern(idx, D).tobytes()
    assert bytes.fromhex(meta_hex) == pattern(idx, M, 1).tobytes()
    with UntrustedStorage.open(path) as s:
        assert (s.count, s.data_size, s.meta_size) == (COUNT, D, M)
        data, meta = s.checkout([10, 11, *idx])
        assert (data[:2] == 0xAB).all() and (meta[:2] == 0xCD).all()
        np.testing.assert_array_equal(data[2:], pattern(idx, D))


def test_cold_batches_are_read_back_whole(path: Path) -> None:
    count, size = 1 << 14, 4096
    rng = np.random.default_rng(2)
    idx = [int(i) for i in rng.choice(count, 300, replace=False)]
    with UntrustedStorage.open(path, count, size, 64, create=True) as s:
        s.checkin(idx, pattern(idx, size), pattern(idx, 64))
        s.flush()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        for batch in (idx[:6], idx[:32], idx):
            data, meta = s.checkout(batch)
            np.testing.assert_array_equal(data, pattern(batch, size))
            np.testing.assert_array_equal(meta, pattern(batch, 64))


def test_writes_touch_only_the_items_bytes(st: UntrustedStorage, path: Path) -> None:
    before = path.read_bytes()
    st.checkin([7, 8], pattern([7, 8], D), pattern([7, 8], M, 1))
    after = bytearray(path.read_bytes())
    data_at, meta_at = HEADER + 7 * D, meta_offset(COUNT, D) + 7 * M
    assert after[data_at : data_at + 2 * D] == pattern([7, 8], D).tobytes()
    assert after[meta_at : meta_at + 2 * M] == pattern([7, 8], M, 1).tobytes()
    after[data_at : data_at + 2 * D] = before[data_at : data_at + 2 * D]
    after[meta_at : meta_at + 2 * M] = before[meta_at : meta_at + 2 * M]
    assert after == before


def test_flush_and_path_on_a_memory_storage() -> None:
    with UntrustedStorage(10, 8, 8) as s:
        assert s.path is None
        s.flush()  # nothing to make durable
    with pytest.raises(StorageReleasedError):
        s.flush()


# --- the host truncates or rewrites the file ----------------------------------------------


def test_a_truncated_file_reads_zeros(st: UntrustedStorage, path: Path) -> None:
    idx = list(range(COUNT))
    st.checkin(idx, pattern(idx, D), pattern(idx, M, 1))
    cut = HEADER + 10 * D + 5  # in the middle of item 10's data
    os.truncate(path, cut)
    data, meta = st.checkout(idx)
    np.testing.assert_array_equal(data[:10], pattern(idx[:10], D))
    assert data[10, :5].tobytes() == pattern([10], D)[0, :5].tobytes()
    assert not data[10, 5:].any() and not data[11:].any() and not meta.any()
    # Cut to nothing, header included: reads still work and read zeros.
    os.truncate(path, 0)
    data, meta = st.checkout([0, 99])
    assert not data.any() and not meta.any()
    # A write lands exactly on its item; everything before it reads zero.
    st.checkin([99], pattern([99], D), pattern([99], M, 1))
    assert os.stat(path).st_size == meta_offset(COUNT, D) + COUNT * M
    data, meta = st.checkout([99, 98])
    np.testing.assert_array_equal(data[0], pattern([99], D)[0])
    assert not data[1].any() and not meta[1].any()
    # The header is gone, so the file no longer opens.
    st.release()
    with pytest.raises(ValueError, match="magic"):
        UntrustedStorage.open(path)


def test_the_host_may_grow_or_rewrite_the_file(st: UntrustedStorage, path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(HEADER + 3 * D)
        f.write(b"\xff" * D)
        f.seek(0, os.SEEK_END)
        f.write(b"more")
    data, _ = st.checkout([3])
    assert (data == 0xFF).all()


# --- every bad argument ----------------------------------------------------------------------


def test_create_refuses_an_existing_file(st: UntrustedStorage, path: Path) -> None:
    before = path.read_bytes()
    with pytest.raises(FileExistsError) as info:
        UntrustedStorage.open(path, COUNT, D, M, create=True)
    assert info.value.errno == errno.EEXIST
    assert info.value.filename == str(path)
    assert path.read_bytes() == before


def test_open_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        UntrustedStorage.open(tmp_path / "nothing")
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError):
        UntrustedStorage.open(tmp_path / "no" / "dir", 1, 8, 8, create=True)
    with pytest.raises(IsADirectoryError):
        UntrustedStorage.open(tmp_path)


@pytest.mark.parametrize(
    "sizes",
    [(None, None, None), (None, 8, 8), (8, None, 8), (8, 8, None), (8, None, None)],
)
def test_create_needs_all_three_sizes(path: Path, sizes: tuple[Any, Any, Any]) -> None:
    with pytest.raises(TypeError, match="needs count, data_size and meta_size"):
        UntrustedStorage.open(path, *sizes, create=True)
    assert not path.exists()


@pytest.mark.parametrize(
    ("args", "exc", "message"),
    [
        ((0, 8, 8), ValueError, "count must be positive"),
        ((8, 0, 8), ValueError, "data_size must be positive"),
        ((8, 8, 0), ValueError, "meta_size must be positive"),
        ((-1, 8, 8), ValueError, "count must be a positive integer"),
        ((2**64, 8, 8), ValueError, "count must be a positive integer"),
        ((2**62, 4, 8), ValueError, "overflow"),
        ((1, 2**63 - 16, 8), ValueError, "overflow"),
        ((8.0, 8, 8), TypeError, "int"),
        ((8, "8", 8), TypeError, "int"),
    ],
)
def test_bad_sizes_are_refused_and_create_nothing(
    path: Path, args: tuple[Any, Any, Any], exc: type[Exception], message: str
) -> None:
    with pytest.raises(exc, match=message):
        UntrustedStorage.open(path, *args, create=True)
    assert not path.exists()


def test_a_file_too_large_for_the_file_system_is_removed_again(path: Path) -> None:
    refused: OSError | None = None
    try:
        s = UntrustedStorage.open(path, 1 << 45, 4096, 8, create=True)  # 128 PiB
    except OSError as e:
        refused = e
    else:
        # This file system takes a 128 PiB file: it must then be sparse and usable.
        with s:
            assert s.nbytes == (1 << 45) * (4096 + 8)
            assert os.stat(path).st_blocks * 512 <= 64 << 10
        return
    assert refused.errno in (errno.EFBIG, errno.EINVAL, errno.ENOSPC), refused
    assert refused.filename == str(path)
    assert not path.exists()


@pytest.mark.parametrize(
    ("given", "which"),
    [
        ({"count": 99}, "count=100, but count=99"),
        ({"data_size": 65}, "data_size=64, but data_size=65"),
        ({"count": 100, "data_size": 64, "meta_size": 8}, "meta_size=16, but meta_size=8"),
    ],
)
def test_open_refuses_sizes_that_differ_from_the_header(
    st: UntrustedStorage, path: Path, given: dict[str, Any], which: str
) -> None:
    with pytest.raises(ValueError, match=which):
        UntrustedStorage.open(path, **given)


def test_open_accepts_matching_sizes(st: UntrustedStorage, path: Path) -> None:
    st.release()
    sizes: list[dict[str, Any]] = [{}, {"count": COUNT}, {"meta_size": M}, {"data_size": D}]
    for given in sizes:
        UntrustedStorage.open(path, **given).release()
    UntrustedStorage.open(path, COUNT, D, M, create=False).release()


class FsPath:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return str(self.path)


@pytest.mark.parametrize("wrap", [str, Path, FsPath], ids=["str", "pathlib", "pathlike"])
def test_path_may_be_a_str_or_a_path_like(path: Path, wrap: Callable[[Path], Any]) -> None:
    with UntrustedStorage.open(wrap(path), 10, 8, 8, create=True) as s:
        assert s.path == str(path)
    UntrustedStorage.open(wrap(path)).release()


@pytest.mark.parametrize("bad", [b"/tmp/x", 12, None, 1.5])
def test_path_of_another_type_is_refused(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"path must be a str or an os\.PathLike of str"):
        UntrustedStorage.open(bad, 10, 8, 8, create=True)


def test_a_relative_path_is_kept_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with UntrustedStorage.open("rel.oram", 10, 8, 8, create=True) as s:
        assert s.path == str(tmp_path / "rel.oram")
        monkeypatch.chdir("/")
        s.checkin([1], bytes(8), bytes(8))
    UntrustedStorage.open(tmp_path / "rel.oram").release()


def test_create_must_be_a_bool(path: Path) -> None:
    with pytest.raises(TypeError):
        UntrustedStorage.open(path, 10, 8, 8, create=1)  # type: ignore[arg-type]


# --- headers that are not valid ---------------------------------------------------------------


def header(count: int = COUNT, data: int = D, meta: int = M) -> bytearray:
    end = meta_offset(count, data) + count * meta
    raw = bytearray(HEADER)
    struct.pack_into("<8sII6Q", raw, 0, MAGIC, 1, 0, count, data, meta, HEADER,
                     meta_offset(count, data), end)  # fmt: skip
    return raw


def corrupt(at: int, value: bytes) -> bytes:
    raw = header()
    raw[at : at + len(value)] = value
    return bytes(raw)


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds 0 bytes, fewer than the 4096-byte header"),
        (bytes(header()[:100]), "holds 100 bytes"),
        (bytes(header()[:4095]), "holds 4095 bytes"),
        (bytes(5000), "magic"),
        (corrupt(0, b"ORAMSTOX"), "magic"),
        (corrupt(8, struct.pack("<I", 2)), "format version is 2"),
        (corrupt(8, struct.pack("<I", 0)), "format version is 0"),
        (corrupt(12, b"\x01"), "reserved"),
        (corrupt(4095, b"\x01"), "reserved"),
        (corrupt(16, u64(0)), "count must be positive"),
        (corrupt(24, u64(0)), "data_size must be positive"),
        (corrupt(32, u64(0)), "meta_size must be positive"),
        (corrupt(16, u64(2**64 - 1)), "overflow"),
        (corrupt(24, u64(2**62)), "overflow"),
        (corrupt(24, u64(2**63 - 16)), "overflow"),
        (corrupt(40, u64(0)), "do not match"),
        (corrupt(48, u64(4096)), "do not match"),
        (corrupt(56, u64(2**64 - 1)), "do not match"),
        (corrupt(16, u64(101)), "do not match"),
    ],
)
def test_headers_that_are_not_valid_raise_value_error(
    path: Path, content: bytes, message: str
) -> None:
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        UntrustedStorage.open(path)
    assert str(path) in str(info.value)


def test_random_header_corruption_never_crashes(path: Path) -> None:
    rng = np.random.default_rng(9)
    good = header()
    for _ in range(300):
        raw = bytearray(good)
        for at in rng.integers(0, 64, int(rng.integers(1, 4))):
            raw[at] = int(rng.integers(0, 256))
        path.write_bytes(bytes(raw))
        try:
            s = UntrustedStorage.open(path)
        except ValueError:
            continue
        with s:  # a header that still says something valid opens, and works
            data, meta = s.checkout([s.count - 1])
            assert not data.any() and not meta.any()


def test_a_bare_header_opens_and_reads_zeros(path: Path) -> None:
    path.write_bytes(bytes(header()))
    with UntrustedStorage.open(path, COUNT, D, M) as s:
        data, meta = s.checkout([0, 99])
        assert not data.any() and not meta.any()


def test_a_fifo_is_not_a_storage_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        UntrustedStorage.open(fifo)


# --- buffers, indices and release, as for a storage in memory ------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        bytes,
        bytearray,
        lambda b: memoryview(bytes(b)),
        lambda b: np.frombuffer(b, np.uint8).copy(),
        lambda b: np.frombuffer(b, np.float64).copy(),
        lambda b: array.array("Q", b),
        lambda b: np.frombuffer(b, np.uint8).reshape(2, -1).copy(),
    ],
    ids=["bytes", "bytearray", "memoryview", "uint8", "float64", "array", "2d"],
)
def test_any_contiguous_buffer_goes_in_and_out(
    st: UntrustedStorage, wrap: Callable[[bytes], Any]
) -> None:
    idx = [10, 20]
    data = pattern(idx, D).tobytes()
    meta = pattern(idx, M, 3).tobytes()
    st.checkin(idx, wrap(data), wrap(meta))
    got_data, got_meta = st.checkout(idx)
    assert got_data.tobytes() == data and got_meta.tobytes() == meta
    with mmap.mmap(-1, 2 * D) as out:
        st.checkout_into(idx, out, memoryview(bytearray(2 * M)))
        assert out[:] == data


@pytest.mark.parametrize("extra", [-1, 1, D])
def test_buffers_of_the_wrong_length_are_refused_and_untouched(
    st: UntrustedStorage, path: Path, extra: int
) -> None:
    before = path.read_bytes()
    with pytest.raises(ValueError, match="data buffer holds"):
        st.checkin([1, 2], bytes(2 * D + extra), bytes(2 * M))
    with pytest.raises(ValueError, match="meta buffer holds"):
        st.checkin([1, 2], bytes(2 * D), bytes(2 * M + extra))
    assert path.read_bytes() == before
    data = np.full(2 * D + extra, 0xEE, np.uint8)
    meta = np.full(2 * M, 0xEE, np.uint8)
    with pytest.raises(ValueError, match="data buffer holds"):
        st.checkout_into([1, 2], data, meta)
    assert (data == 0xEE).all() and (meta == 0xEE).all()


def test_a_huge_batch_is_refused_without_a_huge_allocation(st: UntrustedStorage) -> None:
    with pytest.raises(ValueError, match="data buffer holds"):
        st.checkin(np.zeros(1 << 20, np.int64), bytes(D), bytes(M))


def test_bad_buffers_are_refused(st: UntrustedStorage) -> None:
    with pytest.raises(TypeError, match="read-only"):
        st.checkout_into([1], bytes(D), bytearray(M))
    with pytest.raises(TypeError, match="buffer protocol"):
        st.checkin([1], "text", bytes(M))  # type: ignore[arg-type]
    strided = np.zeros((2, 2 * D), np.uint8)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        st.checkin([1, 2], strided, bytes(2 * M))
    shared = bytearray(D + M)
    with pytest.raises(ValueError, match="overlap"):
        st.checkout_into([1], memoryview(shared)[:D], memoryview(shared)[D - 1 : D - 1 + M])


@pytest.mark.parametrize(
    ("indices", "exc", "message"),
    [
        ([1, 100], IndexError, "index 100 \\(position 1\\) is out of range"),
        ([-1], IndexError, "negative"),
        ([2**64], IndexError, "out of range"),
        ([1.0], TypeError, "indices must be integers"),
        ([3, 4, 3], ValueError, "appears twice"),
    ],
)
def test_bad_indices_are_refused_and_write_nothing(
    st: UntrustedStorage, path: Path, indices: list[Any], exc: type[Exception], message: str
) -> None:
    before = path.read_bytes()
    k = len(indices)
    with pytest.raises(exc, match=message):
        st.checkin(indices, pattern(list(range(k)), D), pattern(list(range(k)), M))
    assert path.read_bytes() == before
    if exc is not ValueError:  # a checkout may repeat an index
        with pytest.raises(exc, match=message):
            st.checkout(indices)


def test_every_call_after_release_raises_and_the_file_stays(
    st: UntrustedStorage, path: Path
) -> None:
    st.checkin([1], pattern([1], D), pattern([1], M))
    st.release()
    assert st.released and path.exists()
    assert st.path == str(path) and "released" in repr(st)
    calls: list[Callable[[], object]] = [
        lambda: st.checkout([1]),
        lambda: st.checkin([1], bytes(D), bytes(M)),
        lambda: st.checkout_into([1], bytearray(D), bytearray(M)),
        st.resident_bytes,
        st.flush,
    ]
    for call in calls:
        with pytest.raises(StorageReleasedError):
            call()
    st.release()
    with UntrustedStorage.open(path) as again:
        np.testing.assert_array_equal(again.checkout([1])[0], pattern([1], D))


def test_io_errors_are_os_errors_with_errno(path: Path) -> None:
    UntrustedStorage.open(path, 1 << 20, 4096, 8, create=True).release()
    # The file size limit turns a write far into the file into EFBIG (Python ignores the
    # SIGXFSZ that comes with it).
    child = """
        import resource, sys
        from oramstore import UntrustedStorage
        s = UntrustedStorage.open(sys.argv[1])
        s.checkin([0], bytes(4096), bytes(8))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
        try:
            s.checkin([1 << 19], bytes(4096), bytes(8))
        except OSError as e:
            print(type(e).__name__, e.errno, e.filename == sys.argv[1], "write" in str(e))
    """
    assert run_python(child, str(path)).split() == ["OSError", str(errno.EFBIG), "True", "True"]


# --- threads ---------------------------------------------------------------------------------


def test_threads_see_whole_items(path: Path) -> None:
    with UntrustedStorage.open(path, 256, 1024, 8, create=True) as s:
        errors: list[BaseException] = []

        def worker(t: int) -> None:
            try:
                own = list(range(t * 64, (t + 1) * 64))
                for r in range(100):
                    batch = own[r % 48 : r % 48 + 16]
                    fill = (t * 50 + r) % 256
                    s.checkin(
                        batch, np.full((16, 1024), fill, np.uint8), np.full((16, 8), fill, np.uint8)
                    )
                    data, meta = s.checkout(batch)
                    assert (data == fill).all() and (meta == fill).all()
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


# --- against a model of the file's bytes ----------------------------------------------------

MC, MD, MM = 24, 40, 8
MODEL_END = meta_offset(MC, MD) + MC * MM
index = hs.integers(min_value=-2, max_value=MC + 2)


class FileModel(RuleBasedStateMachine):
    """The storage against a bytearray of the whole file, with a host that truncates it and a
    process that releases and reopens it."""

    def __init__(self) -> None:
        super().__init__()
        self.path = Path(tempfile.gettempdir()) / f"oramstore-model-{os.getpid()}-{id(self)}.oram"
        self.path.unlink(missing_ok=True)
        self.storage = UntrustedStorage.open(self.path, MC, MD, MM, create=True)
        self.file = bytearray(header(MC, MD, MM)) + bytearray(MODEL_END - HEADER)

    def item(self, i: int) -> tuple[bytes, bytes]:
        data_at, meta_at = HEADER + i * MD, meta_offset(MC, MD) + i * MM
        return bytes(self.file[data_at : data_at + MD]), bytes(self.file[meta_at : meta_at + MM])

    @rule(indices=hs.lists(index, max_size=6), seed=hs.integers(0, 255))
    def checkin(self, indices: list[int], seed: int) -> None:
        rng = np.random.default_rng(seed)
        data = rng.integers(0, 256, (len(indices), MD), np.uint8)
        meta = rng.integers(0, 256, (len(indices), MM), np.uint8)
        if any(i < 0 or i >= MC for i in indices):
            with pytest.raises(IndexError):
                self.storage.checkin(indices, data, meta)
            return
        if len(set(indices)) != len(indices):
            with pytest.raises(ValueError, match="twice"):
                self.storage.checkin(indices, data, meta)
            return
        self.storage.checkin(indices, data, meta)
        for k, i in enumerate(indices):
            data_at, meta_at = HEADER + i * MD, meta_offset(MC, MD) + i * MM
            self.file[data_at : data_at + MD] = data[k].tobytes()
            self.file[meta_at : meta_at + MM] = meta[k].tobytes()

    @rule(indices=hs.lists(hs.integers(0, MC - 1), max_size=8))
    def checkout(self, indices: list[int]) -> None:
        data, meta = self.storage.checkout(indices)
        for k, i in enumerate(indices):
            assert (data[k].tobytes(), meta[k].tobytes()) == self.item(i)

    @rule(length=hs.integers(HEADER, MODEL_END))
    def host_truncates(self, length: int) -> None:
        os.truncate(self.path, length)
        self.file[length:] = bytes(len(self.file) - length)

    @rule(flush=hs.booleans())
    def reopen(self, flush: bool) -> None:
        if flush:
            self.storage.flush()
        self.storage.release()
        self.storage = UntrustedStorage.open(self.path, MC, MD, MM)

    @invariant()
    def file_matches(self) -> None:
        raw = self.path.read_bytes()
        assert raw == bytes(self.file[: len(raw)])
        assert not any(self.file[len(raw) :])

    def teardown(self) -> None:
        self.storage.release()
        self.path.unlink(missing_ok=True)


TestFileModel = FileModel.TestCase
