"""End to end: the demo checkpoint on ECSSD at 320x320, fp32 / fp16 / int8 (KL, max, percentile), one table.

    python bench/e2e.py [--weights export/weights/isnet-demo.pth] [--work DIR]

Calibration uses the first 50 ECSSD images and evaluation the other 450 (no overlap); the demo
checkpoint, distilled on 0001-0450, is evaluated on 0451-0500 only. The table
is ``isnet compare``'s: accuracy on ECSSD, drift from fp32, size, speed; then the accuracy
target of issue 7 (|dMAE| <= 0.002, |dSm| <= 0.003, |dmaxF| <= 0.005 against fp32) per build.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

from _common import ROOT, evaluation_start, markdown, split_ecssd

TARGET = {"mae": 0.002, "sm": 0.003, "maxfmeasure": 0.005}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(ROOT / "export" / "weights" / "isnet-demo.pth"))
    parser.add_argument("--builds", default="fp32,fp16,int8_kl,int8_max,int8_percentile")
    parser.add_argument("--work", type=Path, default=None, help="keep artifacts and masks here (reused by reruns)")
    parser.add_argument("--profile-seconds", type=float, default=5.0)
    args = parser.parse_args()

    from isnet.runtime import host_info
    from isnet.tools.compare import load_experiment, run_experiment, table_rows

    work = args.work or Path(tempfile.mkdtemp(prefix="isnet-bench-e2e-"))
    calib, evaluation = split_ecssd(work, evaluate_from=evaluation_start(args.weights))
    experiment = load_experiment({
        "name": "ecssd", "model": args.weights, "input_size": [320, 320], "dataset": {"path": str(evaluation)},
        "calibration": {"path": str(calib), "count": 50}, "builds": args.builds, "reference": "fp32",
        "run": {"drift_images": 500}, "profile": {"seconds": args.profile_seconds},
        "max_delta": TARGET, "report": {"path": str(work / "report")},
    }, source="bench/e2e.py", base=work)
    result = run_experiment(experiment)
    host = host_info()
    count = len(list((evaluation / "image").iterdir()))
    print(f"\n{Path(args.weights).name} on ECSSD ({count} evaluation images from "
          f"{evaluation_start(args.weights) + 1:04d}, 50 calibration), 320x320; "
          f"{host['cpu']}, {host['logical_cores']} threads, Python {platform.python_version()}")
    header, rows = table_rows(result.reports, result.reference)
    print(markdown(header, rows))
    reference = next(r for r in result.reports if r.name == result.reference)
    print("\n" + markdown(["build", "dMAE", "dSm", "dmaxF", "within target"], [
        [r.name, *(f"{r.metrics[m] - reference.metrics[m]:+.4f}" for m in TARGET),
         "yes" if not any(v.startswith(f"{r.name}:") for v in result.violations) else "no"]
        for r in result.reports if r.name != result.reference]))
    print(f"\nreport: {result.files['report.md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
