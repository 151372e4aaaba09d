"""PyORAM 0.2.1's own test suite, run as it ships and again on the "oramstore" device.

Run: ``make test-pyoram`` (a venv of its own with ``oramstore[pyoram]``), or
``python tests/pyoram_suite/run_pyoram_tests.py [--sdist PATH] [--workdir DIR] [-v]`` in an
environment where both are installed.

The tests come from PyORAM's source distribution (downloaded with pip unless ``--sdist`` names
it), extracted into ``--workdir`` because they write their files beside themselves. They are
written for ``unittest2``, which the standard ``unittest`` stands in for.

Every test class that is parameterised by a storage device on a local file (``"file"`` or
``"mmap"``, as a class attribute ``_type``, ``_type_name`` or ``_storage_type``, or set in
``setUpClass``) gets a twin: a subclass whose parameter names the ``"oramstore"`` device. While
a twin runs, PyORAM's registry answers ``"file"`` and ``"mmap"`` with that device too, and so
do the test module's names of the file devices' classes: the tests also name devices directly,
and some make a storage with PyORAM's default device (``setup`` without ``storage_type``) that
they then reopen with the parameterised one. Twins with the same parameters (a file and an mmap
class that differ in nothing else) are made once. Classes written for the other devices (RAM,
SFTP, S3) test what is particular to them and get no twin.

Left out, with the reason printed: ``test_examples``, which asserts at import that PyORAM's
``examples`` folder exists (the sdist does not ship it), and
``TestSizedVirtualHeap.test_write_as_dot``, which compares against ``baselines/*.dot`` files
that the sdist does not ship either. In the twins, ``test_path_oram``'s ``test_init_exists``
compares the end of the blocks where this device keeps them, its data segment, instead of the
end of the file, where PyORAM's file format keeps blocks and oramstore's keeps the header data
(see :mod:`oramstore.compat.pyoram`). ``baselines/exists.empty``, an empty file that
the ``test_setup_fails`` tests expect to exist, is made here. PyORAM itself skips its S3 tests
without ``PYORAM_AWS_TEST_BUCKET`` in the environment.

The last line printed is ``N passed, N failed``; the exit status is 1 if any test failed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
import types
import unittest
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ORAMSTORE = "oramstore"
FILE_DEVICE_NAMES = ("file", "mmap")
STORAGE_PARAMETERS = ("_type", "_type_name", "_storage_type")
PACKAGE = "pyoram_tests"

EXCLUDED_MODULES = {
    "test_examples": "asserts at import that PyORAM's examples folder exists; the sdist has none",
}
EXCLUDED_TESTS = {
    ("test_virtual_heap", "TestSizedVirtualHeap", "test_write_as_dot"): (
        "compares against baselines/*.dot files that the sdist does not ship"
    ),
}


def find_sdist(given: str | None, workdir: Path, version: str) -> Path:
    """PyORAM's sdist: ``given`` (a file, or a folder that holds it), or downloaded by pip."""
    wanted = f"pyoram-{version}.tar.gz"
    folder = workdir / "sdist"
    if given is not None:
        path = Path(given)
        if path.is_file():
            return path
        folder = path
    else:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
                *("--no-binary", ":all:", f"pyoram=={version}", "--dest", str(folder)),
            ],
            check=True,
        )
    for candidate in sorted(folder.iterdir()):
        if candidate.name.lower() == wanted:
            return candidate
    raise SystemExit(f"no {wanted} in {folder}")


def extract_tests(sdist: Path, workdir: Path) -> Path:
    """Extract ``src/pyoram/tests`` of the sdist as the package ``pyoram_tests`` in
    ``workdir``, afresh, and return the package's folder."""
    target = workdir / PACKAGE
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            parts = Path(member.name).parts
            if parts[1:4] != ("src", "pyoram", "tests") or not member.isfile():
                continue
            source = archive.extractfile(member)
            assert source is not None
            destination = target.joinpath(*parts[4:])
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(source.read())
    baselines = target / "baselines"
    baselines.mkdir(exist_ok=True)
    (baselines / "exists.empty").touch()
    return target


def is_file_device(value: Any, file_classes: tuple[type, ...]) -> bool:
    if isinstance(value, str):
        return value in FILE_DEVICE_NAMES
    return any(value is cls for cls in file_classes)


def storage_parameter(cls: type, file_classes: tuple[type, ...]) -> str | None:
    """The attribute that names ``cls``'s storage device when that device is on a local file;
    ``"setUpClass"`` when ``setUpClass`` sets it; ``None`` otherwise."""
    for name in STORAGE_PARAMETERS:
        if is_file_device(getattr(cls, name, None), file_classes):
            return name
    setup = getattr(cls, "setUpClass", None)
    code = getattr(getattr(setup, "__func__", None), "__code__", None)
    if (
        code is not None
        and any(name in code.co_names for name in STORAGE_PARAMETERS)
        and any(c in FILE_DEVICE_NAMES for c in code.co_consts if isinstance(c, str))
    ):
        return "setUpClass"
    return None


def redirect_file_devices(module: types.ModuleType, device: type) -> Callable[[], None]:
    """Make every file device that ``module``'s tests can reach ``device``: PyORAM's registry
    entries ``"file"`` and ``"mmap"`` (named by the tests, or by the defaults of PyORAM's
    layers, as in ``setup`` calls without a ``storage_type``) and the module's names of the
    file devices' classes. Returns the function that undoes it."""
    from pyoram.storage.block_storage import BlockStorageTypeFactory

    registry: dict[str, type] = BlockStorageTypeFactory._registered_devices
    saved_registry = {name: registry[name] for name in FILE_DEVICE_NAMES}
    file_classes = tuple(saved_registry.values())
    saved_names = {
        name: value
        for name, value in vars(module).items()
        if any(value is cls for cls in file_classes)
    }
    registry.update(dict.fromkeys(FILE_DEVICE_NAMES, device))
    for name in saved_names:
        setattr(module, name, device)

    def undo() -> None:
        registry.update(saved_registry)
        for name, value in saved_names.items():
            setattr(module, name, value)

    return undo


def twin_class(cls: type, parameter: str, module: types.ModuleType, device: type) -> type:
    """A subclass of the test class ``cls`` that runs its tests on ``device``."""
    base: Any = cls

    class Twin(base):  # type: ignore[misc]
        on_oramstore = True
        undo_redirect: Callable[[], None]

        @classmethod
        def setUpClass(klass) -> None:
            klass.undo_redirect = redirect_file_devices(module, device)
            try:
                super().setUpClass()
            except BaseException:
                klass.undo_redirect()
                raise

        @classmethod
        def tearDownClass(klass) -> None:
            try:
                super().tearDownClass()
            finally:
                klass.undo_redirect()

    name = f"{cls.__name__}OnOramstore"
    Twin.__name__ = Twin.__qualname__ = name
    Twin.__module__ = module.__name__
    if parameter == "_type":
        Twin._type = device
    elif parameter != "setUpClass":
        setattr(Twin, parameter, ORAMSTORE)
    stem = module.__name__.rsplit(".", 1)[-1]
    if stem == "test_path_oram" and hasattr(cls, "test_init_exists"):
        Twin.test_init_exists = _init_exists_on_oramstore(module)
    return Twin


def _data_segment(path: str) -> bytes:
    """The items of an oramstore storage file (its blocks), without what follows them."""
    with open(path, "rb") as file:
        header = file.read(64)
        count, data_size = (int.from_bytes(header[k : k + 8], "little") for k in (16, 24))
        file.seek(int.from_bytes(header[40:48], "little"))
        return file.read(count * data_size)


def _init_exists_on_oramstore(module: types.ModuleType) -> Callable[[Any], None]:
    """PyORAM's ``test_init_exists`` for this device: reopening an existing Path ORAM with its
    key, stash and position map, and closing it, leaves the deep end of the stored blocks as it
    was (the cached top levels are written back at close). PyORAM's version compares the last
    bytes of the file, where this device keeps the header data, which Path ORAM encrypts afresh
    at close; its checks of wrong arguments run in its own classes."""

    def test_init_exists(self: Any) -> None:
        before = _data_segment(self._testfname)
        with module.PathORAM(
            self._testfname,
            self._stash,
            self._position_map,
            key=self._key,
            storage_type=self._type_name,
            **self._kwds,
        ) as oram:
            assert oram.key == self._key
            assert oram.block_size == self._block_size
            assert oram.block_count == self._block_count
            assert oram.storage_name == self._testfname
            assert oram.header_data == b""
        after = _data_segment(self._testfname)
        tail = self._block_count * self._block_size
        assert 0 < tail <= len(before)
        assert before[-tail:] == after[-tail:]

    return test_init_exists


def add_oramstore_twins(module: types.ModuleType, device: type) -> list[str]:
    """Add to ``module`` a twin on ``device`` of each test class that runs on a file device;
    return the twins' names."""
    from pyoram.storage.block_storage_file import BlockStorageFile
    from pyoram.storage.block_storage_mmap import BlockStorageMMap

    file_classes: tuple[type, ...] = (BlockStorageFile, BlockStorageMMap)
    made: dict[str, str] = {}
    for cls in list(vars(module).values()):
        if not (
            isinstance(cls, type)
            and issubclass(cls, unittest.TestCase)
            and cls.__module__ == module.__name__
        ):
            continue
        parameter = storage_parameter(cls, file_classes)
        if parameter is None:
            continue
        # The same test functions and the same parameters make the same twin.
        key = repr(
            (
                [base.__qualname__ for base in cls.__bases__],
                sorted(
                    (k, repr(v))
                    for k, v in vars(cls).items()
                    if k not in STORAGE_PARAMETERS and not k.startswith("__")
                ),
            )
        )
        if key in made:
            continue
        twin = twin_class(cls, parameter, module, device)
        setattr(module, twin.__name__, twin)
        made[key] = twin.__name__
    return list(made.values())


class Tally(unittest.TextTestResult):
    """Records each test's outcome by whether it ran on the oramstore device."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tally: Counter[tuple[str, str]] = Counter()

    def count(self, test: unittest.TestCase, outcome: str) -> None:
        # An error in setUpClass is reported against a placeholder that only has the id.
        twin = getattr(test, "on_oramstore", False) or "OnOramstore" in test.id()
        side = ORAMSTORE if twin else "PyORAM's devices"
        self.tally[side, outcome] += 1

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self.count(test, "passed")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self.count(test, "failed")

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self.count(test, "failed")

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self.count(test, "skipped")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self.count(test, "failed")

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self.count(test, "passed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sdist", help="PyORAM's sdist, or a folder that holds it")
    parser.add_argument(
        "--workdir",
        default=str(Path(__file__).resolve().parents[2] / "target" / "pyoram-tests"),
        help="where the tests are extracted and run (default: target/pyoram-tests)",
    )
    parser.add_argument(
        "--oramstore-only", action="store_true", help="run only the twins on oramstore"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()

    import pyoram

    import oramstore.compat.pyoram as device

    workdir = Path(args.workdir).resolve()
    sdist = find_sdist(args.sdist, workdir, pyoram.__version__)
    package = extract_tests(sdist, workdir)
    sys.modules["unittest2"] = unittest
    sys.path.insert(0, str(workdir))
    rundir = workdir / "run"
    rundir.mkdir(exist_ok=True)
    os.chdir(rundir)  # the tests leave files in the working directory

    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for stem, reason in EXCLUDED_MODULES.items():
        print(f"left out: {stem}: {reason}")
    for (_, cls_name, test), reason in EXCLUDED_TESTS.items():
        print(f"left out: {cls_name}.{test}: {reason}")
    for path in sorted(package.glob("test_*.py")):
        if path.stem in EXCLUDED_MODULES:
            continue
        module = importlib.import_module(f"{PACKAGE}.{path.stem}")
        twins = add_oramstore_twins(module, device.BlockStorageOramstore)
        for (stem, cls_name, test), _ in EXCLUDED_TESTS.items():
            if stem == path.stem:
                delattr(getattr(module, cls_name), test)
        if args.oramstore_only:
            for name in twins:
                suite.addTests(loader.loadTestsFromTestCase(getattr(module, name)))
        else:
            suite.addTests(loader.loadTestsFromModule(module))
        if twins:
            print(f"{path.stem}: {len(twins)} classes on oramstore: {', '.join(twins)}")

    start = time.perf_counter()
    runner = unittest.TextTestRunner(
        stream=sys.stdout, verbosity=2 if args.verbose else 1, resultclass=Tally
    )
    result = runner.run(suite)
    assert isinstance(result, Tally)
    elapsed = time.perf_counter() - start
    for side in ("PyORAM's devices", ORAMSTORE):
        counts = {outcome: result.tally[side, outcome] for outcome in ("passed", "failed")}
        skipped = result.tally[side, "skipped"]
        print(f"on {side}: {counts['passed']} passed, {counts['failed']} failed, {skipped} skipped")
    skips = Counter(reason for _, reason in result.skipped)
    for reason, n in sorted(skips.items()):
        print(f"skipped {n}: {reason}")
    passed = sum(n for (_, outcome), n in result.tally.items() if outcome == "passed")
    failed = sum(n for (_, outcome), n in result.tally.items() if outcome == "failed")
    print(f"{result.testsRun} tests in {elapsed:.1f} s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
