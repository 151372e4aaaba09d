"""The native core of oramstore, written in Rust.

Everything here is *untrusted* memory in the security model: the host may read or rewrite it at
any moment between two calls. The trusted layers built on top (see :mod:`oramstore.enclave`)
encrypt and authenticate what they keep here.
"""

from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self, SupportsIndex, TypeAlias, final

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

__all__ = ["UntrustedStorage", "allocated_bytes"]

_Bytes: TypeAlias = Buffer | npt.NDArray[Any]
"""Any C-contiguous buffer; numpy arrays are listed because their stubs only declare the buffer
protocol on Python 3.12 and later."""

_Indices: TypeAlias = Iterable[SupportsIndex] | npt.NDArray[np.integer]
"""Indices: any sequence of ints, or a one-dimensional numpy integer array."""

@final
class UntrustedStorage:
    """``count`` fixed-size items, each ``data_size`` bytes of data and ``meta_size`` bytes of
    metadata, kept in two lazily mapped segments of host memory.

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

    def __new__(cls, count: int, data_size: int, meta_size: int) -> Self: ...
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
        """Virtual bytes of both segments, ``count * (data_size + meta_size)``."""
    @property
    def released(self) -> bool:
        """Whether :meth:`release` has been called."""
    def __len__(self) -> int:
        """Number of items."""
    def resident_bytes(self) -> int:
        """Bytes of both segments resident in physical memory, as the kernel reports them."""
    def checkout(self, indices: _Indices) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        """Copy the items at ``indices`` out, in the order given; an index may repeat.

        Returns:
            ``(data, meta)``, new arrays of shape ``(k, data_size)`` and ``(k, meta_size)``.

        Raises:
            IndexError: an index is negative or not below ``count``.
            TypeError: ``indices`` is not a sequence of ints or an integer array.
            StorageReleasedError: the storage was released.
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
        Nothing is written if any check fails.

        Raises:
            IndexError: an index is negative or not below ``count``.
            ValueError: an index repeats, or a buffer has the wrong length or is not
                C-contiguous.
            TypeError: a buffer is not a buffer.
        """
    def release(self) -> None:
        """Give the memory back now. Any later call raises :class:`StorageReleasedError`.

        Waits for copies in progress on other threads. Calling it again does nothing.
        """
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Release the storage."""

def allocated_bytes() -> int:
    """Bytes of segments held by all live storages of this process (virtual, both segments)."""
