"""Oblivious RAM: Path ORAM with a bounded stash and array or recursive position maps."""

from __future__ import annotations

from oramstore.oram.odict import ObliviousDict
from oramstore.oram.path import (
    DEFAULT_STASH_SIZE,
    MAX_UPDATE_BLOCKS,
    MIN_BUCKET_SIZE,
    PathORAM,
    min_stash_size,
)
from oramstore.oram.position import ArrayPositionMap, PositionMap, RecursivePositionMap

__all__ = [
    "DEFAULT_STASH_SIZE",
    "MAX_UPDATE_BLOCKS",
    "MIN_BUCKET_SIZE",
    "ArrayPositionMap",
    "ObliviousDict",
    "PathORAM",
    "PositionMap",
    "RecursivePositionMap",
    "min_stash_size",
]
