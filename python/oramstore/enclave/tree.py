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
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag

from oramstore._closing import Closing
from oramstore._native import UntrustedStorage
from oramstore.enclave.crypto import (
    COUNTER_BYTES,
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
_LEFT = slice(_VERSION, _VERSION + _RECORD)
_RIGHT = slice(_VERSION + _RECORD, _HEADER)
_NEVER_WRITTEN = bytes(_RECORD)
_ZERO_META = bytes(_META_ITEM)

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
        self._pending: _Pending | None = None
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
            heads = self._load_lower(nodes, out[top:])
            data, meta = out[:, : self.bucket_size], out[:, self.bucket_size :]
            self._pending = _Pending(int(leaf), nodes, out, data, meta, heads)
            return data, meta

    def checkout_lower(self, leaf: int) -> npt.NDArray[np.int64]:
        """Verify and decrypt the untrusted levels of the branch to ``leaf`` into the last rows
        of :attr:`rows`, leaving its treetop buckets where they are.

        Returns the branch's tree indices, root first. Raises as :meth:`checkout_branch`.
        """
        with self._lock:
            self._check_open()
            nodes = self.path(leaf)
            heads = self._load_lower(nodes, self._lower)
            self._pending = _Pending(
                int(leaf), nodes, self._lower, None, None, heads, in_place=True
            )
            return nodes

    def checkin_lower(self, leaf: int) -> None:
        """Seal the untrusted levels of the branch to ``leaf`` from the last rows of
        :attr:`rows` and write them back. Must follow :meth:`checkout_lower` of that leaf."""
        with self._lock:
            pending = self._take_pending(leaf, in_place=True)
            self._commit_lower(pending.nodes, pending.plain, pending.heads)
            self._pending = None

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
            self._commit_lower(nodes, plain[top:], pending.heads)
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

    def _take_pending(self, leaf: int, *, in_place: bool) -> _Pending:
        """The pending checkout a checkin of ``leaf`` must follow, of the same kind."""
        self._check_open()
        leaf = self._check_leaf(leaf)
        pending = self._pending
        if pending is None or pending.leaf != leaf or pending.in_place != in_place:
            kind = "lower" if in_place else "branch"
            raise ValueError(f"checkin_{kind}({leaf}) must follow checkout_{kind}({leaf})")
        return pending

    def _load_lower(self, nodes: npt.NDArray[np.int64], out: Bytes) -> bytes:
        """Fetch, verify and decrypt the untrusted levels of a branch into ``out``; returns
        their verified metadata items (empty when the whole tree is trusted)."""
        if self.untrusted is None:
            return b""
        below = nodes[self.treetop_levels :]
        self.untrusted.checkout_into(self._items(below), self._sealed, self._heads)
        heads = bytes(self._heads)
        self._open_branch(below.tolist(), self._sealed, heads, out)
        return heads

    def _items(self, below: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The untrusted items that hold the current versions of these untrusted buckets."""
        k = below - self._offset
        if self._ways == 1:
            return k
        items: npt.NDArray[np.int64] = 2 * k + ((self._slots[k >> 3] >> (k & 7)) & 1)
        return items

    def _commit_lower(self, nodes: npt.NDArray[np.int64], lower: Bytes, heads: bytes) -> None:
        """Seal and write the untrusted levels of a branch, then record its new root."""
        if self.untrusted is None:
            return
        top = self.treetop_levels
        record = self._seal_branch(nodes[top:], lower, heads)
        self._roots[nodes[top] - self._offset] = np.frombuffer(record, np.uint8)

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

    def _open_branch(self, nodes: list[int], sealed: Bytes, heads: bytes, out: Bytes) -> None:
        """Verify the untrusted part of a branch top-down and decrypt it into ``out``.

        Once this returns, ``heads`` holds verified metadata items: the next checkin of the
        branch takes the records of the buckets that hang off it from there.

        Tags and counters are compared with ordinary equality: they are no secret, the host
        holds them in its own memory.
        """
        expected = self._roots[nodes[0] - self._offset].tobytes()
        sealed_flat = sealed.data.cast("B")
        row = sealed.shape[1]
        open_into = self._sealer.open_into
        salt = self._salt
        last = len(nodes) - 1
        for j, node in enumerate(nodes):
            head = heads[j * _META_ITEM : (j + 1) * _META_ITEM]
            counter = int.from_bytes(expected[SESSION_BYTES:_VERSION], "little")
            if counter == 0:
                if head != _ZERO_META:
                    raise IntegrityError(
                        f"bucket {node} has metadata but its parent records it as never written",
                        index=node,
                    )
                out[j] = 0
                expected = _NEVER_WRITTEN
                continue
            end = (j + 1) * row
            if (
                head[:_VERSION] != expected[:_VERSION]
                or sealed_flat[end - TAG_BYTES : end] != expected[_VERSION:]
            ):
                raise IntegrityError(
                    f"bucket {node} is not the version its parent records "
                    "(replayed, rolled back, swapped or zeroed)",
                    index=node,
                )
            try:
                open_into(
                    expected[:SESSION_BYTES],
                    counter,
                    sealed[j],
                    salt + node.to_bytes(8, "little") + head,
                    out[j],
                )
            except InvalidTag:
                raise IntegrityError(
                    f"bucket {node} failed authentication (its bytes were modified)", index=node
                ) from None
            if j < last:
                expected = head[_LEFT] if nodes[j + 1] % 2 == 0 else head[_RIGHT]

    def _seal_branch(self, nodes: npt.NDArray[np.int64], plain: Bytes, checked_out: bytes) -> bytes:
        """Encrypt the untrusted part of a branch bottom-up, write it, and return the record
        of its topmost bucket.

        ``checked_out`` are the verified metadata items of the branch's checkout: each keeps the
        record of its child off the branch, and gets a new counter and a new record of its
        child on the branch.
        """
        assert self.untrusted is not None
        n = len(nodes)
        row = plain.shape[1] + TAG_BYTES
        sealed = self._sealed
        sealed_flat = sealed.data.cast("B")
        heads = self._heads
        heads[:] = checked_out
        seal_into = self._sealer.seal_into
        session = self._sealer.session
        items = self._items(nodes)
        if self._ways == 2:
            # A bucket whose current version was written since the last durable point is
            # overwritten where it lies; any other goes to its other slot, so the version the
            # durable state refers to survives a crash in the middle of this write.
            durable = self._durable_counter
            for j in range(n):
                at = j * _META_ITEM
                if checked_out[at : at + SESSION_BYTES] != session or (
                    int.from_bytes(checked_out[at + SESSION_BYTES : at + _VERSION], "little")
                    <= durable
                ):
                    items[j] ^= 1
        counter = self._sealer.reserve(n)
        salt = self._salt
        node_list = nodes.tolist()
        record = b""
        for j in range(n - 1, -1, -1):
            node = node_list[j]
            at = j * _META_ITEM
            if j < n - 1:
                slot = at + (_LEFT.start if node_list[j + 1] % 2 == 0 else _RIGHT.start)
                heads[slot : slot + _RECORD] = record
            version = session + counter.to_bytes(COUNTER_BYTES, "little")
            heads[at : at + _VERSION] = version
            seal_into(
                counter,
                plain[j],
                salt + node.to_bytes(8, "little") + heads[at : at + _HEADER],
                sealed[j],
            )
            end = (j + 1) * row
            record = version + sealed_flat[end - TAG_BYTES : end].tobytes()
            counter += 1
        self.untrusted.checkin(items, sealed, heads)
        if self._ways == 2:
            # ufunc.at, since buckets of one branch may share a byte of the bitmap.
            k = nodes - self._offset
            bit = (1 << (k & 7)).astype(np.uint8)
            np.bitwise_and.at(self._slots, k >> 3, ~bit)
            np.bitwise_or.at(self._slots, k >> 3, bit * (items & 1).astype(np.uint8))
        return record


@dataclass(slots=True)
class _Pending:
    """A checked-out branch awaiting its checkin."""

    leaf: int
    nodes: npt.NDArray[np.int64]  # the branch, root first
    plain: Bytes  # the rows handed to the caller (the untrusted levels' rows, in place)
    data: Bytes | None  # the two views of them the caller got (None in place)
    meta: Bytes | None
    heads: bytes  # verified metadata items of the untrusted levels
    in_place: bool = False  # checkout_lower: treetop untouched, lower levels in self._lower


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
