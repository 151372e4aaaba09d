"""Path ORAM (Stefanov et al., CCS 2013) over :class:`~oramstore.TreeStorage`.

Every block lives in a bucket on the branch to its leaf, or in the stash. An access looks up the
block's leaf, gives it a fresh uniformly random one, checks out the whole branch to the old leaf,
serves the request from the branch and the stash, and writes the branch back holding as many
stash blocks as fit, each as deep as its new leaf allows. The host sees one uniformly random
branch per access, whichever block was asked for.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from oramstore._closing import Closing
from oramstore.enclave.crypto import KeyLike, NoCopy, check_key, fork_hooks, new_key
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
    "MIN_BUCKET_SIZE",
    "POSITIONS_PER_BLOCK",
    "PathORAM",
    "min_stash_size",
]

MIN_BUCKET_SIZE = 3
"""The smallest Z accepted. With Z = 2 at full utilisation the stash's typical occupancy grows
with the number of blocks, so no fixed capacity keeps overflows rare."""

# log2 P(stash > R) = a + b R, fitted to the far tail (P <= 1/8) of the stash occupancy that
# ``benches/bench_stash_tail.py`` measured over 10^6 accesses at full utilisation (N = 4096,
# N / Z leaves). Z >= 6 uses the entry for 6, since larger buckets only shorten the tail.
_STASH_TAIL = {3: (-2.96, -0.756), 4: (-6.07, -1.207), 5: (-8.03, -1.163), 6: (-9.70, -1.459)}
_OVERFLOW_BITS = 64
_STASH_MARGIN = 2.0


def min_stash_size(bucket_size: int) -> int:
    """The smallest stash capacity accepted for buckets of ``bucket_size`` blocks.

    It is the capacity at which the measured tail, extrapolated, puts an overflow below
    2^-64 per access, doubled as a margin for the extrapolation: 162 blocks for Z = 3, 96 for
    Z = 4 and 5, 75 for Z >= 6.

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
R = TypeVar("R")
Bytes = npt.NDArray[np.uint8]


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

    def __call__(self) -> int:
        if not self._pool:
            words = np.frombuffer(os.urandom(4 * self._BATCH), np.uint32) & self._mask
            self._pool = words.tolist()
        return self._pool.pop()


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
        _label: str = "data",
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
        key = new_key() if key is None else check_key(key)
        if position_map not in ("auto", "array", "recursive"):
            raise ValueError(
                f"position_map must be 'auto', 'array' or 'recursive', got {position_map!r}"
            )
        height = max(0, math.ceil(math.log2(math.ceil(block_count / z))))
        if (1 << height) > MAX_LEAVES:
            raise ValueError(f"block_count {block_count} needs more leaves than positions can hold")
        self._block_count = block_count
        self._block_size = block_size
        self._z = z
        self._stash_size = stash_size
        # A bucket is Z slots, each a block followed by its metadata, so that slot s of a
        # branch is row s of one (levels * Z, block_size + 16) array and a block moves with its
        # metadata in one copy. The tree's own metadata part is unused.
        self.tree = TreeStorage(
            height,
            z * (block_size + _SLOT_META),
            0,
            key=key,
            treetop_bytes=treetop_bytes,
            label=f"oramstore/{_label}",
        )
        self._height = height
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
                _label=f"{_label}/positions",
            )
            self._positions = RecursivePositionMap(inner, POSITIONS_PER_BLOCK)
        # Every slot of the treetop, and of the untrusted levels of the branch being accessed,
        # is a row of the tree's trusted rows: a block followed by (index + 1, leaf), 0 when
        # empty. An access rearranges the branch's rows in place, so a block that keeps its
        # slot is never copied, and the treetop is never copied at all.
        row = block_size + _SLOT_META
        self._slots: Bytes = self.tree.rows.reshape(-1, row)
        self._heads: npt.NDArray[np.uint64] = self._slots[:, block_size:].view("<u8")
        top = self.tree.treetop_levels
        first_lower = ((1 << top) - 1) * z
        self._lower_rows = list(range(first_lower, first_lower + (height + 1 - top) * z))
        self._slot_range = np.arange(z, dtype=np.int64)
        # The stash: block index + 1, leaf and row of self._stash_data for each block held, in
        # plain lists (an access touches a handful of them, where numpy calls would cost more
        # than the work). Rows are recycled through _free_rows; the last row is scratch space
        # for a block that is not stored anywhere yet.
        self._stash_ids: list[int] = []
        self._stash_leaves: list[int] = []
        self._stash_rows: list[int] = []
        self._stash_data: Bytes = np.empty((stash_size + 1, row), np.uint8)
        self._stash_heads: npt.NDArray[np.uint64] = self._stash_data[:, block_size:].view("<u8")
        self._free_rows = list(range(stash_size - 1, -1, -1))
        self._stash_peak = 0
        self._accesses = 0
        self._lock = threading.RLock()
        self._closed = False
        self._in_flight = False  # between drawing a new leaf and finishing the checkin
        self._poisoned: str | None = None
        self._poison_cause: BaseException | None = None
        fork_hooks.add(self)

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

    def read(self, index: int) -> bytes:
        """The block at ``index`` (zeros if never written)."""
        return self._access(index, lambda block: block.tobytes(), write=False)

    def write(self, index: int, data: Any) -> None:
        """Replace the block at ``index`` with ``data`` (exactly ``block_size`` bytes)."""
        source = self._block_bytes(data)

        def put(block: Bytes) -> None:
            block[:] = source

        self._access(index, put, write=True)

    def read_many(self, indices: Iterable[int]) -> Bytes:
        """The blocks at ``indices``, one access each, as a ``(k, block_size)`` array. Every
        index is checked before the first access."""
        wanted = [self._check_index(index) for index in indices]
        out: Bytes = np.empty((len(wanted), self._block_size), np.uint8)
        for k, index in enumerate(wanted):

            def get(block: Bytes, row: Bytes = out[k]) -> None:
                row[:] = block

            self._access(index, get, write=False)
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
        for index in wanted:
            self._check_index(index)
        for index, source in zip(wanted, sources, strict=True):

            def put(block: Bytes, source: Bytes = source) -> None:
                block[:] = source

            self._access(index, put, write=True)

    @property
    def poisoned(self) -> str | None:
        """Why the ORAM refuses every call (see :class:`~oramstore.PoisonedError`), or None."""
        return self._poisoned

    def close(self) -> None:
        """Release the untrusted memory of the tree and the position map (also when
        poisoned)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.tree.close()
            self._positions.close()
            self._stash_data = np.empty((0, self._block_size), np.uint8)
            self._stash_ids, self._stash_leaves, self._stash_rows = [], [], []

    # --- the access itself ----------------------------------------------------------------

    def _access(self, index: int, update: Callable[[Bytes], R], *, write: bool) -> R:
        """One oblivious access: ``update`` sees the block as a writable array (zeros if never
        written) and may change it in place when ``write`` is true."""
        with self._lock:
            self._check_usable()
            index = self._check_index(index)
            # From here until the branch is back, a failure leaves the position map, the stash
            # and the tree out of step, and the host has seen the branch: fail closed.
            self._in_flight = True
            try:
                new_leaf = self._leaves()
                old_leaf = self._positions.swap(index, new_leaf, create=write)
                assigned = old_leaf != UNASSIGNED
                leaf = old_leaf if assigned else self._leaves()
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

    def _serve(
        self,
        index: int,
        leaf: int,
        assigned: bool,
        new_leaf: int,
        update: Callable[[Bytes], R],
        write: bool,
    ) -> R:
        size = self._block_size
        nodes = self.tree.checkout_lower(leaf)
        # Row of self._slots for each slot (level * Z + k) of the branch.
        top = self.tree.treetop_levels
        prow = self._lower_rows
        if top:
            top_rows = (nodes[:top, None] - 1) * self._z + self._slot_range
            prow = top_rows.ravel().tolist() + prow
        heads = self._heads[prow]

        # The candidates for the new branch: the stash's blocks, then the branch's. `origin`
        # is -1 for a stash block, else the slot (level * Z + k) the block occupies.
        ids = list(self._stash_ids)
        leaves = list(self._stash_leaves)
        origin = [-1] * len(ids)
        stashed = len(ids)
        occupied = np.flatnonzero(heads[:, 0])
        found = heads[occupied].T.tolist()
        if found:
            ids += found[0]
            leaves += found[1]
            origin += occupied.tolist()
        scratch = self._stash_data[-1, :size]
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
            block = scratch
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
                block = self._stash_data[self._stash_rows[target], :size]
            else:
                block = self._slots[prow[origin[target]], :size]
            leaves[target] = new_leaf

        level_of = self._evict(leaves, origin, leaf)
        kept = [c for c, level in enumerate(level_of) if level < 0]
        if len(kept) > self._stash_size:
            # The branch goes back as it came, so that the host sees an access of the usual
            # shape; the ORAM then refuses further calls (the caller poisons it).
            self.tree.checkin_lower(leaf)
            raise StashOverflowError(
                f"the stash would hold {len(kept)} blocks, more than its capacity of "
                f"{self._stash_size}"
            )
        result = update(block)
        self._rearrange(prow, ids, leaves, origin, level_of, kept, stashed, target)
        self.tree.checkin_lower(leaf)
        self._stash_peak = max(self._stash_peak, len(self._stash_ids))
        self._accesses += 1
        return result

    def _evict(self, leaves: list[int], origin: list[int], leaf: int) -> list[int]:
        """Greedy eviction onto the branch to ``leaf``, level by level from the bottom: a block
        may sit at any level down to where its own branch leaves this one, and each level
        takes up to Z of the blocks that may sit there and are not placed yet. Which ones it
        takes does not change how many are placed (those left may all sit higher up), so a
        level prefers blocks already in one of its slots: they need no copy.

        Returns each candidate's level, or -1 for those that stay in the stash.
        """
        height, z = self._height, self._z
        by_depth: list[list[int]] = [[] for _ in range(height + 1)]
        for c, block_leaf in enumerate(leaves):
            by_depth[height - (block_leaf ^ leaf).bit_length()].append(c)
        level_of = [-1] * len(leaves)
        waiting: list[int] = []
        for level in range(height, -1, -1):
            waiting.extend(by_depth[level])
            if not waiting:
                continue
            if len(waiting) <= z:
                for c in waiting:
                    level_of[c] = level
                waiting.clear()
                continue
            low, high = level * z, level * z + z
            here = [c for c in waiting if low <= origin[c] < high]
            chosen = here + [c for c in waiting if not low <= origin[c] < high][: z - len(here)]
            for c in chosen:
                level_of[c] = level
            waiting = [c for c in waiting if level_of[c] < 0]
        return level_of

    def _rearrange(
        self,
        prow: list[int],
        ids: list[int],
        leaves: list[int],
        origin: list[int],
        level_of: list[int],
        kept: list[int],
        stashed: int,
        target: int,
    ) -> None:
        """Move the blocks as :meth:`_evict` placed them: within the branch (slot ``s`` is row
        ``prow[s]`` of the trusted rows) and between it and the stash. A block's row carries its
        metadata (index + 1, leaf) wherever it is, in the stash too, so a move is one row copy;
        only the accessed block's leaf changes. Every block that moves is read before any is
        written."""
        z, slots, stash = self._z, self._slots, self._stash_data
        stash_rows = self._stash_rows
        scratch = len(stash) - 1
        # Blocks placed on the level they already occupy keep their slot; the others take the
        # free slots of their level.
        taken = [False] * len(prow)
        for c, level in enumerate(level_of):
            o = origin[c]
            if o >= 0 and o // z == level:
                taken[o] = True
        path_from, path_to, rows_from, rows_to = [], [], [], []
        target_at = -1
        for c, level in enumerate(level_of):
            if level < 0:
                continue
            o = origin[c]
            if o >= 0 and o // z == level:
                dest = o
            else:
                dest = level * z
                while taken[dest]:
                    dest += 1
                taken[dest] = True
                if o >= 0:
                    path_from.append(o)
                    path_to.append(dest)
                else:
                    rows_from.append(stash_rows[c] if o == -1 else scratch)
                    rows_to.append(dest)
            if c == target:
                target_at = dest
        leaving = [origin[c] for c in kept if origin[c] >= 0]
        # Read everything that moves, then write.
        # (Each numpy call costs more than a few small copies, so empty ones are skipped.)
        if path_from:
            from_path = slots[[prow[s] for s in path_from]]
        if rows_from:
            from_stash = stash[rows_from]
        if leaving:
            departures = slots[[prow[s] for s in leaving]]
        if path_from:
            slots[[prow[s] for s in path_to]] = from_path
        if rows_from:
            slots[[prow[s] for s in rows_to]] = from_stash
        # Slots that lost their block and gained none are marked empty; the bytes left in them
        # are sealed with the bucket and overwritten when a block next lands there.
        emptied = [prow[o] for o in origin if o >= 0 and not taken[o]]
        if emptied:
            self._heads[emptied] = 0
        if target_at >= 0:
            self._heads[prow[target_at]] = (ids[target], leaves[target])

        # The new stash, in candidate order; rows of blocks that left it are recycled.
        free_rows = self._free_rows
        free_rows.extend(stash_rows[c] for c in range(stashed) if level_of[c] >= 0)
        rows = []
        arrived = []
        target_row = -1
        for c in kept:
            o = origin[c]
            if o == -1:
                row = stash_rows[c]
            else:
                row = free_rows.pop()
                if o == -2:
                    stash[row] = stash[scratch]
                else:
                    arrived.append(row)
            rows.append(row)
            if c == target:
                target_row = row
        if arrived:
            stash[arrived] = departures
        if target_row >= 0:
            self._stash_heads[target_row] = (ids[target], leaves[target])
        self._stash_ids = [ids[c] for c in kept]
        self._stash_leaves = [leaves[c] for c in kept]
        self._stash_rows = rows

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
