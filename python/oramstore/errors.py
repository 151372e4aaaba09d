"""The exceptions oramstore raises, rooted at :class:`OramStoreError`.

Bad arguments raise the built-in exception that fits (``IndexError`` for indices, ``ValueError``
and ``TypeError`` for sizes and buffers, ``MemoryError`` when the kernel refuses memory); the
classes here name the conditions that are oramstore's own.
"""

from __future__ import annotations

__all__ = [
    "IntegrityError",
    "MapFullError",
    "OramStoreError",
    "PoisonedError",
    "RangeInUseError",
    "StashOverflowError",
    "StorageReleasedError",
]


class OramStoreError(Exception):
    """Base class of every exception that is specific to oramstore."""


class StorageReleasedError(OramStoreError, ValueError):
    """A storage (or a structure built on it) was used after it was released or closed."""


class RangeInUseError(OramStoreError, ValueError):
    """An inserted memory range cannot be removed because blocks in it are still allocated.

    Attributes:
        live_blocks: how many blocks of the range were live when the removal was refused.
    """

    def __init__(self, message: str, *, live_blocks: int) -> None:
        super().__init__(message)
        self.live_blocks = live_blocks


class IntegrityError(OramStoreError):
    """Untrusted memory was modified, swapped, or rolled back behind the trusted side's back.

    Attributes:
        index: the tree index of the bucket that failed its check, when there is one.
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class StashOverflowError(OramStoreError):
    """An ORAM stash exceeded its fixed capacity."""


class MapFullError(OramStoreError):
    """An insert into an :class:`~oramstore.ObliviousDict` found no room: the map holds its
    capacity, or its overflow stash is full.

    The insert made the same accesses as any other operation and changed nothing; the map stays
    usable (deletes make room).
    """


class PoisonedError(OramStoreError):
    """An ORAM (or a tree it owns) refuses every call because an earlier access failed part-way.

    Once anything goes wrong between choosing a block's new leaf and writing its branch back
    (tampering detected, a stash overflow, a storage call that raised, an interrupt), the trusted
    state no longer matches the untrusted memory, and going on could show the host the same
    block's branch twice. The message says what failed first; the exception that did is the
    ``__cause__`` of the first ``PoisonedError`` raised. The data must be recovered from a trusted
    copy (for a durable store: reopen its last commit).
    """
