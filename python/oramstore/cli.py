"""The ``oramstore`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from oramstore import bench
from oramstore._native import UntrustedStorage


def _power_of_two_or_int(text: str) -> int:
    """Parse ``4096`` or ``2^12``/``2**12``."""
    for sep in ("^", "**"):
        if sep in text:
            base, exp = text.split(sep, 1)
            return int(int(base) ** int(exp))
    return int(text)


def _bench_storage(args: argparse.Namespace, console: Console) -> int:
    count, data_size, meta_size = args.count, args.data_size, args.meta_size
    batches = [int(b) for b in args.batches.split(",")]
    if any(b <= 0 or b > count for b in batches):
        console.print(f"[red]batch sizes must lie in 1..{count}[/red]")
        return 2
    seconds, resident = bench.creation_cost(count, data_size, meta_size)
    console.print(
        f"UntrustedStorage({count}, {data_size}, {meta_size}): "
        f"{count * (data_size + meta_size) / 2**30:.2f} GiB virtual, created in "
        f"{seconds * 1e6:.0f} µs with {resident / 1024:.0f} KiB resident"
    )
    with (
        UntrustedStorage(count, data_size, meta_size) as storage,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress,
    ):
        fill = progress.add_task("writing every item once", total=1)
        bench.fill_storage(storage)
        data_ref = np.full((count, data_size), 0x5A, np.uint8)
        meta_ref = np.full((count, meta_size), 0xA5, np.uint8)
        progress.advance(fill)
        task = progress.add_task("measuring", total=7 * len(batches))
        rows = list(
            bench.storage_rows(
                storage,
                data_ref,
                meta_ref,
                batches,
                rounds=args.rounds,
                progress=lambda: progress.advance(task),
            )
        )
    item = data_size + meta_size
    table = Table(title=f"batched copies of random items ({data_size} + {meta_size} bytes)")
    for col in (
        "batch",
        "checkout µs",
        "checkin µs",
        "GB/s out",
        "numpy take+put µs",
        "vs numpy",
        "vs run",
        "vs memcpy",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r.batch),
            f"{r.checkout * 1e6:.1f}",
            f"{r.checkin * 1e6:.1f}",
            f"{r.batch * item / r.checkout_into / 1e9:.2f}",
            f"{(r.numpy_take + r.numpy_put) * 1e6:.1f}",
            f"{r.speedup_over_numpy():.2f}x",
            f"{r.random_vs_contiguous():.0%}",
            f"{r.random_vs_plain_copy():.0%}",
        )
    console.print(table)
    console.print(
        "vs numpy: time of numpy fancy indexing (a[idx], m[idx]; a[idx] = x; m[idx] = y) over "
        "checkout + checkin. GB/s out, vs run, vs memcpy: bandwidth of checkout_into at random "
        "indices, and relative to checkout_into of adjacent items and to one numpy copy of a "
        f"contiguous slice of the same size. Medians of {args.rounds} rounds.",
        markup=False,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oramstore", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log allocations")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="measure throughput")
    b.add_argument(
        "workload", nargs="?", default="storage", choices=["storage"], help="what to measure"
    )
    b.add_argument("--count", type=_power_of_two_or_int, default=1 << 18, help="items (2^18)")
    b.add_argument("--data-size", type=_power_of_two_or_int, default=4096, help="bytes (4096)")
    b.add_argument("--meta-size", type=_power_of_two_or_int, default=64, help="bytes (64)")
    b.add_argument("--batches", default="1,17,64,1024", help="comma-separated batch sizes")
    b.add_argument("--rounds", type=int, default=7, help="rounds per median (7)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    console = Console()
    try:
        return _bench_storage(args, console)
    except (ValueError, MemoryError) as e:
        console.print(f"[red]{type(e).__name__}: {e}[/red]")
        return 2


if __name__ == "__main__":
    sys.exit(main())
