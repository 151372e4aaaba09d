"""Path ORAM (Stefanov et al., CCS 2013) over :class:`~oramstore.TreeStorage`.

Every block lives in a bucket on the branch to its leaf, or in the stash. An access looks up the
block's leaf, gives it a fresh uniformly random one, checks out the whole branch to the old leaf,
serves the request from the branch and the stash, and writes the branch back holding as many
stash blocks as fit, each as deep as its new leaf allows. The host sees one uniformly random
branch per access, whichever block was asked for.
"""

from __future__ import annotations

import errno
import fcntl
import io
import itertools
import math
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from oramstore._closing import Closing
from oramstore.enclave.crypto import (
    SALT_BYTES,
    KeyLike,
    NoCopy,
    check_key,
    fork_hooks,
    new_key,
)
from oramstore.enclave.sealed import Journal, read_state, write_state
from oramstore.enclave.tree import DEFAULT_TREETOP_BYTES, TreeStorage
from oramstore.errors import (
    IntegrityError,
    PoisonedError,
    StashOverflowError,
    StorageReleasedError,
)
from oramstore.oram.position import (
    ENTRY_BYTES,
    MAX_LEAVES,
    UNASSIGNED,
    ArrayPositionMap,
    PositionMap,
    RecursivePositionMap,
)

__all__ = [
    "DEFAULT_POSITION_MAP_THRESHOLD",
    "DEFAULT_STASH_SIZE",
    "MAX_UPDATE_BLOCKS",
    "MIN_BUCKET_SIZE",
    "POSITIONS_PER_BLOCK",
    "PathORAM",
    "min_stash_size",
]

MIN_BUCKET_SIZE = 4
"""The smallest Z accepted. With Z = 2 and 3 at full utilisation the stash's tail grows with the
number of blocks (``benches/bench_stash_tail.py``), so no fixed capacity keeps overflows rare."""

# log2 P(stash > R) = a + b R, fitted to the far tail (P <= 1/8) of the stash occupancy that
# ``benches/bench_stash_tail.py`` measured over 10^6 accesses at full utilisation (N / Z leaves),
# the slowest-falling fit over N = 2^10 .. 2^16. Z >= 6 uses the entry for 6, since larger
# buckets only shorten the tail.
_STASH_TAIL = {4: (-6.12, -0.970), 5: (-8.12, -1.376), 6: (-9.70, -1.459)}
_OVERFLOW_BITS = 64
_STASH_MARGIN = 2.0


def min_stash_size(bucket_size: int) -> int:
    """The smallest stash capacity accepted for buckets of ``bucket_size`` blocks.

    It is the capacity at which the measured tail, extrapolated, puts an overflow below
    2^-64 per access, doubled as a margin for the extrapolation: 120 blocks for Z = 4, 82 for
    Z = 5, 75 for Z >= 6.

    Raises:
        ValueError: ``bucket_size`` is below :data:`MIN_BUCKET_SIZE`.
    """
    try:
        z = int(bucket_size.__index__())
    except AttributeError:
        raise TypeError(f"bucket_size must be an int, got {type(bucket_size).__name__}") from None
    if z < MIN_BUCKET_SIZE:
        raise ValueError(
            f"bucket_size must be at least {MIN_BUCKET_SIZE}, got {z}: with smaller buckets "
            "the stash grows with the number of blocks and no fixed stash bounds overflows"
        )
    # A larger bucket never needs a larger stash than a smaller one does; taking the least
    # over the measured Z up to this one keeps the sizes monotone despite the fits' noise.
    return min(
        math.ceil(_STASH_MARGIN * (-_OVERFLOW_BITS - a) / b)
        for size, (a, b) in _STASH_TAIL.items()
        if size <= z
    )


DEFAULT_STASH_SIZE = min_stash_size(4)
"""The default stash capacity for the default Z = 4 (:func:`min_stash_size`)."""

DEFAULT_POSITION_MAP_THRESHOLD = 1 << 20
"""Above this many blocks the position map is itself an ORAM (4 MiB of trusted memory below)."""

POSITIONS_PER_BLOCK = 256
"""Entries per block of a recursive position map (1 KiB blocks)."""

_SLOT_META = 16  # per slot: block index + 1 (0 = empty), then its leaf, both little-endian u64
_ROW_CACHE_BRANCHES = 1024  # treetop branches whose slot rows are kept (see _branch_rows)
_SLOT_HEAD = struct.Struct("<QQ")
_FREE_TABLE_Z = 8  # up to this Z, the free slots of every bucket state are tabulated
_EMPTY_SLOT = bytes(_SLOT_META)
R = TypeVar("R")
Bytes = npt.NDArray[np.uint8]
Durability = Literal["commit", "access"]
Plan = list[tuple[int, int]]  # per ORAM of the recursion: (new leaf, leaf if unassigned)
# A branch's slot rows (see PathORAM._branch_rows): listed, as an index array, and as indices
# of their first metadata word.
_BranchRows = tuple[list[int], npt.NDArray[np.intp], "npt.NDArray[np.intp] | None"]
# (block index, update, kind, data): kind is _READ, _WRITE or _UPDATE; data is a write's block.
_Request = tuple[int, Callable[[Bytes], Any], int, "Bytes | None"]
_READ, _WRITE, _UPDATE = 0, 1, 2

_FORMAT = 1
_LOCK_FILE = "lock"
# With durability="access" the journal holds every write's data; a commit empties it.
_AUTO_COMMIT_RECORDS = 4096
_AUTO_COMMIT_BYTES = 256 << 20
_INTENT = struct.Struct("<QBI")  # block index, kind, bytes of data that follow the leaves
# A journal record's first word is its number of accesses, or, with this bit set, the number of
# blocks an update wrote (durability="access"), each a u64 index and the block.
_DATA_RECORD = 1 << 31
_INDEX = struct.Struct("<Q")

MAX_UPDATE_BLOCKS = 16
"""The most blocks one :meth:`PathORAM.update` may change. They wait in the stash from their
access until the last one, so this bounds how far the stash may exceed its usual occupancy."""


class _Leaves:
    """Uniform leaves from the operating system's CSPRNG, drawn in batches.

    A predictable generator would let the host guess where a block goes next.
    """

    _BATCH = 4096

    def __init__(self, leaf_count: int) -> None:
        self._mask = leaf_count - 1  # leaf_count is a power of two, so masking is uniform
        self._pool: list[int] = []
        fork_hooks.add(self)

    def _after_fork(self) -> None:
        # A child that went on drawing from its parent's pool would choose the same leaves.
        self._pool = []

    def pair(self) -> tuple[int, int]:
        """Two leaves, in one call: an access's new leaf and its leaf if it has none."""
        pool = self._pool
        if len(pool) < 2:
            self._refill()
            pool = self._pool
        return pool.pop(), pool.pop()

    def _refill(self) -> None:
        words = np.frombuffer(os.urandom(4 * self._BATCH), np.uint32) & self._mask
        self._pool += words.tolist()


class PathORAM(NoCopy, Closing):
    """An oblivious store of ``block_count`` blocks of ``block_size`` bytes.

    Args:
        block_count: number of blocks, indexed ``0 .. block_count - 1``.
        block_size: bytes per block.
        bucket_size: blocks per bucket (Z). The tree has about ``block_count / bucket_size``
            leaves, so untrusted memory is about twice the user data.
        stash_size: blocks the stash may hold between accesses; by default the size that keeps
            an overflow below 2^-64 per access for this Z (:func:`min_stash_size`), and never
            less. Exceeding it raises :class:`~oramstore.StashOverflowError`.
        key: 32-byte master key (any bytes-like object). Each tree (data and position maps)
            seals under keys derived from it, its own random salt and its session, so one key
            may serve any number of ORAMs. Random if omitted.
        treetop_bytes: trusted memory for each tree's top levels.
        position_map: ``"array"`` (trusted, 4 bytes per block), ``"recursive"`` (a smaller
            PathORAM), or ``"auto"`` (array up to ``position_map_threshold`` blocks).
        position_map_threshold: the ``"auto"`` cut-over, also used by recursive levels.
        path: make a durable store in this directory (new, or empty): every tree's buckets go
            to a file there, and :meth:`commit` seals the trusted state next to them.
            :meth:`open` reopens it. Needs ``key``.
        durability: with ``path``: ``"commit"`` makes durable what :meth:`commit` (or
            :meth:`close`) covered; ``"access"`` makes every access that returned durable.

    Blocks never written read as zeros. Creation writes nothing. Every access checks out and
    checks in exactly one branch of the data tree, chosen uniformly at random, plus the position
    map's own accesses. Tampering with untrusted memory raises
    :class:`~oramstore.IntegrityError` from the tree below.

    The ORAM fails closed: once an access fails part-way, for whatever reason (tampering, a
    stash overflow, a storage call that raised, an interrupt), that access's exception is
    raised and every later call raises :class:`~oramstore.PoisonedError`, in this ORAM and in
    the ORAMs of its position map. Going on would risk showing the host the failed block's
    branch again. Bad arguments are checked before anything happens and poison nothing.

    It cannot be copied or pickled (the copy would reuse its nonces); a ``fork()``ed child
    seals under sessions of its own and draws its own leaves.
    """

    def __init__(
        self,
        block_count: int,
        block_size: int,
        *,
        bucket_size: int = 4,
        stash_size: int | None = None,
        key: KeyLike | None = None,
        treetop_bytes: int = DEFAULT_TREETOP_BYTES,
        position_map: Literal["auto", "array", "recursive"] = "auto",
        position_map_threshold: int = DEFAULT_POSITION_MAP_THRESHOLD,
        path: str | os.PathLike[str] | None = None,
        durability: Durability = "commit",
        _label: str = "data",
        _tree_dir: Path | None = None,
        _state: Mapping[str, Any] | None = None,
    ) -> None:
        block_count = _positive(block_count, "block_count")
        block_size = _positive(block_size, "block_size")
        z = _positive(bucket_size, "bucket_size")
        least = min_stash_size(z)
        if stash_size is None:
            stash_size = least
        stash_size = _non_negative(stash_size, "stash_size")
        if stash_size < least:
            raise ValueError(
                f"stash_size {stash_size} is too small for bucket_size {z}: overflow stays "
                f"below 2^-64 per access only from {least} blocks on"
            )
        position_map_threshold = _positive(position_map_threshold, "position_map_threshold")
        if path is not None:
            if durability not in ("commit", "access"):
                raise ValueError(f"durability must be 'commit' or 'access', got {durability!r}")
            if key is None:
                raise ValueError("a durable store needs its key: pass key=")
        key = new_key() if key is None else check_key(key)
        if position_map not in ("auto", "array", "recursive"):
            raise ValueError(
                f"position_map must be 'auto', 'array' or 'recursive', got {position_map!r}"
            )
        height = max(0, math.ceil(math.log2(math.ceil(block_count / z))))
        if (1 << height) > MAX_LEAVES:
            raise ValueError(f"block_count {block_count} needs more leaves than positions can hold")
        self._store: _Store | None = None
        lock = -1
        if path is not None:
            _tree_dir = Path(path)
            _tree_dir.mkdir(parents=True, exist_ok=True)
            if any(_tree_dir.iterdir()):
                raise FileExistsError(
                    errno.EEXIST, "not an empty directory; open a store with PathORAM.open", path
                )
            lock = _lock(_tree_dir)
        try:
            self._build(
                block_count, block_size, z, stash_size, key, treetop_bytes, position_map,
                position_map_threshold, height, _label, _tree_dir, _state,
            )  # fmt: skip
        except BaseException:
            if lock >= 0:
                os.close(lock)
            raise
        if path is not None:
            assert _tree_dir is not None
            self._store = _Store(_tree_dir, key, os.urandom(SALT_BYTES), -1, durability, lock)
            try:
                self._save(0)
            except BaseException:
                self.close()
                raise

    def _build(
        self,
        block_count: int,
        block_size: int,
        z: int,
        stash_size: int,
        key: bytes,
        treetop_bytes: int,
        position_map: str,
        position_map_threshold: int,
        height: int,
        label: str,
        tree_dir: Path | None,
        state: Mapping[str, Any] | None,
    ) -> None:
        self._block_count = block_count
        self._block_size = block_size
        self._z = z
        self._stash_size = stash_size
        # A bucket is Z slots, each a block followed by its metadata, so that slot s of a
        # branch is row s of one (levels * Z, block_size + 16) array and a block moves with its
        # metadata in one copy. The tree's own metadata part is unused.
        self._label = label
        self._treetop_bytes = treetop_bytes
        self._threshold = position_map_threshold
        prefix = label + "."
        tree_state = None
        if state is not None:
            tree_state = {
                k[len(prefix) + 5 :]: v for k, v in state.items() if k.startswith(prefix + "tree.")
            }
        self.tree = TreeStorage(
            height,
            z * (block_size + _SLOT_META),
            0,
            key=key,
            treetop_bytes=treetop_bytes,
            label=f"oramstore/{label}",
            path=None if tree_dir is None else tree_dir / (label.replace("/", ".") + ".tree"),
            _state=tree_state,
        )
        self._height = height
        self._leaf_count = 1 << height
        self._leaves = _Leaves(1 << height)
        use_array = position_map == "array" or (
            position_map == "auto" and block_count <= position_map_threshold
        )
        self._positions: PositionMap
        if use_array:
            self._positions = ArrayPositionMap(block_count)
        else:
            inner = PathORAM(
                math.ceil(block_count / POSITIONS_PER_BLOCK),
                POSITIONS_PER_BLOCK * ENTRY_BYTES,
                bucket_size=z,
                stash_size=stash_size,
                key=key,
                treetop_bytes=treetop_bytes,
                position_map="auto",
                position_map_threshold=position_map_threshold,
                _label=f"{label}/positions",
                _tree_dir=tree_dir,
                _state=state,
            )
            self._positions = RecursivePositionMap(inner, POSITIONS_PER_BLOCK)
        # Whether the position map draws leaves of its own for each access.
        self._inner_leaves = isinstance(self._positions, RecursivePositionMap)
        # Every slot of the treetop, and of the untrusted levels of the branch being accessed,
        # is a row of the tree's trusted rows: a block followed by (index + 1, leaf), 0 when
        # empty. An access rearranges the branch's rows in place, so a block that keeps its
        # slot is never copied, and the treetop is never copied at all.
        row = block_size + _SLOT_META
        self._slots: Bytes = self.tree.rows.reshape(-1, row)
        self._heads: npt.NDArray[np.uint64] = self._slots[:, block_size:].view("<u8")
        # The same bytes, for the few metadata writes of an access (cheaper than numpy's).
        self._slot_bytes = self._slots.data.cast("B")
        # With rows of whole 8-byte words, the same bytes as one flat array of words: the slots'
        # (index + 1, leaf) pairs are gathered from it at half the cost of the 2-D view's rows.
        self._words = np.frombuffer(self._slot_bytes, "<u8") if row % 8 == 0 else None
        top = self.tree.treetop_levels
        first_lower = ((1 << top) - 1) * z
        self._lower_rows = list(range(first_lower, first_lower + (height + 1 - top) * z))
        # The rows of a branch's slots (see _branch_rows), for each treetop branch met so far:
        # they are the same for every leaf below one bucket of the treetop's last level.
        self._row_cache: dict[int, _BranchRows] = {}
        if not top:
            self._row_cache[0] = self._rows_of(self._lower_rows)
        # The stash: block index + 1, leaf and row of self._stash_data for each block held, in
        # plain lists (an access touches a handful of them, where numpy calls would cost more
        # than the work). Rows are recycled through _free_rows; the last row is scratch space
        # for a block that is not stored anywhere yet.
        self._stash_ids: list[int] = []
        self._stash_leaves: list[int] = []
        self._stash_rows: list[int] = []
        self._stash_data: Bytes = np.empty((stash_size + 1, row), np.uint8)
        self._stash_heads: npt.NDArray[np.uint64] = self._stash_data[:, block_size:].view("<u8")
        self._stash_bytes = self._stash_data.data.cast("B")
        # For each set of used slots of a bucket (a bit per slot), the free ones; computed
        # as needed when Z is too large for a table.
        self._free_of = (
            [[k for k in range(z) if not used >> k & 1] for used in range(1 << z)]
            if z <= _FREE_TABLE_Z
            else []
        )
        self._free_rows = list(range(stash_size - 1, -1, -1))
        self._held: set[int] = set()  # index + 1 of each block an update holds in the stash
        self._stash_peak = 0
        self._accesses = 0
        self._lock = threading.RLock()
        self._closed = False
        self._in_flight = False  # between drawing a new leaf and finishing the checkin
        self._poisoned: str | None = None
        self._poison_cause: BaseException | None = None
        fork_hooks.add(self)
        if state is not None:
            self._load_state(prefix, state)

    # --- description -----------------------------------------------------------------------

    def __len__(self) -> int:
        return self._block_count

    @property
    def block_size(self) -> int:
        """Bytes per block."""
        return self._block_size

    @property
    def bucket_size(self) -> int:
        """Blocks per bucket (Z)."""
        return self._z

    @property
    def stash_size(self) -> int:
        """The stash's fixed capacity in blocks."""
        return self._stash_size

    @property
    def stash_len(self) -> int:
        """Real blocks in the stash now (between accesses)."""
        return len(self._stash_ids)

    @property
    def stash_peak(self) -> int:
        """The most blocks the stash has held after any access so far."""
        return self._stash_peak

    @property
    def access_count(self) -> int:
        """Completed accesses of this ORAM (not counting its position map's)."""
        return self._accesses

    @property
    def position_map(self) -> PositionMap:
        """The position map (an :class:`ArrayPositionMap` or :class:`RecursivePositionMap`)."""
        return self._positions

    @property
    def trusted_bytes(self) -> int:
        """Trusted memory held: treetops and branch rows, stash, position maps."""
        own = self.tree.rows.nbytes + self._stash_data.nbytes
        return own + self._positions.trusted_bytes

    def __repr__(self) -> str:
        return (
            f"PathORAM(block_count={self._block_count}, block_size={self._block_size}, "
            f"bucket_size={self._z}, height={self._height}, stash={self.stash_len}/"
            f"{self._stash_size}{', closed' if self._closed else ''})"
        )

    # --- access ----------------------------------------------------------------------------

    def __getitem__(self, index: int) -> bytes:
        """``oram[i]`` is :meth:`read`."""
        if isinstance(index, slice):
            raise TypeError("an ORAM is indexed by one block at a time; use read_many for several")
        return self.read(index)

    def __setitem__(self, index: int, data: Any) -> None:
        """``oram[i] = data`` is :meth:`write`."""
        if isinstance(index, slice):
            raise TypeError("an ORAM is indexed by one block at a time; use write_many for several")
        self.write(index, data)

    def read(self, index: int) -> bytes:
        """The block at ``index`` (zeros if never written), as ``bytes``: a copy the caller
        may keep. :meth:`read_many` returns a numpy array instead, since a batch is bulk data
        that callers slice and compute on."""
        result: bytes = self._run([(index, _to_bytes, _READ, None)])[0]
        return result

    def write(self, index: int, data: Any) -> None:
        """Replace the block at ``index`` with ``data`` (exactly ``block_size`` bytes)."""
        source = self._block_bytes(data)
        self._run([(index, _putter(source), _WRITE, source)])

    def read_many(self, indices: Iterable[int]) -> Bytes:
        """The blocks at ``indices``, one access each, as a ``(k, block_size)`` array. Every
        index is checked before the first access."""
        wanted = [self._check_index(index) for index in indices]
        out: Bytes = np.empty((len(wanted), self._block_size), np.uint8)
        self._run([(index, _getter(out[k]), _READ, None) for k, index in enumerate(wanted)])
        return out

    def write_many(self, indices: Iterable[int], blocks: Any) -> None:
        """Write ``blocks[k]`` to ``indices[k]``, one access each.

        ``blocks`` is a ``(k, block_size)`` uint8 array or a sequence of bytes-like blocks. All
        sizes are checked before the first write.
        """
        wanted = list(indices)
        if isinstance(blocks, np.ndarray):
            rows: Sequence[Any] = list(blocks) if blocks.ndim == 2 else [blocks]
        else:
            rows = list(blocks)
        if len(rows) != len(wanted):
            raise ValueError(f"{len(wanted)} indices but {len(rows)} blocks")
        sources = [self._block_bytes(row) for row in rows]
        checked = [self._check_index(index) for index in wanted]
        self._run(
            [
                (index, _putter(source), _WRITE, source)
                for index, source in zip(checked, sources, strict=True)
            ]
        )

    def update(self, indices: Iterable[int], fn: Callable[[list[Bytes]], R]) -> R:
        """Read, change and write back a few blocks together, in one access each.

        ``fn`` gets one writable ``uint8`` array per index, in order (zeros for a block never
        written), and whatever it leaves in them is written back; its result is returned. The
        arrays are valid only during the call. This replaces a :meth:`read_many` followed by a
        :meth:`write_many` of the same blocks at half the accesses, and the host sees exactly
        what :meth:`read_many` of as many blocks shows it: one uniformly random branch per
        index. Each block, once its branch is read, waits in the stash until the last one's
        access, where all of them are evicted with the rest of the stash.

        Indices are distinct, at most :data:`MAX_UPDATE_BLOCKS` of them, and all checked first.
        Every block becomes stored (a block never written is written with what ``fn`` leaves
        in it). If ``fn`` raises an ``Exception``, the accesses still complete, writing back
        the blocks as ``fn`` left them, and the exception is then raised; the ORAM stays
        usable. With ``durability="access"`` the new contents are journaled, in a second
        record after the accesses' own, before this returns.
        """
        wanted = [self._check_index(index) for index in indices]
        if not wanted:
            raise ValueError("update needs at least one index")
        if len(wanted) > MAX_UPDATE_BLOCKS:
            raise ValueError(
                f"update changes at most {MAX_UPDATE_BLOCKS} blocks at once, got {len(wanted)}"
            )
        if len(set(wanted)) != len(wanted):
            raise ValueError("update needs distinct indices")
        results: list[R] = []
        failures: list[Exception] = []

        def call(blocks: list[Bytes]) -> None:
            try:
                results.append(fn(blocks))
            except Exception as error:
                failures.append(error)

        self._run_updates([wanted], call)
        if failures:
            raise failures[0]
        return results[0]

    def _run_updates(self, groups: list[list[int]], fn: Callable[[list[Bytes]], None]) -> None:
        """Run the updates of ``groups`` (distinct, checked indices each) in order, with one
        journal record: ``fn`` gets each group's blocks in turn."""
        written: list[tuple[int, bytes]] | None = None
        store = self._store
        if store is not None and store.durability == "access":
            written = []
        requests: list[_Request] = []
        for group in groups:
            requests += self._update_requests(group, fn, written)
        self._run(requests, written)

    def _update_requests(
        self,
        indices: list[int],
        fn: Callable[[list[Bytes]], None],
        written: list[tuple[int, bytes]] | None,
    ) -> list[_Request]:
        """The accesses of an update of ``indices``: all but the last hold their block in the
        stash; the last calls ``fn`` on every block (and copies them to ``written``), then
        evicts them with the rest."""
        size = self._block_size

        def finish(block: Bytes) -> None:
            stash, ids, rows = self._stash_data, self._stash_ids, self._stash_rows
            blocks = [stash[rows[ids.index(i + 1)], :size] for i in indices[:-1]]
            blocks.append(block)
            fn(blocks)
            if written is not None:
                written.extend(zip(indices, (b.tobytes() for b in blocks), strict=True))

        *held, last = indices
        return [*((i, _hold, _UPDATE, None) for i in held), (last, finish, _UPDATE, None)]

    # --- durability -----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key: KeyLike,
        min_epoch: int | None = None,
        durability: Durability = "commit",
    ) -> PathORAM:
        """Reopen the durable store in ``path`` with the parameters it was created with.

        It lands on its last commit (with ``durability="access"``: its last access), replays
        the journal of the accesses after it so that no block is found where the host already
        saw it, and commits once more.

        Args:
            key: the store's key.
            min_epoch: refuse a store whose last commit is older than this epoch: a caller that
                keeps the epochs :meth:`commit` returns in a trusted monotonic counter detects
                a rollback of the whole directory this way.
            durability: as for the constructor; it may differ from the last opening's.

        Raises:
            FileNotFoundError: no store in ``path``.
            ValueError: ``key`` is not the store's key, or a bad argument.
            IntegrityError: a file of the store was altered, truncated or swapped, or its epoch
                is older than ``min_epoch``.
            BlockingIOError: the store is open in another ORAM object or process.
        """
        key = check_key(key)
        if durability not in ("commit", "access"):
            raise ValueError(f"durability must be 'commit' or 'access', got {durability!r}")
        if min_epoch is not None:
            min_epoch = _non_negative(min_epoch, "min_epoch")
        directory = Path(path)
        if not (directory / "state").is_file():
            raise FileNotFoundError(errno.ENOENT, "no oramstore ORAM in this directory", str(path))
        lock = _lock(directory)
        oram: PathORAM | None = None
        try:
            salt, epoch, payload = read_state(directory, key)
            if min_epoch is not None and epoch < min_epoch:
                raise IntegrityError(
                    f"the store in {path} is at epoch {epoch}, older than min_epoch {min_epoch}: "
                    "it was rolled back"
                )
            state = _unpack(payload)
            params = _params(state, "data.")
            oram = cls.__new__(cls)
            oram._store = None
            oram._build(
                params["block_count"], params["block_size"], params["bucket_size"],
                params["stash_size"], key, params["treetop_bytes"],
                "recursive" if params["recursive"] else "array", params["threshold"],
                params["height"], "data", directory, state,
            )  # fmt: skip
            oram._store = _Store(directory, key, salt, epoch, durability, lock)
            oram._store.replayed = oram._replay(oram._store.journal.records(epoch))
            oram._save(epoch + 1)
        except BaseException:
            if oram is not None and getattr(oram, "_store", None) is not None:
                oram.tree.close()
                oram._positions.close()
                oram._store.close()  # type: ignore[union-attr]
            else:
                os.close(lock)
            raise
        return oram

    @property
    def epoch(self) -> int | None:
        """The durable store's epoch: the number of its last commit (None in memory)."""
        return None if self._store is None else self._store.epoch

    @property
    def path(self) -> Path | None:
        """The durable store's directory (None in memory)."""
        return None if self._store is None else self._store.directory

    @property
    def replayed(self) -> int:
        """Accesses after the last commit that :meth:`open` found journaled and ran again (0
        after a clean close, and in memory)."""
        return 0 if self._store is None else self._store.replayed

    @property
    def durability(self) -> Durability | None:
        """``"commit"`` or ``"access"`` for a durable store (None in memory)."""
        return None if self._store is None else self._store.durability

    def commit(self) -> int:
        """Make every access so far durable and return the new epoch.

        Syncs every tree's file, seals the trusted state (position maps, stash, treetops,
        Merkle roots) under the epoch and replaces the state file atomically, then empties the
        journal. A failure here poisons the ORAM; reopen the store to go on.

        Raises:
            ValueError: the ORAM is in memory (no ``path``).
        """
        with self._lock:
            self._check_usable()
            if self._store is None:
                raise ValueError("only a durable ORAM (created with path=) can commit")
            return self._save(self._store.epoch + 1)

    def _save(self, epoch: int) -> int:
        store = self._store
        assert store is not None
        self._in_flight = True
        try:
            orams = self._orams()
            for oram in orams:
                oram.tree.flush()
            arrays: dict[str, Any] = {"format": np.array([_FORMAT], np.int64)}
            for oram in orams:
                oram._export(arrays)
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            write_state(store.directory, store.key, store.salt, epoch, buffer.getvalue())
            for oram in orams:
                oram.tree.mark_durable()
            store.epoch = epoch
            store.journal.start(epoch)
        except BaseException as error:
            self._poison(f"commit failed: {type(error).__name__}: {error}", error)
            raise
        self._in_flight = False
        return epoch

    def _orams(self) -> list[PathORAM]:
        """This ORAM and those of its recursive position map, outermost first."""
        orams = [self]
        while isinstance(orams[-1]._positions, RecursivePositionMap):
            orams.append(orams[-1]._positions.inner)
        return orams

    def _export(self, arrays: dict[str, Any]) -> None:
        prefix = self._label + "."
        arrays[prefix + "params"] = np.array(
            [
                self._block_count, self._block_size, self._z, self._stash_size, self._height,
                isinstance(self._positions, RecursivePositionMap), self._threshold,
                self._treetop_bytes, self._stash_peak, self._accesses,
            ],
            np.int64,
        )  # fmt: skip
        arrays[prefix + "stash.ids"] = np.array(self._stash_ids, np.uint64)
        arrays[prefix + "stash.leaves"] = np.array(self._stash_leaves, np.uint64)
        arrays[prefix + "stash.rows"] = self._stash_data[self._stash_rows]
        for name, value in self.tree.export_state().items():
            arrays[prefix + "tree." + name] = value
        if isinstance(self._positions, ArrayPositionMap):
            arrays[prefix + "positions"] = self._positions.entries.copy()

    def _load_state(self, prefix: str, state: Mapping[str, Any]) -> None:
        params = _params(state, prefix)
        expected = {
            "block_count": self._block_count, "block_size": self._block_size,
            "bucket_size": self._z, "stash_size": self._stash_size, "height": self._height,
            "recursive": isinstance(self._positions, RecursivePositionMap),
        }  # fmt: skip
        for name, value in expected.items():
            if params[name] != value:
                raise IntegrityError(
                    f"the saved {prefix[:-1]} ORAM has {name} {params[name]}, expected {value}"
                )
        ids = _array(state, prefix + "stash.ids", np.uint64, (-1,))
        leaves = _array(state, prefix + "stash.leaves", np.uint64, ids.shape)
        rows = _array(state, prefix + "stash.rows", np.uint8, (len(ids), self._stash_data.shape[1]))
        if len(ids) > self._stash_size:
            raise IntegrityError(f"the saved {prefix[:-1]} stash holds more than its capacity")
        self._stash_ids = ids.tolist()
        self._stash_leaves = leaves.tolist()
        self._stash_rows = list(range(len(ids)))
        self._stash_data[: len(ids)] = rows
        self._free_rows = list(range(self._stash_size - 1, len(ids) - 1, -1))
        self._stash_peak, self._accesses = params["stash_peak"], params["accesses"]
        if isinstance(self._positions, ArrayPositionMap):
            entries = _array(state, prefix + "positions", np.uint32, self._positions.entries.shape)
            self._positions.entries[:] = entries

    def _replay(self, records: Iterable[bytes]) -> int:
        """Run again the accesses journaled since the state's commit, on the same branches:
        the host sees again exactly what it saw, and every block it saw gets a new leaf. Only
        with ``durability="access"`` did the journal keep the data written: a write's in its
        own record, an update's in the record that follows its accesses'."""
        levels = len(self._orams())
        replayed = 0
        decoded = (_decode(record, levels, self._block_size) for record in records)
        pending = next(decoded, None)
        while pending is not None:
            is_data, entries = pending
            if is_data:
                raise IntegrityError("a journal record of update data follows no update")
            pending = next(decoded, None)
            # The data of the updates' accesses, in their order; none if the call was cut
            # short before its data was journaled, and then the blocks stay as committed.
            updated: Iterator[bytes | None] = itertools.repeat(None)
            if pending is not None and pending[0]:
                if [index for index, *_ in pending[1]] != [
                    index for index, kind, _, _ in entries if kind == _UPDATE
                ]:
                    raise IntegrityError("a journal record of update data names other blocks")
                updated = iter([data for *_, data in pending[1]])
                pending = next(decoded, None)
            for index, kind, plan, data in entries:
                assert plan is not None
                if index >= self._block_count or any(
                    not 0 <= leaf < o.tree.leaf_count
                    for o, pair in zip(self._orams(), plan, strict=True)
                    for leaf in pair
                ):
                    raise IntegrityError("a journal record names a block or leaf out of range")
                if kind == _UPDATE:
                    data = next(updated)
                update = _keep if data is None else _putter(np.frombuffer(data, np.uint8))
                self._access(index, update, write=kind != _READ, leaves=plan)
                replayed += 1
        return replayed

    def _run(
        self, requests: list[_Request], written: list[tuple[int, bytes]] | None = None
    ) -> list[Any]:
        """Serve ``requests`` (index, update, kind, data), one access each; a durable store
        journals them all, durably, before the first reads anything. ``written`` collects the
        blocks updates wrote, which ``durability="access"`` journals after the accesses."""
        with self._lock:
            self._check_usable()
            plans = [self._draw_leaves() for _ in requests]
            store = self._store
            if store is not None:
                with_data = store.durability == "access"
                self._journal(store, lambda: _encode(requests, plans, with_data, self._block_size))
            results = [
                self._access_usable(index, update, kind != _READ, plan)
                for (index, update, kind, _), plan in zip(requests, plans, strict=True)
            ]
            if store is not None and written:
                self._journal(store, lambda: _encode_data(written))
            if (
                store is not None
                and store.durability == "access"
                and (
                    store.journal.count >= _AUTO_COMMIT_RECORDS
                    or store.journal.bytes >= _AUTO_COMMIT_BYTES
                )
            ):
                self._save(store.epoch + 1)
            return results

    def _journal(self, store: _Store, record: Callable[[], bytes]) -> None:
        """Append ``record()`` to the journal, durably; a failure poisons the ORAM, since the
        host may have seen part of it."""
        self._in_flight = True
        try:
            store.journal.append(record())
        except BaseException as error:
            self._poison(f"the journal failed: {type(error).__name__}: {error}", error)
            raise
        self._in_flight = False

    def _draw_leaves(self) -> Plan:
        if self._inner_leaves:
            return [self._leaves.pair(), *self._positions.draw_leaves()]
        return [self._leaves.pair()]

    @property
    def poisoned(self) -> str | None:
        """Why the ORAM refuses every call (see :class:`~oramstore.PoisonedError`), or None."""
        return self._poisoned

    def close(self) -> None:
        """Release the untrusted memory of the tree and the position map (also when
        poisoned). A durable store commits first, unless it is poisoned."""
        with self._lock:
            if self._closed:
                return
            store = self._store
            try:
                if store is not None and self._poisoned is None and not self._in_flight:
                    self._save(store.epoch + 1)
            finally:
                self._closed = True
                self.tree.close()
                self._positions.close()
                if store is not None:
                    store.close()
            self._stash_data = np.empty((0, self._block_size), np.uint8)
            self._stash_bytes = memoryview(bytearray())
            self._stash_ids, self._stash_leaves, self._stash_rows = [], [], []

    # --- the access itself ----------------------------------------------------------------

    def _access(
        self, index: int, update: Callable[[Bytes], R], *, write: bool, leaves: Plan | None = None
    ) -> R:
        """One oblivious access: ``update`` sees the block as a writable array (zeros if never
        written) and may change it in place when ``write`` is true. ``leaves`` gives the new
        leaf, and the leaf to read if the block has none, of this ORAM and of each ORAM of its
        position map (drawn here if not given)."""
        with self._lock:
            self._check_usable()
            return self._access_usable(index, update, write, leaves)

    def _access_usable(
        self, index: int, update: Callable[[Bytes], R], write: bool, leaves: Plan | None
    ) -> R:
        """:meth:`_access`, with the lock held and the ORAM found usable (:meth:`_run` checks
        once for a batch; an access that fails raises out of the batch)."""
        index = self._check_index(index)
        # From here until the branch is back, a failure leaves the position map, the stash
        # and the tree out of step, and the host has seen the branch: fail closed.
        self._in_flight = True
        try:
            if leaves is None:
                leaves = self._draw_leaves()
            new_leaf, fallback = leaves[0]
            old_leaf = self._positions.swap(index, new_leaf, create=write, leaves=leaves[1:])
            assigned = old_leaf != UNASSIGNED
            leaf = old_leaf if assigned else fallback
            if not 0 <= leaf < self._leaf_count:
                raise IntegrityError(
                    f"the position map gives block {index} leaf {leaf}, outside the tree"
                )
            result = self._serve(index, leaf, assigned, new_leaf, update, write)
        except BaseException as error:
            self._poison(f"{type(error).__name__}: {error}", error)
            raise
        self._in_flight = False
        return result

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageReleasedError("the ORAM is closed")
        if self._in_flight and self._poisoned is None:
            # An access was cut short where no handler ran (an exception raised between two
            # statements of the handler itself, say).
            self._poison("an access was interrupted", None)
        if self._poisoned is not None:
            raise PoisonedError(
                "the ORAM refuses every call since an access failed part-way "
                f"({self._poisoned}); recover its contents from a trusted copy"
            ) from self._poison_cause

    def _poison(self, reason: str, cause: BaseException | None) -> None:
        """Refuse every later call here, in the tree and in the position map's ORAMs."""
        if self._poisoned is None:
            self._poisoned = reason
            self._poison_cause = cause
        self.tree.poison(reason)
        self._positions.poison(reason)

    def _after_fork(self) -> None:
        # The lock may have been held by a thread of the parent, which the child lacks; an
        # access of that thread was cut in two.
        self._lock = threading.RLock()
        if self._in_flight:
            self._poison("the process forked during an access", None)
        elif self._store is not None:
            self._poison("a durable store cannot be used in a fork()ed child; reopen it", None)

    def _branch_rows(self, leaf: int) -> _BranchRows:
        """The row of :attr:`_slots` of each slot (level * Z + k) of the branch to ``leaf``, as
        a list and as an index array, and the index of each row's first metadata word in
        :attr:`_words` (None without it)."""
        top = self.tree.treetop_levels
        key = (((1 << self._height) + leaf) >> (self._height - top + 1)) if top else 0
        rows = self._row_cache.get(key)
        if rows is None:
            z = self._z
            nodes = [key >> shift for shift in range(top - 1, -1, -1)]
            listed = [(node - 1) * z + k for node in nodes for k in range(z)] + self._lower_rows
            rows = self._rows_of(listed)
            # A treetop of many small buckets has too many branches to keep all of them.
            if len(self._row_cache) < _ROW_CACHE_BRANCHES:
                self._row_cache[key] = rows
        return rows

    def _rows_of(self, listed: list[int]) -> _BranchRows:
        array = np.array(listed, np.intp)
        if self._words is None:
            return listed, array, None
        words = (self._block_size + _SLOT_META) // 8
        return listed, array, array * words + self._block_size // 8

    def _serve(
        self,
        index: int,
        leaf: int,
        assigned: bool,
        new_leaf: int,
        update: Callable[[Bytes], R],
        write: bool,
    ) -> R:
        tree = self.tree
        # The tree's lock is held for the checkout and again for the checkin, which checks that
        # the tree is still open and this checkout still pending: a close from another thread
        # in between fails the access (and poisons the ORAM) instead of losing its blocks.
        tree._checkout_lower_locked(leaf)
        result = self._serve_branch(index, leaf, assigned, new_leaf, update, write)
        tree.checkin_lower(leaf)
        self._stash_peak = max(self._stash_peak, len(self._stash_ids))
        self._accesses += 1
        return result

    def _serve_branch(
        self,
        index: int,
        leaf: int,
        assigned: bool,
        new_leaf: int,
        update: Callable[[Bytes], R],
        write: bool,
    ) -> R:
        """Serve the request from the checked-out branch and the stash, then place every
        candidate block as deep as it may go on the branch and move the blocks accordingly."""
        size, z, height = self._block_size, self._z, self._height
        slots, stash = self._slots, self._stash_data
        # The cache lookup of _branch_rows, inline: it is all an access needs once the cache
        # is warm, and cheaper than the call.
        top = self.tree.treetop_levels
        rows = self._row_cache.get(((1 << height) + leaf) >> (height - top + 1) if top else 0)
        prow, prow_array, words_at = self._branch_rows(leaf) if rows is None else rows

        # The candidates for the new branch: the stash's blocks, then the branch's. `origin`
        # is -1 for a stash block, else the slot (level * Z + k) the block occupies.
        stashed = len(self._stash_ids)
        origin = [-1] * stashed
        if words_at is not None:
            words = self._words
            assert words is not None
            found = words[words_at]
            occupied = found.nonzero()[0]
            if len(occupied):
                ids = self._stash_ids + found[occupied].tolist()
                leaves = self._stash_leaves + words[words_at[occupied] + 1].tolist()
        else:
            heads = self._heads[prow_array]
            occupied = heads[:, 0].nonzero()[0]
            if len(occupied):
                pairs = heads[occupied].T.tolist()
                ids = self._stash_ids + pairs[0]
                leaves = self._stash_leaves + pairs[1]
        if len(occupied):
            origin += occupied.tolist()
        else:
            ids, leaves = list(self._stash_ids), list(self._stash_leaves)
        scratch = len(stash) - 1
        try:
            target = ids.index(index + 1)
        except ValueError:
            target = -1
        # A block is stored (once, on its leaf's branch or in the stash) exactly when the
        # position map gives it a leaf. The tree's MACs make this hold against the host; it is
        # checked anyway, so that a broken invariant is an error and never zeros.
        if target < 0:
            if assigned:
                raise IntegrityError(
                    f"block {index} has leaf {leaf} but is neither on its branch nor in the stash"
                )
            block = stash[scratch, :size]
            block[:] = 0
            if write:  # a new block, born in the scratch row; a read creates nothing
                target = len(ids)
                ids.append(index + 1)
                leaves.append(new_leaf)
                origin.append(-2)
        else:
            if not assigned or leaves[target] != leaf or ids.count(index + 1) != 1:
                raise IntegrityError(
                    f"block {index} is stored where the position map does not put it "
                    f"(expected leaf {leaf if assigned else None}, found {leaves[target]})"
                )
            if target < stashed:
                block = stash[self._stash_rows[target], :size]
            else:
                block = slots[prow[origin[target]], :size]
            leaves[target] = new_leaf

        # Greedy eviction onto the branch, level by level from the bottom: a block may sit at
        # any level down to its depth, where its own branch leaves this one, and each level
        # takes up to Z of the blocks that may sit there and are not placed yet. Which ones it
        # takes does not change how many are placed (those left may all sit higher up), so a
        # level keeps the blocks already in its slots, which need no copy, and fills its other
        # slots with the rest.
        #
        # A block of the branch has a depth at least its level (it lies on its leaf's branch),
        # so it is placed on its level at the latest, and one whose depth is its level stays
        # where it is: its slot is marked used up front and the block takes no further part.
        # A slot whose block is not waiting when its level comes holds a block placed deeper,
        # or the served block on its way up, and is free.
        #
        # The blocks an update holds wait in the stash until its last access, which releases
        # them to this placement like any other.
        held = self._held
        if update is _hold:
            held.add(index + 1)
        elif held:
            held.clear()
        pinned: list[int] = []
        by_depth: list[list[int]] = [[] for _ in range(height + 1)]
        used = [0] * (height + 1)  # per level, a bit for each slot whose block stays
        target_row = -1  # where the served block ends up on the branch, if it does
        lifted = -1  # the slot the served block leaves for another slot of the branch
        for c, (block_leaf, o) in enumerate(zip(leaves, origin, strict=True)):
            if held and ids[c] in held:
                pinned.append(c)
                continue
            depth = height - (block_leaf ^ leaf).bit_length()
            at = o - depth * z
            if 0 <= at < z:
                used[depth] |= 1 << at
                if c == target:
                    target_row = prow[o]
            else:
                by_depth[depth].append(c)
        free_of = self._free_of
        stash_rows = self._stash_rows
        path_from: list[int] = []  # rows of self._slots moving within the branch...
        path_to: list[int] = []  # ...and where they go
        from_stash: list[int] = []  # rows of the stash moving to the branch...
        to_path: list[int] = []  # ...and where they go
        waiting: list[int] = []
        for level in range(height, -1, -1):
            if by_depth[level]:
                waiting += by_depth[level]
            elif not waiting:
                continue
            base = level * z
            taken = used[level]
            movers = []
            for c in waiting:
                at = origin[c] - base
                if 0 <= at < z:
                    taken |= 1 << at
                    if c == target:
                        target_row = prow[origin[c]]
                else:
                    movers.append(c)
            free = free_of[taken] if free_of else [k for k in range(z) if not taken >> k & 1]
            placed = min(len(free), len(movers))
            for k in range(placed):
                c = movers[k]
                row = prow[base + free[k]]
                o = origin[c]
                if c == target:
                    target_row = row
                    if o >= 0:
                        # The served block may move up, to a slot read after its own is
                        # taken: it goes by the scratch row, like a block from the stash.
                        lifted = prow[o]
                        o = -2
                if o >= 0:
                    path_from.append(prow[o])
                    path_to.append(row)
                else:
                    from_stash.append(stash_rows[c] if o == -1 else scratch)
                    to_path.append(row)
            waiting = movers[placed:]
        if pinned:
            waiting += pinned
        if len(waiting) > self._stash_size:
            # The branch goes back as it came, so that the host sees an access of the usual
            # shape; the ORAM then refuses further calls (the caller poisons it).
            self.tree.checkin_lower(leaf)
            raise StashOverflowError(
                f"the stash would hold {len(waiting)} blocks, more than its capacity of "
                f"{self._stash_size}"
            )
        result = update(block)

        # The new stash: the blocks left waiting, in their rows; rows of blocks that left the
        # stash are recycled.
        free_rows = self._free_rows
        free_rows.extend(row for row in from_stash if row != scratch)
        kept_ids: list[int] = []
        kept_leaves: list[int] = []
        kept_rows: list[int] = []
        leaving: list[int] = []  # rows of self._slots moving to the stash...
        arriving: list[int] = []  # ...and their rows there
        born = -1  # the stash row of the new block, if it stays in the stash
        target_stash_row = -1
        for c in waiting:
            o = origin[c]
            if o == -1:
                row = stash_rows[c]
            else:
                row = free_rows.pop()
                if o >= 0:
                    leaving.append(prow[o])
                    arriving.append(row)
                else:
                    born = row
            kept_ids.append(ids[c])
            kept_leaves.append(leaves[c])
            kept_rows.append(row)
            if c == target:
                target_stash_row = row
        # The rows that move, one copy each (a slice of a memoryview costs less than a numpy
        # call for the handful of rows an access moves). Blocks leaving for the stash, and the
        # served block if it moves, are read first, since their slots may take other blocks.
        # Any other block of the branch only moves deeper, and the moves were found deepest
        # level first: in that order, a slot's block has moved on before another lands there.
        # Blocks from the stash (and the scratch row) land in free slots last, and blocks for
        # the stash land in its rows once the stash's own have left.
        row_bytes, flat = size + _SLOT_META, self._slot_bytes
        stash_flat = self._stash_bytes
        departures = [flat[row * row_bytes : (row + 1) * row_bytes].tobytes() for row in leaving]
        if lifted >= 0:
            stash_flat[scratch * row_bytes : (scratch + 1) * row_bytes] = flat[
                lifted * row_bytes : (lifted + 1) * row_bytes
            ]
        for src, dst in zip(path_from, path_to, strict=True):
            flat[dst * row_bytes : (dst + 1) * row_bytes] = flat[
                src * row_bytes : (src + 1) * row_bytes
            ]
        for src, dst in zip(from_stash, to_path, strict=True):
            flat[dst * row_bytes : (dst + 1) * row_bytes] = stash_flat[
                src * row_bytes : (src + 1) * row_bytes
            ]
        for row, departure in zip(arriving, departures, strict=True):
            stash_flat[row * row_bytes : (row + 1) * row_bytes] = departure
        if born >= 0:
            stash_flat[born * row_bytes : (born + 1) * row_bytes] = stash_flat[
                scratch * row_bytes : (scratch + 1) * row_bytes
            ]
        # Slots that lost their block and gained none are marked empty; the bytes left in them
        # are sealed with the bucket and overwritten when a block next lands there.
        if path_from or leaving or lifted >= 0:
            emptied = set(path_from)
            emptied.update(leaving)
            emptied.add(lifted)
            emptied.discard(-1)
            emptied.difference_update(path_to)
            emptied.difference_update(to_path)
            for row in emptied:
                flat[row * row_bytes + size : (row + 1) * row_bytes] = _EMPTY_SLOT
        # Only the served block's metadata changes: its new leaf.
        if target_row >= 0:
            at = target_row * row_bytes + size
            flat[at : at + _SLOT_META] = _SLOT_HEAD.pack(ids[target], leaves[target])
        elif target_stash_row >= 0:
            at = target_stash_row * row_bytes + size
            self._stash_bytes[at : at + _SLOT_META] = _SLOT_HEAD.pack(ids[target], leaves[target])
        self._stash_ids = kept_ids
        self._stash_leaves = kept_leaves
        self._stash_rows = kept_rows
        return result

    # --- arguments ------------------------------------------------------------------------

    def _check_index(self, index: int) -> int:
        try:
            i = index.__index__()
        except AttributeError:
            raise TypeError(f"index must be an int, got {type(index).__name__}") from None
        if not 0 <= i < self._block_count:
            raise IndexError(f"index {i} is out of range for {self._block_count} blocks")
        return i

    def _block_bytes(self, data: Any) -> Bytes:
        try:
            view = memoryview(data)
        except TypeError:
            raise TypeError(
                f"a block must be bytes-like or a uint8 array, got {type(data).__name__}"
            ) from None
        if not view.c_contiguous:
            raise ValueError("a block must be a contiguous buffer")
        block = np.frombuffer(view.cast("B"), np.uint8)
        if block.size != self._block_size:
            raise ValueError(f"a block must be {self._block_size} bytes, got {block.size}")
        return block


def _positive(value: Any, name: str) -> int:
    number = _non_negative(value, name)
    if number == 0:
        raise ValueError(f"{name} must be positive, got 0")
    return number


def _non_negative(value: Any, name: str) -> int:
    try:
        number = int(value.__index__())
    except AttributeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if number < 0:
        raise ValueError(f"{name} must not be negative, got {number}")
    return number


class _Store:
    """The directory of a durable ORAM, and what of it lives outside the trees."""

    def __init__(
        self, directory: Path, key: bytes, salt: bytes, epoch: int, durability: str, lock: int
    ) -> None:
        self.directory = directory
        self.key = key
        self.salt = salt
        self.epoch = epoch
        self.durability: Durability = "access" if durability == "access" else "commit"
        self._lock = lock
        self.replayed = 0
        self.journal = Journal(directory, key, salt)

    def close(self) -> None:
        self.journal.close()
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


def _lock(directory: Path) -> int:
    """Hold the store's lock file: one ORAM object at a time may use a store."""
    fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BlockingIOError(
            errno.EWOULDBLOCK, "the store is open elsewhere (its lock is held)", str(directory)
        ) from None
    return fd


def _encode(requests: list[_Request], plans: list[Plan], with_data: bool, block_size: int) -> bytes:
    """A journal record of ``requests``. With ``with_data`` every access carries a block, a
    read a block of zeros, so that a record's size (which the host sees) tells nothing of
    which accesses write."""
    parts = [len(requests).to_bytes(4, "little")]
    for (index, _, kind, data), plan in zip(requests, plans, strict=True):
        body = b""
        if with_data:
            body = data.tobytes() if kind == _WRITE and data is not None else bytes(block_size)
        parts.append(_INTENT.pack(index, kind, len(body)))
        parts.append(np.array(plan, np.uint32).tobytes())
        parts.append(body)
    return b"".join(parts)


def _encode_data(written: list[tuple[int, bytes]]) -> bytes:
    """A journal record of the blocks that updates wrote."""
    parts = [(len(written) | _DATA_RECORD).to_bytes(4, "little")]
    for index, block in written:
        parts.append(_INDEX.pack(index))
        parts.append(block)
    return b"".join(parts)


def _decode(
    record: bytes, levels: int, block_size: int
) -> tuple[bool, list[tuple[int, int, Plan | None, bytes | None]]]:
    """A journal record: whether it holds an update's data, and its entries (index, kind,
    plan, data); a data record's entries have no plan and are writes."""
    try:
        count = int.from_bytes(record[:4], "little")
        at = 4
        out: list[tuple[int, int, Plan | None, bytes | None]] = []
        data: bytes | None
        if count & _DATA_RECORD:
            for _ in range(count & ~_DATA_RECORD):
                (index,) = _INDEX.unpack_from(record, at)
                at += _INDEX.size
                data = record[at : at + block_size]
                if len(data) != block_size:
                    raise ValueError("a block is cut short")
                at += block_size
                out.append((int(index), _WRITE, None, data))
        else:
            for _ in range(count):
                index, kind, length = _INTENT.unpack_from(record, at)
                at += _INTENT.size
                if kind not in (_READ, _WRITE, _UPDATE):
                    raise ValueError(f"unknown kind {kind}")
                leaves = np.frombuffer(record, np.uint32, 2 * levels, at).reshape(levels, 2)
                at += 8 * levels
                if length not in (0, block_size) or at + length > len(record):
                    raise ValueError("bad data length")
                data = record[at : at + length] if length and kind == _WRITE else None
                at += length
                plan = [(int(a), int(b)) for a, b in leaves.tolist()]
                out.append((int(index), int(kind), plan, data))
        if at != len(record):
            raise ValueError("trailing bytes")
    except (ValueError, struct.error) as error:
        raise IntegrityError(f"a journal record does not parse: {error}") from None
    return bool(count & _DATA_RECORD), out


def _unpack(payload: bytes) -> dict[str, Any]:
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            state = {name: archive[name] for name in archive.files}
    except Exception as error:
        raise IntegrityError(f"the state does not parse: {error}") from None
    if state.get("format", np.zeros(1)).tolist() != [_FORMAT]:
        raise IntegrityError("the state has an unknown format")
    return state


_PARAMS = (
    "block_count", "block_size", "bucket_size", "stash_size", "height", "recursive",
    "threshold", "treetop_bytes", "stash_peak", "accesses",
)  # fmt: skip


def _params(state: Mapping[str, Any], prefix: str) -> dict[str, int]:
    values = _array(state, prefix + "params", np.int64, (len(_PARAMS),))
    return dict(zip(_PARAMS, (int(v) for v in values.tolist()), strict=True))


def _array(state: Mapping[str, Any], name: str, dtype: Any, shape: tuple[int, ...]) -> Any:
    """``state[name]``, checked to have ``dtype`` and ``shape`` (-1: any length)."""
    value = state.get(name)
    if (
        not isinstance(value, np.ndarray)
        or value.dtype != dtype
        or len(value.shape) != len(shape)
        or any(want not in (-1, got) for want, got in zip(shape, value.shape, strict=True))
    ):
        raise IntegrityError(f"the state's {name} is missing or malformed")
    return value


def _to_bytes(block: Bytes) -> bytes:
    return block.tobytes()


def _keep(block: Bytes) -> None:
    """A replayed write whose data the journal did not keep: the block stays as committed."""


def _hold(block: Bytes) -> None:
    """An update's access before its last: the block waits in the stash (see _serve_branch)."""


def _putter(source: Bytes) -> Callable[[Bytes], None]:
    def put(block: Bytes) -> None:
        block[:] = source

    return put


def _getter(row: Bytes) -> Callable[[Bytes], None]:
    def get(block: Bytes) -> None:
        row[:] = block

    return get
