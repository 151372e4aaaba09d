"""ObliviousDict: the mapping against a dict, full tables, bad arguments, what the host sees,
and failing closed."""

from __future__ import annotations

import copy
import itertools
import pickle
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from oram_layout import Recorder, record, trees
from oramstore import (
    IntegrityError,
    MapFullError,
    ObliviousDict,
    PoisonedError,
    StorageReleasedError,
)
from test_oram_oblivious import ALPHA, leaves_of, uniformity

Log = list[tuple[str, str, tuple[int, ...]]]


def small(**options: Any) -> ObliviousDict:
    """200 entries of keys up to 8 bytes and values up to 16, all in untrusted memory."""
    settings: dict[str, Any] = {"treetop_bytes": 0}
    settings.update(options)
    return ObliviousDict(200, 8, 16, **settings)


def contents(d: ObliviousDict) -> dict[bytes, bytes]:
    """Every entry, from a scan, checking that no key is stored twice."""
    keys, values = d._scan(values=True)
    assert len(set(keys)) == len(keys), "a key is stored twice"
    return dict(zip(keys, values, strict=True))


# --- the mapping ------------------------------------------------------------------------------


def test_a_dict_of_bytes() -> None:
    with small() as d:
        d[b"a"] = b"1"
        d[bytearray(b"bb")] = memoryview(b"22")  # type: ignore[index,assignment]
        d[np.frombuffer(b"ccc", np.uint8)] = b""  # type: ignore[index]
        d[b""] = b"empty key"
        assert d[b"a"] == b"1" and d[b"bb"] == b"22" and d[b"ccc"] == b"" and d[b""] == b"empty key"
        assert len(d) == 4 and b"a" in d and b"zz" not in d
        assert d.get(b"zz") is None and d.get(b"zz", b"x") == b"x" and d.get(b"a", b"x") == b"1"
        # Values keep their length, short ones and those with trailing zeros too.
        d[b"a"] = b"\0"
        d[b"z"] = b"x\0\0"
        assert d[b"a"] == b"\0" and d[b"z"] == b"x\0\0"
        assert sorted(d) == [b"", b"a", b"bb", b"ccc", b"z"]
        assert all(type(k) is bytes for k in d)
        assert dict(d.items()) == {
            b"a": b"\0", b"bb": b"22", b"ccc": b"", b"": b"empty key", b"z": b"x\0\0"
        }  # fmt: skip
        assert sorted(d.values()) == sorted([b"\0", b"22", b"", b"empty key", b"x\0\0"])
        assert d == dict(d.items()) and d != {b"a": b"\0"}
        assert d.pop(b"a") == b"\0" and d.pop(b"a", b"gone") == b"gone"
        with pytest.raises(KeyError):
            d.pop(b"a")
        del d[b"bb"]
        with pytest.raises(KeyError):
            del d[b"bb"]
        with pytest.raises(KeyError):
            d[b"bb"]
        assert d.setdefault(b"s", b"new") == b"new" and d.setdefault(b"s", b"old") == b"new"
        d.update({b"u1": b"1"})
        assert d[b"u1"] == b"1"
        key, _ = d.popitem()
        assert key not in d and len(d) == 4
        d.clear()
        assert len(d) == 0 and list(d) == [] and d.get(b"s") is None
        with pytest.raises(KeyError):
            d.popitem()


def test_batches() -> None:
    with small() as d:
        d.set_many({b"a": b"1", b"b": b"2"})
        d.set_many([(b"c", b"3"), (b"a", b"4"), (b"c", b"5")])  # in order: the last one wins
        assert d.get_many([b"a", b"b", b"c", b"d"]) == [b"4", b"2", b"5", None]
        assert d.get_many([b"d"], b"-") == [b"-"] and d.get_many([]) == []
        d.set_many([])
        assert len(d) == 3


def test_full_is_an_error_that_changes_nothing() -> None:
    with ObliviousDict(10, 4, 4, treetop_bytes=0) as d:
        for k in range(10):
            d[b"%d" % k] = b"v"
        log = record(d.oram)
        with pytest.raises(MapFullError, match="capacity of 10"):
            d[b"new"] = b"v"
        full_insert = len(log)
        assert b"new" not in d and len(d) == 10
        # Updates need no room; a delete makes some.
        d[b"3"] = b"w"
        assert d[b"3"] == b"w"
        del d[b"3"]
        d[b"new"] = b"v"
        assert d[b"new"] == b"v" and len(d) == 10
        # The refused insert looked like every other operation.
        shapes = [(t, op, len(i)) for t, op, i in log]
        assert shapes[:full_insert] == shapes[full_insert : 2 * full_insert]
        # A batch stores the items before the first that does not fit, and none after it.
        with pytest.raises(MapFullError):
            d.set_many([(b"0", b"x"), (b"more", b"x"), (b"1", b"x")])
        assert d[b"0"] == b"x" and d[b"1"] == b"v" and b"more" not in d
        assert contents(d) == {b"%d" % k: b"v" for k in range(10) if k != 3} | {
            b"new": b"v", b"0": b"x"
        }  # fmt: skip


def test_a_full_stash_refuses_inserts_before_capacity() -> None:
    # One slot per bucket and no stash: the first collision has nowhere to go.
    with ObliviousDict(64, 4, 0, slots_per_bucket=1, load_factor=1.0, stash_size=0) as d:
        stored = []
        refused: MapFullError | None = None
        for k in range(64):
            try:
                d[b"%d" % k] = b""
            except MapFullError as error:
                refused = error
                break
            stored.append(b"%d" % k)
        assert "stash is full" in str(refused)
        assert len(d) == len(stored) < 64
        assert sorted(contents(d)) == sorted(stored)


def test_the_stash_and_relocation_keep_every_entry() -> None:
    # Tiny buckets at a high load: entries go to the stash, relocation steps move them back,
    # and cuckoo steps move entries out of full buckets.
    rng = np.random.default_rng(3)
    with ObliviousDict(
        120, 4, 4, slots_per_bucket=2, load_factor=0.95, stash_size=64, relocate_every=2
    ) as d:
        model: dict[bytes, bytes] = {}
        peak = 0
        for step in range(3000):
            key = b"%d" % rng.integers(150)
            if rng.random() < 0.35:
                assert d.pop(key, None) == model.pop(key, None)
            elif len(model) < 120 or key in model:
                value = rng.bytes(int(rng.integers(5)))
                d[key] = value
                model[key] = value
            peak = max(peak, d.stash_len)
            if step % 500 == 0:
                assert contents(d) == model
        assert peak > 0, "the stash was never used"
        assert contents(d) == model and len(d) == len(model)


class DictModel(RuleBasedStateMachine):
    """An ObliviousDict against a dict, small enough to fill: 12 entries in 8 buckets of 2
    slots, a stash of 3, a relocation step after every 2 operations."""

    def __init__(self) -> None:
        super().__init__()
        self.d = ObliviousDict(
            12, 6, 5, slots_per_bucket=2, load_factor=0.9, stash_size=3, relocate_every=2,
            treetop_bytes=0,
        )  # fmt: skip
        self.model: dict[bytes, bytes] = {}

    def teardown(self) -> None:
        self.d.close()

    keys = st.sampled_from([b"", b"a", b"ab", b"ba", b"abc"] + [b"k%03d" % k for k in range(20)])
    values = st.binary(max_size=5)

    def _store(self, key: bytes, value: bytes, call: Callable[[], None]) -> None:
        try:
            call()
        except MapFullError as error:
            refused = error
        else:
            self.model[key] = value
            return
        # Refused only at capacity, or with the stash full; either way nothing changed.
        assert key not in self.model
        assert len(self.model) == 12 or "stash is full" in str(refused)

    @rule(key=keys, value=values)
    def set(self, key: bytes, value: bytes) -> None:
        def call() -> None:
            self.d[key] = value

        self._store(key, value, call)

    @rule(items=st.lists(st.tuples(keys, values), max_size=5))
    def set_many(self, items: list[tuple[bytes, bytes]]) -> None:
        before = dict(self.model)
        try:
            self.d.set_many(items)
        except MapFullError:
            # The items before the one that did not fit are stored, and nothing after it.
            self.model = before
            for key, value in items:
                if key not in self.model and key not in self.d:
                    break
                self.model[key] = value
            assert contents(self.d) == self.model
            return
        for key, value in items:
            self.model[key] = value

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        assert self.d.get(key) == self.model.get(key)
        assert (key in self.d) == (key in self.model)
        if key not in self.model:
            with pytest.raises(KeyError):
                self.d[key]

    @rule(keys=st.lists(keys, max_size=6))
    def get_many(self, keys: list[bytes]) -> None:
        assert self.d.get_many(keys) == [self.model.get(k) for k in keys]

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        if key in self.model:
            del self.d[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.d[key]

    @rule(key=keys)
    def pop(self, key: bytes) -> None:
        assert self.d.pop(key, None) == self.model.pop(key, None)

    @rule()
    def scan(self) -> None:
        assert contents(self.d) == self.model

    @rule()
    def clear(self) -> None:
        if len(self.model) > 9:  # now and then
            self.d.clear()
            self.model.clear()

    @invariant()
    def same_length(self) -> None:
        assert len(self.d) == len(self.model)
        assert self.d.stash_len <= self.d.stash_size


TestDictModel = DictModel.TestCase


# --- arguments --------------------------------------------------------------------------------


def test_bad_keys_and_values_are_refused_before_anything_happens() -> None:
    with small() as d:
        d[b"k"] = b"v"
        log = record(d.oram)
        for bad in ("str", 5, None, [1, 2], np.arange(2, dtype=np.int64), 1.5):
            with pytest.raises(TypeError):
                d[bad] = b"v"  # type: ignore[index]
            with pytest.raises(TypeError):
                d[bad]  # type: ignore[index]
            with pytest.raises(TypeError):
                d[b"k"] = bad  # type: ignore[assignment]
            with pytest.raises(TypeError):
                d.get_many([b"k", bad])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="at most 8 bytes"):
            d[b"123456789"] = b"v"
        with pytest.raises(ValueError, match="at most 8 bytes"):
            b"123456789" in d  # noqa: B015
        with pytest.raises(ValueError, match="at most 16 bytes"):
            d[b"k"] = bytes(17)
        with pytest.raises(ValueError, match="at most 16 bytes"):
            d.set_many([(b"a", b"v"), (b"b", bytes(17))])
        with pytest.raises(ValueError, match="contiguous"):
            d[np.zeros(8, np.uint8)[::2]] = b"v"  # type: ignore[index]
        assert log == [] and d[b"k"] == b"v" and b"a" not in d and d.poisoned is None


@pytest.mark.parametrize(
    ("args", "options", "error"),
    [
        ((0, 8, 8), {}, ValueError),
        ((-1, 8, 8), {}, ValueError),
        (("10", 8, 8), {}, TypeError),
        ((10, 0, 8), {}, ValueError),
        ((10, 8, -1), {}, ValueError),
        ((10, 1 << 31, 8), {}, ValueError),
        ((10, 8, 8), {"load_factor": 0}, ValueError),
        ((10, 8, 8), {"load_factor": 1.5}, ValueError),
        ((10, 8, 8), {"load_factor": "high"}, TypeError),
        ((10, 8, 8), {"slots_per_bucket": 0}, ValueError),
        ((10, 8, 8), {"stash_size": -1}, ValueError),
        ((10, 8, 8), {"relocate_every": 0}, ValueError),
        ((10, 8, 8), {"relocate_every": True}, TypeError),
        ((10, 8, 8), {"key": bytes(31)}, ValueError),
        ((10, 8, 8), {"key": [0] * 32}, TypeError),
        ((10, 8, 8), {"block_size": 64}, TypeError),
        ((10, 8, 8), {"bucket_size": 2}, ValueError),
        ((10, 8, 8), {"nonsense": 1}, TypeError),
    ],
)
def test_bad_arguments(args: tuple[Any, ...], options: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        ObliviousDict(*args, **options)


def test_geometry() -> None:
    with ObliviousDict(1000, 32, 256, treetop_bytes=0) as d:
        assert d.slots_per_bucket == 16 and d.stash_size == 40 and d.relocate_every == 32
        assert d.bucket_count == 2 * 37 and 0.84 < d.load_factor <= 0.85
        assert d.oram.block_size == 16 * (8 + 32 + 256) and len(d.oram) == d.bucket_count
        assert (d.capacity, d.key_size, d.value_size) == (1000, 32, 256)
        assert d.epoch is None and d.path is None and d.durability is None
        assert d.trusted_bytes >= 32 * 288
        assert "capacity=1000" in repr(d)


def test_copies_and_pickles_are_refused() -> None:
    with small() as d:
        for duplicate in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="reuse the original's nonces"):
                duplicate(d)


def test_use_after_close() -> None:
    d = small()
    d[b"a"] = b"b"
    d.close()
    d.close()
    assert d.closed and "closed" in repr(d)
    for call in (lambda: d[b"a"], lambda: len(d), lambda: list(d), lambda: d.get_many([b"a"])):
        with pytest.raises(StorageReleasedError):
            call()


# --- what the host sees -----------------------------------------------------------------------

OPS = 64


def one_key(d: ObliviousDict) -> None:
    for k in range(OPS):
        if k % 2:
            d.get(b"k0")
        else:
            d[b"k0"] = b"%d" % k


def distinct_inserts(d: ObliviousDict) -> None:
    for k in range(OPS):
        d[b"n%d" % k] = b"v"


def misses(d: ObliviousDict) -> None:
    for k in range(OPS):
        assert d.get(b"absent%d" % k) is None


def deletes(d: ObliviousDict) -> None:
    for k in range(OPS):
        del d[b"k%d" % k]


def deletes_of_missing_keys(d: ObliviousDict) -> None:
    for k in range(OPS):
        assert d.pop(b"no%d" % k, None) is None


def updates(d: ObliviousDict) -> None:
    for k in range(OPS):
        d[b"k%d" % (k % 7)] = b"u" * 16


def inserts_into_a_full_map(d: ObliviousDict) -> None:
    for k in range(OPS):
        with pytest.raises(MapFullError):
            d[b"f%d" % k] = b"v"


def random_operations(d: ObliviousDict) -> None:
    rng = np.random.default_rng(5)
    for _ in range(OPS):
        key = b"k%d" % rng.integers(100)
        choice = rng.integers(3)
        if choice == 0:
            d.get(key)
        elif choice == 1:
            d[key] = rng.bytes(int(rng.integers(17)))
        else:
            d.pop(key, None)


SEQUENCES: dict[str, Callable[[ObliviousDict], None]] = {
    "one key": one_key,
    "distinct inserts": distinct_inserts,
    "misses": misses,
    "deletes": deletes,
    "deletes of missing keys": deletes_of_missing_keys,
    "updates": updates,
    "inserts into a full map": inserts_into_a_full_map,
    "random": random_operations,
}


def observe(name: str, position_map: str) -> Log:
    options: dict[str, Any] = {"position_map": position_map, "position_map_threshold": 2}
    with ObliviousDict(2 * OPS, 8, 16, treetop_bytes=0, **options) as d:
        # A multiple of 32 operations before, so that the relocation schedule is in step.
        prefill = 2 * OPS if name == "inserts into a full map" else OPS
        d.set_many([(b"k%d" % k, b"v" * (k % 17)) for k in range(prefill)])
        log = record(d.oram)
        SEQUENCES[name](d)
        return log


@pytest.mark.parametrize("position_map", ["array", "recursive"])
def test_every_operation_looks_the_same(position_map: str) -> None:
    shapes = {}
    for name in SEQUENCES:
        log = observe(name, position_map)
        # The same trees, the same operations, the same number of indices per call.
        shapes[name] = tuple((tree, op, len(idx)) for tree, op, idx in log)
    assert len(set(shapes.values())) == 1, {k: len(v) for k, v in shapes.items()}
    # Two accesses per operation, two per relocation step (one per 32 operations), each a
    # branch out and back in every tree.
    per_tree = Counter(tree for tree, _, _ in shapes["random"])
    accesses = 2 * OPS + 2 * (OPS // 32)
    assert all(count == 2 * accesses for count in per_tree.values()), per_tree


@pytest.mark.parametrize("name", ["one key", "distinct inserts", "deletes"])
def test_the_branches_are_uniform(name: str) -> None:
    # 256 buckets, so that the data tree has 64 leaves; 1,500 operations of one kind.
    with ObliviousDict(2048, 8, 8, load_factor=0.5, treetop_bytes=0) as d:
        d.set_many([(b"k%d" % k, b"v") for k in range(1500 if name == "deletes" else 16)])
        log = record(d.oram)
        for k in range(1500):
            if name == "distinct inserts":
                d[b"n%d" % k] = b"v"
            elif name == "deletes":
                del d[b"k%d" % k]
            elif k % 2:
                d[b"k0"] = b"w"
            else:
                d.get(b"k0")
        leaves = leaves_of(d.oram, log)
        cells = d.oram.tree.leaf_count
        assert len(leaves) >= 3000 and cells == 64
        assert uniformity(leaves, cells) > ALPHA
        pairs = [a * cells + b for a, b in itertools.pairwise(leaves)]
        assert uniformity(pairs, cells * cells) > ALPHA


def test_bucket_choice_is_keyed_per_instance() -> None:
    key = bytes(range(32))
    one, two = ObliviousDict(1000, 8, 0, key=key), ObliviousDict(1000, 8, 0, key=key)
    with one, two:
        pairs = [(one._buckets_of(b"%d" % k), two._buckets_of(b"%d" % k)) for k in range(200)]
        assert sum(a == b for a, b in pairs) < 5
        # Uniform over the buckets of each table.
        first = [one._buckets_of(b"x%d" % k)[0] for k in range(3000)]
        assert uniformity(first, one.bucket_count // 2) > ALPHA


# --- failing closed ---------------------------------------------------------------------------


def tamper(d: ObliviousDict) -> tuple[Any, Any]:
    untrusted = d.oram.tree.untrusted
    assert untrusted is not None
    untrusted = getattr(untrusted, "inner", untrusted)
    everything = range(untrusted.count)
    data, meta = untrusted.checkout(everything)
    untrusted.checkin(everything, data ^ 1, meta)
    return data, meta


def test_tampering_is_an_integrity_error_then_every_call_is_refused() -> None:
    with small(position_map="recursive", position_map_threshold=2) as d:
        for k in range(100):
            d[b"%d" % k] = b"v"
        log = record(d.oram)
        honest = tamper(d)
        with pytest.raises(IntegrityError):
            d[b"7"]
        seen = len(log)
        untrusted = d.oram.tree.untrusted
        assert untrusted is not None
        getattr(untrusted, "inner", untrusted).checkin(range(len(honest[0])), *honest)
        calls: list[Callable[[], object]] = [
            lambda: d[b"7"], lambda: d.get(b"8"), lambda: d.__setitem__(b"7", b"x"),
            lambda: d.pop(b"7"), lambda: b"1" in d, lambda: len(d), lambda: list(d),
            lambda: d.get_many([b"1"]), lambda: d.set_many({b"1": b"2"}), d.clear,
        ]  # fmt: skip
        for call in calls:
            with pytest.raises(PoisonedError, match="IntegrityError"):
                call()
        assert len(log) == seen, "a poisoned map touched untrusted memory"
        for _, oram in trees(d.oram):
            assert oram.poisoned is not None


class FailingHost(Recorder):
    """A host whose storage call fails once, after ``after`` calls."""

    def __init__(self, inner: Any, error: BaseException, after: int) -> None:
        super().__init__(inner, "data", [])
        self.error, self.after = error, after

    def _tick(self) -> None:
        self.after -= 1
        if self.after == 0:
            raise self.error

    def checkout_into(self, indices: Any, data: Any, meta: Any) -> None:
        self._tick()
        super().checkout_into(indices, data, meta)

    def checkin(self, indices: Any, data: Any, meta: Any) -> None:
        self._tick()
        super().checkin(indices, data, meta)


@pytest.mark.parametrize("after", [1, 2, 3, 4])  # the checkouts and checkins of both accesses
@pytest.mark.parametrize(
    "error", [OSError(5, "I/O"), KeyboardInterrupt()], ids=["OSError", "Ctrl-C"]
)
def test_a_storage_call_that_raises_poisons_the_map(after: int, error: BaseException) -> None:
    with small() as d:
        d[b"a"] = b"1"
        d.oram.tree.untrusted = FailingHost(d.oram.tree.untrusted, error, after)  # type: ignore[assignment]
        with pytest.raises(type(error)):
            d[b"b"] = b"2"
        with pytest.raises(PoisonedError):
            d[b"a"]
        assert d.poisoned is not None


def test_an_interrupt_between_the_reads_and_the_write_back_poisons_map_and_oram(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with small() as d:
        d[b"a"] = b"1"

        def interrupted(*args: Any) -> None:
            raise KeyboardInterrupt

        # The operation runs once both buckets are read, before their branch is written.
        monkeypatch.setattr(d, "_operate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            d[b"b"] = b"2"
        with pytest.raises(PoisonedError, match="KeyboardInterrupt"):
            d[b"a"]
        # Its trusted state may count an entry that its buckets never got: the ORAM refuses
        # too, so that nothing of it is ever committed.
        assert d.oram.poisoned is not None


def test_the_benchmark_runs() -> None:
    from oramstore.bench import run_dict

    phases: Counter[str] = Counter()
    run = run_dict(64, 8, 4, operations=200, progress=lambda phase, n: phases.update({phase: n}))
    assert (run.filled, run.operations, run.bucket_count) == (64, 200, 2 * 3)
    assert run.accesses_per_operation == 2 + 2 / 32 and run.oram_accesses == 412
    assert phases == {"fill": 64, "operations": 200, "oram": 412}
    assert run.operations_per_second > 0 and run.ratio_to_oram_access() > 1
    assert run.plain_operations_per_second > run.operations_per_second
