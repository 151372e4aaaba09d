"""Print the results of `cargo bench --bench alloc` side by side, with ratios.

For every workload the table gives each allocator's median time per iteration and its ratio to
the untrusted allocator's (that allocator's time divided by ours: above 1, ours is faster). For
the thread groups it gives the throughput of one and of two threads and their ratio.

On a machine shared with other work single runs scatter, so several runs can be combined: copy
`target/criterion` aside after each run and pass the copies. Each figure is then the median over
the runs, with the lowest and highest ratio in brackets.

Usage: python3 benches/criterion_ratios.py [CRITERION_DIR ...]   (default: target/criterion)
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

OURS = "untrusted"
OTHERS = ("buddy_system_allocator", "system")

#: ``{group: {function: (median ns per iteration, elements per iteration)}}``
Run = dict[str, dict[str, tuple[float, int | None]]]


def load(root: Path) -> Run:
    groups: Run = defaultdict(dict)
    for meta_path in sorted(root.glob("**/new/benchmark.json")):
        meta = json.loads(meta_path.read_text())
        estimates = json.loads((meta_path.parent / "estimates.json").read_text())
        median = float(estimates["median"]["point_estimate"])
        elements = (meta.get("throughput") or {}).get("Elements")
        name = meta["function_id"]
        if meta.get("value_str"):
            name = f"{name}/{meta['value_str']}"
        groups[meta["group_id"]][name] = (median, elements)
    return groups


def fmt_time(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def fmt_ratios(ratios: list[float]) -> str:
    text = f"{statistics.median(ratios):.2f}x"
    if len(ratios) > 1:
        text += f" [{min(ratios):.2f}-{max(ratios):.2f}]"
    return text


def workloads(runs: list[Run]) -> None:
    names = sorted({g for run in runs for g in run if g != "threads"})
    print(f"{'workload':<12} {OURS:>10}" + "".join(f" {o:>34}" for o in OTHERS))
    for group in names:
        ours = [run[group][OURS][0] for run in runs if OURS in run.get(group, {})]
        if not ours:
            continue
        cells = []
        for other in OTHERS:
            pairs = [
                (run[group][other][0], run[group][OURS][0])
                for run in runs
                if other in run.get(group, {}) and OURS in run[group]
            ]
            if not pairs:
                cells.append("-")
                continue
            time = statistics.median(t for t, _ in pairs)
            cells.append(f"{fmt_time(time)} {fmt_ratios([t / o for t, o in pairs])}")
        row = f"{group:<12} {fmt_time(statistics.median(ours)):>10}"
        print(row + "".join(f" {c:>34}" for c in cells))


def threads(runs: list[Run]) -> None:
    print()
    print("small alloc/free pairs on two threads against one (Mpairs/s, all threads together)")
    for subject in (OURS, "system"):
        rates: dict[int, list[float]] = {1: [], 2: []}
        scaling = []
        for run in runs:
            group = run.get("threads", {})
            per_run = {}
            for n in (1, 2):
                median, elements = group.get(f"{subject}/{n}", (0.0, None))
                if median and elements:
                    per_run[n] = elements / median * 1e3
                    rates[n].append(per_run[n])
            if len(per_run) == 2:
                scaling.append(per_run[2] / per_run[1])
        if scaling:
            print(
                f"  {subject:<10} 1 thread {statistics.median(rates[1]):6.1f}"
                f"   2 threads {statistics.median(rates[2]):6.1f}"
                f"   2 against 1: {fmt_ratios(scaling)}"
            )


def main() -> int:
    roots = [Path(arg) for arg in sys.argv[1:]] or [Path("target/criterion")]
    runs = [load(root) for root in roots]
    runs = [run for run in runs if run]
    if not runs:
        print("no criterion results found; run `cargo bench --bench alloc` first")
        return 1
    print(f"medians of {len(runs)} run(s); ratio = that allocator's time / untrusted's time")
    workloads(runs)
    threads(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
