"""Sealed files of a durable store: the trusted state, and the journal of accesses.

Both live in the store's directory, which the host controls; both are AES-256-GCM sealed under
keys derived from the user's master key and the store's random salt, and neither holds anything
secret in the clear.

**State** (``state``): the whole trusted state at one commit, bound to its epoch. Layout, all
integers little-endian::

    magic "ORSTATE1" (8) | store salt (16) | write id (16) | epoch (8) | payload bytes (8)
    | chunk count (4) | key check (16) | chunks...

Each chunk is ``AES-GCM(K, nonce = chunk index, chunk, aad = header || index || last)`` of up to
16 MiB of the payload, with ``K = HKDF(master, salt, "oramstore/state/" || write id)`` and a
fresh random write id per commit, so no two commits share a key. The key check is 16 bytes of
``HKDF(master, salt, "oramstore/key-check")``: a wrong key is told apart from a damaged file.
A commit writes ``state.tmp``, syncs it, renames it over ``state`` and syncs the directory, so a
crash leaves either the old state or the new one.

**Journal** (``journal``): one record per access since the last commit, appended and synced
before the access reads anything from untrusted storage. A record is::

    magic "ORJ1" (4) | session (16) | epoch (8) | sequence number (8) | length (4)
    | AES-GCM(K_s, nonce = sequence number, payload, aad = the 40 bytes before) (length + 16)

with ``K_s = HKDF(master, salt, "oramstore/journal/" || session || epoch)`` and a random
session per opening of the store. Records of the epoch the state holds, from one session,
numbered from 1 without gaps, are replayed on reopening; after each commit the journal starts
again at offset 0 under the new epoch, and whatever older records follow the new ones end the
scan (their epoch is not the state's). A record cut short (a crash in the middle of writing it)
ends it too. The file is grown in zero-filled steps ahead of the records, so that syncing a
record writes its bytes and nothing of the file system's metadata: half the cost of an append.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from oramstore.enclave.crypto import SESSION_BYTES, TAG_BYTES, derive_key
from oramstore.errors import IntegrityError

__all__ = ["JOURNAL_FILE", "STATE_FILE", "Journal", "read_state", "write_state"]

STATE_FILE = "state"
JOURNAL_FILE = "journal"

_STATE_MAGIC = b"ORSTATE1"
_STATE_HEADER = struct.Struct("<8s16s16sQQI16s")
_CHUNK = 16 << 20
_JOURNAL_MAGIC = b"ORJ1"
_JOURNAL_STEP = 4 << 20  # the journal grows by this much of zeros at a time
_JOURNAL_KEEP = 64 << 20  # a journal larger than this shrinks back at the next commit
_RECORD_HEADER = struct.Struct("<4s16sQQI")
_MAX_RECORD = 1 << 30


def _nonce(n: int) -> bytes:
    return n.to_bytes(12, "little")


def key_check(master: bytes, salt: bytes) -> bytes:
    """16 bytes that tell whether ``master`` is the key of the store with ``salt``."""
    return derive_key(master, salt, b"oramstore/key-check")[:16]


def sync_directory(directory: Path) -> None:
    """Make the directory's entries (a new or renamed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_state(directory: Path, master: bytes, salt: bytes, epoch: int, payload: bytes) -> None:
    """Seal ``payload`` as the state of ``epoch`` and replace the state file atomically."""
    write_id = secrets.token_bytes(16)
    aead = AESGCM(derive_key(master, salt, b"oramstore/state/" + write_id))
    chunks = max(1, -(-len(payload) // _CHUNK))
    header = _STATE_HEADER.pack(
        _STATE_MAGIC, salt, write_id, epoch, len(payload), chunks, key_check(master, salt)
    )
    tmp = directory / (STATE_FILE + ".tmp")
    view = memoryview(payload)
    with open(tmp, "wb") as file:
        file.write(header)
        for k in range(chunks):
            last = k == chunks - 1
            aad = header + k.to_bytes(4, "little") + bytes([last])
            file.write(aead.encrypt(_nonce(k), view[k * _CHUNK : (k + 1) * _CHUNK], aad))
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, directory / STATE_FILE)
    sync_directory(directory)


def read_state(directory: Path, master: bytes) -> tuple[bytes, int, bytes]:
    """The store's salt, epoch and payload, verified.

    Raises:
        FileNotFoundError: there is no state file.
        ValueError: ``master`` is not the store's key.
        IntegrityError: the file is truncated, altered or not a state file.
    """
    path = directory / STATE_FILE
    with open(path, "rb") as file:
        blob = file.read()
    if len(blob) < _STATE_HEADER.size:
        raise IntegrityError(f"{path} is truncated ({len(blob)} bytes)")
    header = blob[: _STATE_HEADER.size]
    magic, salt, write_id, epoch, length, chunks, check = _STATE_HEADER.unpack(header)
    if magic != _STATE_MAGIC:
        raise IntegrityError(f"{path} is not an oramstore state file")
    if check != key_check(master, salt):
        raise ValueError(
            f"the key does not open this store ({path}): a wrong key, or an altered file"
        )
    if chunks != max(1, -(-length // _CHUNK)):
        raise IntegrityError(f"{path} has an inconsistent header")
    aead = AESGCM(derive_key(master, salt, b"oramstore/state/" + write_id))
    parts = []
    at = _STATE_HEADER.size
    for k in range(chunks):
        size = min(_CHUNK, length - k * _CHUNK) + TAG_BYTES
        sealed = blob[at : at + size]
        at += size
        aad = header + k.to_bytes(4, "little") + bytes([k == chunks - 1])
        try:
            parts.append(aead.decrypt(_nonce(k), sealed, aad))
        except InvalidTag:
            raise IntegrityError(f"{path} failed authentication (chunk {k})") from None
    if at != len(blob):
        raise IntegrityError(f"{path} has {len(blob) - at} bytes past its end")
    return salt, epoch, b"".join(parts)


class Journal:
    """The store's journal, appended by one session."""

    def __init__(self, directory: Path, master: bytes, salt: bytes) -> None:
        self.path = directory / JOURNAL_FILE
        self._master = master
        self._salt = salt
        self.session = secrets.token_bytes(SESSION_BYTES)
        self._aead: AESGCM | None = None
        self._seq = 0
        self._epoch = -1
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size  # bytes of the file, zeros past the records
        self.bytes = 0  # bytes of this epoch's records
        self.count = 0

    def _key(self, session: bytes, epoch: int) -> bytes:
        info = b"oramstore/journal/" + session + epoch.to_bytes(8, "little")
        return derive_key(self._master, self._salt, info)

    def records(self, epoch: int) -> Iterator[bytes]:
        """The payloads appended on top of the state of ``epoch``, in order."""
        with open(self.path, "rb") as file:
            blob = file.read()
        at, seq, session, aead = 0, 1, b"", None
        while at + _RECORD_HEADER.size <= len(blob):
            header = blob[at : at + _RECORD_HEADER.size]
            magic, rec_session, rec_epoch, rec_seq, length = _RECORD_HEADER.unpack(header)
            if (
                magic != _JOURNAL_MAGIC
                or rec_epoch != epoch
                or rec_seq != seq
                or length > _MAX_RECORD
            ):
                return
            if aead is None:
                session, aead = rec_session, AESGCM(self._key(rec_session, epoch))
            elif rec_session != session:
                return
            end = at + _RECORD_HEADER.size + length + TAG_BYTES
            if end > len(blob):
                return  # cut short by a crash
            try:
                payload = aead.decrypt(_nonce(seq), blob[at + _RECORD_HEADER.size : end], header)
            except InvalidTag:
                return
            yield payload
            at, seq = end, seq + 1

    def start(self, epoch: int) -> None:
        """Empty the journal: what follows goes on top of the state of ``epoch``, which is
        durable."""
        if self._size > _JOURNAL_KEEP:
            os.ftruncate(self._fd, 0)
            self._size = 0
        # A key per session and epoch, so that sequence numbers may restart at every commit.
        self._aead = AESGCM(self._key(self.session, epoch))
        self._epoch = epoch
        self._seq = 0
        self.bytes = 0
        self.count = 0

    def append(self, payload: bytes) -> None:
        """Seal ``payload`` as the next record and make it durable before returning."""
        if self._aead is None:
            raise RuntimeError("the journal has not been started")
        self._seq += 1
        header = _RECORD_HEADER.pack(
            _JOURNAL_MAGIC, self.session, self._epoch, self._seq, len(payload)
        )
        record = header + self._aead.encrypt(_nonce(self._seq), payload, header)
        end = self.bytes + len(record)
        if end > self._size:
            self._grow(end)
        written = os.pwrite(self._fd, record, self.bytes)
        if written != len(record):
            raise OSError(f"short write to {self.path}: {written} of {len(record)} bytes")
        os.fdatasync(self._fd)
        self.bytes += len(record)
        self.count += 1

    def _grow(self, end: int) -> None:
        """Write zeros up to past ``end`` and sync them, so later records overwrite allocated,
        initialised blocks."""
        size = -(-end // _JOURNAL_STEP) * _JOURNAL_STEP
        zeros = bytes(min(size - self._size, _JOURNAL_STEP))
        at = self._size
        while at < size:
            at += os.pwrite(self._fd, zeros[: size - at], at)
        os.fsync(self._fd)
        self._size = size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
