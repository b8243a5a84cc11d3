"""Time ``isnet eval``'s metrics against PySODMetrics 1.6.2 on the 500 ECSSD pairs, and check the numbers.

    python bench/eval.py                          # ../shared/data/ECSSD next to the repository
    python bench/eval.py --dataset /path/to/ECSSD --limit 100

Two prediction sets are made once from the GT masks (seeded) and saved as PNG in a temporary
folder: "plausible" (every map a blurred, noisy GT) and "mixed" (what a method's folder holds in
practice: plausible, inverted and uniform-noise maps, maps of another size, constant maps; see
``MIXED_KINDS``). Each row is a whole command timed from outside, start-up included, reading the
same files: a PySODMetrics script stepping its five metric classes (MAE, Fmeasure, Emeasure,
Smeasure, WeightedFmeasure) per image, and ``isnet eval`` with one process (OpenCV and OpenMP held
to one thread: a one-core figure like the reference's) and with 2 worker processes. The last
columns give the largest difference to the reference over the 13 metrics and the 4 curves. Each
row is the best of ``--repeat`` runs (default 3): other jobs on the machine only ever add time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from isnet.build_in.imageio import decode_mask, encode_png

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


# The mixed set: what a method's folder looks like in practice besides good maps.
MIXED_KINDS = ("blurred", "inverted", "noise", "other-size", "constant")


def make_mixed_predictions(gt_dir: Path, out_dir: Path, limit: int | None) -> tuple[list[str], list[str]]:
    """One prediction per GT mask, the kind cycling through ``MIXED_KINDS``; returns names and kinds.

    blurred: the plausible map of :func:`make_predictions`; inverted: that map upside down in value;
    noise: uniform noise; other-size: the plausible map at 320x320 (scored after a bilinear resize
    to the GT, as PySODEvalToolkit does); constant: a single grey level (0, 128 or 255).
    """
    names = sorted(p.stem for p in gt_dir.glob("*.png"))[:limit]
    kinds = [MIXED_KINDS[i % len(MIXED_KINDS)] for i in range(len(names))]
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, (name, kind) in enumerate(zip(names, kinds)):
        rng = np.random.default_rng(i)
        gt = decode_mask(gt_dir / f"{name}.png").astype(np.float32)
        plausible = np.clip(np.rint(cv2.GaussianBlur(gt, (0, 0), 3) * 0.9 + rng.normal(10, 12, gt.shape)), 0, 255)
        if kind == "blurred":
            pred = plausible
        elif kind == "inverted":
            pred = 255 - plausible
        elif kind == "noise":
            pred = rng.integers(0, 256, gt.shape)
        elif kind == "other-size":
            pred = cv2.resize(plausible.astype(np.uint8), (320, 320), interpolation=cv2.INTER_AREA)
        else:
            pred = np.full(gt.shape, (0, 128, 255)[(i // len(MIXED_KINDS)) % 3])
        encode_png(out_dir / f"{name}.png", pred.astype(np.uint8))
    return names, kinds


def reference_run(pred_dir: Path, gt_dir: Path, names: list[str]) -> tuple[float, dict, dict]:
    """PySODMetrics' five classes stepped per image; returns seconds, metrics and curves.

    A prediction of another size is resized to its GT bilinearly first, as PySODEvalToolkit does.
    """
    import py_sod_metrics as sod

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice
        mae, fm, em, sm, wfm = sod.MAE(), sod.Fmeasure(), sod.Emeasure(), sod.Smeasure(), sod.WeightedFmeasure()
        for name in names:
            pred, gt = decode_mask(pred_dir / f"{name}.png"), decode_mask(gt_dir / f"{name}.png")
            if pred.shape != gt.shape:
                pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
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


def max_difference(metrics: dict, curves: dict, ref_metrics: dict, ref_curves: dict) -> tuple[float, float]:
    """Largest |ours - reference| over the metrics, and over the curve points."""
    metric_diff = max(abs(metrics[key] - float(value)) for key, value in ref_metrics.items())
    curve_diff = max(float(np.abs(curves[name] - curve).max()) for name, curve in ref_curves.items())
    return metric_diff, curve_diff


def _reference_child(pred_dir: str, gt_dir: str, out: str) -> int:
    """The reference as a whole command: imports, reading, scoring; results saved for the parent."""
    names = sorted(p.stem for p in Path(gt_dir).glob("*.png") if (Path(pred_dir) / p.name).is_file())
    _, metrics, curves = reference_run(Path(pred_dir), Path(gt_dir), names)
    np.save(out, {"metrics": {k: float(v) for k, v in metrics.items()}, "curves": curves}, allow_pickle=True)
    return 0


def _timed(command: list[str], env: dict | None = None, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` runs of ``command`` (the machine's noise only ever adds time)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def bench_set(label: str, pred_dir: Path, gt_dir: Path, workers: int, work: Path, repeat: int) -> tuple[list, bool]:
    """Whole commands on one prediction folder: the reference script, ``isnet eval`` with 1 and ``workers``
    processes. Returns table rows and whether every number matched."""
    one_core = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}
    ref_out = work / f"{label}-reference.npy"
    ref_seconds = _timed([sys.executable, __file__, "--reference-child", str(pred_dir), str(gt_dir), str(ref_out)],
                         env=one_core, repeat=repeat)
    reference = np.load(ref_out, allow_pickle=True).item()
    rows = [[label, "PySODMetrics (5 classes)", "1", f"{ref_seconds:.2f}", "1.0x", "(reference)", ""]]
    isnet = str(Path(sys.executable).parent / "isnet")
    numbers, matched = [], True
    for processes in (1, workers):
        record, curves_file = work / f"{label}-{processes}.json", work / f"{label}-{processes}-curves.npy"
        seconds = _timed([isnet, "eval", "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--name", "m",
                          "--workers", str(processes), "--record-json", str(record), "--curves-npy", str(curves_file)],
                         env=one_core if processes == 1 else None, repeat=repeat)
        metrics = next(iter(json.loads(record.read_text()).values()))["m"]
        curves = next(iter(np.load(curves_file, allow_pickle=True).item().values()))["m"]
        numbers.append(metrics)
        diffs = max_difference(metrics, curves, reference["metrics"], reference["curves"])
        rows.append([label, "isnet eval", str(processes), f"{seconds:.2f}", f"{ref_seconds / seconds:.1f}x",
                     f"{diffs[0]:.1e}", f"{diffs[1]:.1e}"])
        matched = matched and diffs[0] <= 1e-6 and diffs[1] <= 1e-6
    return rows, matched and numbers[0] == numbers[1]


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--reference-child":
        return _reference_child(*sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATA,
                        help=f"ECSSD folder with mask/ (default {DEFAULT_DATA})")
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the parallel row (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the best time counts (default 3)")
    args = parser.parse_args()

    gt_dir = args.dataset / "mask"
    if not gt_dir.is_dir():
        print(f"bench/eval.py: no masks at {gt_dir}; pass --dataset", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="isnet-eval-bench-") as tmp:
        work = Path(tmp)
        names = make_predictions(gt_dir, work / "plausible", args.limit)
        make_mixed_predictions(gt_dir, work / "mixed", args.limit)
        for folder in (work / "plausible", work / "mixed", gt_dir):  # warm the page cache for every row
            for path in folder.glob("*.png"):
                path.read_bytes()
        print(f"isnet eval vs PySODMetrics 1.6.2, whole commands: {len(names)} ECSSD pairs, all 13 metrics, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        rows, ok = [], True
        for label in ("plausible", "mixed"):
            set_rows, matched = bench_set(label, work / label, gt_dir, args.workers, work, args.repeat)
            rows += set_rows
            ok = ok and matched

    print(f"{'set':<9} | {'implementation':<24} | {'processes':>9} | {'seconds':>7} | {'speed-up':>8} | "
          f"{'max |diff| metrics':>18} | {'max |diff| curves':>17}")
    print(f"{'-' * 9}-+-{'-' * 24}-+-{'-' * 9}-+-{'-' * 7}-+-{'-' * 8}-+-{'-' * 18}-+-{'-' * 17}")
    for label, implementation, processes, seconds, speedup, metric_diff, curve_diff in rows:
        print(f"{label:<9} | {implementation:<24} | {processes:>9} | {seconds:>7} | {speedup:>8} | "
              f"{metric_diff:>18} | {curve_diff:>17}")
    print(f"numbers equal the reference (<= 1e-6) and 1 and {args.workers} processes agree: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
