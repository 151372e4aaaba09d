"""oramstore: fast untrusted memory for Oblivious RAM, and the trusted logic that makes it safe.

The package is layered; a program may stop at any layer:

* :class:`UntrustedStorage` -- fixed-size items in lazily mapped host memory, moved in batches.
* :class:`TreeStorage` -- a tree of buckets over it, encrypted, authenticated and fresh.
* :class:`PathORAM` -- an oblivious block store over the tree.
"""

from __future__ import annotations

from oramstore._native import UntrustedStorage, allocated_bytes
from oramstore.enclave import TreeStorage
from oramstore.errors import (
    IntegrityError,
    OramStoreError,
    StashOverflowError,
    StorageReleasedError,
)
from oramstore.oram import PathORAM

__all__ = [
    "IntegrityError",
    "OramStoreError",
    "PathORAM",
    "StashOverflowError",
    "StorageReleasedError",
    "TreeStorage",
    "UntrustedStorage",
    "allocated_bytes",
]
