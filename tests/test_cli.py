"""The ``oramstore`` command: mistakes are one readable line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import oramstore
from oramstore.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oramstore.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["bench", "--seconds", "0"], "--seconds: must be positive"),
        (["bench", "--seconds", "soon"], "is not a number of seconds"),
        (["bench", "--rounds", "0"], "--rounds: must be positive"),
        (["bench", "--blocks", "abc"], "'abc' is not a whole number"),
        (["bench", "--blocks", "2^x"], "is not a whole number"),
        (["bench", "--accesses", "-5"], "must be positive"),
        (["bench", "storage", "--count", "64", "--batches", "65"], "at most --count (64)"),
        (["bench", "storage", "--batches", "1,,2"], "is not a whole number"),
        (["bench", "--bucket-size", "2", "--accesses", "10"], "bucket_size must be at least 4"),
        (["bench", "--position-map", "tree"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_every_mistake_is_one_line_and_exit_code_two(args: list[str], says: str) -> None:
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and says in errors[0], result.stderr


def test_version_and_help() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"oramstore {oramstore.__version__}"
    assert oramstore.__version__[0].isdigit()
    help_text = run("--help").stdout
    assert "Oblivious RAM" in help_text and "bench storage" in help_text


def test_verbose_works_before_and_after_the_subcommand() -> None:
    for args in (["-v", "bench"], ["bench", "-v"]):
        result = run(
            *args,
            "--blocks",
            "64",
            "--block-size",
            "16",
            "--accesses",
            "20",
            "--treetop-bytes",
            "64",
        )
        assert result.returncode == 0, result.stderr
        assert "allocated untrusted storage" in result.stderr


def test_storage_bench_with_a_batch_as_large_as_the_storage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "storage", "--count", "64", "--batches", "1,64", "--rounds", "1"]) == 0
    assert "batched copies" in capsys.readouterr().out


def test_json_and_a_durable_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    args = ["bench", "--blocks", "2^8", "--block-size", "64", "--accesses", "50"]
    assert main([*args, "--path", str(tmp_path / "store"), "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["workload"] == "oram" and record["oramstore"] == oramstore.__version__
    assert record["parameters"]["blocks"] == 256 and record["parameters"]["durability"] == "commit"
    assert record["figures"]["accesses"] == 50 > 0 < record["figures"]["accesses_per_second"]
    assert (tmp_path / "store" / "state").is_file()
    # The directory now holds a store: a second run there is refused in one line.
    assert main([*args, "--path", str(tmp_path / "store")]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_dict_bench(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "dict", "--capacity", "2^8", "--operations", "40"]) == 0
    out = capsys.readouterr().out
    assert "ObliviousDict(256, 32, 256)" in out and "one operation / one access" in out
