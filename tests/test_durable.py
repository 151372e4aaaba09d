"""Durable PathORAM: reopen, crash safety, recovery that does not leak, files at rest."""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import durable_worker
from oram_layout import Recorder
from oramstore import IntegrityError, PathORAM, PoisonedError, UntrustedStorage
from oramstore.enclave import tree as tree_module

KEY = bytes(range(32))
OTHER_KEY = bytes(32)
HERE = Path(__file__).parent


def make(path: Path, **kwargs: Any) -> PathORAM:
    options: dict[str, Any] = {"key": KEY, "path": path, "treetop_bytes": 0}
    options.update(kwargs)
    return PathORAM(300, 24, **options)


def fill(oram: PathORAM, seed: int, count: int) -> dict[int, bytes]:
    rng = np.random.default_rng(seed)
    model: dict[int, bytes] = {}
    for _ in range(count):
        i = int(rng.integers(len(oram)))
        block = rng.integers(0, 256, oram.block_size, np.uint8).tobytes()
        oram.write(i, block)
        model[i] = block
    return model


def contents(oram: PathORAM) -> dict[int, bytes]:
    """Every block that is not all zeros."""
    blocks = oram.read_many(range(len(oram)))
    return {i: row.tobytes() for i, row in enumerate(blocks) if row.any()}


def crash(oram: PathORAM) -> None:
    """What a killed process leaves: nothing more is written, and the lock is gone."""
    store = oram._store
    assert store is not None
    oram._closed = True
    store.close()


# --- create, commit, reopen -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("block_size", "bucket_size", "position_map"),
    [(1, 4, "array"), (4096, 4, "array"), (24, 5, "recursive"), (7, 6, "recursive")],
)
def test_round_trip_in_a_new_process(
    tmp_path: Path, block_size: int, bucket_size: int, position_map: str
) -> None:
    store = tmp_path / "store"
    script = textwrap.dedent(
        f"""
        import numpy as np
        from oramstore import PathORAM
        oram = PathORAM(200, {block_size}, key=bytes(range(32)), path={str(store)!r},
                        bucket_size={bucket_size}, position_map={position_map!r},
                        position_map_threshold=16,
                        treetop_bytes=3 * {bucket_size} * {block_size + 16})
        rng = np.random.default_rng(5)
        for _ in range(400):
            oram.write(int(rng.integers(200)), rng.integers(1, 256, {block_size}, np.uint8))
        oram.commit()
        oram.write(0, bytes({block_size}))
        oram.close()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    rng = np.random.default_rng(5)
    model: dict[int, bytes] = {}
    for _ in range(400):
        i = int(rng.integers(200))
        model[i] = rng.integers(1, 256, block_size, np.uint8).tobytes()
    model.pop(0, None)  # close() committed the last write of zeros
    with PathORAM.open(store, key=KEY) as oram:
        assert (len(oram), oram.block_size, oram.bucket_size) == (200, block_size, bucket_size)
        assert oram.replayed == 0
        assert contents(oram) == model


def test_epochs_count_commits_and_close_commits(tmp_path: Path) -> None:
    oram = make(tmp_path / "s")
    assert oram.epoch == 0 and oram.durability == "commit" and oram.path == tmp_path / "s"
    oram.write(1, b"a" * 24)
    assert oram.commit() == 1 and oram.epoch == 1
    assert oram.commit() == 2
    oram.write(2, b"b" * 24)
    oram.close()
    with PathORAM.open(tmp_path / "s", key=KEY) as again:
        # close() committed epoch 3; open() commits 4 after replaying nothing.
        assert again.epoch == 4 and again.replayed == 0
        assert again.read(2) == b"b" * 24
    assert PathORAM(8, 8).epoch is None


def test_uncommitted_writes_are_lost_and_committed_ones_kept(tmp_path: Path) -> None:
    oram = make(tmp_path / "s")
    committed = fill(oram, 1, 200)
    oram.commit()
    for i in range(0, 300, 3):
        oram.write(i, b"x" * 24)
    crash(oram)
    with PathORAM.open(tmp_path / "s", key=KEY) as again:
        assert again.replayed == 100
        assert contents(again) == committed


def test_access_durability_keeps_every_access_that_returned(tmp_path: Path) -> None:
    oram = make(tmp_path / "s", durability="access", position_map="recursive")
    model = fill(oram, 2, 150)
    crash(oram)
    with PathORAM.open(tmp_path / "s", key=KEY, durability="access") as again:
        assert again.replayed == 150
        assert contents(again) == model
        model.update(fill(again, 3, 20))
        crash(again)
    with PathORAM.open(tmp_path / "s", key=KEY) as third:
        assert contents(third) == model


def test_access_durability_commits_on_its_own_to_bound_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oramstore.oram import path as path_module

    monkeypatch.setattr(path_module, "_AUTO_COMMIT_RECORDS", 10)
    oram = make(tmp_path / "s", durability="access")
    fill(oram, 4, 25)
    assert oram.epoch == 2
    oram.close()


def test_arguments_and_misuse(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key"):
        PathORAM(8, 8, path=tmp_path / "a")
    with pytest.raises(ValueError, match="durability"):
        PathORAM(8, 8, key=KEY, path=tmp_path / "a", durability="never")  # type: ignore[arg-type]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    with pytest.raises(FileExistsError):
        PathORAM(8, 8, key=KEY, path=tmp_path / "full")
    with pytest.raises(FileNotFoundError):
        PathORAM.open(tmp_path / "nothing", key=KEY)
    with pytest.raises(FileNotFoundError):
        PathORAM.open(tmp_path / "full", key=KEY)
    with pytest.raises(ValueError, match="only a durable"):
        PathORAM(8, 8).commit()
    oram = make(tmp_path / "s")
    # One ORAM object at a time per store, in this process or another.
    with pytest.raises(BlockingIOError):
        PathORAM.open(tmp_path / "s", key=KEY)
    with pytest.raises(FileExistsError):
        make(tmp_path / "s")
    oram.close()
    with pytest.raises(TypeError):
        PathORAM.open(tmp_path / "s", key=[0] * 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key does not open"):
        PathORAM.open(tmp_path / "s", key=OTHER_KEY)
    with pytest.raises(ValueError, match="durability"):
        PathORAM.open(tmp_path / "s", key=KEY, durability="x")  # type: ignore[arg-type]
    # A failed open releases the lock.
    with PathORAM.open(tmp_path / "s", key=KEY) as again:
        assert again.epoch == 2


def test_min_epoch_refuses_a_rolled_back_directory(tmp_path: Path) -> None:
    oram = make(tmp_path / "s")
    fill(oram, 5, 50)
    oram.commit()
    oram.close()
    shutil.copytree(tmp_path / "s", tmp_path / "old")
    with PathORAM.open(tmp_path / "s", key=KEY) as newer:
        fill(newer, 6, 50)
        epoch = newer.commit()
    # The host puts the old directory back: only the caller's trusted epoch tells.
    shutil.rmtree(tmp_path / "s")
    shutil.copytree(tmp_path / "old", tmp_path / "s")
    with pytest.raises(IntegrityError, match="rolled back"):
        PathORAM.open(tmp_path / "s", key=KEY, min_epoch=epoch)
    with PathORAM.open(tmp_path / "s", key=KEY, min_epoch=2) as old:
        assert old.epoch == 3


def test_a_poisoned_store_does_not_commit_and_reopens_at_its_last_commit(tmp_path: Path) -> None:
    oram = make(tmp_path / "s")
    committed = fill(oram, 7, 100)
    oram.commit()
    untrusted = oram.tree.untrusted
    assert untrusted is not None
    # The host breaks every current bucket of the tree file.
    items = range(untrusted.count)
    data, meta = untrusted.checkout(items)
    untrusted.checkin(items, data ^ 1, meta)
    with pytest.raises(IntegrityError):
        oram.read(3)
    with pytest.raises(PoisonedError):
        oram.commit()
    oram.close()  # releases, commits nothing
    untrusted_path = tmp_path / "s" / "data.tree"
    # The journaled access runs again on reopening, on the same branch: still refused.
    with pytest.raises(IntegrityError):
        PathORAM.open(tmp_path / "s", key=KEY)
    # The host restores the bytes: the store is whole again.
    storage = UntrustedStorage.open(untrusted_path)
    storage.checkin(items, data, meta)
    storage.release()
    with PathORAM.open(tmp_path / "s", key=KEY) as again:
        assert again.replayed == 1
        assert contents(again) == committed


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_cannot_use_the_parents_store(tmp_path: Path) -> None:
    oram = make(tmp_path / "s")
    oram.write(1, b"p" * 24)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            oram.read(1)
        except PoisonedError:
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert oram.read(1) == b"p" * 24
    oram.close()


# --- recovery shows the host nothing new ----------------------------------------------------


class HostFiles:
    """Wraps every tree file storage the ORAM opens, logging the data tree's branches."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[tuple[str, str, tuple[int, ...]]] = []
        real = UntrustedStorage
        host = self

        class Opening:
            def __new__(cls, *args: Any, **kwargs: Any) -> Any:
                return real(*args, **kwargs)

            @staticmethod
            def open(path: Any, *args: Any, **kwargs: Any) -> Any:
                return Recorder(real.open(path, *args, **kwargs), Path(path).name, host.log)

        monkeypatch.setattr(tree_module, "UntrustedStorage", Opening)

    def branches(self, start: int = 0) -> list[tuple[int, ...]]:
        """The data tree's checkouts from log entry ``start`` on, as bucket numbers (the slot
        of each bucket taken away)."""
        return [
            tuple(i // 2 for i in idx)
            for name, op, idx in self.log[start:]
            if name == "data.tree" and op == "checkout"
        ]


def test_recovery_replays_exactly_the_branches_the_host_saw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = HostFiles(monkeypatch)
    oram = make(tmp_path / "s", position_map="recursive", position_map_threshold=16)
    fill(oram, 8, 200)
    oram.commit()
    before = len(host.log)
    blocks = [5, 17, 5, 123, 299, 17, 42]
    for i in blocks:
        oram.write(i, b"y" * 24)
    seen = host.branches(before)
    assert len(seen) == len(blocks)
    crash(oram)
    before = len(host.log)
    again = PathORAM.open(tmp_path / "s", key=KEY)
    # The replay reads the very branches the host saw, in the same order, whatever they
    # held: it learns nothing it did not know.
    assert host.branches(before) == seen
    # The user retries the same accesses: every block now sits under a leaf never shown.
    before = len(host.log)
    for i in blocks:
        again.write(i, b"z" * 24)
    retried = host.branches(before)
    same = sum(a == b for a, b in zip(retried, seen, strict=True))
    assert same <= 1, "a retried access went back to the branch the host saw"
    again.close()


# --- crashes --------------------------------------------------------------------------------


def run_until_killed(
    directory: Path, seed: int, ops: int, every: int, durability: str, position_map: str
) -> list[str]:
    """Run the worker and SIGKILL it at a random moment; returns the lines it printed."""
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "durable_worker.py"), str(directory), str(seed), str(ops),
         str(every), durability, position_map],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    rng = random.Random(seed)
    time.sleep(rng.uniform(0.3, 1.5))
    worker.send_signal(signal.SIGKILL)
    out, _ = worker.communicate(timeout=60)
    return out.splitlines()


def expected_states(
    base: dict[int, bytes], lines: list[str], seed: int, every: int, durability: str, ops: int
) -> Iterator[dict[int, bytes]]:
    """The states the store may land on after the worker printed ``lines`` and died."""
    done = max([int(line.split()[1]) for line in lines if line.startswith("done")], default=0)
    commits = [int(line.split()[1]) for line in lines if line.startswith("commit")]
    if durability == "access":
        candidates = [done, min(done + 1, ops)]
    elif not commits:
        candidates = [0]  # killed before the store existed or opened
    else:
        candidates = [commits[-1], min(commits[-1] + every, done)]
    if "closed" in lines:
        candidates = [ops]
    for n in candidates:
        state = dict(base)
        state.update(durable_worker.model_after(seed, n))
        yield {i: b for i, b in state.items() if any(b)}


def kill_and_check(tmp_path: Path, kills: int, durability: str, position_map: str) -> None:
    directory = tmp_path / "store"
    base: dict[int, bytes] = {}
    every = 7
    for round_ in range(kills):
        seed = 1000 * round_ + 17
        lines = run_until_killed(directory, seed, 100_000, every, durability, position_map)
        if not (directory / "state").exists():
            continue  # killed before the store was created
        candidates = list(expected_states(base, lines, seed, every, durability, 100_000))
        # A crash is not an attack: the store opens, with no IntegrityError, and holds exactly
        # a state the worker had made durable.
        with PathORAM.open(directory, key=durable_worker.KEY) as oram:
            found = contents(oram)
        assert found in candidates, f"round {round_}: {lines[-3:]}"
        base = found


@pytest.mark.parametrize(
    ("durability", "position_map"), [("commit", "array"), ("access", "recursive")]
)
def test_killed_at_random_moments_it_reopens_to_what_was_durable(
    tmp_path: Path, durability: str, position_map: str
) -> None:
    kill_and_check(tmp_path, 6, durability, position_map)


@pytest.mark.soak
@pytest.mark.parametrize(
    ("durability", "position_map"), [("commit", "recursive"), ("access", "array")]
)
def test_many_kills(tmp_path: Path, durability: str, position_map: str) -> None:
    kill_and_check(tmp_path, 100, durability, position_map)


def test_torn_writes_after_the_last_commit_are_harmless(tmp_path: Path) -> None:
    oram = make(tmp_path / "s")
    committed = fill(oram, 9, 200)
    oram.commit()
    tree_file = tmp_path / "s" / "data.tree"
    before = tree_file.read_bytes()
    fill(oram, 10, 30)
    crash(oram)
    # Every byte range written since the commit is torn: half new, half garbage, as a crash
    # in the middle of pwrite would leave it.
    after = bytearray(tree_file.read_bytes())
    changed = np.flatnonzero(
        np.frombuffer(bytes(after[: len(before)]), np.uint8) != np.frombuffer(before, np.uint8)
    )
    assert len(changed) > 0
    rng = np.random.default_rng(1)
    for at in changed[::2].tolist():
        after[at] = int(rng.integers(256))
    tree_file.write_bytes(bytes(after))
    # And the journal's last record is torn: its last bytes never reached the disk.
    journal = tmp_path / "s" / "journal"
    data = bytearray(journal.read_bytes())
    end = 0
    for _ in range(30):  # records: a 40-byte header ending in the sealed length, then the rest
        end += 40 + int.from_bytes(data[end + 36 : end + 40], "little") + 16
    data[end - 20 : end] = bytes(20)
    journal.write_bytes(bytes(data))
    with PathORAM.open(tmp_path / "s", key=KEY) as again:
        assert again.replayed == 29
        assert contents(again) == committed


# --- files at rest --------------------------------------------------------------------------


def committed_store(tmp_path: Path, name: str = "s") -> tuple[Path, dict[int, bytes]]:
    oram = make(tmp_path / name, position_map="recursive", position_map_threshold=16)
    model = fill(oram, 11, 150)
    oram.close()
    return tmp_path / name, model


def refused_or_right(directory: Path, model: dict[int, bytes]) -> str:
    """Open the store and read everything: either a clear refusal, or exactly the model."""
    try:
        with PathORAM.open(directory, key=KEY) as oram:
            found = contents(oram)
    except (IntegrityError, PoisonedError):
        return "integrity"
    except ValueError:
        return "value"
    assert found == model, "wrong data from a tampered store"
    return "right"


@pytest.mark.parametrize("name", ["state", "data.tree", "data.positions.tree", "journal"])
def test_bit_flips_in_any_file_are_refused_or_harmless(tmp_path: Path, name: str) -> None:
    directory, model = committed_store(tmp_path)
    pristine = tmp_path / "pristine"
    shutil.copytree(directory, pristine)
    path = directory / name
    size = path.stat().st_size
    rng = np.random.default_rng(12)
    outcomes = []
    for at in sorted({0, size // 2, size - 1, *rng.integers(0, max(size, 1), 12).tolist()}):
        if size == 0:
            break
        shutil.rmtree(directory)
        shutil.copytree(pristine, directory)
        blob = bytearray(path.read_bytes())
        blob[at] ^= 0x10
        path.write_bytes(bytes(blob))
        outcomes.append(refused_or_right(directory, model))
    if name == "state":
        assert "right" not in outcomes  # every byte of the state is authenticated
        assert "integrity" in outcomes


@pytest.mark.parametrize("cut", [0, 10, 100, -16, -1])
def test_a_truncated_state_is_refused(tmp_path: Path, cut: int) -> None:
    directory, _ = committed_store(tmp_path)
    state = directory / "state"
    blob = state.read_bytes()
    state.write_bytes(blob[:cut])
    with pytest.raises(IntegrityError):
        PathORAM.open(directory, key=KEY)


def test_files_of_another_store_are_refused(tmp_path: Path) -> None:
    a, model_a = committed_store(tmp_path, "a")
    b, _ = committed_store(tmp_path, "b")
    for name in ("state", "data.tree", "data.positions.tree"):
        mixed = tmp_path / f"mixed-{name}"
        shutil.copytree(a, mixed)
        shutil.copy(b / name, mixed / name)
        assert refused_or_right(mixed, model_a) == "integrity", name


def test_an_older_state_with_newer_trees_and_the_reverse_are_refused(tmp_path: Path) -> None:
    directory, model = committed_store(tmp_path)
    old = tmp_path / "old"
    shutil.copytree(directory, old)
    with PathORAM.open(directory, key=KEY) as oram:
        fill(oram, 13, 300)
    # The newer state refers to bucket versions the older files never held.
    mixed = tmp_path / "new-state-old-trees"
    shutil.copytree(old, mixed)
    shutil.copy(directory / "state", mixed / "state")
    assert refused_or_right(mixed, model) == "integrity"
    # The older state may still find every version it refers to in the newer files (a bucket
    # keeps its committed version in one of its two slots until the next commit): then it
    # reads exactly the older data, a rollback that only min_epoch can tell.
    mixed = tmp_path / "old-state-new-trees"
    shutil.copytree(directory, mixed)
    shutil.copy(old / "state", mixed / "state")
    assert refused_or_right(mixed, model) in ("integrity", "right")


# --- larger than memory ---------------------------------------------------------------------


def test_a_store_far_larger_than_memory(tmp_path: Path) -> None:
    # 2^24 blocks of 4 KiB: 64 GiB of user data and about 256 GiB of tree file, sparse.
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    oram = PathORAM(1 << 24, 4096, key=KEY, path=tmp_path / "big", treetop_bytes=1 << 20)
    assert oram.position_map.trusted_bytes < 64 << 20  # recursive: not 64 MiB of array
    rng = np.random.default_rng(14)
    model: dict[int, bytes] = {}
    for _ in range(60):
        i = int(rng.integers(1 << 24))
        model[i] = rng.integers(0, 256, 4096, np.uint8).tobytes()
        oram.write(i, model[i])
    for i, expected in model.items():
        assert oram.read(i) == expected
    oram.close()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before  # KiB
    disk = sum(p.stat().st_blocks * 512 for p in (tmp_path / "big").iterdir())
    logical = sum(p.stat().st_size for p in (tmp_path / "big").iterdir())
    assert logical > 200 << 30 and disk < 1 << 30
    assert grown < 400 << 10, f"resident memory grew by {grown} KiB"


def test_journal_records_look_the_same_for_reads_and_writes(tmp_path: Path) -> None:
    # The host sees each record's size: with durability="access" a read's record carries a
    # block too, so reads and writes cannot be told apart by it.
    for durability in ("commit", "access"):
        oram = make(tmp_path / durability, durability=durability)
        journal = oram._store.journal  # type: ignore[union-attr]
        sizes = []
        for k in range(6):
            before = journal.bytes
            if k % 2:
                oram.write(k, b"w" * 24)
            else:
                oram.read(k)
            sizes.append(journal.bytes - before)
        assert len(set(sizes)) == 1, (durability, sizes)
        oram.close()
