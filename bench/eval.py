"""Time ``isnet eval``'s metrics against PySODMetrics 1.6.2 on the 500 ECSSD pairs, and check the numbers.

    python bench/eval.py                          # ../shared/data/ECSSD next to the repository
    python bench/eval.py --dataset /path/to/ECSSD --limit 100

Predictions are made once from the GT masks (blurred, scaled, with noise; seeded) and saved as
PNG in a temporary folder. Every row then reads the same files with the same decoder and scores
all 13 metrics: PySODMetrics steps its five metric classes (MAE, Fmeasure, Emeasure, Smeasure,
WeightedFmeasure) per image in one process; ours runs ``evaluate_folders`` with one process (and
OpenCV limited to one thread, so it is a one-core figure like the reference's) and with 2 worker
processes. The last columns give the largest difference to the reference over the 13 metrics and
the 4 curves. Other jobs on the machine slow every row; compare figures taken at a similar load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from isnet.build_in.imageio import decode_mask, encode_png
from isnet.eval import evaluate_folders

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ECSSD"


def make_predictions(gt_dir: Path, out_dir: Path, limit: int | None) -> list[str]:
    """A plausible saliency map per GT mask, saved losslessly; returns the names."""
    names = sorted(p.stem for p in gt_dir.glob("*.png"))[:limit]
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        rng = np.random.default_rng(i)
        gt = decode_mask(gt_dir / f"{name}.png").astype(np.float32)
        pred = cv2.GaussianBlur(gt, (0, 0), 3) * 0.9 + rng.normal(10, 12, gt.shape)
        encode_png(out_dir / f"{name}.png", np.clip(np.rint(pred), 0, 255).astype(np.uint8))
    return names


def reference_run(pred_dir: Path, gt_dir: Path, names: list[str]) -> tuple[float, dict, dict]:
    """PySODMetrics' five classes stepped per image; returns seconds, metrics and curves."""
    import py_sod_metrics as sod

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice
        mae, fm, em, sm, wfm = sod.MAE(), sod.Fmeasure(), sod.Emeasure(), sod.Smeasure(), sod.WeightedFmeasure()
        for name in names:
            pred, gt = decode_mask(pred_dir / f"{name}.png"), decode_mask(gt_dir / f"{name}.png")
            for metric in (mae, fm, em, sm, wfm):
                metric.step(pred, gt)
        f, e = fm.get_results(), em.get_results()["em"]
    seconds = time.perf_counter() - start
    precision, recall, fcurve, ecurve = (np.flip(c) for c in (f["pr"]["p"], f["pr"]["r"], f["fm"]["curve"], e["curve"]))
    metrics = {"mae": mae.get_results()["mae"], "maxfmeasure": fcurve.max(), "avgfmeasure": fcurve.mean(),
               "adpfmeasure": f["fm"]["adp"], "maxprecision": precision.max(), "avgprecision": precision.mean(),
               "maxrecall": recall.max(), "avgrecall": recall.mean(), "maxem": ecurve.max(),
               "avgem": ecurve.mean(), "adpem": e["adp"], "sm": sm.get_results()["sm"],
               "wfm": wfm.get_results()["wfm"]}
    curves = {"precision": precision, "recall": recall, "fmeasure": fcurve, "em": ecurve}
    return seconds, metrics, curves


def max_difference(result, metrics: dict, curves: dict) -> tuple[float, float]:
    """Largest |ours - reference| over the metrics, and over the curve points."""
    metric_diff = max(abs(result.metrics[key] - float(value)) for key, value in metrics.items())
    curve_diff = max(float(np.abs(result.curves[name] - curve).max()) for name, curve in curves.items())
    return metric_diff, curve_diff


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATA,
                        help=f"ECSSD folder with mask/ (default {DEFAULT_DATA})")
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the parallel row (default 2)")
    args = parser.parse_args()

    gt_dir = args.dataset / "mask"
    if not gt_dir.is_dir():
        print(f"bench/eval.py: no masks at {gt_dir}; pass --dataset", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="isnet-eval-bench-") as tmp:
        pred_dir = Path(tmp) / "pred"
        names = make_predictions(gt_dir, pred_dir, args.limit)
        for name in names:  # warm the page cache so no row pays for the first read
            (pred_dir / f"{name}.png").read_bytes(), (gt_dir / f"{name}.png").read_bytes()

        print(f"isnet eval vs PySODMetrics 1.6.2: {len(names)} ECSSD pairs, all 13 metrics, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        ref_seconds, ref_metrics, ref_curves = reference_run(pred_dir, gt_dir, names)
        rows = [("PySODMetrics (5 classes)", 1, ref_seconds, None)]

        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        start = time.perf_counter()
        single = evaluate_folders(pred_dir, gt_dir, names, num_workers=1)
        rows.append(("isnet eval", 1, time.perf_counter() - start, single))
        cv2.setNumThreads(threads)
        start = time.perf_counter()
        parallel = evaluate_folders(pred_dir, gt_dir, names, num_workers=args.workers)
        rows.append(("isnet eval", args.workers, time.perf_counter() - start, parallel))

    print(f"{'implementation':<24} | {'processes':>9} | {'seconds':>7} | {'ms/pair':>7} | {'speed-up':>8} | "
          f"{'max |diff| metrics':>18} | {'max |diff| curves':>17}")
    print(f"{'-' * 24}-+-{'-' * 9}-+-{'-' * 7}-+-{'-' * 7}-+-{'-' * 8}-+-{'-' * 18}-+-{'-' * 17}")
    for label, processes, seconds, result in rows:
        if result is None:
            metric_diff, curve_diff = "(reference)", ""
        else:
            metric_diff, curve_diff = (f"{d:.1e}" for d in max_difference(result, ref_metrics, ref_curves))
        print(f"{label:<24} | {processes:>9} | {seconds:>7.2f} | {1000 * seconds / len(names):>7.2f} | "
              f"{ref_seconds / seconds:>7.1f}x | {metric_diff:>18} | {curve_diff:>17}")
    identical = single.metrics == parallel.metrics
    print(f"1 and {args.workers} processes give identical numbers: {'yes' if identical else 'NO'}")
    worst = max(max_difference(single, ref_metrics, ref_curves))
    return 0 if identical and worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
