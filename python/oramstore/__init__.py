"""oramstore: fast untrusted memory for Oblivious RAM, and the trusted logic that makes it safe.

The package is layered; a program may stop at any layer:

* :class:`UntrustedStorage` -- fixed-size items in lazily mapped host memory, moved in batches.
* :class:`TreeStorage` -- a tree of buckets over it, encrypted, authenticated and fresh.
* :class:`PathORAM` -- an oblivious block store over the tree.
* :class:`ObliviousDict` -- a key-value map over a PathORAM whose operations all look alike.

:class:`UntrustedAllocator` manages the untrusted memory that storages may be placed in,
including ranges that come from elsewhere (device memory, shared memory, mapped files).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from oramstore._native import (
    AddressInfo,
    Allocation,
    AllocatorStats,
    RangeHandle,
    RangeStats,
    UntrustedAllocator,
    UntrustedStorage,
    allocated_bytes,
)
from oramstore.enclave import TreeStorage
from oramstore.errors import (
    IntegrityError,
    MapFullError,
    OramStoreError,
    PoisonedError,
    RangeInUseError,
    StashOverflowError,
    StorageReleasedError,
)
from oramstore.oram import ObliviousDict, PathORAM

try:
    __version__ = version("oramstore")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AddressInfo",
    "Allocation",
    "AllocatorStats",
    "IntegrityError",
    "MapFullError",
    "ObliviousDict",
    "OramStoreError",
    "PathORAM",
    "PoisonedError",
    "RangeHandle",
    "RangeInUseError",
    "RangeStats",
    "StashOverflowError",
    "StorageReleasedError",
    "TreeStorage",
    "UntrustedAllocator",
    "UntrustedStorage",
    "allocated_bytes",
]
