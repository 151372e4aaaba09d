"""Keys and bucket sealing: AES-256-GCM under per-instance, per-session subkeys.

A user's master key may be given to any number of trees, in any number of processes, at any
time. No (key, nonce) pair may ever repeat across all of them, so nothing is sealed under the
master key itself:

* every tree instance draws a random 16-byte **salt** when it is created, and keeps it for life
  (a durable store reloads it);
* every **session** of an instance (its creation, each reopen, each ``fork()``ed child) draws
  a random 16-byte session id;
* the key that seals a bucket is ``HKDF-SHA256(master, salt=salt, info=label || session)``
  and its nonce is a 64-bit counter that starts at 1 in each session.

A session key is therefore new in every session with overwhelming probability (two sessions
share one only if their 128-bit ids collide), so counters may restart safely, even when the
host rolls files back. Each sealed bucket records its session and counter, and its parent
records them too, so an older session's buckets still open under that session's key. The salt
is bound into every bucket's associated data as well, so a bucket of one instance never verifies
in another, whichever keys they were given.
"""

from __future__ import annotations

import os
import secrets
import struct
import weakref
from typing import NoReturn, SupportsIndex, TypeAlias

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "COUNTER_BYTES",
    "KEY_BYTES",
    "NONCE_BYTES",
    "NONCE_PAD",
    "SALT_BYTES",
    "SESSION_BYTES",
    "TAG_BYTES",
    "BucketSealer",
    "KeyLike",
    "NoCopy",
    "check_key",
    "derive_key",
    "new_key",
]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SALT_BYTES = 16
SESSION_BYTES = 16
COUNTER_BYTES = 8
MAX_COUNTER = (1 << 64) - 1

_NONCE = struct.Struct("<Q4x")
NONCE_PAD = bytes(NONCE_BYTES - COUNTER_BYTES)
"""A nonce is the counter's 8 bytes, little-endian, followed by these: ``_NONCE.pack(c)`` is
``c.to_bytes(8, "little") + NONCE_PAD``, so a counter as recorded in a bucket's version
becomes its nonce without a conversion."""

KeyLike: TypeAlias = bytes | bytearray | memoryview | npt.NDArray[np.uint8]
"""What a key may be given as: any buffer of 32 bytes."""


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return secrets.token_bytes(KEY_BYTES)


def check_key(key: object, name: str = "key") -> bytes:
    """``key`` as 32 bytes, if it is a bytes-like object of exactly 32 bytes.

    Only byte buffers are keys: a list of ints, a str or an array of wider integers is a
    ``TypeError`` even when it has 32 elements, since its bytes are not what the caller thinks.

    Raises:
        TypeError: ``key`` is not a bytes-like object of single bytes.
        ValueError: it does not hold exactly 32 bytes.
    """
    try:
        view = memoryview(key)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} must be a bytes-like object of {KEY_BYTES} bytes, got {type(key).__name__}"
        ) from None
    with view:
        if view.itemsize != 1 or view.format not in ("B", "b", "c"):
            raise TypeError(
                f"{name} must be a buffer of bytes, got one of format {view.format!r} "
                f"(items of {view.itemsize} bytes)"
            )
        if view.nbytes != KEY_BYTES:
            raise ValueError(f"{name} must be {KEY_BYTES} bytes, got {view.nbytes}")
        if not view.c_contiguous:
            raise ValueError(f"{name} must be a contiguous buffer")
        return view.tobytes()


def derive_key(master: bytes, salt: bytes, info: bytes) -> bytes:
    """``HKDF-SHA256(master, salt, info)``, 32 bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(master)


class NoCopy:
    """Refuses ``copy``, ``deepcopy`` and ``pickle``: a copy of a trusted structure would seal
    under the same keys and counters as the original."""

    __slots__ = ()

    def _refuse(self) -> NoReturn:
        raise TypeError(
            f"a {type(self).__name__} cannot be copied or pickled: the copy would reuse the "
            "original's nonces. Create a new one, or use a durable store (path=...) to keep one"
        )

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        self._refuse()

    def __copy__(self) -> NoReturn:
        self._refuse()

    def __deepcopy__(self, memo: object) -> NoReturn:
        self._refuse()


class _ForkHooks:
    """Objects that must act in a ``fork()``ed child before it uses them: a child that went on
    with its parent's session and counter would seal under the same (key, nonce) pairs."""

    def __init__(self) -> None:
        self._objects: weakref.WeakSet[object] = weakref.WeakSet()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._run)

    def add(self, obj: object) -> None:
        self._objects.add(obj)

    def _run(self) -> None:
        for obj in list(self._objects):
            obj._after_fork()  # type: ignore[attr-defined]


fork_hooks = _ForkHooks()


class BucketSealer(NoCopy):
    """Seals and opens buckets for one tree instance, handing out each nonce once.

    Args:
        master: the user's 32-byte key, or None for a random one.
        label: names the tree (domain separation between the trees of one store).
        salt: the instance's salt, when an existing instance is reopened; a new random one
            otherwise.
    """

    __slots__ = ("__weakref__", "_counter", "_info", "_keys", "_master", "_session", "salt")

    def __init__(
        self, master: object | None = None, *, label: str = "tree", salt: bytes | None = None
    ) -> None:
        self._master = new_key() if master is None else check_key(master)
        if salt is None:
            salt = secrets.token_bytes(SALT_BYTES)
        if len(salt) != SALT_BYTES:
            raise ValueError(f"salt must be {SALT_BYTES} bytes, got {len(salt)}")
        self.salt = bytes(salt)
        self._info = b"oramstore/bucket/" + label.encode() + b"/"
        self._keys: dict[bytes, AESGCM] = {}
        self._session = b""
        self._counter = 0
        self.new_session()
        fork_hooks.add(self)

    def __repr__(self) -> str:
        return f"BucketSealer(session={self._session.hex()[:8]}.., counter={self._counter})"

    @property
    def session(self) -> bytes:
        """The current session's id: buckets sealed now record it."""
        return self._session

    @property
    def counter(self) -> int:
        """The last counter handed out in this session (0 before the first seal)."""
        return self._counter

    def new_session(self) -> None:
        """Start a new session: a fresh random id, hence a fresh key, and counters from 1."""
        self._session = secrets.token_bytes(SESSION_BYTES)
        self._counter = 0
        self._key_of(self._session)

    def _after_fork(self) -> None:
        self.new_session()

    def _key_of(self, session: bytes) -> AESGCM:
        aead = self._keys.get(session)
        if aead is None:
            aead = AESGCM(derive_key(self._master, self.salt, self._info + session))
            self._keys[session] = aead
        return aead

    def aead(self, session: bytes) -> AESGCM:
        """The AES-GCM object of ``session``'s key, for a caller that seals or opens many
        buckets in a row: its nonces must be ``counter.to_bytes(8, "little") + NONCE_PAD``,
        with counters from :meth:`reserve` when it seals (under :attr:`session`)."""
        aead = self._keys.get(session)
        return self._key_of(session) if aead is None else aead

    def reserve(self, n: int) -> int:
        """Consume ``n`` counters of this session at once and return the first; they run
        ``first .. first + n - 1``. Counters are never reused, even after errors."""
        if self._counter > MAX_COUNTER - n:
            # 2^64 bucket writes in one session; a new session has a new key.
            self.new_session()
        first = self._counter + 1
        self._counter += n
        return first

    def seal_into(self, counter: int, plaintext: object, aad: bytes, out: object) -> None:
        """Encrypt ``plaintext`` into ``out`` (``len(plaintext) + TAG_BYTES`` bytes) under the
        current session's key."""
        aead = self._keys[self._session]
        aead.encrypt_into(_NONCE.pack(counter), plaintext, aad, out)  # type: ignore[arg-type]

    def open_into(
        self, session: bytes, counter: int, sealed: object, aad: bytes, out: object
    ) -> None:
        """Verify and decrypt ``sealed``, sealed in ``session``, into ``out``.

        Raises:
            cryptography.exceptions.InvalidTag: the bytes, counter or associated data changed.
        """
        aead = self._key_of(session)
        aead.decrypt_into(_NONCE.pack(counter), sealed, aad, out)  # type: ignore[arg-type]
