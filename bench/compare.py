"""Where the wall time of an ``isnet compare`` run goes, stage by stage.

    python bench/compare.py                         # pretrained U^2-Netp, 7 builds, 500 ECSSD pictures
    python bench/compare.py --images 100 --builds fp32,int8_max

The experiment is what a user iterating on a deployment runs: the real pretrained U^2-Netp
(``bench/pretrained.py``), calibrated on the first 50 ECSSD pictures, evaluated on the next
``--images`` (the first 50 again when more are asked for than exist beyond them is not done: the
evaluation set never includes calibration pictures), every build run, scored, profiled and
compared with fp32. The run starts from an empty report folder (nothing reused) and prints
``run_experiment``'s own stage clock: build, run (inference over the folder, decoding and writing
included), profile, and the rest (export, eval, drift, photos, report), with the share of the wall
time spent outside build, inference and profiling.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import ECSSD, markdown, split_ecssd
from pretrained import fetch_u2netp

BUILDS = "fp32,fp16,int8_kl,int8_max,int8_percentile,ov_bf16,ov_int8_max"
# Stages doing the work a comparison is for; everything else is overhead.
WORK_STAGES = ("build", "run", "profile", "photos")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="evaluation pictures (default 500; ECSSD has 500, "
                        "so at most 450 follow the 50 calibration ones)")
    parser.add_argument("--builds", default=BUILDS, help=f"compare presets (default {BUILDS})")
    parser.add_argument("--profile-seconds", type=float, default=3.0, help="profiling per build (default 3)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "isnet-bench-compare")
    args = parser.parse_args()
    from isnet.runtime import host_info
    from isnet.tools.compare import load_experiment, run_experiment

    if not (ECSSD / "image").is_dir():
        print(f"bench/compare.py: ECSSD not found at {ECSSD}", file=sys.stderr)
        return 2
    model = fetch_u2netp()
    shutil.rmtree(args.work / "report", ignore_errors=True)  # nothing reused
    calib, evaluation = split_ecssd(args.work, count=args.images)
    count = len(list((evaluation / "image").iterdir()))
    experiment = load_experiment({
        "name": "bench-compare", "model": str(model), "process_ops": "u2net", "dataset": {"path": str(evaluation)},
        "calibration": {"path": str(calib), "count": 50}, "builds": args.builds, "reference": "fp32",
        "run": {"drift_images": count}, "profile": {"seconds": args.profile_seconds},
        "report": {"path": str(args.work / "report")}}, "bench/compare.py", args.work)

    started = time.perf_counter()
    result = run_experiment(experiment)
    wall = time.perf_counter() - started
    stages = result.stage_seconds
    overhead = wall - sum(stages.get(stage, 0.0) for stage in WORK_STAGES)

    host = host_info()
    print(f"isnet compare, pretrained U2-Netp, {len(result.reports)} builds ({args.builds}), {count} ECSSD "
          f"pictures, drift on all of them; {host['cpu']}, {host['logical_cores']} threads, "
          f"Python {platform.python_version()}")
    rows = [[stage, f"{seconds:.1f}", f"{100 * seconds / wall:.1f}%"] for stage, seconds in stages.items()]
    unstaged = wall - sum(stages.values())
    rows.append(["(not in a stage)", f"{unstaged:.1f}", f"{100 * unstaged / wall:.1f}%"])
    rows.append(["total", f"{wall:.1f}", "100%"])
    print(markdown(["stage", "seconds", "share"], rows))
    share = overhead / wall
    print(f"outside build, inference and profiling: {overhead:.1f} s = {100 * share:.1f}% of the wall time "
          f"(goal <= 10%)")
    return 0 if share <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
