"""PyORAM 0.2.1 block storage on oramstore's file storage: the device ``"oramstore"``.

Importing this module registers :class:`BlockStorageOramstore` with PyORAM's
``BlockStorageTypeFactory`` under the name ``"oramstore"``. PyORAM's layers then run on it by
name, with ``storage_type="oramstore"``: the encrypted block storage, the encrypted and
top-cached heap storage, and Path ORAM::

    import oramstore.compat.pyoram  # registers "oramstore"
    from pyoram.oblivious_storage.tree.path_oram import PathORAM

    with PathORAM.setup("blocks.bin", 4096, 1 << 12, storage_type="oramstore") as oram:
        oram.write_block(7, b"x" * 4096)

The device is the untrusted side: it keeps what PyORAM's layers above it have encrypted, and
encrypts nothing itself. It needs ``pip install oramstore[pyoram]``.

File layout
-----------

A storage named ``NAME`` is the one file ``NAME``: an :class:`~oramstore.UntrustedStorage` file
(made by ``UntrustedStorage.open``; its layout is in the README, "On a file") of
``block_count`` items of ``block_size`` bytes of data and 8 bytes of metadata, item ``i``
holding block ``i``, followed by PyORAM's header data and zeros. Integers are little-endian:

==========  =====  ================================================================
offset      bytes  field
==========  =====  ================================================================
0           E      the storage file: its 4096-byte header, the blocks from offset
                   4096, then their metadata (zeros, unused) from the next multiple
                   of 4096: ``E = 4096 + B + P + 8 * block_count``, where
                   ``B = block_count * block_size`` and ``P`` rounds ``B`` up to a
                   multiple of 4096
E           8      magic ``b"PYORAMHD"``
E + 8       8      ``L``, the length of the header data
E + 16      L      the header data
E + 16 + L  4095   zeros
            - P
==========  =====  ================================================================

The file is thus ``4096 + 4095 + 16 + block_count * (block_size + 8) + L`` bytes long
(:meth:`BlockStorageOramstore.compute_storage_size`): a byte more of block or of header data
makes it a byte longer. PyORAM's layers rely on that: they compute their own storage's size as
the device's plus their per-block and header overheads, and its tests compare the result with
the file's length. The header data therefore lives in this file, not in one of its own, and not
in whole items (which would round it up to blocks); the storage file's own header cannot hold
it, since its reserved bytes must be zero. A storage file may be longer than its items (its host
may extend it), and the storage never writes past them.
:meth:`~BlockStorageOramstore.update_header_data` rewrites the header data in place, as PyORAM's
file device does.

Blocks move in batches: each ``read_blocks`` is one checkout and each ``write_blocks`` one
checkin, by positioned reads and writes through the kernel's page cache, so the process holds
no copy of the storage. :meth:`~BlockStorageOramstore.setup` writes only the blocks
``initialize`` gives (none without it): a block never written reads as zeros, from a hole of the
sparse file.

Handles and the lock
--------------------

``setup`` makes the file under a temporary name beside ``NAME`` and then links it to ``NAME``,
so that a name never refers to a half-made storage. A handle opened without ``ignore_lock``
holds an exclusive ``flock`` on the file, and opening a second such handle raises
``BlockingIOError`` (an ``IOError``, as PyORAM's devices raise). The lock is released when the
handle and its clones are all closed, or when the process ends: a crash leaves no stale lock
behind, unlike the flag that PyORAM's file device keeps in its file.

Writes reach the page cache, which survives the process but not the machine, as with PyORAM's
file device; :meth:`~BlockStorageOramstore.flush` makes them durable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import itertools
import operator
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self

from pyoram.storage.block_storage import BlockStorageInterface, BlockStorageTypeFactory

from oramstore._native import UntrustedStorage
from oramstore.errors import StorageReleasedError

__all__ = ["DEVICE_NAME", "BlockStorageOramstore"]

DEVICE_NAME = "oramstore"
"""The name the device is registered under: ``storage_type="oramstore"``."""

_MAGIC = b"PYORAMHD"
_TRAILER_BYTES = 16
"""The magic and the length that come before the header data."""
_META_SIZE = 8
_PAGE = 4096
_BATCH_BYTES = 256 << 10
"""Setup and ``yield_blocks`` move blocks in batches of about this many bytes, which bounds the
memory they take whatever the storage's size. Consecutive items move with one system call, and
Linux (6.18, ext4) caches what one large write brings in as large folios, in which a later small
write costs about twice as much: random rewrites of 16 KiB buckets took 130 us per ten after
4 MiB setup writes against 57 us after writes of 256 KiB or less. Path ORAM rewrites buckets at
random, so setup writes in pieces of this size."""

_Path = str | os.PathLike[str]
_Bytes = bytes | bytearray | memoryview


def _items_end(block_size: int, block_count: int) -> int:
    """The length of the storage file of this shape, where the header data begins."""
    data = block_count * block_size
    return _PAGE + -(-data // _PAGE) * _PAGE + block_count * _META_SIZE


def _file_length(block_size: int, block_count: int, header_bytes: int) -> int:
    """The length of the whole file: ``_items_end`` and the header data, padded with zeros so
    that it is linear in the blocks' and the header data's bytes."""
    fixed = _PAGE + (_PAGE - 1) + _TRAILER_BYTES
    return fixed + block_count * (block_size + _META_SIZE) + header_bytes


def _positive(what: str, value: Any) -> int:
    """``value`` as an int, which must be positive."""
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None
    if number <= 0:
        raise ValueError(f"{what} must be positive: {number}")
    return number


def _as_bytes(what: str, value: Any) -> bytes:
    """A copy of a bytes-like ``value``; an int is refused, not taken as a length."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


def _check_threadpool_size(threadpool_size: Any) -> None:
    if threadpool_size is None:
        return
    if operator.index(threadpool_size) < 0:
        raise ValueError(f"threadpool_size must be None or at least 0: {threadpool_size}")


def _block_bytes(block: Any, block_size: int, where: str) -> Any:
    """``block`` itself, once it is known to be a buffer of exactly ``block_size`` bytes."""
    try:
        size = memoryview(block).nbytes
    except TypeError:
        raise TypeError(f"{where} must be bytes-like, not {type(block).__name__}") from None
    if size != block_size:
        raise ValueError(f"{where} has {size} bytes, not the block size {block_size}")
    return block


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _read_header_data(fd: int, end: int, name: str) -> bytes:
    """The header data that follows the items, which end at ``end``."""
    head = os.pread(fd, _TRAILER_BYTES, end)
    if len(head) != _TRAILER_BYTES or head[:8] != _MAGIC:
        raise ValueError(
            f"{name} is not a PyORAM storage of oramstore: no header data after its items"
        )
    length = int.from_bytes(head[8:], "little")
    room = os.fstat(fd).st_size - end - _TRAILER_BYTES
    if length > room:
        raise ValueError(f"{name}: its header data of {length} bytes runs past the end of the file")
    data = os.pread(fd, length, end + _TRAILER_BYTES)
    if len(data) != length:
        raise ValueError(f"{name}: its header data was cut short while it was read")
    return data


def _publish(temporary: str, name: str, *, replace: bool) -> None:
    """Give the finished file at ``temporary`` the name ``name``."""
    if replace:
        os.replace(temporary, name)
        return
    try:
        # A link fails if the name exists, at the moment it is made.
        os.link(temporary, name)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "Storage location already exists", name) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP):
            raise
        # A file system without hard links: the check and the rename are two steps.
        if os.path.lexists(name):
            raise FileExistsError(errno.EEXIST, "Storage location already exists", name) from None
        os.replace(temporary, name)
        return
    os.unlink(temporary)


class _Shared:
    """What a handle shares with its clones: the storage, the file that holds the lock and is
    used for the header data, the header data, and the number of handles still open."""

    __slots__ = ("end", "file", "handles", "header", "mutex", "storage")

    def __init__(self, storage: UntrustedStorage, file: io.FileIO, header: bytes, end: int):
        self.storage = storage
        self.file = file
        self.header = header
        self.end = end
        self.handles = 1
        self.mutex = threading.Lock()

    def join(self) -> None:
        with self.mutex:
            if self.handles == 0:
                raise StorageReleasedError("the PyORAM device has been closed")
            self.handles += 1

    def leave(self) -> None:
        with self.mutex:
            self.handles -= 1
            if self.handles > 0:
                return
        self.storage.release()
        self.file.close()  # and with it the lock


class BlockStorageOramstore(BlockStorageInterface):  # type: ignore[misc]
    """PyORAM's block storage device on an :class:`~oramstore.UntrustedStorage` file.

    ``BlockStorageOramstore(storage_name, threadpool_size=None, ignore_lock=False)`` opens the
    storage that :meth:`setup` made at ``storage_name``. Without ``ignore_lock`` the handle
    takes the storage's lock. ``threadpool_size`` is accepted as PyORAM's devices accept it,
    and writes complete before ``write_blocks`` returns: Path ORAM reads its next path right
    after it writes one, so a write left to a background thread would be waited for at once.

    Reads return ``bytes``. Indices are ints in ``range(block_count)``; blocks are bytes-like
    objects of exactly ``block_size`` bytes. Arguments are checked before anything is read or
    written: a bad index raises ``IndexError`` (``TypeError`` if it is not an int), a block of
    the wrong size ``ValueError``. After :meth:`close` every read or write raises
    :class:`~oramstore.StorageReleasedError`; the properties still answer.

    Raises:
        FileNotFoundError: no storage is at ``storage_name``.
        BlockingIOError: another handle holds the storage's lock.
        ValueError: the file is not a storage that :meth:`setup` made.
    """

    def __init__(
        self,
        storage_name: _Path,
        threadpool_size: int | None = None,
        ignore_lock: bool = False,
    ) -> None:
        _check_threadpool_size(threadpool_size)
        name = os.fspath(storage_name)
        file = io.FileIO(name, "r+")
        try:
            if not ignore_lock:
                try:
                    fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise BlockingIOError(
                        errno.EWOULDBLOCK,
                        "Can not open the storage: another handle holds its lock "
                        "(open it with ignore_lock=True to share it)",
                        name,
                    ) from None
            storage = UntrustedStorage.open(name)
            try:
                if storage.meta_size != _META_SIZE:
                    raise ValueError(
                        f"{name} is not a PyORAM storage of oramstore: its items have "
                        f"{storage.meta_size} bytes of metadata, not {_META_SIZE}"
                    )
                end = _items_end(storage.data_size, storage.count)
                header = _read_header_data(file.fileno(), end, name)
            except BaseException:
                storage.release()
                raise
        except BaseException:
            file.close()
            raise
        self._attach(storage_name, _Shared(storage, file, header, end))

    def _attach(self, storage_name: _Path, shared: _Shared) -> None:
        self._storage_name = storage_name
        self._shared = shared
        self._block_size = shared.storage.data_size
        self._block_count = shared.storage.count
        self._closed = False
        self._bytes_sent = 0
        self._bytes_received = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<{type(self).__name__} {os.fspath(self._storage_name)!r}: {self._block_count} "
            f"blocks of {self._block_size} bytes, {state}>"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the handle."""
        self.close()

    def _live(self) -> UntrustedStorage:
        if self._closed:
            raise StorageReleasedError("the PyORAM device has been closed")
        return self._shared.storage

    def clone_device(self) -> Self:
        """Another handle on the same storage, sharing its lock, header data and file; it
        counts its own bytes sent and received, and the storage stays open until every handle
        is closed."""
        self._live()
        self._shared.join()
        clone = object.__new__(type(self))
        clone._attach(self._storage_name, self._shared)
        return clone

    @classmethod
    def compute_storage_size(
        cls,
        block_size: int,
        block_count: int,
        header_data: _Bytes | None = None,
        ignore_header: bool = False,
    ) -> int:
        """The length of the file :meth:`setup` makes for these arguments, or with
        ``ignore_header`` the bytes of the blocks alone."""
        block_size = _positive("block_size", block_size)
        block_count = _positive("block_count", block_count)
        header = b"" if header_data is None else _as_bytes("header_data", header_data)
        if ignore_header:
            return block_size * block_count
        return _file_length(block_size, block_count, len(header))

    @classmethod
    def setup(
        cls,
        storage_name: _Path,
        block_size: int,
        block_count: int,
        initialize: Callable[[int], Any] | None = None,
        header_data: _Bytes | None = None,
        ignore_existing: bool = False,
        threadpool_size: int | None = None,
    ) -> Self:
        """Create a storage of ``block_count`` blocks of ``block_size`` bytes at
        ``storage_name`` and open it (taking its lock).

        ``initialize(i)`` gives block ``i``'s first contents, written in batches; without it
        every block reads as zeros and nothing is written. ``header_data`` (bytes) is kept
        with the storage, readable as :attr:`header_data` and rewritable, at the same length,
        by :meth:`update_header_data`. With ``ignore_existing`` a file already at
        ``storage_name`` is replaced; otherwise it is an error.

        Raises:
            FileExistsError: ``storage_name`` exists (an ``IOError``).
            ValueError: ``block_size`` or ``block_count`` is not positive or too large, or
                ``initialize`` gives a block of the wrong size.
            TypeError: a size is not an int, or ``header_data`` is not bytes.
        """
        name = os.fspath(storage_name)
        if not ignore_existing and os.path.lexists(name):
            raise FileExistsError(errno.EEXIST, "Storage location already exists", name)
        block_size = _positive("block_size", block_size)
        block_count = _positive("block_count", block_count)
        header = b"" if header_data is None else _as_bytes("header_data", header_data)
        _check_threadpool_size(threadpool_size)
        if initialize is not None and not callable(initialize):
            raise TypeError(f"initialize must be callable, not {type(initialize).__name__}")

        folder, base = os.path.split(os.path.abspath(name))
        temporary = os.path.join(folder, f".{base}.{secrets.token_hex(8)}.tmp")
        try:
            with UntrustedStorage.open(
                temporary, block_count, block_size, _META_SIZE, create=True
            ) as storage:
                end = _items_end(block_size, block_count)
                trailer = _MAGIC + len(header).to_bytes(8, "little") + header
                with open(temporary, "r+b", buffering=0) as file:
                    _pwrite_all(file.fileno(), trailer, end)
                    os.ftruncate(file.fileno(), _file_length(block_size, block_count, len(header)))
                if initialize is not None:
                    _initialize(storage, initialize)
            _publish(temporary, name, replace=ignore_existing)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return cls(storage_name, threadpool_size=threadpool_size)

    @property
    def header_data(self) -> bytes:
        """The header data given to :meth:`setup`, or the last :meth:`update_header_data`."""
        return self._shared.header

    @property
    def block_count(self) -> int:
        """Number of blocks."""
        return self._block_count

    @property
    def block_size(self) -> int:
        """Bytes per block."""
        return self._block_size

    @property
    def storage_name(self) -> _Path:
        """The name the storage was opened by, as given."""
        return self._storage_name

    @property
    def bytes_sent(self) -> int:
        """Bytes of blocks this handle has written (a block written twice counts twice)."""
        return self._bytes_sent

    @property
    def bytes_received(self) -> int:
        """Bytes of blocks this handle has read."""
        return self._bytes_received

    def update_header_data(self, new_header_data: _Bytes) -> None:
        """Replace the header data with ``new_header_data``, of the same length.

        Raises:
            ValueError: the length differs.
            TypeError: ``new_header_data`` is not bytes.
        """
        self._live()
        data = _as_bytes("new_header_data", new_header_data)
        shared = self._shared
        with shared.mutex:
            if len(data) != len(shared.header):
                raise ValueError(
                    "The size of header data can not change: it has "
                    f"{len(shared.header)} bytes, not {len(data)}"
                )
            _pwrite_all(shared.file.fileno(), data, shared.end + _TRAILER_BYTES)
            shared.header = data

    def flush(self) -> None:
        """Make every write so far, blocks and header data, durable (``fdatasync``)."""
        self._live().flush()

    def close(self) -> None:
        """Close this handle; the storage (and its lock) is released with the last handle
        that shares it. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._shared.leave()

    def read_blocks(self, indices: Iterable[int]) -> list[bytes]:
        """The blocks at ``indices``, in order, read in one batch; an index may repeat."""
        storage = self._live()
        batch = list(indices)
        if not batch:
            return []
        data, _ = storage.checkout(batch)
        self._bytes_received += len(batch) * self._block_size
        return [row.tobytes() for row in data]

    def yield_blocks(self, indices: Iterable[int]) -> Iterator[bytes]:
        """The blocks at ``indices``, one at a time, read in batches of a few MiB."""
        storage = self._live()
        per_batch = max(1, _BATCH_BYTES // self._block_size)
        pending = iter(indices)
        while batch := list(itertools.islice(pending, per_batch)):
            data, _ = storage.checkout(batch)
            for row in data:
                self._bytes_received += self._block_size
                yield row.tobytes()

    def read_block(self, i: int) -> bytes:
        """The block at ``i``."""
        data, _ = self._live().checkout([i])
        self._bytes_received += self._block_size
        block: bytes = data[0].tobytes()
        return block

    def write_blocks(
        self,
        indices: Iterable[int],
        blocks: Iterable[Any],
        callback: Callable[[int], Any] | None = None,
    ) -> None:
        """Write ``blocks[k]`` to the block at ``indices[k]``, in one batch, then call
        ``callback(indices[k])`` for each ``k`` in order. Where an index repeats, the last of
        its blocks is the one written.

        Raises:
            ValueError: ``indices`` and ``blocks`` differ in length, or a block has the wrong
                size.
        """
        storage = self._live()
        targets = [operator.index(i) for i in indices]
        contents = [
            _block_bytes(block, self._block_size, f"block {k}") for k, block in enumerate(blocks)
        ]
        if len(targets) != len(contents):
            raise ValueError(f"{len(targets)} indices but {len(contents)} blocks")
        if targets:
            # The last position of each index, in the order of first appearance.
            last = {i: k for k, i in enumerate(targets)}
            if len(last) == len(targets):
                storage.checkin(targets, b"".join(contents), bytes(_META_SIZE * len(targets)))
            else:
                storage.checkin(
                    list(last),
                    b"".join(contents[k] for k in last.values()),
                    bytes(_META_SIZE * len(last)),
                )
        self._bytes_sent += len(targets) * self._block_size
        if callback is not None:
            for i in targets:
                callback(i)

    def write_block(self, i: int, block: Any) -> None:
        """Write ``block`` to the block at ``i``."""
        self.write_blocks([i], [block])


def _initialize(storage: UntrustedStorage, initialize: Callable[[int], Any]) -> None:
    """Write ``initialize(i)`` to every block ``i`` of a new storage, in batches."""
    size = storage.data_size
    per_batch = max(1, _BATCH_BYTES // size)
    meta = bytes(_META_SIZE * per_batch)
    for start in range(0, storage.count, per_batch):
        stop = min(start + per_batch, storage.count)
        data = b"".join(
            _block_bytes(initialize(i), size, f"initialize({i})") for i in range(start, stop)
        )
        storage.checkin(range(start, stop), data, meta[: _META_SIZE * (stop - start)])


def _register() -> None:
    try:
        BlockStorageTypeFactory(DEVICE_NAME)
    except ValueError:
        BlockStorageTypeFactory.register_device(DEVICE_NAME, BlockStorageOramstore)


_register()
