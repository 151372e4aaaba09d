"""The ``oramstore`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from oramstore import bench
from oramstore._native import UntrustedStorage
from oramstore.enclave.tree import DEFAULT_TREETOP_BYTES


def _power_of_two_or_int(text: str) -> int:
    """Parse ``4096`` or ``2^12``/``2**12``."""
    for sep in ("^", "**"):
        if sep in text:
            base, exp = text.split(sep, 1)
            return int(int(base) ** int(exp))
    return int(text)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


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
        _progress(console) as progress,
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


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _bench_oram(args: argparse.Namespace, console: Console) -> int:
    blocks, size = args.blocks, args.block_size
    if args.accesses <= 0:
        console.print("[red]--accesses must be positive[/red]")
        return 2
    durable: dict[str, Any] = {}
    if args.path is not None:
        # A throwaway key: the store exists to be measured, not to be reopened.
        durable = {"path": args.path, "key": os.urandom(32), "durability": args.durability}
    with _progress(console) as progress:
        task = progress.add_task(f"PathORAM({blocks}, {size}): random 50/50", total=args.accesses)
        run = bench.run_oram(
            blocks,
            size,
            accesses=args.accesses,
            seconds=args.seconds,
            progress=lambda n: progress.advance(task, n),
            bucket_size=args.bucket_size,
            treetop_bytes=args.treetop_bytes,
            position_map=args.position_map,
            **durable,
        )
    where = f", in {args.path} ({args.durability})" if args.path is not None else ""
    table = Table(title=f"PathORAM({blocks}, {size}, bucket_size={args.bucket_size}){where}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("setup", f"{run.setup_seconds * 1e3:.2f} ms"),
        ("accesses", f"{run.accesses}"),
        ("accesses per second", f"{run.accesses_per_second:,.0f}"),
        ("mean latency", f"{run.access_seconds / run.accesses * 1e6:.0f} µs"),
        ("user data (virtual)", _size(blocks * size)),
        ("untrusted touched", _size(run.untrusted_resident)),
        ("trusted memory", _size(run.trusted_bytes)),
        ("peak resident growth", _size(run.memory_growth)),
        ("stash peak / capacity", f"{run.stash_peak} / {run.stash_size}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print(
        "Random blocks, half reads and half writes. "
        "Every access checks out and checks in one random branch, verified (AES-GCM and a "
        "Merkle tree of bucket records) and re-encrypted. Peak resident growth: the process's "
        "peak RSS minus its RSS before setup.",
        markup=False,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oramstore", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log allocations")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "bench",
        help="measure throughput",
        description="Measure an ORAM workload (default) or the untrusted storage alone.",
    )
    b.add_argument(
        "workload",
        nargs="?",
        default="oram",
        choices=["oram", "storage"],
        help="oram: random reads and writes of a PathORAM (default); storage: batched copies",
    )
    o = b.add_argument_group("oram workload")
    o.add_argument("--blocks", type=_power_of_two_or_int, default=1 << 16, help="blocks (2^16)")
    o.add_argument(
        "--block-size", type=_power_of_two_or_int, default=4096, help="bytes per block (4096)"
    )
    o.add_argument("--accesses", type=_power_of_two_or_int, default=20000, help="(20000)")
    o.add_argument(
        "--seconds", type=float, default=40.0, help="stop measuring after this long (40)"
    )
    o.add_argument("--bucket-size", type=int, default=4, help="blocks per bucket, Z (4)")
    o.add_argument(
        "--treetop-bytes",
        type=_power_of_two_or_int,
        default=DEFAULT_TREETOP_BYTES,
        help="trusted memory for the tree's top levels (32 MiB)",
    )
    o.add_argument(
        "--position-map", choices=["auto", "array", "recursive"], default="auto", help="(auto)"
    )
    o.add_argument(
        "--path",
        default=None,
        help="run a durable store in this new directory (files) instead of memory",
    )
    o.add_argument(
        "--durability",
        choices=["commit", "access"],
        default="commit",
        help="with --path: what is durable, the last commit or every access (commit)",
    )
    s = b.add_argument_group("storage workload")
    s.add_argument("--count", type=_power_of_two_or_int, default=1 << 18, help="items (2^18)")
    s.add_argument("--data-size", type=_power_of_two_or_int, default=4096, help="bytes (4096)")
    s.add_argument("--meta-size", type=_power_of_two_or_int, default=64, help="bytes (64)")
    s.add_argument("--batches", default="1,17,64,1024", help="comma-separated batch sizes")
    s.add_argument("--rounds", type=int, default=7, help="rounds per median (7)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    console = Console()
    try:
        if args.workload == "storage":
            return _bench_storage(args, console)
        return _bench_oram(args, console)
    except (ValueError, TypeError, MemoryError) as e:
        console.print(f"[red]{type(e).__name__}: {e}[/red]")
        return 2


if __name__ == "__main__":
    sys.exit(main())
