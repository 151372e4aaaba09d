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
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from oramstore.enclave.tree import DEFAULT_TREETOP_BYTES, TreeStorage
from oramstore.errors import StashOverflowError, StorageReleasedError
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
    "POSITIONS_PER_BLOCK",
    "PathORAM",
]

DEFAULT_STASH_SIZE = 160
"""Stash capacity in blocks. See ``benches/bench_stash_tail.py`` for how it is chosen."""

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

    def __call__(self) -> int:
        if not self._pool:
            words = np.frombuffer(os.urandom(4 * self._BATCH), np.uint32) & self._mask
            self._pool = words.tolist()
        return self._pool.pop()


def _subkey(key: bytes | None, label: str) -> bytes | None:
    """A key of its own for each tree: two trees under one key would reuse GCM nonces."""
    if key is None:
        return None
    if len(key) != 32:
        raise ValueError(f"key must be 32 bytes, got {len(key)}")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label.encode())
    return hkdf.derive(bytes(key))


class PathORAM:
    """An oblivious store of ``block_count`` blocks of ``block_size`` bytes.

    Args:
        block_count: number of blocks, indexed ``0 .. block_count - 1``.
        block_size: bytes per block.
        bucket_size: blocks per bucket (Z). The tree has about ``block_count / bucket_size``
            leaves, so untrusted memory is about twice the user data.
        stash_size: blocks the stash may hold between accesses; exceeding it raises
            :class:`~oramstore.StashOverflowError` and undoes the access.
        key: 32-byte master key; each tree (data and position maps) gets its own key derived
            from it with HKDF. Random if omitted.
        treetop_bytes: trusted memory for each tree's top levels.
        position_map: ``"array"`` (trusted, 4 bytes per block), ``"recursive"`` (a smaller
            PathORAM), or ``"auto"`` (array up to ``position_map_threshold`` blocks).
        position_map_threshold: the ``"auto"`` cut-over, also used by recursive levels.

    Blocks never written read as zeros. Creation writes nothing. Every access checks out and
    checks in exactly one branch of the data tree, chosen uniformly at random, plus the position
    map's own accesses. Tampering with untrusted memory raises
    :class:`~oramstore.IntegrityError` from the tree below.
    """

    def __init__(
        self,
        block_count: int,
        block_size: int,
        *,
        bucket_size: int = 4,
        stash_size: int = DEFAULT_STASH_SIZE,
        key: bytes | None = None,
        treetop_bytes: int = DEFAULT_TREETOP_BYTES,
        position_map: Literal["auto", "array", "recursive"] = "auto",
        position_map_threshold: int = DEFAULT_POSITION_MAP_THRESHOLD,
        _label: str = "data",
    ) -> None:
        block_count = _positive(block_count, "block_count")
        block_size = _positive(block_size, "block_size")
        z = _positive(bucket_size, "bucket_size")
        stash_size = _non_negative(stash_size, "stash_size")
        position_map_threshold = _positive(position_map_threshold, "position_map_threshold")
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
        self.tree = TreeStorage(
            height,
            z * block_size,
            z * _SLOT_META,
            key=_subkey(key, f"oramstore/{_label}"),
            treetop_bytes=treetop_bytes,
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
        # One branch, and the working set of an access: the stash in rows [0, stash_len), then
        # the blocks read from the branch, then room for one new block.
        # The branch buffer: an access rearranges it in place, so blocks that keep their slot
        # are never copied.
        levels = height + 1
        self._branch: Bytes = np.empty((levels, z * (block_size + _SLOT_META)), np.uint8)
        # The stash in rows [0, stash_len); room past it for one full branch of blocks kept
        # back by an access and for one new block.
        rows = stash_size + levels * z + 1
        self._stash: Bytes = np.empty((rows, block_size), np.uint8)
        self._stash_ids = np.zeros(rows, np.int64)  # block index + 1
        self._stash_leaves = np.zeros(rows, np.int64)
        self._stash_len = 0
        self._stash_peak = 0
        self._accesses = 0
        self._lock = threading.RLock()
        self._closed = False

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
        return self._stash_len

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
        """Trusted memory held: treetops, stash, position maps and working buffers."""
        tree = self.tree
        treetop = ((1 << tree.treetop_levels) - 1) * (tree.bucket_size + tree.meta_size)
        own = treetop + self._stash.nbytes + self._branch.nbytes
        return own + self._positions.trusted_bytes

    def __repr__(self) -> str:
        return (
            f"PathORAM(block_count={self._block_count}, block_size={self._block_size}, "
            f"bucket_size={self._z}, height={self._height}, stash={self._stash_len}/"
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
        """The blocks at ``indices``, one access each, as a ``(k, block_size)`` array."""
        wanted = list(indices)
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

    def close(self) -> None:
        """Release the untrusted memory of the tree and the position map."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.tree.close()
            self._positions.close()
            self._stash = np.empty((0, self._block_size), np.uint8)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the access itself ----------------------------------------------------------------

    def _access(self, index: int, update: Callable[[Bytes], R], *, write: bool) -> R:
        """One oblivious access: ``update`` sees the block as a writable array (zeros if never
        written) and may change it in place when ``write`` is true."""
        with self._lock:
            if self._closed:
                raise StorageReleasedError("the ORAM is closed")
            index = self._check_index(index)
            new_leaf = self._leaves()
            old_leaf = self._positions.swap(index, new_leaf)
            leaf = old_leaf if old_leaf != UNASSIGNED else self._leaves()
            try:
                return self._serve(index, leaf, new_leaf, update, write)
            except StashOverflowError:
                self._positions.swap(index, old_leaf)
                raise

    def _serve(
        self, index: int, leaf: int, new_leaf: int, update: Callable[[Bytes], R], write: bool
    ) -> R:
        z, size, levels = self._z, self._block_size, self._height + 1
        data, meta = self.tree.checkout_branch_into(leaf, self._branch)
        slots = data.reshape(levels, z, size)
        # (level, slot, [index + 1, leaf]): splitting the contiguous last axis keeps a view.
        slot_meta = meta.view("<u8").reshape(levels, z, 2)
        path_ids = slot_meta[:, :, 0].ravel().astype(np.int64)
        real = np.flatnonzero(path_ids)  # occupied slots, as level * Z + k

        # Candidates: the stash's blocks, then the branch's, then possibly a new block.
        stash = self._stash_len
        on_path = len(real)
        ids = np.concatenate((self._stash_ids[:stash], path_ids[real]))
        leaves = np.concatenate(
            (self._stash_leaves[:stash], slot_meta[:, :, 1].ravel()[real].astype(np.int64))
        )
        spare = len(self._stash) - 1
        found = np.flatnonzero(ids == index + 1)
        if len(found):
            target = int(found[0])
            if target < stash:
                block = self._stash[target]
            else:
                slot = int(real[target - stash])
                block = slots[slot // z, slot % z]
        else:
            target = len(ids)
            block = self._stash[spare]
            block[:] = 0
            if write:
                ids = np.append(ids, index + 1)
                leaves = np.append(leaves, new_leaf)
        if target < len(ids):
            leaves[target] = new_leaf

        level_of = self._evict(leaves, leaf)  # -1: stays in the stash
        kept = np.flatnonzero(level_of < 0)
        if len(kept) > self._stash_size:
            # Undo: the branch goes back as it came and the stash keeps what it had.
            self.tree.checkin_branch(leaf, data, meta)
            raise StashOverflowError(
                f"the stash would hold {len(kept)} blocks, more than its capacity of "
                f"{self._stash_size}; the access was undone"
            )
        result = update(block)

        # Blocks placed on the level they already occupy keep their slot; the others move.
        n = len(ids)
        origin = np.full(n, -1, np.int64)
        origin[stash : stash + on_path] = real
        placed = level_of >= 0
        stays = placed & (origin >= 0) & (origin // z == level_of)
        movers = np.flatnonzero(placed & ~stays)
        occupied = np.zeros(levels * z, bool)
        occupied[origin[stays]] = True
        free = np.flatnonzero(~occupied)  # ascending, so grouped by level
        mover_levels = level_of[movers]
        by_level = np.argsort(mover_levels, kind="stable")
        movers, mover_levels = movers[by_level], mover_levels[by_level]
        first_of_level = np.searchsorted(mover_levels, mover_levels, side="left")
        rank = np.arange(len(movers)) - first_of_level
        dest = free[np.searchsorted(free // z, mover_levels, side="left") + rank]

        # Read every mover (and every branch block bound for the stash) before any slot is
        # overwritten.
        moving = self._blocks_of(movers, stash, on_path, real, slots, spare)
        kept_path = kept[(kept >= stash) & (kept < stash + on_path)]
        leaving = slots[real[kept_path - stash] // z, real[kept_path - stash] % z]

        # The new branch. Empty slots hold zeros, so only slots that lost their block and got
        # no other need clearing.
        slots[dest // z, dest % z] = moving
        occupied[dest] = True
        emptied = real[~occupied[real]]
        slots[emptied // z, emptied % z] = 0
        new_meta = np.zeros((levels * z, 2), np.uint64)
        new_meta[origin[stays], 0] = ids[stays]
        new_meta[origin[stays], 1] = leaves[stays]
        new_meta[dest, 0] = ids[movers]
        new_meta[dest, 1] = leaves[movers]
        slot_meta[:] = new_meta.reshape(levels, z, 2)
        self.tree.checkin_branch(leaf, data, meta)

        # The new stash: kept stash blocks to the front, then kept branch blocks, then the new
        # block if it found no slot.
        kept_stash = kept[kept < stash]
        k1, k2 = len(kept_stash), len(kept_path)
        count = len(kept)
        self._stash[:k1] = self._stash[kept_stash]
        self._stash[k1 : k1 + k2] = leaving
        if count > k1 + k2:
            self._stash[count - 1] = self._stash[spare]
        self._stash_ids[:count] = ids[kept]
        self._stash_leaves[:count] = leaves[kept]
        self._stash_len = count
        self._stash_peak = max(self._stash_peak, count)
        self._accesses += 1
        return result

    def _blocks_of(
        self,
        candidates: npt.NDArray[np.int64],
        stash: int,
        on_path: int,
        real: npt.NDArray[np.int64],
        slots: Bytes,
        spare: int,
    ) -> Bytes:
        """Copies of the candidates' blocks, wherever they sit now."""
        z = self._z
        out: Bytes = np.empty((len(candidates), self._block_size), np.uint8)
        in_stash = candidates < stash
        out[in_stash] = self._stash[candidates[in_stash]]
        in_path = (candidates >= stash) & (candidates < stash + on_path)
        src = real[candidates[in_path] - stash]
        out[in_path] = slots[src // z, src % z]
        new = candidates >= stash + on_path
        if new.any():
            out[new] = self._stash[spare]
        return out

    def _evict(self, leaves: npt.NDArray[np.int64], leaf: int) -> npt.NDArray[np.int64]:
        """Greedy eviction onto the branch to ``leaf``: level by level from the bottom, each
        level takes up to Z of the deepest-reaching candidates left, where a block can sit as
        deep as its own leaf shares the branch. Returns each candidate's level, or -1 for those
        that stay in the stash."""
        height, z = self._height, self._z
        # The deepest level a block may sit at is height - bit_length(its leaf XOR leaf).
        depth = height - np.frexp((leaves ^ leaf).astype(np.float64))[1]
        order = np.argsort(-depth, kind="stable")
        # reach[d]: how many candidates can sit at level d or deeper.
        reach = np.searchsorted(-depth[order], -np.arange(height + 1), side="right").tolist()
        level_of = np.full(len(leaves), -1, np.int64)
        taken = 0
        for level in range(height, -1, -1):
            take = min(z, reach[level] - taken)
            if take > 0:
                level_of[order[taken : taken + take]] = level
                taken += take
        return level_of

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
