"""A durable ObliviousDict: reopen, crashes at every step of a commit and of an opening,
crashes at random moments, files at rest."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import odict_worker
from oramstore import IntegrityError, ObliviousDict, PathORAM, PoisonedError
from oramstore.enclave import crypto
from oramstore.enclave import sealed as sealed_module
from oramstore.oram import odict as odict_module
from test_oram_hardening import Pairs, RecordingAESGCM, repeated

KEY = bytes(range(32))
OTHER_KEY = bytes(32)
HERE = Path(__file__).parent


def make(path: Path, **options: Any) -> ObliviousDict:
    settings: dict[str, Any] = {"key": KEY, "path": path, "treetop_bytes": 0}
    settings.update(options)
    return ObliviousDict(100, 8, 16, **settings)


def fill(d: ObliviousDict, seed: int, count: int) -> dict[bytes, bytes]:
    """``count`` random stores and deletes; returns what they changed (None: deleted)."""
    rng = random.Random(seed)
    changes: dict[bytes, Any] = {}
    for _ in range(count):
        key = b"k%d" % rng.randrange(80)
        if rng.random() < 0.25:
            d.pop(key, None)
            changes[key] = None
        else:
            changes[key] = d[key] = rng.randbytes(rng.randrange(17))
    return changes


def apply(model: dict[bytes, bytes], changes: dict[bytes, Any]) -> dict[bytes, bytes]:
    out = dict(model)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def crash(d: ObliviousDict) -> None:
    """What a killed process leaves: nothing more is written, and the locks are gone."""
    oram_store = d.oram._store
    assert oram_store is not None and d._store is not None
    d.oram._closed = True
    oram_store.close()
    d._closed = True
    d._store.close()


def reopened(path: Path, **options: Any) -> dict[bytes, bytes]:
    with ObliviousDict.open(path, key=KEY, **options) as d:
        return dict(d.items())


# --- create, commit, reopen -------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["commit", "access"])
def test_round_trip_in_a_new_process(tmp_path: Path, durability: str) -> None:
    store = tmp_path / "map"
    script = textwrap.dedent(
        f"""
        import random
        from oramstore import ObliviousDict
        d = ObliviousDict(300, 32, 256, key=bytes(range(32)), path={str(store)!r},
                          durability={durability!r}, treetop_bytes=1 << 16)
        rng = random.Random(3)
        for k in range(400):
            key = b"%d" % rng.randrange(250)
            d[key] = rng.randbytes(rng.randrange(257))
        d.commit()
        del d[next(iter(d))]
        d.close()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    rng = random.Random(3)
    model: dict[bytes, bytes] = {}
    for _ in range(400):
        key = b"%d" % rng.randrange(250)
        model[key] = rng.randbytes(rng.randrange(257))
    with ObliviousDict.open(store, key=KEY) as d:
        assert (d.capacity, d.key_size, d.value_size) == (300, 32, 256)
        found = dict(d.items())
        assert len(found) == len(model) - 1 == len(d)
        assert all(model[k] == v for k, v in found.items())


def test_epochs_count_commits_and_close_commits(tmp_path: Path) -> None:
    d = make(tmp_path / "m")
    assert d.epoch == 0 and d.durability == "commit" and d.path == tmp_path / "m"
    assert sorted(os.listdir(tmp_path / "m")) == ["journal", "lock", "oram", "state"]
    d[b"a"] = b"1"
    assert d.commit() == 1 and d.epoch == 1
    d[b"b"] = b"2"
    d.close()  # epoch 2
    with ObliviousDict.open(tmp_path / "m", key=KEY) as again:
        assert again.epoch == 3 and again.replayed == 0
        assert dict(again.items()) == {b"a": b"1", b"b": b"2"}
    with ObliviousDict.open(tmp_path / "m", key=KEY, durability="access") as again:
        assert again.epoch == 6 and again.durability == "access"  # it commits as it opens


def test_uncommitted_operations_are_lost_and_committed_ones_kept(tmp_path: Path) -> None:
    d = make(tmp_path / "m", relocate_every=2, slots_per_bucket=2)
    committed = apply({}, fill(d, 1, 150))
    d.commit()
    fill(d, 2, 60)
    d.clear()
    crash(d)
    assert reopened(tmp_path / "m") == committed


def test_access_durability_keeps_every_call_that_returned(tmp_path: Path) -> None:
    d = make(tmp_path / "m", durability="access", relocate_every=2, slots_per_bucket=2)
    model = apply({}, fill(d, 3, 100))
    crash(d)
    with ObliviousDict.open(tmp_path / "m", key=KEY, durability="access") as again:
        assert again.replayed == 100
        assert dict(again.items()) == model
        again.clear()
        again.set_many({b"x": b"1", b"y": b"2"})
        model = apply({b"x": b"1", b"y": b"2"}, fill(again, 4, 30))
        crash(again)
    # Reopened in the other mode, it replays the journal all the same.
    with ObliviousDict.open(tmp_path / "m", key=KEY) as third:
        assert third.replayed == 32
        assert dict(third.items()) == model


def test_the_journal_does_not_tell_reads_from_writes(tmp_path: Path) -> None:
    d = make(tmp_path / "m", durability="access")
    assert d._store is not None
    journal = d._store.journal
    d[b"a"] = b"1"
    sizes = [journal.bytes]
    calls: list[Callable[[], object]] = [
        lambda: d.get(b"a"),
        lambda: d.get(b"missing"),
        lambda: d.__setitem__(b"b", b"x" * 16),
        lambda: d.__setitem__(b"a", b""),
        lambda: d.pop(b"b"),
        lambda: d.pop(b"missing", None),
    ]
    for call in calls:
        call()
        sizes.append(journal.bytes)
    assert len({b - a for a, b in itertools.pairwise(sizes)}) == 1
    d.close()


def test_access_durability_commits_on_its_own_to_bound_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(odict_module, "_AUTO_COMMIT_RECORDS", 10)
    d = make(tmp_path / "m", durability="access")
    fill(d, 5, 25)
    assert d.epoch == 2
    d.close()


def test_arguments_and_misuse(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key"):
        ObliviousDict(8, 8, 8, path=tmp_path / "a")
    with pytest.raises(ValueError, match="durability"):
        ObliviousDict(8, 8, 8, key=KEY, path=tmp_path / "a", durability="never")  # type: ignore[arg-type]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    with pytest.raises(FileExistsError):
        ObliviousDict(8, 8, 8, key=KEY, path=tmp_path / "full")
    with pytest.raises(FileNotFoundError):
        ObliviousDict.open(tmp_path / "nothing", key=KEY)
    with pytest.raises(FileNotFoundError):
        ObliviousDict.open(tmp_path / "full", key=KEY)
    with pytest.raises(ValueError, match="only a durable"):
        ObliviousDict(8, 8, 8).commit()
    d = make(tmp_path / "m")
    with pytest.raises(BlockingIOError):
        ObliviousDict.open(tmp_path / "m", key=KEY)
    with pytest.raises(FileExistsError):
        make(tmp_path / "m")
    d.close()
    with pytest.raises(TypeError):
        ObliviousDict.open(tmp_path / "m", key=[0] * 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key does not open"):
        ObliviousDict.open(tmp_path / "m", key=OTHER_KEY)
    with pytest.raises(ValueError, match="durability"):
        ObliviousDict.open(tmp_path / "m", key=KEY, durability="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_epoch"):
        ObliviousDict.open(tmp_path / "m", key=KEY, min_epoch=-1)
    # A failed open releases the locks.
    with ObliviousDict.open(tmp_path / "m", key=KEY) as again:
        assert again.epoch == 2


def test_min_epoch_refuses_a_rolled_back_directory(tmp_path: Path) -> None:
    d = make(tmp_path / "m")
    fill(d, 6, 50)
    d.close()
    shutil.copytree(tmp_path / "m", tmp_path / "old")
    with ObliviousDict.open(tmp_path / "m", key=KEY) as newer:
        fill(newer, 7, 50)
        epoch = newer.commit()
    shutil.rmtree(tmp_path / "m")
    shutil.copytree(tmp_path / "old", tmp_path / "m")
    with pytest.raises(IntegrityError, match="rolled back"):
        ObliviousDict.open(tmp_path / "m", key=KEY, min_epoch=epoch)
    with ObliviousDict.open(tmp_path / "m", key=KEY, min_epoch=1) as old:
        assert old.epoch == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_cannot_use_the_parents_map(tmp_path: Path) -> None:
    d = make(tmp_path / "m")
    d[b"p"] = b"parent"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            d[b"p"]
        except PoisonedError:
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert d[b"p"] == b"parent"
    d.close()


# --- a crash at every step ----------------------------------------------------------------


class Crash(Exception):
    """Stands for the process dying at this point."""


def crash_at(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> None:
    def die(*args: Any, **kwargs: Any) -> Any:
        raise Crash(name)

    monkeypatch.setattr(target, name, die)


def test_a_crash_after_the_state_is_written_and_before_the_oram_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = make(tmp_path / "m")
    committed = apply({}, fill(d, 8, 80))
    d.commit()
    fill(d, 9, 40)
    with monkeypatch.context() as patch:
        crash_at(patch, d.oram, "commit")
        with pytest.raises(Crash):
            d.commit()
    # The state file names the next epoch as well, but the ORAM never reached it.
    crash(d)
    assert reopened(tmp_path / "m") == committed


@pytest.mark.parametrize("durability", ["commit", "access"])
def test_a_crash_after_the_oram_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    d = make(tmp_path / "m", durability=durability)
    model = apply({}, fill(d, 10, 80))
    assert d._store is not None
    with monkeypatch.context() as patch:
        crash_at(patch, d._store.journal, "start")
        with pytest.raises(Crash):
            d.commit()
    crash(d)
    assert reopened(tmp_path / "m", durability=durability) == model


@pytest.mark.parametrize("where", ["PathORAM.open", "ObliviousDict._commit_locked"])
def test_a_crash_while_opening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    d = make(tmp_path / "m", durability="access")
    model = apply({}, fill(d, 11, 60))
    crash(d)
    # The first opening dies before its ORAM opened, or after it opened (and committed) and
    # replayed the map's journal, before the map's own commit.
    with monkeypatch.context() as patch:
        owner, name = where.split(".")
        crash_at(patch, PathORAM if owner == "PathORAM" else ObliviousDict, name)
        with pytest.raises(Crash):
            ObliviousDict.open(tmp_path / "m", key=KEY, durability="access")
    with ObliviousDict.open(tmp_path / "m", key=KEY, durability="access") as again:
        assert again.replayed == 60
        assert dict(again.items()) == model


def test_a_crash_while_closing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = make(tmp_path / "m")
    committed = apply({}, fill(d, 12, 50))
    d.commit()
    fill(d, 13, 20)
    with monkeypatch.context() as patch:
        crash_at(patch, d.oram, "close")
        with pytest.raises(Crash):
            d.close()
    crash(d)
    assert reopened(tmp_path / "m") == committed


def test_a_poisoned_map_commits_nothing_and_reopens_at_its_last_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = make(tmp_path / "m")
    committed = apply({}, fill(d, 14, 80))
    d.commit()
    fill(d, 15, 10)

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(d, "_operate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        d[b"k1"] = b"half done"
    with pytest.raises(PoisonedError):
        d.commit()
    d.close()  # releases, commits nothing
    assert reopened(tmp_path / "m") == committed


def test_the_oram_moved_on_without_the_map_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path / "m")
    fill(d, 16, 30)
    d.close()
    # Someone opens the map's ORAM on its own: it commits epochs the map's state never named.
    PathORAM.open(tmp_path / "m" / "oram", key=KEY).close()
    with pytest.raises(IntegrityError, match="epochs"):
        ObliviousDict.open(tmp_path / "m", key=KEY)


def test_an_older_state_file_is_refused(tmp_path: Path) -> None:
    d = make(tmp_path / "m")
    fill(d, 17, 30)
    d.commit()
    old = (tmp_path / "m" / "state").read_bytes()
    fill(d, 18, 30)
    d.commit()
    d.close()
    (tmp_path / "m" / "state").write_bytes(old)
    with pytest.raises(IntegrityError, match="epochs"):
        ObliviousDict.open(tmp_path / "m", key=KEY)


def test_bit_flips_in_the_state_are_refused(tmp_path: Path) -> None:
    d = make(tmp_path / "m")
    fill(d, 19, 30)
    d.close()
    pristine = (tmp_path / "m" / "state").read_bytes()
    for at in sorted({0, 20, 60, len(pristine) // 2, len(pristine) - 1}):
        blob = bytearray(pristine)
        blob[at] ^= 0x10
        (tmp_path / "m" / "state").write_bytes(bytes(blob))
        with pytest.raises((IntegrityError, ValueError)):
            ObliviousDict.open(tmp_path / "m", key=KEY)


def test_the_state_of_another_map_or_of_its_oram_is_refused(tmp_path: Path) -> None:
    for name in ("a", "b"):
        d = make(tmp_path / name)
        fill(d, 20, 30)
        d.close()
    shutil.copy(tmp_path / "b" / "state", tmp_path / "a" / "state")
    with pytest.raises(IntegrityError):
        ObliviousDict.open(tmp_path / "a", key=KEY)
    # The ORAM's own state, sealed under the same key, is no map's state.
    shutil.copy(tmp_path / "b" / "oram" / "state", tmp_path / "b" / "state")
    with pytest.raises(IntegrityError, match="not an ObliviousDict"):
        ObliviousDict.open(tmp_path / "b", key=KEY)


def test_no_nonce_repeats_across_commit_crash_and_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs: Pairs = []
    monkeypatch.setattr(RecordingAESGCM, "log", pairs)
    monkeypatch.setattr(crypto, "AESGCM", RecordingAESGCM)
    monkeypatch.setattr(sealed_module, "AESGCM", RecordingAESGCM)
    d = make(tmp_path / "m", durability="access")
    fill(d, 21, 50)
    d.commit()
    fill(d, 22, 50)
    crash(d)
    for _ in range(2):
        again = ObliviousDict.open(tmp_path / "m", key=KEY, durability="access")
        fill(again, 23, 30)
        again.close()
    assert len(pairs) > 1000
    assert repeated(pairs) == []


# --- killed at random moments ---------------------------------------------------------------


def run_until_killed(directory: Path, seed: int, every: int, durability: str) -> list[str]:
    """Run the worker and SIGKILL it at a random moment; returns the lines it printed."""
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "odict_worker.py"), str(directory), str(seed), "100000",
         str(every), durability],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    time.sleep(random.Random(seed).uniform(0.4, 1.6))
    worker.send_signal(signal.SIGKILL)
    out, _ = worker.communicate(timeout=60)
    return out.splitlines()


def expected_states(
    base: dict[bytes, bytes], lines: list[str], seed: int, every: int, durability: str
) -> Iterator[dict[bytes, bytes]]:
    """The maps the store may hold after the worker printed ``lines`` and died."""
    done = max([int(line.split()[1]) for line in lines if line.startswith("done")], default=0)
    commits = [int(line.split()[1]) for line in lines if line.startswith("commit")]
    if durability == "access":
        candidates = [done, done + 1]
    elif not commits:
        candidates = [0]  # killed before the map existed or opened
    else:
        # Killed after a commit returned but before the worker said so: the next one.
        candidates = [commits[-1], min(commits[-1] + every, done)]
    for n in candidates:
        yield odict_worker.model_after(base, seed, n)


def kill_and_check(tmp_path: Path, kills: int, durability: str) -> None:
    directory = tmp_path / "map"
    base: dict[bytes, bytes] = {}
    every = 5
    for round_ in range(kills):
        seed = 1000 * round_ + 29
        lines = run_until_killed(directory, seed, every, durability)
        if not (directory / "state").exists():
            shutil.rmtree(directory, ignore_errors=True)  # killed while the map was created
            continue
        candidates = list(expected_states(base, lines, seed, every, durability))
        # A crash is not an attack: the map opens, with no IntegrityError, and holds exactly
        # a state the worker had made durable.
        with ObliviousDict.open(directory, key=odict_worker.KEY) as d:
            found = dict(d.items())
            assert len(d) == len(found)
        assert found in candidates, f"round {round_}: {lines[-3:]}"
        base = found


@pytest.mark.parametrize("durability", ["commit", "access"])
def test_killed_at_random_moments_it_reopens_to_what_was_durable(
    tmp_path: Path, durability: str
) -> None:
    kill_and_check(tmp_path, 5, durability)


@pytest.mark.soak
@pytest.mark.parametrize("durability", ["commit", "access"])
def test_many_kills(tmp_path: Path, durability: str) -> None:
    kill_and_check(tmp_path, 100, durability)
