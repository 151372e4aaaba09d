"""A complete binary tree of buckets, kept confidential, authentic and fresh in untrusted memory.

Buckets are numbered in heap order: the root is 1 and the children of ``n`` are ``2n`` and
``2n + 1``; leaf ``l`` of a tree of height ``h`` is bucket ``2**h + l``. A branch is the path from
the root down to a leaf, ``h + 1`` buckets.

The top ``treetop_levels`` levels live in trusted memory as plain numpy arrays. Every bucket below
lives in one :class:`~oramstore.UntrustedStorage`:

* its data item is ``AES-256-GCM(bucket data || user metadata) || tag``;
* its metadata item is ``session || counter || left child record || right child record``
  (16 + 8 + 40 + 40 = 104 bytes), where a child record is that child's
  ``session || counter || tag``.

The session and counter name the key and nonce the bucket was sealed under (see
:mod:`oramstore.enclave.crypto`: keys are per instance and per session, counters never repeat
within a session). The associated data binds the instance's salt, the bucket's tree index, its
session and counter and its children's records. A parent's record of each child therefore pins
the child's exact current version, and the records of the first untrusted level are kept in
trusted memory: a Merkle tree whose roots the host cannot touch. A counter of 0 means "never
written": such a bucket must have all-zero metadata and reads as zeros, and it is accepted only
where its parent's record says so.
"""

from __future__ import annotations

import operator
import os
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag

from oramstore._closing import Closing
from oramstore._native import UntrustedStorage
from oramstore.enclave.crypto import (
    COUNTER_BYTES,
    NONCE_PAD,
    SALT_BYTES,
    SESSION_BYTES,
    TAG_BYTES,
    BucketSealer,
    KeyLike,
    NoCopy,
    fork_hooks,
)
from oramstore.errors import IntegrityError, PoisonedError, StorageReleasedError

__all__ = ["DEFAULT_TREETOP_BYTES", "TreeStorage"]

DEFAULT_TREETOP_BYTES = 32 << 20
MAX_HEIGHT = 48

_VERSION = SESSION_BYTES + COUNTER_BYTES  # the session and counter a bucket was sealed in
_RECORD = _VERSION + TAG_BYTES  # a child's version and tag
_HEADER = _VERSION + 2 * _RECORD  # a metadata item: all of it is authenticated
_META_ITEM = _HEADER  # 104 bytes, a multiple of 8 as the OCALL interface wants
_NEVER_WRITTEN = bytes(_RECORD)
_ZERO_SESSION = bytes(SESSION_BYTES)
_ZERO_COUNTER = bytes(COUNTER_BYTES)
# A bucket's nonce: its counter's 8 bytes, little-endian, then NONCE_PAD.
_NONCE = struct.Struct(f"<Q{len(NONCE_PAD)}x")
# A metadata item's fields: session, counter, left child's record, right child's record. A
# checkout reads the counter as its bytes (the nonce's), a checkin writes it from an int.
_HEAD_FIELDS = f"{SESSION_BYTES}s{{}}{_RECORD}s{_RECORD}s"
_HEAD = struct.Struct("<" + _HEAD_FIELDS.format("Q"))
# A bucket's associated data: salt, tree index (8 bytes), metadata item.
_OPEN_AAD = struct.Struct(f"<{SALT_BYTES}sQ" + _HEAD_FIELDS.format(f"{COUNTER_BYTES}s"))
_SEAL_AAD = struct.Struct(f"<{SALT_BYTES}sQ" + _HEAD_FIELDS.format("Q"))
_AAD_VERSION = slice(SALT_BYTES + 8, SALT_BYTES + 8 + _VERSION)
assert _HEAD.size == _META_ITEM and _SEAL_AAD.size == _OPEN_AAD.size == SALT_BYTES + 8 + _HEADER

Bytes = npt.NDArray[np.uint8]


class TreeStorage(NoCopy, Closing):
    """A tree of ``2**(height+1) - 1`` buckets of ``bucket_size`` data bytes and ``meta_size``
    metadata bytes, with the top levels in trusted memory and the rest encrypted and
    authenticated in untrusted memory.

    Args:
        height: levels below the root; a branch has ``height + 1`` buckets.
        bucket_size: data bytes per bucket.
        meta_size: user metadata bytes per bucket (may be 0).
        key: 32-byte master key (any bytes-like object); a random one if omitted. Never
            logged and never written to untrusted memory. Buckets are sealed under keys
            derived from it, the tree's random salt and its session, so one key may serve any
            number of trees and processes without a nonce ever repeating.
        treetop_bytes: trusted memory for the top levels (whole levels that fit are kept).
        label: a name for the tree, mixed into its key derivation.
        path: put the untrusted levels in this new file (see ``UntrustedStorage.open``)
            instead of anonymous memory. Each bucket then has two slots, and a write never
            overwrites the version of a bucket that the last durable point
            (:meth:`mark_durable`) refers to, so a crash always finds that version intact.

    Nothing is written at creation: a height-20 tree of 16 KiB buckets is ready in
    milliseconds. Every bucket reads as zeros until it is first written.

    Use: :meth:`checkout_branch`, then :meth:`checkin_branch` of the same leaf. Any failed check
    raises :class:`~oramstore.IntegrityError` naming the bucket and leaves the trusted state as
    it was. The object is safe to share between threads (calls are serialised). It cannot be
    copied or pickled (a copy would reuse its nonces); a ``fork()``ed child starts a session of
    its own.
    """

    def __init__(
        self,
        height: int,
        bucket_size: int,
        meta_size: int,
        *,
        key: KeyLike | None = None,
        treetop_bytes: int = DEFAULT_TREETOP_BYTES,
        label: str = "tree",
        path: str | os.PathLike[str] | None = None,
        _state: Mapping[str, Any] | None = None,
    ) -> None:
        height = _int_arg(height, "height", 0, MAX_HEIGHT)
        bucket_size = _int_arg(bucket_size, "bucket_size", 1, 1 << 40)
        meta_size = _int_arg(meta_size, "meta_size", 0, 1 << 40)
        treetop_bytes = _int_arg(treetop_bytes, "treetop_bytes", 0, 1 << 62)
        salt = None if _state is None else bytes(_state["salt"])
        self._sealer = BucketSealer(key, label=label, salt=salt)
        self._salt = self._sealer.salt
        self.height = height
        self.bucket_size = bucket_size
        self.meta_size = meta_size
        levels = height + 1
        plain = bucket_size + meta_size
        top = 0
        while top < levels and ((1 << (top + 1)) - 1) * plain <= treetop_bytes:
            top += 1
        self.treetop_levels = top
        # Trusted rows, data and metadata side by side as a branch is returned: the treetop,
        # then room for the untrusted levels of one branch (see :attr:`rows`). Zeroed lazily by
        # calloc, so there is no pass over the treetop either.
        self._rows: Bytes = np.zeros(((1 << top) - 1 + levels - top, plain), np.uint8)
        self._top: Bytes = self._rows[: (1 << top) - 1]
        self._lower: Bytes = self._rows[(1 << top) - 1 :]
        self._offset = 1 << top
        self.untrusted: UntrustedStorage | None = None
        self.storage_path = None if path is None else os.fspath(path)
        # With a file, every bucket has two slots (items 2k and 2k + 1): see _seal_branch.
        self._ways = 1 if path is None else 2
        buckets = (1 << levels) - self._offset
        self._slots: Bytes = np.zeros(0 if path is None else (buckets + 7) // 8, np.uint8)
        self._durable_counter = 0
        if top < levels:
            if self.storage_path is None:
                self.untrusted = UntrustedStorage(buckets, plain + TAG_BYTES, _META_ITEM)
            else:
                self.untrusted = UntrustedStorage.open(
                    self.storage_path,
                    2 * buckets,
                    plain + TAG_BYTES,
                    _META_ITEM,
                    create=_state is None,
                )
        # Scratch space for the sealed half of one branch, reused by every call (under the
        # lock): fresh buffers this size would be mapped and faulted in on every access.
        self._sealed: Bytes = np.empty((levels - top, plain + TAG_BYTES), np.uint8)
        self._heads = bytearray((levels - top) * _META_ITEM)
        # The trusted Merkle roots: records of the buckets on the first untrusted level.
        self._roots: Bytes = np.zeros((self._offset, _RECORD), np.uint8)
        self._shifts = np.arange(height, -1, -1, dtype=np.int64)
        # Per-row views of the buffers above, made once: every access hands each row to
        # AES-GCM, and slicing numpy arrays anew for each of them would cost more than the
        # Python around the cipher otherwise does. (_load_state and the sealing code write
        # these buffers in place, so the views stay valid for the tree's life.)
        self._lower_shifts = list(range(levels - top - 1, -1, -1))
        self._sealed_rows = [row.data for row in self._sealed]
        self._sealed_tags = [row.data[-TAG_BYTES:] for row in self._sealed]
        self._lower_rows = [row.data for row in self._lower]
        self._roots_flat = self._roots.data.cast("B")
        self._slot_bits = self._slots.data
        self._split = struct.Struct("<" + _HEAD_FIELDS.format(f"{COUNTER_BYTES}s") * (levels - top))
        self._leaves = 1 << height
        self._pending: _Pending | _LowerPending | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._poisoned: str | None = None
        fork_hooks.add(self)
        if _state is not None:
            self._load_state(_state)

    # --- shape ---------------------------------------------------------------------------

    @property
    def levels(self) -> int:
        """Buckets per branch, ``height + 1``."""
        return self.height + 1

    @property
    def leaf_count(self) -> int:
        """Number of leaves (and branches), ``2**height``."""
        return 1 << self.height

    @property
    def bucket_count(self) -> int:
        """Number of buckets, ``2**(height+1) - 1``."""
        return (1 << self.levels) - 1

    @property
    def untrusted_offset(self) -> int:
        """Bucket ``n`` below the treetop is item ``n - untrusted_offset`` of :attr:`untrusted`."""
        return self._offset

    @property
    def write_counter(self) -> int:
        """Number of untrusted bucket writes in this session (the last counter used)."""
        return self._sealer.counter

    @property
    def salt(self) -> bytes:
        """The instance's random salt, bound into every bucket's key and associated data."""
        return self._salt

    @property
    def session(self) -> bytes:
        """The current session's id; buckets written now are sealed under its key."""
        return self._sealer.session

    def path(self, leaf: int) -> npt.NDArray[np.int64]:
        """Tree indices of the buckets on the branch to ``leaf``, root first."""
        leaf = self._check_leaf(leaf)
        return (self.leaf_count + leaf) >> self._shifts

    @property
    def rows(self) -> Bytes:
        """Trusted working rows for in-place access, ``bucket_size + meta_size`` bytes each.

        Row ``n - 1`` holds bucket ``n`` of the treetop, for ``n < untrusted_offset``: the
        treetop itself, read and written in place. The last ``levels - treetop_levels`` rows
        receive the untrusted levels of a branch from :meth:`checkout_lower` and are sealed
        from there by :meth:`checkin_lower`. Between the two calls the caller may change the
        branch's rows here, its treetop rows included, and nothing is copied.
        """
        return self._rows

    def __repr__(self) -> str:
        return (
            f"TreeStorage(height={self.height}, bucket_size={self.bucket_size}, "
            f"meta_size={self.meta_size}, treetop_levels={self.treetop_levels}"
            f"{', closed' if self._closed else ''})"
        )

    # --- access ----------------------------------------------------------------------------

    def checkout_branch(self, leaf: int) -> tuple[Bytes, Bytes]:
        """Read, verify and decrypt the branch to ``leaf``.

        Returns:
            ``(data, meta)`` of shapes ``(height+1, bucket_size)`` and ``(height+1, meta_size)``,
            root first: two views of one fresh ``(height+1, bucket_size + meta_size)`` array,
            owned by the caller.

        Raises:
            IndexError: ``leaf`` is not in ``range(leaf_count)``.
            IntegrityError: a bucket on the branch was modified, swapped, replayed or rolled
                back; nothing in the trusted state changed.
        """
        plain: Bytes = np.empty((self.levels, self.bucket_size + self.meta_size), np.uint8)
        return self.checkout_branch_into(leaf, plain)

    def checkout_branch_into(self, leaf: int, out: Bytes) -> tuple[Bytes, Bytes]:
        """Like :meth:`checkout_branch`, into ``out``, a C-contiguous uint8 array of shape
        ``(height+1, bucket_size + meta_size)``, allocating nothing large.

        Returns the views ``out[:, :bucket_size]`` and ``out[:, bucket_size:]``; handing them to
        :meth:`checkin_branch` writes the rows straight from ``out``. A loop that reuses one
        buffer this way touches no fresh memory.

        Raises:
            ValueError: ``out`` has the wrong shape or layout.
            TypeError: ``out`` is not a uint8 array.
        """
        _check_out(out, self.levels, self.bucket_size + self.meta_size)
        with self._lock:
            self._check_open()
            nodes = self.path(leaf)
            top = self.treetop_levels
            if top:
                out[:top] = self._top[nodes[:top] - 1]
            lower = nodes[top:].tolist()
            items = self._items(lower)
            heads = self._load_lower(lower, items, [row.data for row in out[top:]])
            data, meta = out[:, : self.bucket_size], out[:, self.bucket_size :]
            self._pending = _Pending(int(leaf), lower, items, nodes, out, data, meta, heads)
            return data, meta

    def checkout_lower(self, leaf: int) -> npt.NDArray[np.int64]:
        """Verify and decrypt the untrusted levels of the branch to ``leaf`` into the last rows
        of :attr:`rows`, leaving its treetop buckets where they are.

        Returns the branch's tree indices, root first. Raises as :meth:`checkout_branch`.
        """
        with self._lock:
            self._check_open()
            leaf = self._check_leaf(leaf)
            self._checkout_lower(leaf)
            return (self.leaf_count + leaf) >> self._shifts

    def checkin_lower(self, leaf: int) -> None:
        """Seal the untrusted levels of the branch to ``leaf`` from the last rows of
        :attr:`rows` and write them back. Must follow :meth:`checkout_lower` of that leaf."""
        with self._lock:
            pending = self._pending
            # The ORAM's call, an int matching the pending checkout's (checked) leaf on an open
            # tree, needs no conversion; any other goes through every check.
            if (
                type(leaf) is not int
                or type(pending) is not tuple
                or pending[0] != leaf
                or self._closed
                or self._poisoned is not None
            ):
                pending = self._take_pending(leaf, in_place=True)
            _, lower, items, heads = pending
            self._commit_lower(lower, items, self._lower_rows, heads)
            self._pending = None

    def _checkout_lower_locked(self, leaf: int) -> None:
        """:meth:`checkout_lower` for a caller that has checked ``leaf`` and needs no indices
        back: the ORAM, once per access."""
        with self._lock:
            if self._closed or self._poisoned is not None:
                self._check_open()
            self._checkout_lower(leaf)

    def _checkout_lower(self, leaf: int) -> None:
        """:meth:`checkout_lower` of a valid ``leaf`` (an int), with :attr:`_lock` held and the
        tree known to be open."""
        node = self._leaves + leaf
        lower = [node >> shift for shift in self._lower_shifts]
        items = self._items(lower)
        self._pending = (leaf, lower, items, self._load_lower(lower, items, self._lower_rows))

    def checkin_branch(self, leaf: int, data: Any, meta: Any) -> None:
        """Write the branch to ``leaf`` back, re-encrypted under fresh nonces.

        Must follow :meth:`checkout_branch` of the same leaf, with nothing checked out in between.

        Args:
            data: ``(height+1) * bucket_size`` bytes (any uint8 array or buffer), root first.
            meta: ``(height+1) * meta_size`` bytes.

        Raises:
            ValueError: no checkout of this leaf is pending, or a size is wrong.
            TypeError: ``data`` or ``meta`` is not uint8 bytes.
        """
        with self._lock:
            pending = self._take_pending(leaf, in_place=False)
            nodes = pending.nodes
            plain = self._branch_rows(pending, data, meta)
            top = self.treetop_levels
            lower_rows = [row.data for row in plain[top:]]
            self._commit_lower(pending.lower, pending.items, lower_rows, pending.heads)
            # The untrusted write succeeded; only now does the treetop change.
            if top:
                self._top[nodes[:top] - 1] = plain[:top]
            self._pending = None

    def close(self) -> None:
        """Release the untrusted memory. Later calls raise StorageReleasedError."""
        with self._lock:
            self._closed = True
            self._pending = None
            if self.untrusted is not None:
                self.untrusted.release()

    # --- internals -------------------------------------------------------------------------

    def poison(self, reason: str) -> None:
        """Refuse every later access, with ``reason``: the owner of the tree (an ORAM) calls
        this when an access failed part-way and the tree's contents can no longer be trusted
        to match its own state."""
        with self._lock:
            if self._poisoned is None:
                self._poisoned = reason

    @property
    def poisoned(self) -> str | None:
        """Why the tree refuses accesses, or None while it accepts them."""
        return self._poisoned

    def _after_fork(self) -> None:
        # A thread of the parent may have held the lock when it forked; the child has no such
        # thread. (The sealer starts a session of its own through its own hook.)
        self._lock = threading.Lock()
        if self.storage_path is not None and self._poisoned is None:
            # Parent and child would write the same file and undo each other's slots.
            self._poisoned = (
                "a tree in a file cannot be used in a fork()ed child; reopen its store there"
            )

    # --- durability --------------------------------------------------------------------------

    def mark_durable(self) -> None:
        """Declare the current version of every bucket durable: until the next call, no write
        overwrites any of them (each goes to its bucket's other slot, or over a version written
        since). The caller first makes the writes so far durable (:meth:`flush`) and saves
        :meth:`export_state`."""
        with self._lock:
            self._durable_counter = self._sealer.counter

    def flush(self) -> None:
        """Make every bucket written so far durable (a no-op in memory)."""
        with self._lock:
            self._check_open()
            if self.storage_path is not None and self.untrusted is not None:
                self.untrusted.flush()

    def export_state(self) -> dict[str, Any]:
        """The trusted state a reopened tree needs (the key aside): salt, treetop, Merkle roots
        and slots, as arrays. Secret: seal it before it leaves trusted memory."""
        with self._lock:
            self._check_open()
            return {
                "shape": np.array(
                    [self.height, self.bucket_size, self.meta_size, self.treetop_levels], np.int64
                ),
                "salt": np.frombuffer(self._salt, np.uint8).copy(),
                "top": self._top.copy(),
                "roots": self._roots.copy(),
                "slots": self._slots.copy(),
            }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        shape = [self.height, self.bucket_size, self.meta_size, self.treetop_levels]
        if np.asarray(state["shape"]).tolist() != shape:
            raise IntegrityError(
                f"the saved tree has shape {np.asarray(state['shape']).tolist()}, expected {shape}"
            )
        for name, target in (("top", self._top), ("roots", self._roots), ("slots", self._slots)):
            value = np.asarray(state[name])
            if value.shape != target.shape or value.dtype != target.dtype:
                raise IntegrityError(f"the saved tree's {name} has the wrong shape")
            target[...] = value

    def _check_open(self) -> None:
        if self._closed:
            raise StorageReleasedError("the tree storage is closed")
        if self._poisoned is not None:
            raise PoisonedError(self._poisoned)

    def _check_leaf(self, leaf: int) -> int:
        try:
            index = operator.index(leaf)
        except TypeError:
            raise TypeError(f"leaf must be an int, got {type(leaf).__name__}") from None
        if not 0 <= index < self.leaf_count:
            raise IndexError(f"leaf {index} is out of range for a tree of {self.leaf_count} leaves")
        return index

    @overload
    def _take_pending(self, leaf: int, *, in_place: Literal[True]) -> _LowerPending: ...

    @overload
    def _take_pending(self, leaf: int, *, in_place: Literal[False]) -> _Pending: ...

    def _take_pending(self, leaf: int, *, in_place: bool) -> _Pending | _LowerPending:
        """The pending checkout a checkin of ``leaf`` must follow, of the same kind."""
        self._check_open()
        leaf = self._check_leaf(leaf)
        pending = self._pending
        if in_place:
            if isinstance(pending, tuple) and pending[0] == leaf:
                return pending
        elif isinstance(pending, _Pending) and pending.leaf == leaf:
            return pending
        kind = "lower" if in_place else "branch"
        raise ValueError(f"checkin_{kind}({leaf}) must follow checkout_{kind}({leaf})")

    def _load_lower(self, lower: list[int], items: list[int], out: list[memoryview]) -> _Heads:
        """Fetch, verify and decrypt the untrusted buckets ``lower`` (a branch's, root first)
        into the rows ``out``; returns their verified metadata items, as the fields ``session,
        counter, left record, right record`` of each in turn, all bytes (none when the whole
        tree is trusted)."""
        if self.untrusted is None:
            return ()
        self.untrusted.checkout_into(items, self._sealed, self._heads)
        heads: _Heads = self._split.unpack(self._heads)
        self._open_branch(lower, heads, out)
        return heads

    def _items(self, lower: list[int]) -> list[int]:
        """The untrusted items that hold the current versions of these untrusted buckets."""
        offset = self._offset
        if self._ways == 1:
            return [node - offset for node in lower]
        bits = self._slot_bits
        return [2 * k + ((bits[k >> 3] >> (k & 7)) & 1) for k in (node - offset for node in lower)]

    def _commit_lower(
        self, lower: list[int], items: list[int], rows: list[memoryview], heads: _Heads
    ) -> None:
        """Seal and write the untrusted buckets ``lower`` of a branch from ``rows``, then record
        the new version of the topmost one among the trusted roots."""
        if self.untrusted is None:
            return
        record = self._seal_branch(lower, items, rows, heads)
        at = (lower[0] - self._offset) * _RECORD
        self._roots_flat[at : at + _RECORD] = record

    def _branch_rows(self, pending: _Pending, data: Any, meta: Any) -> Bytes:
        """The branch as ``(levels, bucket_size + meta_size)`` rows.

        When ``data`` and ``meta`` are the two halves of one C-contiguous array of that shape
        (the views :meth:`checkout_branch_into` returns, for this buffer or another), the array
        already holds the rows and nothing is copied.
        """
        if data is pending.data and meta is pending.meta:
            return pending.plain
        size = self.bucket_size
        rows = _halves_of(data, meta, self.levels, size, self.meta_size)
        if rows is not None:
            return rows
        rows = np.empty((self.levels, size + self.meta_size), np.uint8)
        rows[:, :size] = _rows(data, self.levels, size, "data")
        rows[:, size:] = _rows(meta, self.levels, self.meta_size, "meta")
        return rows

    def _open_branch(self, nodes: list[int], heads: _Heads, out: list[memoryview]) -> None:
        """Verify the untrusted part of a branch, as fetched into :attr:`_sealed` with the
        metadata items ``heads`` (four fields each, see :meth:`_load_lower`), top-down and
        decrypt it into the rows ``out``.

        Once this returns, ``heads`` are verified: the next checkin of the branch takes the
        records of the buckets that hang off it from there.

        Tags and counters are compared with ordinary equality: they are no secret, the host
        holds them in its own memory.
        """
        at = (nodes[0] - self._offset) * _RECORD
        # The records of the current bucket's two children; the root's is in trusted memory.
        left = right = self._roots_flat[at : at + _RECORD].tobytes()
        sealer = self._sealer
        salt = self._salt
        # Buckets sealed in one session share its AES-GCM object: it is looked up again only
        # when the session changes from one level to the next.
        session = b""
        aead = None
        fields = iter(heads)
        for node, bucket_session, counter, left_child, right_child, sealed, tag, plain in zip(
            nodes,
            fields,
            fields,
            fields,
            fields,
            self._sealed_rows,
            self._sealed_tags,
            out,
            strict=True,
        ):
            expected = right if node & 1 else left
            # Checked first, the usual case: the bucket is the version its parent records, a
            # written one (a record's counter is 0 for a bucket never written).
            if bucket_session + counter + tag != expected or counter == _ZERO_COUNTER:
                if expected[SESSION_BYTES:_VERSION] != _ZERO_COUNTER:
                    raise IntegrityError(
                        f"bucket {node} is not the version its parent records "
                        "(replayed, rolled back, swapped or zeroed)",
                        index=node,
                    )
                if (
                    bucket_session != _ZERO_SESSION
                    or counter != _ZERO_COUNTER
                    or left_child != _NEVER_WRITTEN
                    or right_child != _NEVER_WRITTEN
                ):
                    raise IntegrityError(
                        f"bucket {node} has metadata but its parent records it as never written",
                        index=node,
                    )
                plain[:] = bytes(len(plain))
                left = right = _NEVER_WRITTEN
                continue
            if bucket_session != session or aead is None:
                session = bucket_session
                aead = sealer.aead(session)
            try:
                aead.decrypt_into(
                    counter + NONCE_PAD,
                    sealed,
                    _OPEN_AAD.pack(salt, node, bucket_session, counter, left_child, right_child),
                    plain,
                )
            except InvalidTag:
                raise IntegrityError(
                    f"bucket {node} failed authentication (its bytes were modified)", index=node
                ) from None
            left, right = left_child, right_child

    def _seal_branch(
        self, nodes: list[int], items: list[int], plain: list[memoryview], checked_out: _Heads
    ) -> bytes:
        """Encrypt the untrusted buckets ``nodes`` of a branch (root first) from the rows
        ``plain`` bottom-up, write them, and return the record of the topmost one.

        ``items`` are the untrusted items their checkout read. ``checked_out`` are the verified
        metadata items of that checkout, as :meth:`_load_lower` returns them: each keeps the
        record of its child off the branch, and gets a new counter and a new record of its child
        on the branch.
        """
        assert self.untrusted is not None
        n = len(nodes)
        sealer = self._sealer
        if self._ways == 2:
            # A bucket whose current version was written since the last durable point is
            # overwritten where it lies; any other goes to its other slot, so the version the
            # durable state refers to survives a crash in the middle of this write.
            session = sealer.session
            durable = self._durable_counter
            items = [
                item
                if bucket_session == session and int.from_bytes(counter, "little") > durable
                else item ^ 1
                for item, bucket_session, counter in zip(
                    items, checked_out[::4], checked_out[1::4], strict=True
                )
            ]
        counter = sealer.reserve(n)
        # Read after reserve: a reservation that exhausts a session's counters starts another.
        session = sealer.session
        aead = sealer.aead(session)
        salt = self._salt
        heads = self._heads
        at = n * _META_ITEM
        record = b""
        child = 0  # the bucket below on the branch, 0 at the bottom
        fields = reversed(checked_out)
        for node, right, left, _, _, row, sealed, tag in zip(
            reversed(nodes),
            fields,
            fields,
            fields,
            fields,
            reversed(plain),
            reversed(self._sealed_rows),
            reversed(self._sealed_tags),
            strict=True,
        ):
            if child:
                if child & 1:
                    right = record
                else:
                    left = record
            at -= _META_ITEM
            _HEAD.pack_into(heads, at, session, counter, left, right)
            aad = _SEAL_AAD.pack(salt, node, session, counter, left, right)
            aead.encrypt_into(_NONCE.pack(counter), row, aad, sealed)
            record = aad[_AAD_VERSION] + tag
            counter += 1
            child = node
        self.untrusted.checkin(items, self._sealed, heads)
        if self._ways == 2:
            # Record which slot now holds each bucket's current version.
            bits = self._slot_bits
            offset = self._offset
            for node, item in zip(nodes, items, strict=True):
                k = node - offset
                bit = 1 << (k & 7)
                bits[k >> 3] = (bits[k >> 3] & ~bit & 0xFF) | (bit if item & 1 else 0)
        return record


@dataclass(slots=True)
class _Pending:
    """A branch checked out by :meth:`TreeStorage.checkout_branch_into`, awaiting its checkin."""

    leaf: int
    lower: list[int]  # the branch's untrusted buckets, root first
    items: list[int]  # the untrusted items their checkout read
    nodes: npt.NDArray[np.int64]  # the whole branch, root first
    plain: Bytes  # the rows handed to the caller
    data: Bytes  # the two views of them the caller got
    meta: Bytes
    heads: _Heads  # verified metadata items of the untrusted levels, as _load_lower gives them


_Heads = tuple[bytes, ...]
_LowerPending = tuple[int, list[int], list[int], _Heads]
"""A pending :meth:`TreeStorage.checkout_lower`, the fields of :class:`_Pending` it needs: leaf,
lower, items and heads. (A tuple: one is made on every access of an ORAM.)"""


def _int_arg(value: object, name: str, low: int, high: int) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if not low <= number <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {number}")
    return number


def _halves_of(data: Any, meta: Any, levels: int, size: int, meta_size: int) -> Bytes | None:
    """The array whose column halves ``data`` and ``meta`` are, if they are exactly that."""
    base: object = getattr(data, "base", None)
    if not isinstance(base, np.ndarray):
        return None
    if id(getattr(meta, "base", None)) != id(base):
        return None
    if (
        base.dtype != np.uint8
        or base.shape != (levels, size + meta_size)
        or not base.flags.c_contiguous
        or data.shape != (levels, size)
        or meta.shape != (levels, meta_size)
        or data.strides != base.strides
        or meta.strides != base.strides
    ):
        return None
    start = base.__array_interface__["data"][0]
    if data.__array_interface__["data"][0] != start:
        return None
    if meta.__array_interface__["data"][0] != start + size:
        return None
    return base


def _check_out(out: object, rows: int, cols: int) -> None:
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8:
        raise TypeError(f"out must be a uint8 numpy array, got {type(out).__name__}")
    if out.shape != (rows, cols) or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(
            f"out must be a writable C-contiguous array of shape ({rows}, {cols}), "
            f"got shape {out.shape}"
        )


def _rows(value: Any, rows: int, cols: int, name: str) -> Bytes:
    """``value`` as a ``(rows, cols)`` uint8 array, without copying when it already is one."""
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8:
            raise TypeError(f"{name} must be a uint8 array, got dtype {value.dtype}")
        array: Bytes = value
    else:
        try:
            array = np.frombuffer(value, np.uint8)
        except TypeError:
            raise TypeError(
                f"{name} must be a uint8 array or a bytes-like object, got {type(value).__name__}"
            ) from None
    if array.size != rows * cols:
        raise ValueError(f"{name} must hold {rows} x {cols} bytes, got {array.size}")
    return array.reshape(rows, cols)
