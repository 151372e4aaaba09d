"""UntrustedStorage through Python, side by side with what a user would otherwise write.

Run: ``make bench-python`` (or ``python benches/bench_storage.py``). Prints the three figures the
storage is held to, each a ratio measured in one run:

* a 17-item ORAM path, checkout + checkin, against numpy fancy indexing take + put on arrays of
  the same shape (target: at least 1.5x faster);
* checkout_into of 1024 random items against copying the same number of contiguous bytes
  (target: at least 70% of the bandwidth), both from the same storage and from a numpy array;
* creating a 2^20-item storage of 4096 + 64 bytes (target: under 1 ms and 1 MiB resident).
"""

from __future__ import annotations

import numpy as np

from oramstore import UntrustedStorage, bench

COUNT, DATA, META = 1 << 18, 4096, 64


def main() -> None:
    with UntrustedStorage(COUNT, DATA, META) as storage:
        bench.fill_storage(storage)
        data_ref = np.full((COUNT, DATA), 0x5A, np.uint8)
        meta_ref = np.full((COUNT, META), 0xA5, np.uint8)
        rows = {r.batch: r for r in bench.storage_rows(storage, data_ref, meta_ref, [17, 1024])}
    seconds, resident = bench.creation_cost()

    path, big = rows[17], rows[1024]
    print(f"storage of {COUNT} items of {DATA} + {META} bytes; medians of 7 rounds")
    print(
        f"17 items checkout+checkin: {(path.checkout + path.checkin) * 1e6:.1f} us, "
        f"numpy take+put {(path.numpy_take + path.numpy_put) * 1e6:.1f} us: "
        f"{path.speedup_over_numpy():.2f}x faster (target 1.5x)"
    )
    gbps = 1024 * (DATA + META) / big.checkout_into / 1e9
    print(
        f"checkout_into 1024 random items: {gbps:.2f} GB/s = "
        f"{big.random_vs_contiguous():.0%} of 1024 adjacent items from the same storage, "
        f"{big.random_vs_plain_copy():.0%} of one numpy copy of a contiguous slice (target 70%)"
    )
    print(
        f"create UntrustedStorage(2**20, 4096, 64): {seconds * 1e6:.1f} us, "
        f"{resident / 1024:.0f} KiB resident (target under 1 ms and 1 MiB)"
    )


if __name__ == "__main__":
    main()
