"""The Ray engine's overhead on one machine: `isnet run` (local pipeline) vs `isnet run --engine ray`.

    python bench/distributed.py [--work /tmp/isnet-bench-distributed] [--repeats 2]

The pretrained U^2-Netp built int8 (``int8_max`` preset, rembg's pre-processing, calibrated on ECSSD
0001-0050) runs over all 500 ECSSD pictures with each engine, as a user would: whole commands,
start-up included (for Ray: starting a local instance, the actor pool, one model per actor). Each
command runs ``--repeats`` times into a fresh folder, alternating engines; the best run counts.
The masks of the two engines are compared byte for byte.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ECSSD, build_preset, ecssd_work_folder, markdown, split_ecssd
from pretrained import fetch_u2netp


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})  # a local Ray instance
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "isnet-bench-distributed")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from isnet.runtime import host_info

    work = ecssd_work_folder(args.work, "bench/distributed.py")
    calib, _ = split_ecssd(work)
    artifact = build_preset("u2netp_int8_max", "int8_max", fetch_u2netp(), calib, work)
    images = ECSSD / "image"
    count = len(list(images.iterdir()))
    isnet = str(Path(sys.executable).parent / "isnet")
    cpus = os.cpu_count() or 1
    engines = {"local pipeline": [], f"ray (1 actor x {cpus} threads)": ["--engine", "ray", "--actors", "1",
                                                                       "--threads-per-actor", str(cpus)]}
    seconds = {name: [] for name in engines}
    for repeat in range(args.repeats):
        for name, options in engines.items():
            out = work / "masks" / name.split()[0]
            shutil.rmtree(out, ignore_errors=True)
            print(f"{name}, run {repeat + 1} ...", file=sys.stderr, flush=True)
            seconds[name].append(timed([isnet, "run", "--model", str(artifact), "--image-dir", str(images),
                                        "--output-dir", str(out), *options]))
    local, ray = (work / "masks" / name.split()[0] for name in engines)
    names = sorted(p.name for p in local.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(local, ray, names, shallow=False)
    base = min(seconds["local pipeline"])
    rows = [[name, " / ".join(f"{s:.1f}" for s in runs), f"{count / min(runs):.2f}",
             f"{100 * (min(runs) / base - 1):+.1f}%"] for name, runs in seconds.items()]
    host = host_info()
    print(f"\nU^2-Netp int8 over {count} ECSSD pictures, whole `isnet run` commands (start-up included), "
          f"best of {args.repeats}; {host['cpu']}, {host['logical_cores']} threads, Python {platform.python_version()}")
    print(markdown(["engine", "wall s (each run)", "images/s (best)", "overhead vs local"], rows))
    print(f"\nmasks: {len(names) - len(mismatch) - len(errors)} of {len(names)} files byte-identical "
          f"between the engines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
