"""oramstore: fast untrusted memory for Oblivious RAM, and the trusted logic that makes it safe.

Subcommands:
  bench          measure a PathORAM workload (in memory or, with --path, a durable store)
  bench storage  measure the untrusted storage's batched copies against numpy
  bench dict     measure an ObliviousDict against one PathORAM access and a plain dict
  report         draw plots from the JSON records of bench runs (needs matplotlib)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from oramstore import __version__, bench
from oramstore._native import UntrustedStorage
from oramstore.enclave.tree import DEFAULT_TREETOP_BYTES


def _count(text: str, *, zero: bool = False) -> int:
    """A positive integer (or zero, if allowed), written ``4096`` or ``2^12`` / ``2**12``."""
    try:
        for sep in ("^", "**"):
            if sep in text:
                base, exp = text.split(sep, 1)
                if not 0 <= int(exp) <= 64:
                    raise ValueError
                value = int(int(base) ** int(exp))
                break
        else:
            value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number (4096, 2^12 or 2**12)"
        ) from None
    if value < 0 or (value == 0 and not zero):
        raise argparse.ArgumentTypeError(f"must be {'>= 0' if zero else 'positive'}, got {text}")
    return value


def _bytes(text: str) -> int:
    return _count(text, zero=True)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _batches(text: str) -> list[int]:
    return [_count(part.strip()) for part in text.split(",")]


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
    batches = args.batches
    if any(b > count for b in batches):
        raise _UsageError(f"--batches: every batch must hold at most --count ({count}) items")
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


def _bench_dict(args: argparse.Namespace, console: Console) -> int:
    with _progress(console) as progress:
        tasks = {
            "fill": progress.add_task("filling to capacity", total=args.capacity),
            "operations": progress.add_task("map operations", total=args.operations),
            "oram": progress.add_task("PathORAM accesses", total=None),
        }
        run = bench.run_dict(
            args.capacity,
            args.key_size,
            args.value_size,
            operations=args.operations,
            seconds=args.seconds,
            progress=lambda phase, n: progress.advance(tasks[phase], n),
        )
    table = Table(
        title=f"ObliviousDict({args.capacity}, {args.key_size}, {args.value_size}), filled"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("setup", f"{run.setup_seconds * 1e3:.2f} ms"),
        ("operations per second", f"{run.operations_per_second:,.0f}"),
        ("PathORAM accesses per second, same blocks", f"{run.oram_accesses_per_second:,.0f}"),
        ("one operation / one access", f"{run.ratio_to_oram_access():.2f}x"),
        ("ORAM accesses per operation (the floor)", f"{run.accesses_per_operation:.2f}"),
        ("plain dict operations per second", f"{run.plain_operations_per_second:,.0f}"),
        ("peak resident growth", _size(run.memory_growth)),
        ("trusted memory", _size(run.trusted_bytes)),
        ("stash peak / capacity", f"{run.stash_peak} / {run.stash_size}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _bench_oram(args: argparse.Namespace, console: Console) -> int:
    blocks, size = args.blocks, args.block_size
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
    if args.json is not None:
        _write_json(
            args.json,
            "oram",
            {
                "blocks": blocks,
                "block_size": size,
                "bucket_size": args.bucket_size,
                "treetop_bytes": args.treetop_bytes,
                "position_map": args.position_map,
                "path": args.path,
                "durability": args.durability if args.path is not None else None,
            },
            {
                "setup_seconds": run.setup_seconds,
                "accesses": run.accesses,
                "access_seconds": run.access_seconds,
                "accesses_per_second": run.accesses_per_second,
                "untrusted_resident_bytes": run.untrusted_resident,
                "trusted_bytes": run.trusted_bytes,
                "peak_resident_growth_bytes": run.memory_growth,
                "stash_peak": run.stash_peak,
                "stash_size": run.stash_size,
                "latencies_us": [round(t * 1e6, 2) for t in run.latencies],
            },
        )
        console.print(f"figures written to {args.json}", markup=False)
    console.print(
        "Random blocks, half reads and half writes. "
        "Every access checks out and checks in one random branch, verified (AES-GCM and a "
        "Merkle tree of bucket records) and re-encrypted. Peak resident growth: the process's "
        "peak RSS minus its RSS before setup.",
        markup=False,
    )
    return 0


class _UsageError(Exception):
    """A mistake on the command line that only shows once the arguments are read together."""


def machine() -> dict[str, Any]:
    """What a benchmark record says of the machine it came from."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "oramstore": __version__,
    }


def _write_json(path: str, workload: str, parameters: dict[str, Any], figures: Any) -> None:
    """Write the run's figures with their parameters and the machine they came from."""
    record = {
        "oramstore": __version__,
        "workload": workload,
        "machine": machine(),
        "parameters": parameters,
        "figures": figures,
    }
    with open(path, "w") as file:
        json.dump(record, file, indent=2)
        file.write("\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oramstore",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"oramstore {__version__}")
    verbose = argparse.ArgumentParser(add_help=False)
    # SUPPRESS keeps the subcommand's copy from resetting a -v given before it.
    verbose.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log allocations"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log allocations")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    b = sub.add_parser(
        "bench",
        parents=[verbose],
        help="measure a PathORAM workload (default) or the untrusted storage alone",
        description="Measure an ORAM workload (default) or the untrusted storage alone.",
    )
    b.add_argument(
        "workload",
        nargs="?",
        default="oram",
        choices=["oram", "storage", "dict"],
        help="oram: random reads and writes of a PathORAM (default); storage: batched copies; "
        "dict: an ObliviousDict's operations",
    )
    o = b.add_argument_group("oram workload")
    o.add_argument("--blocks", type=_count, default=1 << 16, help="blocks (2^16)")
    o.add_argument("--block-size", type=_count, default=4096, help="bytes per block (4096)")
    o.add_argument("--accesses", type=_count, default=20000, help="(20000)")
    o.add_argument(
        "--seconds", type=_seconds, default=40.0, help="stop measuring after this long (40)"
    )
    o.add_argument("--bucket-size", type=_count, default=4, help="blocks per bucket, Z (4)")
    o.add_argument(
        "--treetop-bytes",
        type=_bytes,
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
    o.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    d = b.add_argument_group("dict workload")
    d.add_argument("--capacity", type=_count, default=1 << 16, help="entries (2^16)")
    d.add_argument("--key-size", type=_count, default=32, help="bytes per key (32)")
    d.add_argument("--value-size", type=_count, default=256, help="bytes per value (256)")
    d.add_argument("--operations", type=_count, default=5000, help="timed operations (5000)")
    s = b.add_argument_group("storage workload")
    s.add_argument("--count", type=_count, default=1 << 18, help="items (2^18)")
    s.add_argument("--data-size", type=_count, default=4096, help="bytes (4096)")
    s.add_argument("--meta-size", type=_count, default=64, help="bytes (64)")
    s.add_argument(
        "--batches", type=_batches, default=[1, 17, 64, 1024], help="comma-separated batch sizes"
    )
    s.add_argument("--rounds", type=_count, default=7, help="rounds per median (7)")
    r = sub.add_parser(
        "report",
        parents=[verbose],
        help="draw plots from the JSON records of bench runs (needs matplotlib)",
        description="Draw throughput, latency, memory and cost-breakdown plots from the JSON "
        "records that `oramstore bench --json` and benches/bench_oram.py --json write.",
    )
    r.add_argument("files", nargs="+", metavar="FILE", help="JSON records")
    r.add_argument("--out", required=True, metavar="DIR", help="directory for the PNG files")
    return parser


def _report(args: argparse.Namespace, console: Console) -> int:
    from oramstore.report import load_records, write_report

    try:
        written = write_report(load_records(args.files), args.out)
    except ImportError as error:
        print(f"oramstore: error: {error}", file=sys.stderr)
        return 2
    for path in written:
        console.print(f"wrote {path}", markup=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    console = Console()
    try:
        if args.command == "report":
            return _report(args, console)
        if args.workload == "storage":
            return _bench_storage(args, console)
        if args.workload == "dict":
            return _bench_dict(args, console)
        return _bench_oram(args, console)
    except _UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"oramstore: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, MemoryError, OSError) as e:
        print(f"oramstore: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oramstore: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
