"""The bridge from the Rust core's log records to Python's logging.

Records are logged by calls that have released the interpreter lock and from threads Python
never started. A filter or handler that raises must not break the call that logged: the call
succeeds, the exception goes to ``sys.unraisablehook``, and no exception is left set.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import oramstore
from oramstore import UntrustedAllocator, UntrustedStorage


class Boom(Exception):
    pass


class RaisingFilter(logging.Filter):
    """Raises on every record it sees, and counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.seen += 1
        raise Boom(f"filter refused {record.getMessage()!r}")


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The exceptions reported through ``sys.unraisablehook`` during the test."""
    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    return seen


class Sink(logging.Handler):
    """A handler that drops what it is given (``logging.NullHandler`` skips its filters)."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


@pytest.fixture(params=["logger", "root-handler"])
def raising_filter(request: pytest.FixtureRequest) -> Iterator[RaisingFilter]:
    """A raising filter on the ``oramstore`` logger, or on a handler of the root logger (a
    logger's own filters see only the records logged to it), at level DEBUG."""
    f = RaisingFilter()
    logger = logging.getLogger("oramstore" if request.param == "logger" else None)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    target: logging.Filterer = logger
    if request.param == "root-handler":
        target = Sink()
        logger.addHandler(target)
    target.addFilter(f)
    yield f
    target.removeFilter(f)
    if isinstance(target, logging.Handler):
        logger.removeHandler(target)
    logger.setLevel(level)


class RaisingHandler(logging.Handler):
    """A handler whose ``handle`` raises (``emit`` errors are caught by logging itself)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen = 0

    def handle(self, record: logging.LogRecord) -> bool:
        self.seen += 1
        raise Boom("handler refused")

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle raises first
        pass


def assert_sane() -> None:
    """No exception is pending, and the interpreter runs ordinary code."""
    assert sys.exc_info() == (None, None, None)
    assert int("42") == 42
    assert [x * 2 for x in range(3)] == [0, 2, 4]


def test_storage_calls_survive_a_raising_filter(
    raising_filter: RaisingFilter, unraisable: list[Any]
) -> None:
    before = oramstore.allocated_bytes()
    st = UntrustedStorage(100, 64, 16)
    assert_sane()
    st.checkin([3], np.ones((1, 64), np.uint8), np.full((1, 16), 7, np.uint8))
    data, meta = st.checkout([3])
    assert data.all() and (meta == 7).all()
    st.release()
    assert_sane()
    assert oramstore.allocated_bytes() == before
    # Both records (allocation, release) reached the filter, and both exceptions were reported.
    assert raising_filter.seen == 2
    assert len(unraisable) == 2
    for report in unraisable:
        assert isinstance(report.exc_value, Boom)
    assert "allocated untrusted storage" in str(unraisable[0].exc_value)
    assert "released untrusted storage" in str(unraisable[1].exc_value)


def test_allocator_calls_survive_a_raising_filter(
    raising_filter: RaisingFilter, unraisable: list[Any]
) -> None:
    alloc = UntrustedAllocator(chunk_limit=0)
    arr = np.zeros(64 * 1024, np.uint8)
    handle = alloc.insert_range(arr)
    st = UntrustedStorage(10, 64, 16, allocator=alloc)
    assert_sane()
    st.release()
    del st
    gc.collect()
    alloc.remove_range(handle)
    assert_sane()
    assert raising_filter.seen >= 3
    assert len(unraisable) == raising_filter.seen
    assert all(isinstance(r.exc_value, Boom) for r in unraisable)


def test_a_raising_handler_does_not_break_a_call(unraisable: list[Any]) -> None:
    logger = logging.getLogger("oramstore")
    handler = RaisingHandler()
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with UntrustedStorage(10, 8, 8):
            assert_sane()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    assert_sane()
    assert handler.seen == 2
    assert [type(r.exc_value) for r in unraisable] == [Boom, Boom]


def test_a_pending_exception_survives_a_log_call(
    raising_filter: RaisingFilter, unraisable: list[Any]
) -> None:
    # The storage is on the evaluation stack when the division raises, so it is released, and
    # its release logged, while the ZeroDivisionError is set: that exception must arrive intact.
    zero = 0
    with pytest.raises(ZeroDivisionError):
        _ = (UntrustedStorage(10, 8, 8), 1 // zero)
    assert_sane()
    assert raising_filter.seen == 2
    assert [type(r.exc_value) for r in unraisable] == [Boom, Boom]


def test_records_from_several_threads(raising_filter: RaisingFilter, unraisable: list[Any]) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                with UntrustedStorage(10, 8, 8):
                    pass
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert_sane()
    assert raising_filter.seen == 4 * 20 * 2
    assert len(unraisable) == raising_filter.seen


def test_records_still_reach_python_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="oramstore")
    with UntrustedStorage(10, 8, 8) as st:
        nbytes = st.nbytes
    messages = [r.getMessage() for r in caplog.records if r.name == "oramstore"]
    assert len(messages) == 2
    assert all(f"bytes={nbytes}" in m for m in messages)
    record = next(r for r in caplog.records if r.name == "oramstore")
    assert record.levelno == logging.INFO
    assert record.pathname.endswith(".rs") and record.lineno > 0


def test_disabled_levels_reach_no_filter(unraisable: list[Any]) -> None:
    logger = logging.getLogger("oramstore")
    f = RaisingFilter()
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addFilter(f)
    try:
        with UntrustedStorage(10, 8, 8):
            pass
    finally:
        logger.removeFilter(f)
        logger.setLevel(level)
    assert f.seen == 0 and unraisable == []
