"""rembg against isnet on the same U^2-Netp file: the 450 evaluation pictures of ECSSD, one table.

    python bench/rembg.py [--work /tmp/isnet-bench-rembg] [--builds fp32,fp16,int8_max,ov_fp32,ov_bf16,ov_int8_max]

rembg's own folder mode (``rembg p -m u2netp -om``) is installed by this script in a venv of its
own (``<work>/rembg-venv``; rembg is a peer here, never imported by isnet) and pointed at the
cached model (``U2NET_HOME``), so it downloads nothing. isnet builds the same file for each
precision (calibration: the first 50 ECSSD pictures, which are not evaluated) and runs
``isnet run --min-max-normalize`` on the other 450, the post-processing rembg applies, so masks
are compared like with like. For each: wall time of the whole folder (start-up included), images/s,
peak memory (``/usr/bin/time``), MAE / max F / S-measure against the ground truth, and the drift of
its masks from isnet fp32's (mean |difference| in [0, 1]). The fp32 row also gives its distance
from rembg's masks.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from _common import REMBG, build_preset, markdown, mask_drift, rembg_venv, split_ecssd, timed
from pretrained import fetch_u2netp

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "isnet-bench-rembg",
                        help="working folder, reused by reruns (default: <tmp>/isnet-bench-rembg)")
    parser.add_argument("--builds", default="fp32,fp16,int8_max,ov_fp32,ov_bf16,ov_int8_max",
                        help="isnet compare presets to build and run (fp32 first)")
    args = parser.parse_args()
    from isnet.eval import evaluate_folders
    from isnet.runtime import host_info

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model = fetch_u2netp()
    calib, evaluation = split_ecssd(work)
    images, gt = evaluation / "image", evaluation / "mask"
    count = len(list(images.iterdir()))
    isnet = str(Path(sys.executable).parent / "isnet")
    threads = {"OMP_NUM_THREADS": str(os.cpu_count() or 1)}

    rows = []
    rembg = rembg_venv(work)
    home = work / "u2net-home"
    home.mkdir(exist_ok=True)
    shutil.copyfile(model, home / "u2netp.onnx")
    out = work / "masks" / "rembg"
    shutil.rmtree(out, ignore_errors=True)
    print("running rembg ...", file=sys.stderr, flush=True)
    seconds, peak = timed([str(rembg), "p", "-m", "u2netp", "-om", str(images), str(out)],
                           env={**os.environ, **threads, "U2NET_HOME": str(home)})
    rows.append((f"rembg {REMBG.split('==')[1]} (onnxruntime fp32)", out, seconds, peak))

    builds = [b.strip() for b in args.builds.split(",") if b.strip()]
    for preset in builds:
        artifact = build_preset(f"u2netp_{preset}", preset, model, calib, work)
        out = work / "masks" / preset
        shutil.rmtree(out, ignore_errors=True)
        print(f"running isnet {preset} ...", file=sys.stderr, flush=True)
        seconds, peak = timed([isnet, "run", "--model", str(artifact), "--image-dir", str(images),
                                "--output-dir", str(out), "--min-max-normalize"], env={**os.environ, **threads})
        rows.append((f"isnet {preset}", out, seconds, peak))

    reference = work / "masks" / builds[0]
    table = []
    for label, out, seconds, peak in rows:
        scores = evaluate_folders(out, gt, metric_names=("mae", "fmeasure", "sm")).metrics
        drift = "-" if label.startswith("rembg") else f"{mask_drift(out, reference):.4f}"
        table.append([label, f"{seconds:.1f}", f"{count / seconds:.2f}", f"{peak:.0f}", f"{scores['mae']:.4f}",
                      f"{scores['maxfmeasure']:.4f}", f"{scores['sm']:.4f}", drift])
    host = host_info()
    print(f"\nU^2-Netp (rembg's u2netp.onnx) on {count} ECSSD pictures (0051-0500); {host['cpu']}, "
          f"{host['logical_cores']} threads, Python {platform.python_version()}; masks min-max stretched as "
          "rembg's; wall time of the whole command, start-up included")
    print(markdown(["", "wall s", "images/s", "peak MB", "MAE", "maxF", "Sm", f"drift vs isnet {builds[0]}"], table))
    print(f"\nmean |isnet {builds[0]} mask - rembg mask| = {mask_drift(reference, work / 'masks' / 'rembg'):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
