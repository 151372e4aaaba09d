"""Position maps: which leaf each block of a tree ORAM currently lives under.

Entries are stored as ``leaf + 1`` in unsigned 32-bit words, so that zero (what fresh memory and
never-written ORAM blocks read as) means "no leaf assigned yet", and a map is created without a
pass over it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from oramstore.oram.path import PathORAM

__all__ = [
    "UNASSIGNED",
    "ArrayPositionMap",
    "PositionMap",
    "RecursivePositionMap",
]

UNASSIGNED = -1
"""The leaf of a block that has none yet."""

Plan = list[tuple[int, int]]

ENTRY_BYTES = 4
MAX_LEAVES = (1 << 32) - 1


class PositionMap(Protocol):
    """What a tree ORAM asks of its position map."""

    def swap(
        self, index: int, leaf: int, *, create: bool = True, leaves: Plan | None = None
    ) -> int:
        """Set block ``index``'s leaf and return the previous one (:data:`UNASSIGNED` if it had
        none). With ``create`` false, a block without a leaf keeps none: a read of a block
        never written stores nothing, and the map says so in the same lookup. ``leaves`` are
        those the map's own ORAMs use (see :meth:`draw_leaves`)."""
        ...

    def draw_leaves(self) -> Plan:
        """Fresh leaves for one lookup: a (new leaf, leaf if unassigned) pair for each ORAM the
        map uses, outermost first (none for a trusted array)."""
        ...

    def close(self) -> None:
        """Release what the map holds."""
        ...

    def poison(self, reason: str) -> None:
        """Refuse every later lookup: the ORAM that owns the map failed part-way."""
        ...

    @property
    def trusted_bytes(self) -> int:
        """Bytes of trusted memory the map occupies."""
        ...


class ArrayPositionMap:
    """A plain array in trusted memory: 4 bytes per block."""

    def __init__(self, count: int) -> None:
        self._entries = np.zeros(count, np.uint32)

    @property
    def entries(self) -> npt.NDArray[np.uint32]:
        """``leaf + 1`` of every block, 0 where unassigned (trusted memory)."""
        return self._entries

    def swap(
        self, index: int, leaf: int, *, create: bool = True, leaves: Plan | None = None
    ) -> int:
        entries = self._entries
        old: int = entries.item(index) - 1
        if create or old != UNASSIGNED:
            entries[index] = leaf + 1
        return old

    def draw_leaves(self) -> Plan:
        return []

    def close(self) -> None:
        self._entries = np.zeros(0, np.uint32)

    def poison(self, reason: str) -> None:
        # The array lives in trusted memory and is only reached through its poisoned owner.
        pass

    @property
    def trusted_bytes(self) -> int:
        return int(self._entries.nbytes)


class RecursivePositionMap:
    """Positions packed ``per_block`` to a block of a smaller :class:`PathORAM`.

    Each lookup is one access of the inner ORAM (plus the accesses of its own position map), so
    it reveals nothing about which entry was read.
    """

    def __init__(self, inner: PathORAM, per_block: int) -> None:
        if inner.block_size != per_block * ENTRY_BYTES:
            raise ValueError("inner ORAM blocks must hold exactly per_block entries")
        self.inner = inner
        self.per_block = per_block

    def swap(
        self, index: int, leaf: int, *, create: bool = True, leaves: Plan | None = None
    ) -> int:
        block, offset = divmod(index, self.per_block)

        def update(data: np.ndarray) -> int:
            entries = data.view(np.uint32)
            old = int(entries[offset]) - 1
            if create or old != UNASSIGNED:
                entries[offset] = leaf + 1
            return old

        return self.inner._access(block, update, write=True, leaves=leaves)

    def draw_leaves(self) -> Plan:
        return self.inner._draw_leaves()

    def close(self) -> None:
        self.inner.close()

    def poison(self, reason: str) -> None:
        self.inner._poison(reason, None)

    @property
    def trusted_bytes(self) -> int:
        return self.inner.trusted_bytes
