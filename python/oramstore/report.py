"""Plots of benchmark records: ``oramstore report FILE... --out DIR``.

A record is what ``oramstore bench --json FILE`` and ``benches/bench_oram.py --json FILE``
write: ``{"oramstore": version, "workload": ..., "machine": {...}, "parameters": {...},
"figures": {...}}``, one per file or a list of them per file. The report draws what the records
hold, each plot only when some record feeds it:

* ``throughput.png``: accesses per second against N, one line per series (oramstore in memory,
  with 3 cached levels, on files; PyORAM in ctr and gcm mode);
* ``latency.png``: the distribution of single accesses' latencies (CDF), per run;
* ``memory.png``: peak resident growth against N, per series;
* ``breakdown.png``: one access against its floor (the AES-GCM calls and untrusted copies the
  design needs), as stacked bars per configuration.

matplotlib is an optional extra: ``pip install oramstore[report]``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["load_records", "write_report"]


def load_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every record in ``paths``.

    Raises:
        ValueError: a file is not JSON, or holds something that is not a record.
    """
    records: list[dict[str, Any]] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON: {error}") from None
        for record in data if isinstance(data, list) else [data]:
            if not isinstance(record, dict) or not {"workload", "parameters", "figures"} <= set(
                record
            ):
                raise ValueError(f"{path} holds something that is not a benchmark record")
            records.append(record)
    return records


def _series_name(record: dict[str, Any]) -> str:
    parameters = record["parameters"]
    if record["workload"] == "pyoram":
        return f"PyORAM 0.2.1 ({parameters.get('aes_mode', 'ctr')})"
    name = "oramstore"
    if parameters.get("path"):
        name += f", file ({parameters.get('durability', 'commit')})"
    if parameters.get("cached_levels") is not None:
        name += f", {parameters['cached_levels']} cached levels"
    return name


def write_report(records: Sequence[dict[str, Any]], out: str | Path) -> list[Path]:
    """Draw the plots the records feed into ``out`` (created if missing); returns their paths.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: no record feeds any plot.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "oramstore report draws with matplotlib: pip install 'oramstore[report]'"
        ) from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    machine = next((r.get("machine") for r in records if r.get("machine")), None)
    caption = (
        f"{machine.get('cpus')} CPUs, {machine.get('platform')}, Python {machine.get('python')}"
        if machine
        else ""
    )
    written: list[Path] = []

    def save(figure: Any, name: str, title: str) -> None:
        figure.suptitle(title)
        if caption:
            figure.text(0.99, 0.01, caption, ha="right", va="bottom", fontsize=7, color="gray")
        figure.tight_layout(rect=(0, 0.03, 1, 1))
        path = out / name
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)

    runs = [r for r in records if r["workload"] in ("oram", "pyoram")]
    # Runs of other block sizes are series of their own, not points of one line.
    several_sizes = len({int(r["parameters"]["block_size"]) for r in runs}) > 1
    by_series: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for record in runs:
        name = _series_name(record)
        if several_sizes:
            name += f", {record['parameters']['block_size']} B"
        by_series[name].append((int(record["parameters"]["blocks"]), record))
    for points in by_series.values():
        points.sort(key=lambda point: point[0])

    if runs:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for name, points in sorted(by_series.items()):
            xs = [n for n, _ in points]
            ys = [r["figures"]["accesses_per_second"] for _, r in points]
            axes.plot(xs, ys, marker="o", label=name)
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel("blocks (N)")
        axes.set_ylabel("accesses per second")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
        sizes = sorted({int(r["parameters"]["block_size"]) for r in runs})
        blocks = " and ".join(f"{size} B" for size in sizes)
        save(figure, "throughput.png", f"Path ORAM throughput, {blocks} blocks, random 50/50")

        figure, axes = plt.subplots(figsize=(7, 4.5))
        drawn = False
        for name, points in sorted(by_series.items()):
            xs = [n for n, r in points if r["figures"].get("peak_resident_growth_bytes")]
            ys = [
                r["figures"]["peak_resident_growth_bytes"] / 2**20
                for _, r in points
                if r["figures"].get("peak_resident_growth_bytes")
            ]
            if xs:
                axes.plot(xs, ys, marker="o", label=name)
                drawn = True
        if drawn:
            axes.set_xscale("log", base=2)
            axes.set_yscale("log")
            axes.set_xlabel("blocks (N)")
            axes.set_ylabel("peak resident growth (MiB)")
            axes.grid(True, which="both", alpha=0.3)
            axes.legend(fontsize=8)
            save(figure, "memory.png", "Memory against N")
        else:
            plt.close(figure)

    timed = [r for r in runs if r["figures"].get("latencies_us")]
    if timed:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for record in timed:
            samples = sorted(record["figures"]["latencies_us"])
            ys = [(k + 1) / len(samples) for k in range(len(samples))]
            n = int(record["parameters"]["blocks"])
            axes.plot(samples, ys, label=f"{_series_name(record)}, N=2^{n.bit_length() - 1}")
        axes.set_xscale("log")
        axes.set_xlabel("latency of one access (µs)")
        axes.set_ylabel("fraction of accesses")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
        save(figure, "latency.png", "Latency of single accesses (CDF)")

    floors = [r for r in records if r["workload"] == "floor"]
    if floors:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        labels, aes, copies, rest = [], [], [], []
        for record in floors:
            parameters, figures = record["parameters"], record["figures"]
            labels.append(
                f"2^{int(parameters['blocks']).bit_length() - 1} x {parameters['block_size']} B\n"
                f"{figures.get('sealed_levels', '?')} sealed levels"
            )
            aes.append(figures["aes_us"])
            copies.append(figures["copies_us"])
            rest.append(max(0.0, figures["access_us"] - figures["aes_us"] - figures["copies_us"]))
        positions = range(len(labels))
        axes.bar(positions, aes, label="AES-GCM (floor)")
        axes.bar(positions, copies, bottom=aes, label="untrusted copies (floor)")
        axes.bar(
            positions,
            rest,
            bottom=[a + c for a, c in zip(aes, copies, strict=True)],
            label="Python around them",
        )
        axes.set_xticks(list(positions), labels, fontsize=8)
        axes.set_ylabel("µs per access")
        axes.legend(fontsize=8)
        save(figure, "breakdown.png", "One access against its floor")

    if not written:
        raise ValueError("no record feeds any plot (workloads: oram, pyoram, floor)")
    return written
