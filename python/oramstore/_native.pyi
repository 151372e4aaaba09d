"""The native core of oramstore, written in Rust.

Everything here is *untrusted* memory in the security model: the host may read or rewrite it at
any moment between two calls. The trusted layers built on top (see :mod:`oramstore.enclave`)
encrypt and authenticate what they keep here.
"""

import os
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self, SupportsIndex, TypeAlias, final

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

__all__ = [
    "AddressInfo",
    "Allocation",
    "AllocatorStats",
    "RangeHandle",
    "RangeStats",
    "UntrustedAllocator",
    "UntrustedStorage",
    "allocated_bytes",
]

_Bytes: TypeAlias = Buffer | npt.NDArray[Any]
"""Any C-contiguous buffer; numpy arrays are listed because their stubs only declare the buffer
protocol on Python 3.12 and later."""

_Indices: TypeAlias = Iterable[SupportsIndex] | npt.NDArray[np.integer]
"""Indices: any sequence of ints, or a one-dimensional numpy integer array."""

@final
class UntrustedStorage:
    """``count`` fixed-size items, each ``data_size`` bytes of data and ``meta_size`` bytes of
    metadata, kept in two lazily mapped segments of host memory, or in a file (see
    :meth:`open`).

    Creating a storage touches no memory: a multi-GiB storage is ready in microseconds and its
    resident size grows only as items are written. The metadata of an item that was never
    checked in reads as zeros; its data may read as anything.

    Items move in batches. Copies release the interpreter lock, and one storage may be used
    from several threads: checkouts run in parallel, checkins one at a time.

    The memory is accounted in :func:`allocated_bytes` and every allocation and release is
    logged on the ``"oramstore"`` logger.

    Raises:
        ValueError: a size is zero or negative, or ``count * size`` overflows.
        MemoryError: the kernel refuses the mapping.
        TypeError: a size is not an int.
    """

    def __new__(
        cls,
        count: int,
        data_size: int,
        meta_size: int,
        *,
        allocator: UntrustedAllocator | None = None,
    ) -> Self:
        """With ``allocator``, both segments are blocks of that :class:`UntrustedAllocator`
        instead of fresh mappings. The metadata segment is then zeroed once here, since the
        allocator's memory may hold anything; the data segment still gets no initialising pass.
        The storage keeps the allocator alive, and its blocks keep their range from being
        removed, until the storage is released.

        Raises:
            MemoryError: the allocator has no room and may map no more memory.
        """
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        count: int | None = None,
        data_size: int | None = None,
        meta_size: int | None = None,
        *,
        create: bool = False,
    ) -> Self:
        """A storage whose items live in the file at ``path``: durable, and as large as the
        disk allows rather than memory.

        With ``create=True`` the file must not exist, and all three sizes are required: a
        4096-byte header is written and the file's length set, and nothing else, so the file
        is sparse and takes disk space only as items are written (a 256 GiB storage is created
        at once). Otherwise the file must exist and its header gives the sizes; a size given
        must match it. The layout of the file is in the README ("On a file").

        The storage works like one in memory: the same checks and errors, copies with the
        interpreter lock released, never-written items read as zeros (data too). Items move by
        positioned reads and writes through the kernel's page cache, so the file takes none of
        the process's memory; the disk reads of everything a batch misses in the page cache are
        queued at once, before the call waits on any. Checkins are durable after :meth:`flush`.

        The host owns the file and may change it at any time: bytes past its end (a truncated
        file) read as zeros, and writes go exactly to the items' bytes.

        Raises:
            FileExistsError: ``create=True`` and the file exists.
            FileNotFoundError: ``create=False`` and the file does not exist.
            TypeError: ``create=True`` without all three sizes, or ``path`` is not a str or
                ``os.PathLike``.
            ValueError: a size is not valid, a size differs from the header's, or the file is
                not a valid storage file (wrong magic or format version, sizes that overflow,
                shorter than its header, not a regular file).
            OSError: any other refusal by the system, with its ``errno`` and ``filename``.
        """
    @property
    def path(self) -> str | None:
        """The storage's file as an absolute path, or ``None`` for a storage in memory."""
    @property
    def count(self) -> int:
        """Number of items."""
    @property
    def data_size(self) -> int:
        """Bytes of data per item."""
    @property
    def meta_size(self) -> int:
        """Bytes of metadata per item."""
    @property
    def nbytes(self) -> int:
        """Virtual (or, in a file, logical) bytes of both segments,
        ``count * (data_size + meta_size)``."""
    @property
    def released(self) -> bool:
        """Whether :meth:`release` has been called."""
    def __len__(self) -> int:
        """Number of items."""
    def resident_bytes(self) -> int:
        """Bytes of both segments resident in physical memory, as the kernel reports them.

        Always 0 for a storage in a file: its bytes are in the kernel's page cache, which is not
        the process's memory.
        """
    def checkout(self, indices: _Indices) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        """Copy the items at ``indices`` out, in the order given; an index may repeat.

        Returns:
            ``(data, meta)``, new arrays of shape ``(k, data_size)`` and ``(k, meta_size)``.

        Raises:
            IndexError: an index is negative or not below ``count``.
            TypeError: ``indices`` is not a sequence of ints or an integer array.
            StorageReleasedError: the storage was released.
            OSError: reading the storage's file failed.
        """
    def checkout_into(self, indices: _Indices, data_out: _Bytes, meta_out: _Bytes) -> None:
        """Like :meth:`checkout`, into caller buffers, allocating nothing.

        ``data_out`` and ``meta_out`` must be writable C-contiguous buffers of exactly
        ``k * data_size`` and ``k * meta_size`` bytes. Nothing is written if any check fails.

        Raises:
            ValueError: a buffer has the wrong length, is not C-contiguous, or overlaps the
                other buffer or the storage's own memory.
            TypeError: a buffer is read-only or not a buffer.
        """
    def checkin(self, indices: _Indices, data: _Bytes, meta: _Bytes) -> None:
        """Copy item ``k`` of ``data`` and ``meta`` to the item at ``indices[k]``.

        ``data`` and ``meta`` are any C-contiguous buffers (bytes, bytearray, memoryview, numpy)
        of exactly ``k * data_size`` and ``k * meta_size`` bytes. Indices must be distinct.
        Nothing is written if any check fails; in a file, an I/O error may leave part of the
        batch written.

        Raises:
            IndexError: an index is negative or not below ``count``.
            ValueError: an index repeats, or a buffer has the wrong length or is not
                C-contiguous.
            TypeError: a buffer is not a buffer.
            OSError: writing the storage's file failed.
        """
    def flush(self) -> None:
        """Make every checkin so far durable (``fdatasync`` of the file). Does nothing for a
        storage in memory.

        Raises:
            StorageReleasedError: the storage was released.
            OSError: the system could not write the file back.
        """
    def release(self) -> None:
        """Give the memory back, or close the file, now. Any later call raises
        :class:`StorageReleasedError`.

        The file stays on disk; release does not flush, so checkins since the last
        :meth:`flush` may not survive a crash. Waits for copies in progress on other threads.
        Calling it again does nothing.
        """
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool:
        """Release the storage."""

def allocated_bytes() -> int:
    """Bytes of segments held by all live storages of this process (virtual, both segments; a
    storage in a file counts its logical size)."""

@final
class UntrustedAllocator:
    """An allocator of untrusted memory, over chunks it maps itself and ranges inserted by the
    caller (device buffers, shared memory, mapped files).

    Blocks are powers of two from 16 bytes up, split and merged buddy-fashion, and aligned to
    their size. All bookkeeping lives in the allocator's own memory, never in the ranges it
    manages, so rewriting untrusted memory cannot steer it. Blocks up to 1 MiB go through
    per-thread caches; a block may be freed on any thread.

    Own chunks are ``chunk_size`` bytes (a larger request gets a chunk of its own); empty ones
    are given back to the kernel, except one kept in reserve.

    Args:
        chunk_size: bytes of each own chunk, a power of two of at least 64 KiB.
        chunk_limit: the most bytes of own chunks mapped at once; ``0`` serves only inserted
            ranges. No limit by default.

    Raises:
        ValueError: ``chunk_size`` is not a power of two of at least 64 KiB.
    """

    def __new__(cls, chunk_size: int = 16777216, *, chunk_limit: int | None = None) -> Self: ...
    @property
    def chunk_size(self) -> int:
        """Bytes of each own chunk."""
    @property
    def chunk_limit(self) -> int | None:
        """The most bytes of own chunks mapped at once, or ``None`` for no limit."""
    def alloc(self, size: int, align: int = 16) -> Allocation:
        """Allocate ``size`` bytes aligned to ``align`` bytes. The contents are arbitrary.

        Raises:
            ValueError: ``size`` is zero or negative, ``align`` is not a power of two, or the
                block they need does not fit the address space.
            MemoryError: no managed range has room and no chunk may or can be mapped.
        """
    def insert_range(self, buffer: _Bytes) -> RangeHandle:
        """Manage the memory of ``buffer`` (an ``mmap.mmap``, a numpy array, ...) as well.

        The buffer must be writable and C-contiguous, and its start and length multiples of 16
        bytes. The allocator holds a view of it until the range is removed, so the exporter
        can neither close nor resize it meanwhile.

        Memory that a foreign library mapped is inserted by wrapping its address explicitly,
        which makes the promise visible in the caller's code::

            buf = (ctypes.c_char * length).from_address(address)
            handle = allocator.insert_range(buf)

        Nothing then keeps that memory alive: the caller must keep it mapped, readable and
        writable until the range is removed (or the allocator dropped). A range that is not
        entirely mapped is refused; one that is mapped without write access is not detected.

        Raises:
            TypeError: ``buffer`` is read-only or not a buffer.
            ValueError: the buffer is empty, not C-contiguous, not aligned, not entirely
                mapped, or overlaps a range the allocator already manages.
        """
    def remove_range(self, handle: RangeHandle) -> None:
        """Stop managing an inserted range and release the buffer it came from.

        Nothing is ever served from the range afterwards.

        Raises:
            RangeInUseError: blocks in the range are still allocated (``live_blocks`` says how
                many).
            ValueError: the range was already removed, belongs to another allocator, or is one
                of the allocator's own chunks.
        """
    def owns(self, address: int) -> bool:
        """Whether ``address`` lies in a range this allocator manages."""
    def find(self, address: int) -> AddressInfo | None:
        """The managed range that contains ``address`` and the live block that contains it, or
        ``None`` if no managed range does."""
    def stats(self) -> AllocatorStats:
        """A snapshot of the allocator's statistics."""
    def flush_thread_cache(self) -> None:
        """Give the calling thread's cached free blocks back to the shared structure.

        Never needed for correctness; it lets empty chunks go back to the kernel sooner.
        """

@final
class Allocation:
    """A block of an :class:`UntrustedAllocator`, usable wherever a writable buffer is, for
    example ``numpy.frombuffer(blk, dtype=numpy.uint8)``.

    The block is freed by :meth:`free`, or when the object is garbage collected. While a
    memoryview or numpy array of it is alive it cannot be freed, so no view ever points to
    freed memory. After :meth:`free`, every use raises ``ValueError``.
    """

    @property
    def address(self) -> int:
        """Address of the first byte."""
    @property
    def size(self) -> int:
        """Bytes asked for; the buffer has exactly this many."""
    @property
    def freed(self) -> bool:
        """Whether :meth:`free` has been called."""
    def __len__(self) -> int:
        """Bytes asked for."""
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...
    def free(self) -> None:
        """Give the block back to its allocator now.

        Raises:
            ValueError: the allocation was already freed.
            BufferError: a memoryview or numpy array of the block is still alive.
        """

@final
class RangeHandle:
    """A range managed by an :class:`UntrustedAllocator`, as returned by
    :meth:`UntrustedAllocator.insert_range` and :meth:`UntrustedAllocator.find`.

    Handles compare equal when they name the same range; a range inserted again after its
    removal gets a new identity.
    """

    @property
    def id(self) -> int:
        """An identifier unique within the allocator."""
    @property
    def start(self) -> int:
        """Address of the first byte."""
    @property
    def length(self) -> int:
        """Length in bytes."""
    @property
    def end(self) -> int:
        """Address one past the last byte."""
    @property
    def inserted(self) -> bool:
        """True for an inserted range, false for one of the allocator's own chunks."""
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class AddressInfo:
    """What :meth:`UntrustedAllocator.find` knows about an address."""

    @property
    def range(self) -> RangeHandle:
        """The managed range that contains the address."""
    @property
    def block(self) -> tuple[int, int] | None:
        """``(start, size)`` of the live block that contains the address, ``None`` if it lies
        in free memory. ``size`` is the block's full size, the request rounded up to a power of
        two."""

@final
class RangeStats:
    """Statistics of one managed range."""

    @property
    def range(self) -> RangeHandle:
        """The range."""
    @property
    def free_bytes(self) -> int:
        """Bytes in free blocks."""
    @property
    def used_bytes(self) -> int:
        """Bytes in live blocks and in free blocks held by thread caches."""

@final
class AllocatorStats:
    """A snapshot of an :class:`UntrustedAllocator`'s statistics.

    While other threads allocate, the numbers are a moment's approximation. When they are
    quiet, ``free_bytes + allocated_bytes + cached_bytes == managed_bytes``.
    """

    @property
    def ranges(self) -> tuple[RangeStats, ...]:
        """Every managed range, by address."""
    @property
    def managed_bytes(self) -> int:
        """Bytes of all managed ranges."""
    @property
    def inserted_bytes(self) -> int:
        """Bytes of inserted ranges."""
    @property
    def chunk_bytes(self) -> int:
        """Bytes of own chunks."""
    @property
    def free_bytes(self) -> int:
        """Bytes in free blocks of all ranges."""
    @property
    def chunks(self) -> int:
        """Own chunks mapped now."""
    @property
    def chunks_mapped(self) -> int:
        """Own chunks mapped since the allocator was created."""
    @property
    def chunks_released(self) -> int:
        """Own chunks given back since the allocator was created."""
    @property
    def live_blocks(self) -> int:
        """Allocated blocks."""
    @property
    def requested_bytes(self) -> int:
        """Bytes asked for by the allocated blocks."""
    @property
    def allocated_bytes(self) -> int:
        """Bytes of the allocated blocks, each rounded up to its power-of-two size."""
    @property
    def cached_blocks(self) -> int:
        """Free blocks held by thread caches."""
    @property
    def cached_bytes(self) -> int:
        """Bytes of the free blocks held by thread caches."""
    @property
    def cache_hits(self) -> int:
        """Allocations a thread cache served without refilling."""
    @property
    def cache_refills(self) -> int:
        """Batches thread caches fetched from the shared structure."""
    @property
    def cache_flushes(self) -> int:
        """Batches thread caches gave back to the shared structure."""
