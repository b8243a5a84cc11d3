"""Does ``isnet run`` keep the model busy? Images/s of a sequential loop, of the pipeline, and of pure inference.

    python bench/runtime.py                          # ECSSD images, fp32 and int8, 320x320
    python bench/runtime.py --limit 100 --precisions fp32 --work /tmp/isnet-bench

For each artifact (fp32 and int8, ONNX Runtime, ISNet at 320x320) it measures, on the same images:

- ``sequential``: a plain loop, decode -> pre-process -> infer -> restore -> save PNG, one image
  at a time (what a user's first script does);
- ``isnet run``: :func:`isnet.runtime.run_folder`, the pipeline behind the command (batch 1);
- ``inference``: :func:`isnet.runtime.profile_model`'s pure inference throughput (batch 1).

The three take turns in rounds of ``--chunk`` images (the order rotating each round) and their
images and seconds are summed over the rounds, so a burst of load from other jobs on the
machine falls on all of them alike.

Target: ``isnet run`` reaches at least 90% of pure inference throughput. The model has random
weights unless ``--weights`` names a checkpoint: throughput does not depend on the values.

The artifacts are made with ``isnet build`` (int8: KL calibration on the first 16 images).
Artifacts are kept in ``--work`` and reused by later runs. Other jobs on the machine slow
every figure down; the range of the load average over the measurements is printed with them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


from isnet.build_in.imageio import encode_png, list_images
from isnet.build_in.ops import mask_from_output
from isnet.core import atomic_path
from isnet.runtime import load_model, profile_model, run_folder

ECSSD_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ECSSD" / "image"
SIZE = 320
CALIBRATION_IMAGES = 16


def _artifacts(work: Path, weights: str, images_dir: Path, precisions: list[str]) -> dict[str, Path]:
    """fp32 / int8 (KL, 16 calibration images) ONNX Runtime artifacts made by ``isnet build``, reused if present."""
    from isnet.build_in import build_artifact, validate_build_config
    from isnet.export.exporter import ExportRequest, export_model

    source = work / "export" / "isnet.onnx"
    if not source.is_file():
        print(f"exporting ISNet ({weights}) at {SIZE}x{SIZE} ...", flush=True)
        export_model(ExportRequest(weights=weights, size=(SIZE, SIZE), output_dir=source.parent, name="isnet",
                                   formats=("onnx",), seed=0))
    artifacts = {}
    for precision in precisions:
        config = validate_build_config({
            "name": f"isnet-{precision}",
            "frontend": {"checkpoint": str(source), "shape": {"input": [1, 3, SIZE, SIZE]}},
            "backend": {"dtype": precision},
            "dataset": {"path": str(images_dir), "sampler": {"get_data_num": CALIBRATION_IMAGES}},
            "workspace": {"path": str(work)}}, source="bench/runtime.py", base_dir=work)
        if not (config.artifact_dir / "build.json").is_file():
            print(f"building {precision} ...", flush=True)
            build_artifact(config)
        artifacts[precision] = config.artifact_dir
    return artifacts


def _warm_model(artifact: Path, image: Path):
    """Open the artifact and run one image, so no figure includes the first, slower call."""
    model = load_model(artifact)
    model.predict(model.preprocessor.load(image)[0][None])
    return model


def _sequential(model, images: list[Path], save_dir: Path) -> tuple[int, float]:
    """The plain loop a first script would be: decode, pre-process, infer, restore, save; (images, seconds)."""
    start = time.perf_counter()
    for image in images:
        tensor, geometry = model.preprocessor.load(image)
        output = model.predict(tensor[None])[0, 0]
        mask = mask_from_output(output, geometry)
        with atomic_path(save_dir / f"{image.stem}.png") as tmp:
            encode_png(tmp, mask)
    return len(images), time.perf_counter() - start


def _pipeline(model, image_dir: Path, save_dir: Path) -> tuple[int, float]:
    """:func:`isnet.runtime.run_folder` (what ``isnet run`` calls) at batch 1; (images, seconds)."""
    result = run_folder(model, image_dir, save_dir, batch=1)
    if result.failed:
        raise RuntimeError(f"{result.failed} images failed: {result.failures[:3]}")
    return result.done, result.seconds


def _inference(artifact: Path, calls: int) -> tuple[int, float]:
    """The profiler's pure inference figure at batch 1; (images, seconds)."""
    [record] = profile_model(artifact, batches=[1], warmup=2, iterations=calls)
    return record.inference.images, record.inference.seconds


def _chunk_folders(images: list[Path], root: Path, chunk: int) -> list[tuple[Path, list[Path]]]:
    """Link the images into folders of ``chunk`` images each (``isnet run`` takes a folder)."""
    folders = []
    for number, first in enumerate(range(0, len(images), chunk)):
        folder = root / f"chunk-{number:03d}"
        folder.mkdir(parents=True)
        members = images[first:first + chunk]
        for image in members:
            os.symlink(image.resolve(), folder / image.name)
        folders.append((folder, members))
    return folders


METHODS = ("sequential", "isnet run", "inference")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-dir", type=Path, default=ECSSD_IMAGES, help=f"image folder (default {ECSSD_IMAGES})")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--chunk", type=int, default=50,
                        help="images per round; the three methods take turns round by round (default 50)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    parser.add_argument("--weights", default="random", help="checkpoint to export (default: random weights)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep artifacts here and reuse them (default: a temporary folder)")
    args = parser.parse_args()

    if not args.image_dir.is_dir():
        print(f"image folder not found: {args.image_dir}", file=sys.stderr)
        return 2
    scratch = tempfile.TemporaryDirectory(prefix="isnet-bench-runtime-")
    work = args.work or Path(scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    images = list_images(args.image_dir)[:args.limit]
    for image in images:
        image.read_bytes()  # into the OS cache, so the first measurement does not pay for the disk
    chunks = _chunk_folders(images, Path(scratch.name) / "chunks", args.chunk)

    artifacts = _artifacts(work, args.weights, args.image_dir, args.precisions)

    print(f"{len(images)} images from {args.image_dir}, ISNet {SIZE}x{SIZE}, ONNX Runtime, batch 1, "
          f"{os.cpu_count()} CPUs; methods interleaved in rounds of {args.chunk} images")
    rows = []
    for precision in args.precisions:
        artifact = artifacts[precision]
        sequential_model, pipeline_model = _warm_model(artifact, images[0]), _warm_model(artifact, images[0])
        totals = {method: [0, 0.0] for method in METHODS}
        loads = []
        for number, (folder, members) in enumerate(chunks):
            # Rotate the order each round, so a burst of load from other jobs hits every method alike.
            for method in METHODS[number % 3:] + METHODS[:number % 3]:
                loads.append(os.getloadavg()[0])
                save = Path(scratch.name) / f"{precision}-{method.replace(' ', '-')}"
                if method == "sequential":
                    done, seconds = _sequential(sequential_model, members, save)
                elif method == "isnet run":
                    done, seconds = _pipeline(pipeline_model, folder, save)
                else:
                    done, seconds = _inference(artifact, len(members))
                totals[method][0] += done
                totals[method][1] += seconds
            rates = "  ".join(f"{m} {totals[m][0] / totals[m][1]:.2f}" for m in METHODS)
            print(f"  {precision} after round {number + 1}/{len(chunks)}: {rates} images/s", flush=True)
        rows.append((precision, {m: totals[m][0] / totals[m][1] for m in METHODS}, min(loads), max(loads)))

    print()
    print("| artifact | sequential loop img/s | isnet run img/s | pure inference img/s | run / inference | "
          "sequential / inference | load avg (min-max) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for precision, f, low, high in rows:
        print(f"| {precision} | {f['sequential']:.2f} | {f['isnet run']:.2f} | {f['inference']:.2f} | "
              f"{100 * f['isnet run'] / f['inference']:.0f}% | {100 * f['sequential'] / f['inference']:.0f}% | "
              f"{low:.1f}-{high:.1f} |")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
