"""oramstore: fast untrusted memory for Oblivious RAM, and the trusted logic that makes it safe.

The package is layered; a program may stop at any layer:

* :class:`UntrustedStorage` -- fixed-size items in lazily mapped host memory, moved in batches.
"""

from __future__ import annotations

from oramstore._native import UntrustedStorage, allocated_bytes
from oramstore.errors import (
    IntegrityError,
    OramStoreError,
    StashOverflowError,
    StorageReleasedError,
)

__all__ = [
    "IntegrityError",
    "OramStoreError",
    "StashOverflowError",
    "StorageReleasedError",
    "UntrustedStorage",
    "allocated_bytes",
]
