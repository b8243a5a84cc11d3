"""Build benchmark: fp32 / fp16 / int8 artifacts of a 320x320 ISNet, and int8 calibration cost
against ONNX Runtime's stock ``quantize_static`` in the same run.

Every build runs in its own process so its peak memory (max RSS) is its own.

    python bench/build.py [--calibration-images 50] [--arch isnet] [--stock/--no-stock] [--extra-images 500]

Prints one table: build time, peak memory, artifact size, fidelity vs fp32 on held-out images
and single-image latency of each artifact.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import ECSSD as ECSSD_ROOT, build_in_child, in_child

ECSSD = ECSSD_ROOT / "image"


def _stock(source_onnx: str, images: list[str], size: int, out_dir: str, queue) -> None:
    """ONNX Runtime's own path: quantize_static with an entropy calibrator over all images."""
    import shutil

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from isnet.build_in.ops import Preprocessor, default_process_ops
    from isnet.build_in.source_model import prepare_source

    pre = Preprocessor.from_specs(default_process_ops((size, size)))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(images)

        def get_next(self):
            path = next(self.items, None)
            return None if path is None else {"input": pre.load(path)[0][None]}

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp())
    # The same fp32 graph `isnet build` calibrates (prepared from the source file the same way).
    samples = [pre.load(path)[0] for path in images[:2]]
    prepare_source(source_onnx, work / "fp32.onnx", (size, size), samples)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(work / "fp32.onnx"), str(work / "prepared.onnx"))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    # The same quantization settings as `isnet build`'s defaults (uint8 activations, symmetric
    # int8 per-channel weights), so only the calibration differs between the rows.
    quantize_static(str(work / "prepared.onnx"), str(Path(out_dir) / "model.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=CalibrationMethod.Entropy,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"CalibTensorRangeSymmetric": False, "ActivationSymmetric": False,
                                   "WeightSymmetric": True})
    shutil.rmtree(work, ignore_errors=True)
    queue.put({"seconds": time.perf_counter() - started,
               "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, "dir": out_dir})


def _stock_in_child(*args) -> dict:
    return in_child(_stock, *args, what="stock quantize_static")


def _stock_fidelity(model: Path, fp32_model: Path, config: dict, work: Path) -> dict:
    """The stock model against the fp32 build on the held-out images `isnet build` checks."""
    from isnet.build_in.backends.onnxruntime_runner import OnnxRuntimeRunner
    from isnet.build_in.builder import _fidelity, _sample_inputs
    from isnet.build_in.config import validate_build_config

    checked = validate_build_config({**config, "name": "stock-check"}, source="bench", base_dir=work)
    held_out, _ = checked.held_out_images()
    inputs = _sample_inputs(checked.preprocessor(), held_out, tuple(checked.input_shape[2:]))
    return _fidelity(fp32_model, OnnxRuntimeRunner(model), inputs[:len(held_out)], "held-out images")


def _latency_ms(model_file: Path, size: int, runs: int = 20) -> float:
    import numpy as np

    from isnet.build_in.backends.onnxruntime_runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(model_file)
    x = (np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32) - 0.5)
    for _ in range(3):
        runner.infer({"input": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        runner.infer({"input": x})
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration-images", type=int, default=50, help="calibration images (default 50)")
    parser.add_argument("--extra-images", type=int, default=0,
                        help="also calibrate ours (kl) on this many images to show memory stays flat")
    parser.add_argument("--arch", default="isnet", help="isnet (official size, random weights) or isnet-lite")
    parser.add_argument("--weights", default="random", help="checkpoint, or random (default)")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--no-stock", action="store_true", help="skip the stock quantize_static row")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    if not ECSSD.is_dir():
        raise SystemExit(f"ECSSD images not found at {ECSSD}")

    from isnet.build_in.imageio import list_images
    from isnet.export.exporter import ExportRequest, export_model

    work = Path(args.work or tempfile.mkdtemp(prefix="isnet-bench-build-"))
    exported = export_model(ExportRequest(weights=args.weights, arch=args.arch if args.weights == "random" else None,
                                          size=(args.size, args.size), output_dir=work, name="source",
                                          formats=("onnx",)))
    source = exported.files["onnx"]
    config = {
        "name": "x",
        "frontend": {"type": "onnx", "checkpoint": str(source), "shape": {"input": [1, 3, args.size, args.size]}},
        "backend": {"type": "onnxruntime", "dtype": "fp32"},
        "dataset": {"path": str(ECSSD), "sampler": {"suffix": "jpg", "get_data_num": args.calibration_images}},
        "workspace": {"path": str(work / "artifacts")},
    }
    runs = [("fp32", {"backend": {"dtype": "fp32"}}),
            ("fp16", {"backend": {"dtype": "fp16"}}),
            (f"int8 kl, {args.calibration_images} img", {"backend": {"dtype": "int8", "quantize": {"calibrate_mode": "kl_divergence"}}}),
            (f"int8 max, {args.calibration_images} img", {"backend": {"dtype": "int8", "quantize": {"calibrate_mode": "max"}}})]
    if args.extra_images:
        runs.append((f"int8 kl, {args.extra_images} img", {
            "backend": {"dtype": "int8", "quantize": {"calibrate_mode": "kl_divergence"}},
            "dataset": {**config["dataset"], "sampler": {"suffix": "jpg", "get_data_num": args.extra_images}}}))
    rows = []
    for number, (label, overrides) in enumerate(runs):
        print(f"building {label} ...", file=sys.stderr, flush=True)
        result = build_in_child({**config, **overrides, "name": f"build{number}"}, work)
        model = Path(result["dir"]) / "model.onnx"
        fidelity = result["info"]["fidelity"]
        rows.append((label, "isnet build", result["seconds"], result["peak_gb"], model.stat().st_size / 1e6,
                     fidelity["mean_abs_diff"], fidelity["max_abs_diff"], _latency_ms(model, args.size)))
    if not args.no_stock:
        print("building stock quantize_static ...", file=sys.stderr, flush=True)
        images = [str(p) for p in list_images(ECSSD, ("jpg",))[: args.calibration_images]]
        result = _stock_in_child(str(source), images, args.size, str(work / "stock"))
        model = Path(result["dir"]) / "model.onnx"
        fidelity = _stock_fidelity(model, work / "artifacts" / "build0" / "model.onnx", config, work)
        rows.append((f"int8 entropy (128 bins), {args.calibration_images} img", "ORT quantize_static", result["seconds"],
                     result["peak_gb"], model.stat().st_size / 1e6, fidelity["mean_abs_diff"],
                     fidelity["max_abs_diff"], _latency_ms(model, args.size)))

    print(f"\nISNet '{args.arch}' ({args.weights} weights) at {args.size}x{args.size}; "
          f"{platform.processor() or platform.machine()}, {multiprocessing.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    header = ("build", "tool", "time s", "peak GB", "size MB", "mean|d| fp32", "max|d| fp32", "latency ms")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, tool, seconds, peak, size_mb, mean_d, max_d, latency in rows:
        print(f"| {label} | {tool} | {seconds:.1f} | {peak:.2f} | {size_mb:.1f} | {mean_d:.2e} | {max_d:.2e} | "
              f"{latency:.1f} |")
    (work / "results.json").write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
