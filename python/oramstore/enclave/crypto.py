"""Bucket sealing: AES-256-GCM with counter nonces.

Every write of a bucket takes the next value of a per-key 64-bit counter; the nonce is that
counter, so no nonce is ever used twice under one key. The counter is stored beside the bucket
in the clear and bound into the associated data together with the bucket's tree index and its
children's records, so the GCM tag authenticates all of them at once.
"""

from __future__ import annotations

import secrets
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from oramstore.errors import OramStoreError

__all__ = ["KEY_BYTES", "NONCE_BYTES", "TAG_BYTES", "BucketSealer", "new_key"]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16

_NONCE = struct.Struct("<Q4x")


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return secrets.token_bytes(KEY_BYTES)


class BucketSealer:
    """Seals and opens buckets under one key, handing out each nonce once."""

    __slots__ = ("_aead", "_counter")

    def __init__(self, key: bytes | bytearray | memoryview | None = None) -> None:
        if key is None:
            key = new_key()
        key = bytes(key)
        if len(key) != KEY_BYTES:
            raise ValueError(f"key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._counter = 0

    def __repr__(self) -> str:
        return f"BucketSealer(counter={self._counter})"

    @property
    def counter(self) -> int:
        """The last counter handed out (0 before the first seal)."""
        return self._counter

    def next_counter(self) -> int:
        """Consume and return the next counter. Counters are never reused, even after errors."""
        if self._counter >= (1 << 64) - 1:
            raise OramStoreError("the write counter is exhausted; re-key the storage")
        self._counter += 1
        return self._counter

    def reserve(self, n: int) -> int:
        """Consume ``n`` counters at once and return the first; they run ``first..first+n-1``."""
        if self._counter > (1 << 64) - 1 - n:
            raise OramStoreError("the write counter is exhausted; re-key the storage")
        first = self._counter + 1
        self._counter += n
        return first

    def seal_into(self, counter: int, plaintext: object, aad: bytes, out: object) -> None:
        """Encrypt ``plaintext`` into ``out`` (``len(plaintext) + TAG_BYTES`` bytes)."""
        self._aead.encrypt_into(_NONCE.pack(counter), plaintext, aad, out)  # type: ignore[arg-type]

    def open_into(self, counter: int, sealed: object, aad: bytes, out: object) -> None:
        """Verify and decrypt ``sealed`` into ``out``.

        Raises:
            cryptography.exceptions.InvalidTag: the bytes, counter or associated data changed.
        """
        self._aead.decrypt_into(_NONCE.pack(counter), sealed, aad, out)  # type: ignore[arg-type]
