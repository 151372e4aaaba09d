"""Trusted logic: encryption, authentication and freshness over untrusted storage."""

from __future__ import annotations

from oramstore.enclave.crypto import BucketSealer
from oramstore.enclave.tree import DEFAULT_TREETOP_BYTES, TreeStorage

__all__ = ["DEFAULT_TREETOP_BYTES", "BucketSealer", "TreeStorage"]
