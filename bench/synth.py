"""Time ``generate_dataset``: how long 2,000 synthetic image/mask pairs take to write.

    python bench/synth.py                      # 2,000 pictures with 1 and with 2 workers
    python bench/synth.py --count 500 --workers 2 4

Each run writes into a fresh temporary folder (deleted afterwards), so nothing is skipped. The
table shows the wall time, the rate, the size on disk and the load average before the run (other
jobs on the machine slow it down; the figure is only comparable at a similar load).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from isnet.tools.synth import generate_dataset


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="pictures per run (default 2000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time (default 1 2)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    args = parser.parse_args()

    print(f"isnet synth: {args.count} pictures, seed {args.seed}, {os.cpu_count()} CPUs")
    print(f"{'workers':>7} | {'seconds':>7} | {'images/s':>8} | {'ms/image':>8} | {'MB':>6} | {'load before':>11}")
    print(f"{'-' * 7}-+-{'-' * 7}-+-{'-' * 8}-+-{'-' * 8}-+-{'-' * 6}-+-{'-' * 11}")
    for workers in args.workers:
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="isnet-synth-bench-") as tmp:
            summary = generate_dataset(Path(tmp) / "set", args.count, seed=args.seed, workers=workers)
            size = _folder_mb(summary.out_dir)
        rate = summary.written / summary.seconds
        print(f"{workers:>7} | {summary.seconds:>7.1f} | {rate:>8.1f} | {1000 / rate:>8.1f} | {size:>6.1f} | "
              f"{load:>11.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
