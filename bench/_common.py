"""Shared pieces of the benchmarks: the ECSSD split and builds measured in their own process."""

from __future__ import annotations

import multiprocessing
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ECSSD = ROOT.parent / "shared" / "data" / "ECSSD"
# rembg as the peer of the benchmarks that compare with it (bench/rembg.py, bench/serve.py).
REMBG = "rembg[cpu,cli]==2.0.86"


# The shipped demo checkpoint was distilled on ECSSD 0001-0450 (export/weights/MODEL_CARD.md): its
# accuracy is only ever measured on 0451-0500.
DEMO_WEIGHTS = ROOT / "export" / "weights" / "isnet-demo.pth"
DEMO_HELD_OUT_FROM = 450


def ecssd_work_folder(work: Path, script: str) -> Path:
    """``work``, created, once ECSSD is known to be there (a one-line exit naming ``script`` if not)."""
    if not (ECSSD / "image").is_dir():
        raise SystemExit(f"{script}: ECSSD not found at {ECSSD}")
    work.mkdir(parents=True, exist_ok=True)
    return work


def evaluation_start(weights) -> int:
    """Index of the first ECSSD picture to evaluate ``weights`` on: 50, or 450 for the demo checkpoint."""
    return DEMO_HELD_OUT_FROM if Path(str(weights)).resolve() == DEMO_WEIGHTS.resolve() else 50


def split_ecssd(work: Path, calibration: int = 50, evaluate_from: int | None = None,
                count: int | None = None) -> tuple[Path, Path]:
    """Link ECSSD into ``work``: the first ``evaluate_from`` images (default ``calibration``) into the
    calibration folder, with their masks beside it (a budgeted build validates on those after the
    first ``calibration``), and from ``evaluate_from`` on to evaluate, at most ``count`` of them
    (default: all).

    Returns (calibration image folder, evaluation set in ECSSD layout). The two never overlap, so
    int8 scores are not flattered by their own calibration images. Links a previous split left
    that this one does not want are removed.
    """
    evaluate_from = calibration if evaluate_from is None else evaluate_from
    from isnet.eval import ecssd_pairs

    if not (ECSSD / "image").is_dir():
        raise SystemExit(f"ECSSD not found at {ECSSD}")
    calib, evaluation = work / "calib" / "image", work / "eval"
    pairs = ecssd_pairs(ECSSD)
    start = max(evaluate_from, calibration)
    evaluated = pairs[start:] if count is None else pairs[start:start + count]
    wanted = {calib: {image.name: image for _, image, _ in pairs[:start]},
              calib.parent / "mask": {mask.name: mask for _, _, mask in pairs[:start]},
              evaluation / "image": {image.name: image for _, image, _ in evaluated},
              evaluation / "mask": {mask.name: mask for _, _, mask in evaluated}}
    for folder, links in wanted.items():
        folder.mkdir(parents=True, exist_ok=True)
        for stale in set(p.name for p in folder.iterdir()) - set(links):
            (folder / stale).unlink()
        for name, target in links.items():
            if not (folder / name).exists():
                os.symlink(target, folder / name)
    return calib, evaluation


def _build_child(config: dict, base_dir: str, queue) -> None:
    from isnet.build_in import build_artifact, validate_build_config

    started = time.perf_counter()
    result = build_artifact(validate_build_config(config, source="bench", base_dir=Path(base_dir)), force=True)
    queue.put({"seconds": time.perf_counter() - started,
               "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
               "dir": str(result.artifact_dir), "info": result.info})


def in_child(target, *args, what: str) -> dict:
    """``target(*args, queue)`` in a fresh (spawned) process; return what it put on the queue.

    A fresh process per measurement, so that its peak RSS is its own.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode:
        raise SystemExit(f"{what} failed (exit code {process.exitcode})")
    return result


def timed(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run ``command``; return (wall seconds, peak resident memory in MB) as GNU time reports them."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", report.name, *command], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds, kilobytes = report.read().split()[-2:]
    return float(seconds), float(kilobytes) / 1024


def mask_drift(folder_a: Path, folder_b: Path) -> float:
    """Mean |difference| in [0, 1] of the same-named 8-bit masks of two folders."""
    import numpy as np

    from isnet.build_in import decode_mask

    diffs = [np.abs(decode_mask(a).astype(np.float64) - decode_mask(folder_b / a.name).astype(np.float64)).mean()
             for a in sorted(folder_a.glob("*.png"))]
    return float(np.mean(diffs)) / 255.0


def build_in_child(config: dict, base_dir: Path) -> dict:
    """``build_artifact`` in a fresh process: its time, its own peak RSS (GB) and the build.json."""
    return in_child(_build_child, config, str(base_dir), what=f"build {config.get('name')}")


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def rembg_venv(work: Path) -> Path:
    """rembg's command in a venv of its own under ``work`` (installed on first use): a peer, never imported."""
    venv = work / "rembg-venv"
    rembg = venv / "bin" / "rembg"
    if not rembg.exists():
        print(f"installing {REMBG} into {venv} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", REMBG], check=True)
    return rembg


def build_preset(name: str, preset: str, model: Path, calib: Path, work: Path, process_ops: str = "u2net",
                 calibration: int = 50, budget: dict | None = None) -> Path:
    """``work/artifacts/<name>``: ``model`` built with an ``isnet compare`` preset, ``process_ops`` (default
    rembg's U^2-Net pre-processing) and the first ``calibration`` images of ``calib`` (reused when already
    built). A budgeted preset gets ``budget`` (``{"mae": ..., ...}``) as its max_drift, validated on the
    images of ``calib`` calibration leaves (their masks in ``calib/../mask``), as ``isnet compare`` does."""
    import copy
    from functools import partial

    from isnet.build_in import build_artifact, read_build_info, validate_build_config
    from isnet.eval import selection_scores
    from isnet.tools.compare import PRESETS
    from isnet.tools.compare.experiment import BUDGETED_PRESETS

    artifact = work / "artifacts" / name
    if not (artifact / "build.json").is_file():
        print(f"building {name} ...", file=sys.stderr, flush=True)
        settings = copy.deepcopy(PRESETS[preset])
        scorer = None
        if preset in BUDGETED_PRESETS:
            if not budget:
                raise SystemExit(f"{preset} is budgeted: give a budget")
            settings["backend"]["quantize"].update(max_drift=budget, validation={"path": str(calib.parent)})
            scorer = partial(selection_scores, smeasure=True)
        config = {"name": name, "frontend": {"checkpoint": str(model)}, **settings,
                  "dataset": {"path": str(calib), "process_ops": process_ops,
                              "sampler": {"get_data_num": calibration}},
                  "workspace": {"path": str(work / "artifacts")}}
        started = time.perf_counter()
        build_artifact(validate_build_config(config, source="bench", base_dir=work), force=True, scorer=scorer)
        print(f"built {name} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    read_build_info(artifact)
    return artifact
