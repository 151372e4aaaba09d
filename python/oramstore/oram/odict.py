"""An oblivious key-value map over one :class:`~oramstore.PathORAM`.

**Layout.** Two hash tables of ``m`` buckets each are the ``2m`` blocks of one PathORAM: table
one is blocks ``0 .. m - 1``, table two ``m .. 2m - 1``. A bucket holds ``slots_per_bucket``
entries (B, 16 by default), each a slot of ``8 + key_size + value_size`` bytes: the key's length
plus one (0 marks a free slot), the value's length, then the key and the value, zero-padded. A
key ``k`` may live in bucket ``h1(k)`` of table one, in bucket ``h2(k)`` of table two, or in a
small trusted overflow stash. ``h1`` and ``h2`` come from keyed BLAKE2b under a key derived from
the user's key and a random salt of the instance (:func:`~oramstore.enclave.crypto.derive_key`),
so whoever does not hold the key cannot aim keys at buckets, and two instances under one key
place keys independently.

**Every operation is the same to the host.** A lookup, an insert, an update or a delete, a hit
or a miss, on any key, reads, changes and writes back the key's two buckets with one
:meth:`PathORAM.update`: two ORAM accesses, each of which shows the host one uniformly random
branch of each tree whichever block it serves, and both buckets go back whether they changed or
not. Both tables are blocks of the same ORAM, so the host does not even learn which table an
access served.

**Placement and relocation.** An insert goes to the less loaded of its two buckets, table one on
a tie (Vöcking's d-left rule, whose bucket loads concentrate far better than one choice's), and
to the stash only if both are full. Every operation also moves into its two buckets any stash
entry that belongs there and fits. That alone does not empty the stash: a stashed entry waits
for one of its two buckets, which an operation touches with probability ``2 / m``, so the stash
would grow with the table. So after every ``relocate_every`` operations (32 by default) one
relocation step runs, shaped exactly like an operation (an update of two buckets): it takes the
oldest stash entry and puts it into the less loaded of its buckets, or, when both are full,
into one of them in place of an entry chosen pseudo-randomly, which joins the stash (a cuckoo
step, after ODSL and MobileCoin's mc-oblivious-map). When the stash is empty the step reads and
rewrites two fixed buckets instead. The schedule depends only on how many operations there
were, which the host sees anyway, so every operation in the same position of the sequence looks
the same, whatever it is. An operation therefore costs ``2 + 2 / relocate_every`` ORAM accesses
on average, as many as cuckoo hashing's usual form: one access to each bucket.

**Load and overflow.** ``capacity`` entries fit in ``2m * B`` slots at ``load_factor`` (0.85 by
default), and the stash holds ``stash_size`` entries (40 by default) in trusted memory.
``benches/bench_dict_overflow.py`` measured how full the stash gets at capacity under insert and
delete churn (README, "Oblivious dict"). An insert of a new key into a map that holds
``capacity`` entries, or whose stash is full, raises :class:`~oramstore.MapFullError` after the
same accesses as any other operation, and changes nothing.

**Durability.** With ``path=DIR`` the PathORAM lives in ``DIR/oram`` (its durability is
"commit") and the map's trusted state (parameters, salt, length, operation count, stash) is
sealed beside it in ``DIR/state``, under a key derived from the user's key, written to a
temporary file, synced and renamed (:mod:`oramstore.enclave.sealed`). The state holds one entry
per ORAM epoch it is valid for, and names its ORAM by the ORAM's own salt. A commit first writes
the state for the ORAM's next epoch beside the entry for its current one, then commits the ORAM:
a crash before the ORAM's commit finds the ORAM at the current epoch, a crash after it at the
next, and each has its entry. Opening reads (and verifies) the ORAM's committed epoch before it
writes anything, takes that entry (any other case is an :class:`~oramstore.IntegrityError`: a
file of another map, or of another time), writes it again for the epoch that the ORAM's own
opening commits, and only then opens the ORAM. With ``durability="access"``, every call first
appends a sealed journal record of its operations, of one size per operation and written for
lookups too, so that the journal does not tell reads from writes; opening runs them again, as
fresh operations, and commits.

**Iteration** (``keys()``, ``items()``, ``values()``, ``__iter__``, ``==``, ``popitem()``) reads
every bucket, in order, and works on a snapshot; ``clear()`` writes every bucket. These shapes
depend only on the number of buckets. ``len()`` is trusted state and costs nothing.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import math
import os
import struct
import threading
import weakref
from collections.abc import ItemsView, Iterable, Iterator, Mapping, MutableMapping, ValuesView
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, overload

import numpy as np
import numpy.typing as npt

from oramstore._closing import Closing
from oramstore.enclave.crypto import (
    SALT_BYTES,
    KeyLike,
    NoCopy,
    check_key,
    derive_key,
    fork_hooks,
    new_key,
)
from oramstore.enclave.sealed import Journal, read_state, write_state
from oramstore.errors import IntegrityError, MapFullError, PoisonedError, StorageReleasedError
from oramstore.oram.path import PathORAM

__all__ = [
    "DEFAULT_LOAD_FACTOR",
    "DEFAULT_RELOCATE_EVERY",
    "DEFAULT_SLOTS_PER_BUCKET",
    "DEFAULT_STASH_ENTRIES",
    "ObliviousDict",
]

DEFAULT_SLOTS_PER_BUCKET = 16
"""Entries per bucket (B)."""

DEFAULT_LOAD_FACTOR = 0.85
"""Entries at capacity over slots in both tables."""

DEFAULT_STASH_ENTRIES = 40
"""Entries the trusted overflow stash may hold: more than twice the 17 entries at which the
stash's measured tail reaches 2^-64 per operation at the default load factor and relocation
schedule (``benches/bench_dict_overflow.py``), as PathORAM's stash is sized."""

DEFAULT_RELOCATE_EVERY = 32
"""Operations per relocation step."""

_T = TypeVar("_T")
Bytes = npt.NDArray[np.uint8]
DictDurability = Literal["commit", "access"]

_HEAD = 8  # per slot: key length + 1 (0 = free), value length, both little-endian u32
_SLOT_HEAD = struct.Struct("<II")
_GET, _SET, _DEL = 0, 1, 2
_MISSING: Final = object()
_FULL: Final = object()
_ORAM_DIR = "oram"
_LOCK_FILE = "lock"
_FORMAT = 1
_MAGIC = np.frombuffer(b"oramstore/odict", np.uint8)
_SCAN_CHUNK = 1024  # buckets per read_many while scanning
# With durability="access" the journal holds every call; a commit empties it.
_AUTO_COMMIT_RECORDS = 4096
_RECORD = struct.Struct("<BI")  # record kind, operation count
_OP = struct.Struct("<BII")  # operation, key length, value length
_OPS, _OPS_STOP_WHEN_FULL, _CLEAR = 0, 1, 2
_PARAMS = (
    "capacity", "key_size", "value_size", "table_buckets", "slots", "stash_size", "relocate_every",
)  # fmt: skip
_ENTRY = ("epoch", "journal_epoch", "length", "operations", "stash_peak")

Operation = tuple[int, bytes, bytes]
_Entry = dict[str, Any]  # a sealed snapshot of the trusted state, valid for one ORAM epoch


class ObliviousDict(NoCopy, Closing, MutableMapping[bytes, bytes]):
    """A map of up to ``capacity`` byte keys to byte values whose accesses look the same to
    the host whatever they are.

    Args:
        capacity: the most entries it holds.
        key_size: the longest key, in bytes.
        value_size: the longest value, in bytes. Shorter keys and values keep their length.
        key: 32-byte master key (any bytes-like object): the ORAM's keys and the hash key are
            derived from it and per-instance salts. Random if omitted; needed with ``path``.
        path: make a durable map in this directory (new, or empty): its PathORAM in
            ``path/oram``, its own trusted state sealed in ``path/state`` at every
            :meth:`commit`. :meth:`open` reopens it.
        durability: with ``path``: ``"commit"`` makes durable what :meth:`commit` (or
            :meth:`close`) covered; ``"access"`` makes every call that returned durable (one
            sealed journal record per call, reads included, all of one size per operation).
        slots_per_bucket: entries per bucket (B).
        load_factor: ``capacity`` over the slots of both tables; sets the number of buckets.
        stash_size: entries the trusted overflow stash may hold.
        relocate_every: operations per relocation step.
        oram_options: passed to :class:`~oramstore.PathORAM` (``bucket_size``,
            ``treetop_bytes``, ``position_map``, ``position_map_threshold``).

    Keys and values are bytes-like objects of single bytes (``bytes``, ``bytearray``,
    ``memoryview``, uint8 arrays); anything else is a ``TypeError``, anything too long a
    ``ValueError``. A missing key raises ``KeyError``, as a dict does; an insert with no room
    raises :class:`~oramstore.MapFullError` and changes nothing. Keys come back as ``bytes``.

    Every operation (``d[k]``, ``d[k] = v``, ``del d[k]``, ``k in d``, ``get``, ``pop``,
    ``setdefault``'s lookup) makes the same ORAM accesses: an update of its two buckets (two
    accesses), plus, after every ``relocate_every`` operations, a relocation step of the same
    shape. ``get_many`` and ``set_many`` run k operations after one journal record of all their
    accesses, for a durable map. Iteration, ``==``, ``popitem`` and ``clear`` scan every
    bucket.

    It fails closed like its ORAM: once an operation fails part-way (tampering, a storage call
    that raised, an interrupt), that exception is raised and every later call raises
    :class:`~oramstore.PoisonedError`. It cannot be copied or pickled.
    """

    _committed: _Entry  # the trusted state sealed for the ORAM's current durable epoch

    def __init__(
        self,
        capacity: int,
        key_size: int,
        value_size: int,
        *,
        key: KeyLike | None = None,
        path: str | os.PathLike[str] | None = None,
        durability: DictDurability = "commit",
        slots_per_bucket: int = DEFAULT_SLOTS_PER_BUCKET,
        load_factor: float = DEFAULT_LOAD_FACTOR,
        stash_size: int = DEFAULT_STASH_ENTRIES,
        relocate_every: int = DEFAULT_RELOCATE_EVERY,
        **oram_options: Any,
    ) -> None:
        capacity = _positive(capacity, "capacity")
        key_size = _positive(key_size, "key_size")
        value_size = _non_negative(value_size, "value_size")
        if key_size >= 1 << 31 or value_size >= 1 << 31:
            raise ValueError("key_size and value_size must be below 2^31")
        slots = _positive(slots_per_bucket, "slots_per_bucket")
        stash_size = _non_negative(stash_size, "stash_size")
        relocate_every = _positive(relocate_every, "relocate_every")
        if isinstance(load_factor, bool) or not isinstance(load_factor, int | float):
            raise TypeError(f"load_factor must be a number, got {type(load_factor).__name__}")
        if not 0 < load_factor <= 1:
            raise ValueError(f"load_factor must lie in (0, 1], got {load_factor}")
        for name in ("block_count", "block_size", "key", "path", "durability"):
            if name in oram_options:
                raise TypeError(f"{name} is not an ORAM option of an ObliviousDict")
        if path is not None:
            if durability not in ("commit", "access"):
                raise ValueError(f"durability must be 'commit' or 'access', got {durability!r}")
            if key is None:
                raise ValueError("a durable map needs its key: pass key=")
        master = new_key() if key is None else check_key(key)
        tables = max(1, math.ceil(capacity / (load_factor * 2 * slots)))
        params = {
            "capacity": capacity, "key_size": key_size, "value_size": value_size,
            "table_buckets": tables, "slots": slots, "stash_size": stash_size,
            "relocate_every": relocate_every,
        }  # fmt: skip
        salt = os.urandom(SALT_BYTES)
        block = slots * (_HEAD + key_size + value_size)
        if path is None:
            self._setup(
                params, PathORAM(2 * tables, block, key=master, **oram_options), master, salt,
                None, None,
            )  # fmt: skip
            return
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        if any(directory.iterdir()):
            raise FileExistsError(
                errno.EEXIST, "not an empty directory; open a map with ObliviousDict.open", path
            )
        lock = _lock(directory)
        oram: PathORAM | None = None
        try:
            oram = PathORAM(
                2 * tables, block, key=master, path=directory / _ORAM_DIR,
                durability="commit", **oram_options,
            )  # fmt: skip
            # The map's state names its ORAM by the ORAM's salt, so that no other map's ORAM
            # (under the same key) passes for it.
            oram_salt, _, _ = read_state(directory / _ORAM_DIR, master)
            store = _Store(directory, lock, durability, master, salt, oram_salt)
        except BaseException:
            if oram is not None:
                oram.close()
            os.close(lock)
            raise
        self._setup(params, oram, master, salt, store, None)
        try:
            assert oram.epoch is not None
            entry = self._snapshot(oram.epoch, oram.epoch)
            self._write_side([entry])
            self._committed = entry
            store.journal.start(oram.epoch)
        except BaseException as error:
            self._poison(f"creating the map failed: {type(error).__name__}: {error}", error)
            self.close()
            raise

    def _setup(
        self,
        params: Mapping[str, int],
        oram: PathORAM,
        master: bytes,
        salt: bytes,
        store: _Store | None,
        entry: _Entry | None,
    ) -> None:
        self._params = dict(params)
        self._capacity = params["capacity"]
        self._key_size = params["key_size"]
        self._value_size = params["value_size"]
        self._m = params["table_buckets"]
        self._slots = params["slots"]
        self._stash_size = params["stash_size"]
        self._every = params["relocate_every"]
        self._slot_bytes = _HEAD + self._key_size + self._value_size
        self._layout = _Layout(self._slots, self._key_size, self._value_size)
        self._oram = oram
        self._master = master
        self._salt = salt
        self._store = store
        # The bucket hash: keyed BLAKE2b, copied from a prepared state per key; and the cuckoo
        # steps' choices, under a key of their own.
        self._hasher = hashlib.blake2b(
            key=derive_key(master, salt, b"oramstore/odict/hash"), digest_size=16
        )
        self._chooser = hashlib.blake2b(
            key=derive_key(master, salt, b"oramstore/odict/evict"), digest_size=8
        )
        self._length = 0
        self._operations = 0  # operations so far: the relocation schedule counts them
        # The stash: key -> (value, bucket in table one, bucket in table two), oldest first.
        self._stash: dict[bytes, tuple[bytes, int, int]] = {}
        self._stash_peak = 0
        self._committed = {}
        self._replayed = 0
        self._lock = threading.RLock()
        self._closed = False
        self._in_flight = False  # between an operation's first access and its last
        self._poisoned: str | None = None
        self._poison_cause: BaseException | None = None
        # fork_hooks keeps a weak set, and a mapping is not hashable: a small object stands in.
        self._fork_hook = _ForkHook(self)
        fork_hooks.add(self._fork_hook)
        if entry is not None:
            self._restore(entry)

    # --- description -----------------------------------------------------------------------

    def __len__(self) -> int:
        """Entries held, from trusted state: no access."""
        with self._lock:
            self._check_usable()
            return self._length

    @property
    def capacity(self) -> int:
        """The most entries the map holds."""
        return self._capacity

    @property
    def key_size(self) -> int:
        """The longest key, in bytes."""
        return self._key_size

    @property
    def value_size(self) -> int:
        """The longest value, in bytes."""
        return self._value_size

    @property
    def slots_per_bucket(self) -> int:
        """Entries per bucket (B)."""
        return self._slots

    @property
    def bucket_count(self) -> int:
        """Buckets of both tables: the ORAM's blocks."""
        return 2 * self._m

    @property
    def load_factor(self) -> float:
        """``capacity`` over the slots of both tables."""
        return self._capacity / (2 * self._m * self._slots)

    @property
    def stash_size(self) -> int:
        """Entries the trusted overflow stash may hold."""
        return self._stash_size

    @property
    def stash_len(self) -> int:
        """Entries in the stash now."""
        return len(self._stash)

    @property
    def stash_peak(self) -> int:
        """The most entries the stash has held after any operation."""
        return self._stash_peak

    @property
    def relocate_every(self) -> int:
        """Operations per relocation step."""
        return self._every

    @property
    def operation_count(self) -> int:
        """Operations so far (the relocation schedule counts them)."""
        return self._operations

    @property
    def oram(self) -> PathORAM:
        """The PathORAM whose blocks are the buckets."""
        return self._oram

    @property
    def trusted_bytes(self) -> int:
        """Trusted memory held: the ORAM's, and the stash at its capacity."""
        return self._oram.trusted_bytes + self._stash_size * (self._key_size + self._value_size)

    @property
    def poisoned(self) -> str | None:
        """Why the map refuses every call (see :class:`~oramstore.PoisonedError`), or None."""
        return self._poisoned

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._closed

    def __repr__(self) -> str:
        return (
            f"ObliviousDict(capacity={self._capacity}, key_size={self._key_size}, "
            f"value_size={self._value_size}, buckets={2 * self._m}x{self._slots}, "
            f"len={self._length}, stash={len(self._stash)}/{self._stash_size}"
            f"{', closed' if self._closed else ''})"
        )

    # --- the mapping ----------------------------------------------------------------------

    def __getitem__(self, key: bytes) -> bytes:
        (value,) = self._execute([(_GET, self._key(key), b"")])
        if value is _MISSING:
            raise KeyError(key)
        assert isinstance(value, bytes)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        operation = (_SET, self._key(key), self._value(value))
        (result,) = self._execute([operation])
        if result is _FULL:
            raise self._full_error()

    def __delitem__(self, key: bytes) -> None:
        (value,) = self._execute([(_DEL, self._key(key), b"")])
        if value is _MISSING:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        (value,) = self._execute([(_GET, self._key(key), b"")])
        return value is not _MISSING

    @overload
    def get(self, key: bytes, /) -> bytes | None: ...
    @overload
    def get(self, key: bytes, default: bytes, /) -> bytes: ...
    @overload
    def get(self, key: bytes, default: _T, /) -> bytes | _T: ...
    def get(self, key: bytes, default: object = None, /) -> object:
        """The value of ``key``, or ``default`` if it is missing: one operation."""
        (value,) = self._execute([(_GET, self._key(key), b"")])
        return default if value is _MISSING else value

    @overload
    def pop(self, key: bytes, /) -> bytes: ...
    @overload
    def pop(self, key: bytes, default: bytes, /) -> bytes: ...
    @overload
    def pop(self, key: bytes, default: _T, /) -> bytes | _T: ...
    def pop(self, key: bytes, default: object = _MISSING, /) -> object:
        """Remove ``key`` and return its value (``default``, or ``KeyError``, if it is
        missing): one operation."""
        (value,) = self._execute([(_DEL, self._key(key), b"")])
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return value

    @overload
    def get_many(self, keys: Iterable[bytes], /) -> list[bytes | None]: ...
    @overload
    def get_many(self, keys: Iterable[bytes], default: _T, /) -> list[bytes | _T]: ...
    def get_many(self, keys: Iterable[bytes], default: object = None, /) -> list[Any]:
        """The values of ``keys`` (``default`` for a missing key): k operations, journaled
        together. Every key is checked first."""
        operations = [(_GET, self._key(key), b"") for key in keys]
        return [default if v is _MISSING else v for v in self._execute(operations)]

    def set_many(self, items: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]) -> None:
        """Store every (key, value) of ``items`` in order: k operations, journaled together.
        Every argument is checked first.

        Raises:
            MapFullError: an item did not fit; the items before it are stored, it and those
                after it are not (as a loop of ``d[k] = v`` would leave the map).
        """
        pairs = items.items() if isinstance(items, Mapping) else items
        operations = [(_SET, self._key(k), self._value(v)) for k, v in pairs]
        if any(r is _FULL for r in self._execute(operations, stop_when_full=True)):
            raise self._full_error()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._scan(values=False)[0])

    def items(self) -> ItemsView[bytes, bytes]:
        """The (key, value) pairs; iterating scans every bucket, once."""
        return _Items(self)

    def values(self) -> ValuesView[bytes]:
        """The values; iterating scans every bucket, once."""
        return _Values(self)

    def popitem(self) -> tuple[bytes, bytes]:
        """Remove and return some (key, value) pair: a scan of every bucket, then one
        operation. ``KeyError`` when empty."""
        keys, _ = self._scan(values=False)
        if not keys:
            raise KeyError("popitem(): the ObliviousDict is empty")
        return keys[0], self.pop(keys[0])

    def clear(self) -> None:
        """Remove every entry: writes every bucket, empty."""
        self._clear_call(journal=True)

    def _clear_call(self, *, journal: bool) -> None:
        with self._lock:
            self._check_usable()
            record = _RECORD.pack(_CLEAR, 0) if journal else None
            self._guarded(self._clear, (), record)

    def _full_error(self) -> MapFullError:
        if self._length >= self._capacity:
            return MapFullError(f"the ObliviousDict holds its capacity of {self._capacity} entries")
        return MapFullError(
            f"the ObliviousDict's overflow stash is full ({self._stash_size} entries) at "
            f"{self._length} of {self._capacity} entries"
        )

    # --- arguments ------------------------------------------------------------------------

    def _key(self, key: object) -> bytes:
        data = _as_bytes(key, "key")
        if len(data) > self._key_size:
            raise ValueError(f"a key must be at most {self._key_size} bytes, got {len(data)}")
        return data

    def _value(self, value: object) -> bytes:
        data = _as_bytes(value, "value")
        if len(data) > self._value_size:
            raise ValueError(f"a value must be at most {self._value_size} bytes, got {len(data)}")
        return data

    # --- operations -----------------------------------------------------------------------

    def _buckets_of(self, key: bytes) -> tuple[int, int]:
        hasher = self._hasher.copy()
        hasher.update(key)
        digest = hasher.digest()
        m = self._m
        # 64-bit values modulo m: the bias is below m / 2^64.
        return (
            int.from_bytes(digest[:8], "little") % m,
            m + int.from_bytes(digest[8:], "little") % m,
        )

    def _execute(
        self, operations: list[Operation], *, stop_when_full: bool = False, journal: bool = True
    ) -> list[Any]:
        """Run ``operations`` (kind, key, value), checked already: an update of their two
        buckets each, then of the relocation steps' two each. Returns each result: the value
        found (or ``_MISSING``) for a lookup or a delete, None or ``_FULL`` for a store."""
        with self._lock:
            self._check_usable()
            if not operations:
                return []
            store = self._store
            record = None
            if journal and store is not None and store.durability == "access":
                record = self._encode(operations, stop_when_full)
            results: list[Any] = self._guarded(self._run, (operations, stop_when_full), record)
            if (
                journal
                and store is not None
                and store.durability == "access"
                and store.journal.count >= _AUTO_COMMIT_RECORDS
            ):
                self._commit_locked()
            return results

    def _guarded(self, fn: Any, args: tuple[Any, ...], record: bytes | None) -> Any:
        """Run ``fn(*args)`` as one step that the host sees, after journaling ``record`` if
        every call must be durable: any failure part-way poisons the map (and its ORAM, so
        that nothing half done is ever committed)."""
        self._in_flight = True
        try:
            store = self._store
            if record is not None and store is not None and store.durability == "access":
                store.journal.append(record)
            result = fn(*args)
        except BaseException as error:
            self._poison(f"{type(error).__name__}: {error}", error)
            raise
        self._in_flight = False
        return result

    def _run(self, operations: list[Operation], stop_when_full: bool) -> list[Any]:
        pairs = [self._buckets_of(key) for _, key, _ in operations]
        every = self._every
        first_step = self._operations // every  # relocation steps so far
        due = (self._operations + len(operations)) // every - first_step
        # The relocation steps take the oldest stash entries, as they are now; an entry that
        # the operations remove or place meanwhile leaves its step with nothing to do.
        stashed = list(self._stash)[:due] if due else []
        steps = [self._stash[k][1:] for k in stashed]
        movers: list[bytes | None] = [*stashed, *[None] * (due - len(stashed))]
        steps += [(0, self._m)] * (due - len(steps))
        results: list[Any] = []
        stopped = False
        done = 0  # groups served so far: the operations', then the steps'
        layout = self._layout

        def serve(blocks: list[Bytes]) -> None:
            nonlocal done, stopped
            one, two = _Bucket(layout, blocks[0]), _Bucket(layout, blocks[1])
            if done < len(operations):
                kind, key, value = operations[done]
                b1, b2 = pairs[done]
                if stopped:
                    results.append(None)
                else:
                    result = self._operate(kind, key, value, b1, b2, one, two)
                    results.append(result)
                    stopped = stop_when_full and result is _FULL
                self._operations += 1
            else:
                k = done - len(operations)
                c1, c2 = steps[k]
                self._relocate(first_step + k, movers[k], c1, c2, one, two)
            if len(self._stash) > self._stash_peak:
                self._stash_peak = len(self._stash)
            done += 1

        self._oram._run_updates([[b1, b2] for b1, b2 in pairs + steps], serve)
        return results

    def _operate(
        self, kind: int, key: bytes, value: bytes, b1: int, b2: int, one: _Bucket, two: _Bucket
    ) -> Any:
        """One operation on its two buckets (both written back); returns the value found (or
        ``_MISSING``) for a lookup or a delete, None or ``_FULL`` for a store."""
        home, slot = one, one.find(key)
        if slot < 0:
            home, slot = two, two.find(key)
        result: Any = None
        stash = self._stash
        if kind == _GET:
            if slot >= 0:
                result = home.value(slot)
            elif key in stash:
                result = stash[key][0]
            else:
                result = _MISSING
        elif kind == _SET:
            if slot >= 0:
                home.put(slot, key, value)
            elif key in stash:
                stash[key] = (value, b1, b2)
            elif self._length >= self._capacity:
                result = _FULL
            else:
                free1, free2 = one.heads.count(0), two.heads.count(0)
                if free1 >= free2 and free1:
                    one.put(one.heads.index(0), key, value)
                    self._length += 1
                elif free2:
                    two.put(two.heads.index(0), key, value)
                    self._length += 1
                elif len(stash) < self._stash_size:
                    stash[key] = (value, b1, b2)
                    self._length += 1
                else:
                    result = _FULL
        else:
            if slot >= 0:
                result = home.value(slot)
                home.clear(slot)
                self._length -= 1
            elif key in stash:
                result = stash.pop(key)[0]
                self._length -= 1
            else:
                result = _MISSING
        if stash:
            # Both buckets go back: each takes the stash entries that belong there and fit.
            self._drain(b1, one)
            self._drain(b2, two)
        return result

    def _relocate(
        self, step: int, mover: bytes | None, c1: int, c2: int, one: _Bucket, two: _Bucket
    ) -> None:
        """Relocation step number ``step``, for ``mover``, an entry of the stash when the step
        was planned, on its two buckets (both written back)."""
        if mover is None or mover not in self._stash:
            return
        free1, free2 = one.heads.count(0), two.heads.count(0)
        value = self._stash[mover][0]
        if free1 or free2:
            bucket, home = (c1, one) if free1 >= free2 else (c2, two)
            del self._stash[mover]
            home.put(home.heads.index(0), mover, value)
            self._drain(bucket, home)
            return
        # Both are full: a cuckoo step. The mover takes the place of an entry chosen by a
        # keyed hash of the step's number (unpredictable to the host, and the same again when
        # a journal is replayed), and that entry joins the stash.
        hasher = self._chooser.copy()
        hasher.update(step.to_bytes(8, "little"))
        choice = int.from_bytes(hasher.digest(), "little")
        home = one if choice & 1 else two
        slot = (choice >> 1) % self._slots
        victim, victim_value = home.key(slot), home.value(slot)
        del self._stash[mover]
        home.put(slot, mover, value)
        self._stash[victim] = (victim_value, *self._buckets_of(victim))

    def _drain(self, bucket: int, home: _Bucket) -> None:
        """Move stash entries that belong in ``bucket`` into its free slots."""
        for key, (value, c1, c2) in list(self._stash.items()):
            if bucket in (c1, c2):
                if 0 not in home.heads:
                    return
                del self._stash[key]
                home.put(home.heads.index(0), key, value)

    def _key_at(self, row: Bytes) -> bytes:
        length = int(row[:4].view("<u4")[0]) - 1
        return row[_HEAD : _HEAD + length].tobytes()

    def _value_at(self, row: Bytes) -> bytes:
        length = int(row[4:8].view("<u4")[0])
        at = _HEAD + self._key_size
        return row[at : at + length].tobytes()

    def _scan(self, *, values: bool) -> tuple[list[bytes], list[bytes]]:
        """Every key (and value), from a read of every bucket in order, then the stash."""
        with self._lock:
            self._check_usable()
            found: tuple[list[bytes], list[bytes]] = self._guarded(
                self._read_everything, (values,), None
            )
            return found

    def _read_everything(self, values: bool) -> tuple[list[bytes], list[bytes]]:
        keys: list[bytes] = []
        found: list[bytes] = []
        count = 2 * self._m
        for start in range(0, count, _SCAN_CHUNK):
            blocks = self._oram.read_many(range(start, min(count, start + _SCAN_CHUNK)))
            rows = blocks.reshape(-1, self._slot_bytes)
            for row in rows[np.flatnonzero(rows[:, :4].view("<u4")[:, 0])]:
                keys.append(self._key_at(row))
                if values:
                    found.append(self._value_at(row))
        for key, (value, _, _) in self._stash.items():
            keys.append(key)
            if values:
                found.append(value)
        return keys, found

    def _clear(self) -> None:
        count = 2 * self._m
        for start in range(0, count, _SCAN_CHUNK):
            stop = min(count, start + _SCAN_CHUNK)
            empty = np.zeros((stop - start, self._slots * self._slot_bytes), np.uint8)
            self._oram.write_many(range(start, stop), empty)
        self._stash.clear()
        self._length = 0

    # --- failing closed -------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageReleasedError("the ObliviousDict is closed")
        if self._in_flight and self._poisoned is None:
            self._poison("an operation was interrupted", None)
        if self._poisoned is not None:
            raise PoisonedError(
                "the ObliviousDict refuses every call since an operation failed part-way "
                f"({self._poisoned}); recover its contents from a trusted copy"
            ) from self._poison_cause

    def _poison(self, reason: str, cause: BaseException | None) -> None:
        """Refuse every later call here and in the ORAM. The ORAM must not commit either: its
        blocks may hold half an operation that the trusted state does not."""
        if self._poisoned is None:
            self._poisoned = reason
            self._poison_cause = cause
        if self._oram.poisoned is None:
            self._oram._poison(f"its ObliviousDict failed: {reason}", cause)

    def _after_fork(self) -> None:
        # A thread of the parent may have held the lock; its operation was cut in two.
        self._lock = threading.RLock()
        if self._in_flight:
            self._poison("the process forked during an operation", None)
        elif self._store is not None:
            self._poison("a durable map cannot be used in a fork()ed child; reopen it", None)

    # --- durability -----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key: KeyLike,
        min_epoch: int | None = None,
        durability: DictDurability = "commit",
    ) -> ObliviousDict:
        """Reopen the durable map in ``path`` with the parameters it was created with.

        It lands on its last commit (with ``durability="access"``: its last call), and its
        ORAM replays its own journal so that no block is found where the host already saw it.

        Args:
            key: the map's key.
            min_epoch: refuse a map whose last commit is older than this epoch (keep the
                epochs :meth:`commit` returns in a trusted monotonic counter).
            durability: as for the constructor; it may differ from the last opening's.

        Raises:
            FileNotFoundError: no map in ``path``.
            ValueError: ``key`` is not the map's key, or a bad argument.
            IntegrityError: a file was altered, truncated or swapped (the map's state and its
                ORAM's must be of the same commit), or the epoch is older than ``min_epoch``.
            BlockingIOError: the map is open elsewhere.
        """
        master = check_key(key)
        if durability not in ("commit", "access"):
            raise ValueError(f"durability must be 'commit' or 'access', got {durability!r}")
        if min_epoch is not None:
            min_epoch = _non_negative(min_epoch, "min_epoch")
        directory = Path(path)
        if not (directory / "state").is_file():
            raise FileNotFoundError(
                errno.ENOENT, "no oramstore ObliviousDict in this directory", str(path)
            )
        lock = _lock(directory)
        oram: PathORAM | None = None
        try:
            salt, _, payload = read_state(directory, master)
            params, oram_salt, entries = _unpack(payload)
            # The ORAM's last commit, read (and verified) before anything is written.
            found_salt, loaded, _ = read_state(directory / _ORAM_DIR, master)
            if found_salt != oram_salt:
                raise IntegrityError(f"the ORAM in {path} is not the map's own")
            if min_epoch is not None and loaded < min_epoch:
                raise IntegrityError(
                    f"the map in {path} is at epoch {loaded}, older than min_epoch "
                    f"{min_epoch}: it was rolled back"
                )
            entry = next((e for e in entries if e["epoch"] == loaded), None)
            if entry is None:
                raise IntegrityError(
                    f"the map's state in {path} is of epochs "
                    f"{[e['epoch'] for e in entries]}, its ORAM of epoch {loaded}"
                )
            # The ORAM commits once more as it opens, with the same contents: the state must
            # name that epoch too before it does, whenever a crash comes.
            _write_side(
                directory, master, salt, params, oram_salt, [entry, {**entry, "epoch": loaded + 1}]
            )
            oram = PathORAM.open(directory / _ORAM_DIR, key=master, durability="commit")
            block = params["slots"] * (_HEAD + params["key_size"] + params["value_size"])
            if oram.epoch != loaded + 1:
                raise IntegrityError(f"the map's ORAM opened at epoch {oram.epoch}")
            if (len(oram), oram.block_size) != (2 * params["table_buckets"], block):
                raise IntegrityError("the map's ORAM does not have the map's geometry")
            store = _Store(directory, lock, durability, master, salt, oram_salt)
        except BaseException:
            if oram is not None:
                # Closing would commit again, to an epoch that the map's state does not name.
                oram._poison("opening its ObliviousDict failed", None)
                oram.close()
            os.close(lock)
            raise
        self = cls.__new__(cls)
        current = {**entry, "epoch": loaded + 1}
        self._setup(params, oram, master, salt, store, current)
        try:
            self._committed = current
            records = list(store.journal.records(entry["journal_epoch"]))
            for record in records:
                self._replay(record)
            self._replayed = len(records)
            if records or durability == "access":
                self._commit_locked()
        except BaseException as error:
            # The trusted state may hold replayed operations that the ORAM's blocks do not:
            # nothing may be committed.
            self._poison(f"reopening failed: {type(error).__name__}: {error}", error)
            self.close()
            raise
        return self

    @property
    def epoch(self) -> int | None:
        """The durable map's epoch (its ORAM's): the number of its last commit. None in
        memory."""
        return None if self._store is None else self._oram.epoch

    @property
    def path(self) -> Path | None:
        """The durable map's directory (None in memory)."""
        return None if self._store is None else self._store.directory

    @property
    def durability(self) -> DictDurability | None:
        """``"commit"`` or ``"access"`` for a durable map (None in memory)."""
        return None if self._store is None else self._store.durability

    @property
    def replayed(self) -> int:
        """Journaled calls after the last commit that :meth:`open` ran again."""
        return self._replayed

    def commit(self) -> int:
        """Make every operation so far durable and return the new epoch.

        Seals the map's trusted state (length, stash, counters) for the next epoch beside the
        one for the current epoch, replaces ``state`` atomically, then commits the ORAM: a
        crash anywhere leaves a state for whichever epoch the ORAM holds. A failure poisons
        the map; reopen it to go on.

        Raises:
            ValueError: the map is in memory (no ``path``).
        """
        with self._lock:
            self._check_usable()
            if self._store is None:
                raise ValueError("only a durable map (created with path=) can commit")
            return self._commit_locked()

    def _commit_locked(self) -> int:
        store = self._store_of()
        self._in_flight = True
        try:
            assert self._oram.epoch is not None
            epoch = self._oram.epoch + 1
            entry = self._snapshot(epoch, epoch)
            self._write_side([self._committed, entry])
            if self._oram.commit() != epoch:
                raise IntegrityError("the ORAM committed an unexpected epoch")
            self._committed = entry
            store.journal.start(epoch)
        except BaseException as error:
            self._poison(f"commit failed: {type(error).__name__}: {error}", error)
            raise
        self._in_flight = False
        return epoch

    def close(self) -> None:
        """Release the ORAM (also when poisoned). A durable map commits first, unless it is
        poisoned."""
        with self._lock:
            if self._closed:
                return
            store = self._store
            try:
                if store is not None and self._poisoned is None and not self._in_flight:
                    # The ORAM commits as it closes: the state for that epoch goes first.
                    assert self._oram.epoch is not None
                    epoch = self._oram.epoch + 1
                    self._write_side([self._committed, self._snapshot(epoch, epoch)])
                elif store is not None:
                    self._poison(self._poisoned or "an operation was interrupted", None)
            except BaseException as error:
                self._poison(f"close failed: {type(error).__name__}: {error}", error)
                raise
            finally:
                self._closed = True
                try:
                    self._oram.close()
                finally:
                    if store is not None:
                        store.close()
                    self._stash.clear()

    def _store_of(self) -> _Store:
        assert self._store is not None
        return self._store

    def _snapshot(self, epoch: int, journal_epoch: int) -> _Entry:
        count = len(self._stash)
        keys = np.zeros((count, self._key_size), np.uint8)
        values = np.zeros((count, self._value_size), np.uint8)
        lengths = np.zeros((count, 2), np.int64)
        for k, (key, (value, _, _)) in enumerate(self._stash.items()):
            keys[k, : len(key)] = np.frombuffer(key, np.uint8)
            values[k, : len(value)] = np.frombuffer(value, np.uint8)
            lengths[k] = (len(key), len(value))
        return {
            "epoch": epoch, "journal_epoch": journal_epoch, "length": self._length,
            "operations": self._operations, "stash_peak": self._stash_peak,
            "keys": keys, "values": values, "lengths": lengths,
        }  # fmt: skip

    def _restore(self, entry: _Entry) -> None:
        lengths = entry["lengths"].tolist()
        if len(lengths) > self._stash_size or not 0 <= entry["length"] <= self._capacity:
            raise IntegrityError("the map's state holds more than its capacity")
        self._length = entry["length"]
        self._operations = entry["operations"]
        self._stash_peak = entry["stash_peak"]
        self._stash = {}
        for k, (key_length, value_length) in enumerate(lengths):
            if not (0 <= key_length <= self._key_size and 0 <= value_length <= self._value_size):
                raise IntegrityError("the map's state holds a malformed stash entry")
            key = entry["keys"][k, :key_length].tobytes()
            value = entry["values"][k, :value_length].tobytes()
            self._stash[key] = (value, *self._buckets_of(key))

    def _write_side(self, entries: list[_Entry]) -> None:
        store = self._store_of()
        _write_side(
            store.directory, self._master, self._salt, self._params, store.oram_salt, entries
        )

    def _encode(self, operations: list[Operation], stop_when_full: bool) -> bytes:
        """The journal record of a call: fixed-size operations, so that its length tells the
        host how many there were and nothing else."""
        parts = [_RECORD.pack(_OPS_STOP_WHEN_FULL if stop_when_full else _OPS, len(operations))]
        for kind, key, value in operations:
            parts.append(_OP.pack(kind, len(key), len(value)))
            parts.append(key.ljust(self._key_size, b"\0"))
            parts.append(value.ljust(self._value_size, b"\0"))
        return b"".join(parts)

    def _replay(self, record: bytes) -> None:
        """Run a journaled call again (its result was returned, or lost, already)."""
        try:
            kind, count = _RECORD.unpack_from(record)
            size = _OP.size + self._key_size + self._value_size
            if kind not in (_OPS, _OPS_STOP_WHEN_FULL, _CLEAR) or (
                len(record) != _RECORD.size + count * size
            ):
                raise ValueError("bad length")
            operations = []
            for at in range(_RECORD.size, len(record), size):
                op, key_length, value_length = _OP.unpack_from(record, at)
                if op not in (_GET, _SET, _DEL) or key_length > self._key_size:
                    raise ValueError("bad operation")
                if value_length > self._value_size:
                    raise ValueError("bad value length")
                at += _OP.size
                key = record[at : at + key_length]
                at += self._key_size
                operations.append((op, key, record[at : at + value_length]))
        except (ValueError, struct.error) as error:
            raise IntegrityError(f"a journal record of the map does not parse: {error}") from None
        if kind == _CLEAR:
            self._clear_call(journal=False)
        else:
            self._execute(operations, stop_when_full=kind == _OPS_STOP_WHEN_FULL, journal=False)


class _Items(ItemsView[bytes, bytes]):
    """The pairs of an :class:`ObliviousDict`, iterated from one scan of every bucket."""

    _mapping: ObliviousDict

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        keys, values = self._mapping._scan(values=True)
        return zip(keys, values, strict=True)


class _Values(ValuesView[bytes]):
    """The values of an :class:`ObliviousDict`, iterated from one scan of every bucket."""

    _mapping: ObliviousDict

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._mapping._scan(values=True)[1])


class _ForkHook:
    """Runs its map's ``_after_fork`` in a ``fork()``ed child."""

    __slots__ = ("__weakref__", "_owner")

    def __init__(self, owner: ObliviousDict) -> None:
        self._owner = weakref.ref(owner)

    def _after_fork(self) -> None:
        owner = self._owner()
        if owner is not None:
            owner._after_fork()


class _Store:
    """The directory of a durable map, and what of it lives outside its ORAM."""

    def __init__(
        self,
        directory: Path,
        lock: int,
        durability: str,
        master: bytes,
        salt: bytes,
        oram_salt: bytes,
    ) -> None:
        self.directory = directory
        self.oram_salt = oram_salt
        self.durability: DictDurability = "access" if durability == "access" else "commit"
        self.journal = Journal(directory, master, salt)
        self._lock = lock

    def close(self) -> None:
        self.journal.close()
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


class _Layout:
    """How a bucket's slots lie in its block."""

    __slots__ = ("heads", "key_size", "slot_bytes", "slots", "value_at", "zeros")

    def __init__(self, slots: int, key_size: int, value_size: int) -> None:
        self.slots = slots
        self.key_size = key_size
        self.slot_bytes = _HEAD + key_size + value_size
        # Each slot's first word (key length + 1, 0 when free), in one call.
        self.heads = struct.Struct("<" + f"I{self.slot_bytes - 4}x" * slots)
        self.value_at = _HEAD + key_size
        self.zeros = bytes(self.slot_bytes)


class _Bucket:
    """One bucket of the map during an operation: its block, written in place, and the head
    of each slot (read when first needed, then kept in step with what is written)."""

    __slots__ = ("_array", "_block", "_heads", "_layout")

    def __init__(self, layout: _Layout, block: Bytes) -> None:
        self._layout = layout
        self._array = block
        self._block = memoryview(block)  # type: ignore[arg-type]
        self._heads: list[int] | None = None

    @property
    def heads(self) -> list[int]:
        if self._heads is None:
            self._heads = list(self._layout.heads.unpack_from(self._block))
        return self._heads

    def _head(self, slot: int) -> int:
        at = slot * self._layout.slot_bytes
        return int.from_bytes(self._block[at : at + 4], "little")

    def find(self, key: bytes) -> int:
        """The slot that holds ``key``, or -1."""
        size = len(key)
        if not size:
            return self.heads.index(1) if 1 in self.heads else -1
        # Each slot's first len(key) key bytes, side by side, in one copy.
        layout = self._layout
        keys = self._array.reshape(layout.slots, layout.slot_bytes)[:, _HEAD : _HEAD + size]
        packed = keys.tobytes()
        at = packed.find(key)
        while at >= 0:
            slot, offset = divmod(at, size)
            if offset == 0 and self._head(slot) == size + 1:
                return slot
            at = packed.find(key, at + 1)
        return -1

    def key(self, slot: int) -> bytes:
        at = slot * self._layout.slot_bytes + _HEAD
        return self._block[at : at + self._head(slot) - 1].tobytes()

    def value(self, slot: int) -> bytes:
        block = self._block
        at = slot * self._layout.slot_bytes
        length = int.from_bytes(block[at + 4 : at + 8], "little")
        at += self._layout.value_at
        return block[at : at + length].tobytes()

    def put(self, slot: int, key: bytes, value: bytes) -> None:
        layout = self._layout
        at = slot * layout.slot_bytes
        entry = _SLOT_HEAD.pack(len(key) + 1, len(value)) + key.ljust(layout.key_size, b"\0")
        self._block[at : at + layout.slot_bytes] = (
            entry + value + layout.zeros[len(entry) + len(value) :]
        )
        self.heads[slot] = len(key) + 1

    def clear(self, slot: int) -> None:
        at = slot * self._layout.slot_bytes
        self._block[at : at + self._layout.slot_bytes] = self._layout.zeros
        self.heads[slot] = 0


def _as_bytes(data: object, name: str) -> bytes:
    if isinstance(data, bytes):
        return data
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"a {name} must be a bytes-like object, got {type(data).__name__}"
        ) from None
    with view:
        if view.itemsize != 1 or view.format not in ("B", "b", "c"):
            raise TypeError(
                f"a {name} must be a buffer of bytes, got one of format {view.format!r}"
            )
        if not view.c_contiguous:
            raise ValueError(f"a {name} must be a contiguous buffer")
        return view.tobytes()


def _positive(value: Any, name: str) -> int:
    number = _non_negative(value, name)
    if number == 0:
        raise ValueError(f"{name} must be positive, got 0")
    return number


def _non_negative(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        number = int(value.__index__())
    except AttributeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if number < 0:
        raise ValueError(f"{name} must not be negative, got {number}")
    return number


def _lock(directory: Path) -> int:
    """Hold the map's lock file: one object at a time may use a map."""
    fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BlockingIOError(
            errno.EWOULDBLOCK, "the map is open elsewhere (its lock is held)", str(directory)
        ) from None
    return fd


def _write_side(
    directory: Path,
    master: bytes,
    salt: bytes,
    params: Mapping[str, int],
    oram_salt: bytes,
    entries: list[_Entry],
) -> None:
    """Seal the map's parameters and trusted state, one entry per ORAM epoch it is valid for,
    into ``directory/state`` (atomically: a temporary file, synced, renamed)."""
    arrays: dict[str, Any] = {
        "format": np.array([_FORMAT], np.int64),
        "magic": _MAGIC,
        "params": np.array([params[name] for name in _PARAMS], np.int64),
        "oram_salt": np.frombuffer(oram_salt, np.uint8),
    }
    for k, entry in enumerate(entries):
        prefix = f"entry{k}."
        arrays[prefix + "meta"] = np.array([entry[name] for name in _ENTRY], np.int64)
        for name in ("keys", "values", "lengths"):
            arrays[prefix + name] = entry[name]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    epoch = max(entry["epoch"] for entry in entries)
    write_state(directory, master, salt, epoch, buffer.getvalue())


def _unpack(payload: bytes) -> tuple[dict[str, int], bytes, list[_Entry]]:
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            state = {name: archive[name] for name in archive.files}
    except Exception as error:
        raise IntegrityError(f"the map's state does not parse: {error}") from None
    if state.get("format", np.zeros(1)).tolist() != [_FORMAT] or not np.array_equal(
        state.get("magic", np.zeros(0)), _MAGIC
    ):
        raise IntegrityError("the state is not an ObliviousDict's, or of an unknown format")
    values = _array(state, "params", np.int64, (len(_PARAMS),)).tolist()
    params = dict(zip(_PARAMS, (int(v) for v in values), strict=True))
    if min(params.values()) < 0 or 0 in (
        params["capacity"], params["key_size"], params["table_buckets"], params["slots"],
        params["relocate_every"],
    ):  # fmt: skip
        raise IntegrityError("the map's state has bad parameters")
    oram_salt = _array(state, "oram_salt", np.uint8, (SALT_BYTES,)).tobytes()
    entries = []
    for k in range(2):
        prefix = f"entry{k}."
        if prefix + "meta" not in state:
            break
        meta = _array(state, prefix + "meta", np.int64, (len(_ENTRY),)).tolist()
        lengths = _array(state, prefix + "lengths", np.int64, (-1, 2))
        count = len(lengths)
        entry: _Entry = dict(zip(_ENTRY, (int(v) for v in meta), strict=True))
        entry["lengths"] = lengths
        entry["keys"] = _array(state, prefix + "keys", np.uint8, (count, params["key_size"]))
        entry["values"] = _array(state, prefix + "values", np.uint8, (count, params["value_size"]))
        entries.append(entry)
    if not entries:
        raise IntegrityError("the map's state holds no entry")
    return params, oram_salt, entries


def _array(state: Mapping[str, Any], name: str, dtype: Any, shape: tuple[int, ...]) -> Any:
    """``state[name]``, checked to have ``dtype`` and ``shape`` (-1: any length)."""
    value = state.get(name)
    if (
        not isinstance(value, np.ndarray)
        or value.dtype != dtype
        or len(value.shape) != len(shape)
        or any(want not in (-1, got) for want, got in zip(shape, value.shape, strict=True))
    ):
        raise IntegrityError(f"the map's state has {name} missing or malformed")
    return value
