"""The PyORAM device "oramstore" (oramstore.compat.pyoram): PyORAM's device contract, the file
layout its docstring describes, and PyORAM's Path ORAM running on it.

PyORAM's own test suite runs on the device too: ``make test-pyoram``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

pytest.importorskip("pyoram")

from pyoram.encrypted_storage.encrypted_block_storage import (
    EncryptedBlockStorage,
)
from pyoram.oblivious_storage.tree.path_oram import PathORAM
from pyoram.storage.block_storage import BlockStorageTypeFactory
from pyoram.storage.block_storage_file import BlockStorageFile

from oramstore import StorageReleasedError, UntrustedStorage
from oramstore.compat.pyoram import BlockStorageOramstore

BS, BC = 100, 20
PAGE = 4096


def block(i: int, salt: int = 0, size: int = BS) -> bytes:
    """Recognisable contents for block ``i``."""
    return bytes((i * 31 + salt * 7 + k) % 251 for k in range(size))


def items_end(block_size: int, block_count: int) -> int:
    """Where the header data begins, as the module docstring says."""
    return PAGE + -(-block_count * block_size // PAGE) * PAGE + 8 * block_count


@pytest.fixture
def name(tmp_path: Path) -> str:
    return str(tmp_path / "blocks.bin")


@pytest.fixture
def dev(name: str) -> Iterator[BlockStorageOramstore]:
    with BlockStorageOramstore.setup(name, BS, BC, initialize=block) as d:
        yield d


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


# -- the package and the registry -------------------------------------------------------------


def test_importing_oramstore_does_not_import_pyoram() -> None:
    done = run_python(
        """
        import sys
        import oramstore, oramstore.compat
        assert "pyoram" not in sys.modules, "pyoram imported"
        import oramstore.compat.pyoram
        assert "pyoram" in sys.modules
        """
    )
    assert done.returncode == 0, done.stderr


def test_registered_as_oramstore() -> None:
    assert BlockStorageTypeFactory("oramstore") is BlockStorageOramstore
    # Registering again (as a second import of the module would) changes nothing.
    import oramstore.compat.pyoram as module

    module._register()
    assert BlockStorageTypeFactory("oramstore") is BlockStorageOramstore


# -- setup, reopen, layout --------------------------------------------------------------------


def test_setup_then_reopen_by_name(name: str) -> None:
    with BlockStorageOramstore.setup(name, BS, BC, header_data=b"hdr") as d:
        assert (d.block_size, d.block_count, d.storage_name) == (BS, BC, name)
        d.write_blocks([3, 7], [block(3, 1), block(7, 1)])
    with BlockStorageOramstore(name) as d:
        assert (d.block_size, d.block_count, d.header_data) == (BS, BC, b"hdr")
        assert d.read_blocks([3, 7, 0]) == [block(3, 1), block(7, 1), bytes(BS)]
    with BlockStorageTypeFactory("oramstore")(Path(name)) as d:
        assert d.read_block(3) == block(3, 1)


def test_setup_initialize_is_read_back(dev: BlockStorageOramstore) -> None:
    assert dev.read_blocks(range(BC)) == [block(i) for i in range(BC)]


def test_setup_refuses_an_existing_name_unless_told(name: str) -> None:
    Path(name).write_bytes(b"something")
    with pytest.raises(FileExistsError):
        BlockStorageOramstore.setup(name, BS, BC)
    with pytest.raises(IOError, match="already exists"):
        BlockStorageOramstore.setup(name, BS, BC, ignore_existing=False)
    assert Path(name).read_bytes() == b"something"
    with BlockStorageOramstore.setup(name, BS, BC, ignore_existing=True) as d:
        assert d.read_block(0) == bytes(BS)
    assert sorted(os.listdir(Path(name).parent)) == ["blocks.bin"]


def test_failed_setup_leaves_nothing(name: str) -> None:
    def bad(i: int) -> bytes:
        return bytes(BS if i < 5 else BS - 1)

    with pytest.raises(ValueError, match=r"initialize\(5\) has 99 bytes"):
        BlockStorageOramstore.setup(name, BS, BC, initialize=bad)
    assert os.listdir(Path(name).parent) == []


@pytest.mark.parametrize(
    ("block_size", "block_count", "header"),
    [(1, 1, b""), (BS, BC, b"abc"), (4096, 3, bytes(5000)), (4095, 17, b"x"), (41, 4097, b"")],
)
def test_file_length_is_compute_storage_size(
    name: str, block_size: int, block_count: int, header: bytes
) -> None:
    BlockStorageOramstore.setup(name, block_size, block_count, header_data=header).close()
    size = BlockStorageOramstore.compute_storage_size(block_size, block_count, header_data=header)
    assert os.path.getsize(name) == size
    assert size == 4096 + 4095 + 16 + block_count * (block_size + 8) + len(header)
    assert (
        BlockStorageOramstore.compute_storage_size(block_size, block_count, ignore_header=True)
        == block_size * block_count
    )
    # The header data follows the items, after the magic and its length.
    raw = Path(name).read_bytes()
    end = items_end(block_size, block_count)
    assert raw[end : end + 16] == b"PYORAMHD" + len(header).to_bytes(8, "little")
    assert raw[end + 16 : end + 16 + len(header)] == header
    assert raw[end + 16 + len(header) :] == bytes(size - end - 16 - len(header))
    # And the file is a storage file that UntrustedStorage opens as it is.
    with UntrustedStorage.open(name) as st:
        assert (st.count, st.data_size, st.meta_size) == (block_count, block_size, 8)


def test_size_grows_by_the_bytes_added() -> None:
    """PyORAM's layers add their per-block and header overheads to the device's size."""
    for bs, bc, header, extra, more in [(10, 11, 3, 16, 81), (25, 47, 0, 32, 200), (1, 1, 0, 1, 1)]:
        base = BlockStorageOramstore.compute_storage_size(bs, bc, header_data=bytes(header))
        grown = BlockStorageOramstore.compute_storage_size(
            bs + extra, bc, header_data=bytes(header + more)
        )
        assert grown == base + extra * bc + more


def test_never_written_blocks_read_zeros_and_take_no_disk(name: str) -> None:
    count = 1 << 16
    with BlockStorageOramstore.setup(name, 4096, count) as d:
        assert d.read_blocks([0, count - 1, 12345]) == [bytes(4096)] * 3
        d.write_block(7, b"\xff" * 4096)
        assert d.read_block(7) == b"\xff" * 4096
    assert os.stat(name).st_blocks * 512 < 1 << 20  # 256 MiB of blocks, sparse


# -- reads and writes -------------------------------------------------------------------------


def test_write_blocks_repeats_last_write_wins(dev: BlockStorageOramstore) -> None:
    dev.write_blocks(
        [1, 2, 1, 3, 1], [block(1, 1), block(2, 1), block(1, 2), block(3, 1), b"z" * BS]
    )
    assert dev.read_blocks([1, 2, 3]) == [b"z" * BS, block(2, 1), block(3, 1)]
    assert dev.bytes_sent == 5 * BS


def test_reads_repeat_and_keep_order(dev: BlockStorageOramstore) -> None:
    assert dev.read_blocks([4, 4, 0, 4]) == [block(4), block(4), block(0), block(4)]
    assert list(dev.yield_blocks(iter([9, 8, 9]))) == [block(9), block(8), block(9)]
    assert dev.read_blocks([]) == []
    dev.write_blocks([], [])


def test_reads_return_bytes(dev: BlockStorageOramstore) -> None:
    assert type(dev.read_block(0)) is bytes
    assert {type(b) for b in dev.read_blocks([0, 1])} == {bytes}
    assert {type(b) for b in dev.yield_blocks([0, 1])} == {bytes}


def test_blocks_may_be_any_bytes_like(dev: BlockStorageOramstore) -> None:
    dev.write_blocks(
        range(3), (x for x in [bytearray(block(0, 5)), memoryview(block(1, 5)), block(2, 5)])
    )
    assert dev.read_blocks(range(3)) == [block(i, 5) for i in range(3)]


def test_callback_per_block_in_order(dev: BlockStorageOramstore) -> None:
    seen: list[int] = []
    dev.write_blocks([5, 2, 5], [block(5), block(2), block(5)], callback=seen.append)
    assert seen == [5, 2, 5]
    dev.write_blocks([1], [block(1)])  # no callback: nothing to call


def test_bytes_counters(name: str) -> None:
    with BlockStorageOramstore.setup(name, BS, BC, initialize=block) as d:
        assert (d.bytes_sent, d.bytes_received) == (0, 0)  # setup's writes are not counted
        d.read_block(0)
        d.read_blocks([1, 2, 2])
        list(d.yield_blocks([3, 4]))
        d.write_block(0, block(0))
        d.write_blocks([1, 1], [block(1), block(1)])
        assert (d.bytes_sent, d.bytes_received) == (3 * BS, 6 * BS)
        with d.clone_device() as c:
            assert (c.bytes_sent, c.bytes_received) == (0, 0)
            c.read_block(0)
            assert c.bytes_received == BS
        assert (d.bytes_sent, d.bytes_received) == (3 * BS, 6 * BS)


def test_yield_blocks_in_batches_and_lazily(name: str) -> None:
    size = 100 << 10  # batches of 256 KiB: 2 blocks each
    with BlockStorageOramstore.setup(name, size, 10, initialize=lambda i: bytes([i]) * size) as d:
        blocks = d.yield_blocks(range(10))
        assert d.bytes_received == 0
        assert next(blocks) == bytes([0]) * size
        assert [b[0] for b in blocks] == list(range(1, 10))
        assert d.bytes_received == 10 * size


@settings(max_examples=40, deadline=None)
@given(
    hs.lists(
        hs.tuples(
            hs.booleans(),
            hs.lists(hs.integers(0, BC - 1), min_size=0, max_size=8),
            hs.integers(0, 255),
        ),
        max_size=12,
    )
)
def test_batches_match_a_model(tmp_path_factory: Any, ops: list[Any]) -> None:
    name = str(tmp_path_factory.mktemp("model") / "b.bin")
    model = {i: bytes(BS) for i in range(BC)}
    with BlockStorageOramstore.setup(name, BS, BC) as d:
        for write, indices, salt in ops:
            if write:
                blocks = [block(i, salt + k) for k, i in enumerate(indices)]
                d.write_blocks(indices, blocks)
                model.update(zip(indices, blocks, strict=True))
            else:
                assert d.read_blocks(indices) == [model[i] for i in indices]
    with BlockStorageOramstore(name) as d:
        assert d.read_blocks(range(BC)) == [model[i] for i in range(BC)]


# -- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"block_size": 0}, ValueError),
        ({"block_count": 0}, ValueError),
        ({"block_size": -4}, ValueError),
        ({"block_size": 1.5}, TypeError),
        ({"block_count": "3"}, TypeError),
        ({"header_data": 2}, TypeError),
        ({"header_data": "text"}, TypeError),
        ({"initialize": 3}, TypeError),
        ({"threadpool_size": -1}, ValueError),
        ({"block_size": 1 << 62}, ValueError),
    ],
)
def test_setup_bad_arguments(name: str, kwargs: dict[str, Any], error: type[Exception]) -> None:
    args: dict[str, Any] = {"block_size": BS, "block_count": BC} | kwargs
    with pytest.raises(error):
        BlockStorageOramstore.setup(name, **args)
    assert os.listdir(Path(name).parent) == []


def test_bad_indices_and_blocks_write_nothing(dev: BlockStorageOramstore) -> None:
    cases: list[tuple[list[Any], type[Exception]]] = [
        ([BC], IndexError),
        ([-1], IndexError),
        (["1"], TypeError),
        ([1.0], TypeError),
    ]
    for bad, error in cases:
        with pytest.raises(error):
            dev.read_blocks(bad)
        with pytest.raises(error):
            dev.write_blocks([0, *bad], [b"q" * BS, b"q" * BS])
    with pytest.raises(IndexError):
        dev.read_block(BC)
    with pytest.raises(ValueError, match="block 1 has 99 bytes"):
        dev.write_blocks([0, 1], [b"q" * BS, b"q" * (BS - 1)])
    with pytest.raises(TypeError, match="bytes-like"):
        dev.write_blocks([0], ["q" * BS])
    with pytest.raises(ValueError, match="2 indices but 1 blocks"):
        dev.write_blocks([0, 1], [b"q" * BS])
    with pytest.raises(ValueError, match="block size"):
        dev.write_block(0, b"short")
    assert dev.read_blocks([0, 1]) == [block(0), block(1)]
    assert dev.bytes_sent == 0


def test_open_errors(name: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        BlockStorageOramstore(name)
    with pytest.raises(IsADirectoryError):
        BlockStorageOramstore(str(tmp_path))
    with pytest.raises(TypeError):
        BlockStorageOramstore(None)  # type: ignore[arg-type]
    # A file of PyORAM's own file device is not a storage of this one.
    BlockStorageFile.setup(name, BS, BC).close()
    with pytest.raises(ValueError, match="not a valid oramstore storage file"):
        BlockStorageOramstore(name)
    os.remove(name)
    # Nor is a bare storage file, without the header data after its items.
    UntrustedStorage.open(name, BC, BS, 8, create=True).release()
    with pytest.raises(ValueError, match="no header data"):
        BlockStorageOramstore(name)
    os.remove(name)
    UntrustedStorage.open(name, BC, BS, 16, create=True).release()
    with pytest.raises(ValueError, match="16 bytes of metadata"):
        BlockStorageOramstore(name)


def test_header_data_cut_short_is_refused(name: str) -> None:
    BlockStorageOramstore.setup(name, BS, BC, header_data=bytes(100)).close()
    os.truncate(name, items_end(BS, BC) + 16 + 50)
    with pytest.raises(ValueError, match="runs past the end"):
        BlockStorageOramstore(name)


# -- header data ------------------------------------------------------------------------------


def test_header_data_kept_across_reopen(name: str) -> None:
    BlockStorageOramstore.setup(name, BS, BC, header_data=b"\x00\x01\x02").close()
    with BlockStorageOramstore(name) as d:
        assert d.header_data == b"\x00\x01\x02"
        d.update_header_data(bytearray(b"\x01\x01\x01"))
        assert d.header_data == b"\x01\x01\x01"
        with pytest.raises(ValueError, match="can not change"):
            d.update_header_data(b"\x01\x01")
        with pytest.raises(TypeError):
            d.update_header_data(3)  # type: ignore[arg-type]
        assert d.header_data == b"\x01\x01\x01"
    with BlockStorageOramstore(name) as d:
        assert d.header_data == b"\x01\x01\x01"
    assert os.path.getsize(name) == BlockStorageOramstore.compute_storage_size(
        BS, BC, header_data=b"123"
    )


def test_empty_header_data(dev: BlockStorageOramstore) -> None:
    assert dev.header_data == b""
    dev.update_header_data(b"")
    with pytest.raises(ValueError, match="can not change"):
        dev.update_header_data(b"x")


def test_clone_shares_header_data(dev: BlockStorageOramstore, name: str) -> None:
    dev.close()
    with BlockStorageOramstore.setup(name, BS, BC, header_data=b"ab", ignore_existing=True) as d:
        c = d.clone_device()
        c.update_header_data(b"cd")
        assert d.header_data == b"cd"
        c.close()


# -- handles and the lock ---------------------------------------------------------------------


def test_lock(dev: BlockStorageOramstore, name: str) -> None:
    with pytest.raises(BlockingIOError, match="ignore_lock"):
        BlockStorageOramstore(name)
    with pytest.raises(IOError, match="another handle holds its lock"):
        BlockStorageTypeFactory("oramstore")(name)
    with BlockStorageOramstore(name, ignore_lock=True) as other:
        assert other.read_block(2) == block(2)
    # A handle that ignored the lock does not release it.
    with pytest.raises(BlockingIOError):
        BlockStorageOramstore(name)
    dev.close()
    with BlockStorageOramstore(name) as again:
        assert again.read_block(2) == block(2)


def test_lock_held_by_another_process_and_released_when_it_dies(name: str) -> None:
    BlockStorageOramstore.setup(name, BS, BC).close()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, oramstore.compat.pyoram as p\n"
            f"d = p.BlockStorageOramstore({name!r})\n"
            "print('open', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "open"
        with pytest.raises(BlockingIOError):
            BlockStorageOramstore(name)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The killed process left no stale lock behind.
    BlockStorageOramstore(name).close()


def test_clone_keeps_the_storage_and_lock(dev: BlockStorageOramstore, name: str) -> None:
    clone = dev.clone_device()
    clone.write_block(1, block(1, 9))
    assert dev.read_block(1) == block(1, 9)
    dev.close()
    assert clone.read_block(1) == block(1, 9)
    with pytest.raises(BlockingIOError):
        BlockStorageOramstore(name)
    clone.close()
    BlockStorageOramstore(name).close()


def test_closed_handle(dev: BlockStorageOramstore) -> None:
    dev.write_block(0, block(0, 3))
    dev.close()
    dev.close()
    for call in (
        lambda: dev.read_block(0),
        lambda: dev.read_blocks([0]),
        lambda: list(dev.yield_blocks([0])),
        lambda: dev.write_block(0, block(0)),
        lambda: dev.write_blocks([0], [block(0)]),
        lambda: dev.update_header_data(b""),
        dev.clone_device,
        dev.flush,
    ):
        with pytest.raises(StorageReleasedError):
            call()
    # What a closed handle knows is still there.
    assert (dev.block_size, dev.block_count, dev.header_data) == (BS, BC, b"")
    assert (dev.bytes_sent, dev.bytes_received) == (BS, 0)
    assert "closed" in repr(dev)


@pytest.mark.parametrize("threadpool_size", [None, 0, 1, 4])
def test_threadpool_size_is_accepted(name: str, threadpool_size: int | None) -> None:
    with BlockStorageOramstore.setup(name, BS, BC, threadpool_size=threadpool_size) as d:
        d.write_block(0, block(0, 1))
        d.flush()
    with BlockStorageOramstore(name, threadpool_size=threadpool_size) as d:
        assert d.read_block(0) == block(0, 1)


# -- PyORAM's layers on the device ------------------------------------------------------------


def test_encrypted_block_storage(name: str) -> None:
    with EncryptedBlockStorage.setup(
        name, BS, BC, storage_type="oramstore", aes_mode="gcm", header_data=b"user"
    ) as f:
        key = f.key
        assert type(f.raw_storage) is BlockStorageOramstore
        f.write_block(3, block(3, 4))
    raw = Path(name).read_bytes()
    assert block(3, 4) not in raw  # encrypted above the device
    with EncryptedBlockStorage(name, key=key, storage_type="oramstore") as f:
        assert f.header_data == b"user"
        assert f.read_block(3) == block(3, 4)
        assert f.read_block(4) == bytes(BS)


@pytest.mark.parametrize(("cached_levels", "concurrency_level"), [(3, None), (0, None), (2, 1)])
def test_path_oram_end_to_end(name: str, cached_levels: int, concurrency_level: int | None) -> None:
    n, size = 200, 64
    rng = random.Random(7)
    model = {i: bytes(size) for i in range(n)}
    options: dict[str, Any] = {"cached_levels": cached_levels}
    if concurrency_level is not None:
        options["concurrency_level"] = concurrency_level
    with PathORAM.setup(name, size, n, storage_type="oramstore", **options) as oram:
        key, stash, position_map = oram.key, oram.stash, oram.position_map
        assert type(oram.raw_storage) is BlockStorageOramstore
        for _ in range(600):
            i = rng.randrange(n)
            if rng.random() < 0.5:
                data = rng.randbytes(size)
                oram.write_block(i, data)
                model[i] = data
            else:
                assert oram.read_block(i) == model[i]
        assert oram.bytes_sent > 0 and oram.bytes_received > 0
    with PathORAM(name, stash, position_map, key=key, storage_type="oramstore", **options) as oram:
        assert [oram.read_block(i) for i in range(n)] == [model[i] for i in range(n)]
        with pytest.raises(IOError, match="lock"):
            PathORAM(name, stash, position_map, key=key, storage_type="oramstore")
