"""``oramstore report``: plots from benchmark records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from oramstore.cli import main
from oramstore.report import load_records, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def run(n: int, rate: float, workload: str = "oram", **parameters: Any) -> dict[str, Any]:
    return {
        "workload": workload,
        "machine": {"cpus": 2, "platform": "test", "python": "3.11"},
        "parameters": {"blocks": n, "block_size": 4096, **parameters},
        "figures": {
            "accesses_per_second": rate,
            "peak_resident_growth_bytes": n * 8192,
            "latencies_us": [100.0 + k for k in range(50)],
        },
    }


def test_every_plot_is_drawn_from_the_records_that_feed_it(tmp_path: Path) -> None:
    records = [
        run(1 << 12, 6500),
        run(1 << 16, 4100),
        run(1 << 16, 3000, cached_levels=3),
        run(1 << 12, 2100, "pyoram", aes_mode="ctr"),
        run(1 << 16, 1300, "pyoram", aes_mode="gcm"),
        {
            "workload": "floor",
            "parameters": {"blocks": 1 << 16, "block_size": 4096},
            "figures": {"access_us": 210.0, "aes_us": 44.0, "copies_us": 22.0, "sealed_levels": 5},
        },
    ]
    (tmp_path / "runs.json").write_text(json.dumps(records[:5]))
    (tmp_path / "floor.json").write_text(json.dumps(records[5]))
    loaded = load_records([tmp_path / "runs.json", tmp_path / "floor.json"])
    assert loaded == records
    written = write_report(loaded, tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["breakdown.png", "latency.png", "memory.png", "throughput.png"]
    for path in written:
        assert path.read_bytes().startswith(PNG) and path.stat().st_size > 5000


def test_only_the_plots_with_data_are_drawn(tmp_path: Path) -> None:
    record = run(1 << 10, 7000)
    del record["figures"]["latencies_us"]
    written = write_report([record], tmp_path)
    assert sorted(p.name for p in written) == ["memory.png", "throughput.png"]
    with pytest.raises(ValueError, match="no record feeds"):
        write_report([{"workload": "storage", "parameters": {}, "figures": {}}], tmp_path)


def test_bad_files_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not JSON"):
        load_records([tmp_path / "junk.json"])
    with pytest.raises(ValueError, match="not a benchmark record"):
        load_records([tmp_path / "other.json"])
    assert main(["report", str(tmp_path / "junk.json"), "--out", str(tmp_path / "o")]) == 2
    assert main(["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not JSON" in err and "missing.json" in err


def test_bench_json_feeds_the_report(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    assert main(["bench", "--blocks", "2^8", "--block-size", "64", "--accesses", "30",
                 "--json", str(out)]) == 0  # fmt: skip
    assert len(json.loads(out.read_text())["figures"]["latencies_us"]) == 30
    assert main(["report", str(out), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "latency.png").read_bytes().startswith(PNG)


def test_each_block_size_is_a_series_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.axes import Axes

    labels: list[str] = []
    real_plot = Axes.plot

    def plot(self: Axes, *args: Any, **kwargs: Any) -> Any:
        labels.append(kwargs.get("label", ""))
        return real_plot(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", plot)
    small = run(1 << 16, 27000)
    small["parameters"]["block_size"] = 64
    write_report([run(1 << 12, 6500), run(1 << 16, 4100), small], tmp_path)
    assert {"oramstore, 4096 B", "oramstore, 64 B"} <= set(labels)
