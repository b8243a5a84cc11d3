"""Build benchmark: fp32 / fp16 / int8 artifacts of a 320x320 ISNet, and int8 calibration cost
against ONNX Runtime's stock ``quantize_static`` in the same run.

Every build runs in its own process so its peak memory (max RSS) is its own.

    python bench/build.py [--calibration-images 50] [--arch isnet] [--stock/--no-stock] [--extra-images 500]
    python bench/build.py --calibration-throughput [--throughput-images 10] [--before COMMIT]
                          [--isnet1024] [--modes max,percentile,kl_divergence]

Prints one table: build time, peak memory, artifact size, fidelity vs fp32 on held-out images
and single-image latency of each artifact.

``--calibration-throughput`` prints the cost of calibration statistics instead: for the pretrained
U^2-Netp (``bench/pretrained.py``) and the full-size ISNet (random weights) at 320x320, each mode's
calibration time per image per pass next to one fp32 inference of the same prepared graph,
measured in the same run. ``--before COMMIT`` adds the same rows for the calibration code of an
older commit (checked out with ``git archive`` into a temporary folder and run in its own
process), on the same prepared graph and images. ``--isnet1024`` measures the real ISNet (DIS
authors' weights) at its deployed 1024x1024 instead.
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
    from isnet.build_in.runners.onnxruntime import OnnxRuntimeRunner
    from isnet.build_in.builder import _fidelity, _sample_inputs
    from isnet.build_in.config import validate_build_config

    checked = validate_build_config({**config, "name": "stock-check"}, source="bench", base_dir=work)
    held_out, _ = checked.held_out_images()
    inputs = _sample_inputs(checked.preprocessor(), held_out, tuple(checked.input_shape[2:]))
    return _fidelity(fp32_model, OnnxRuntimeRunner(model), inputs[:len(held_out)], "held-out images")


def _latency_ms(model_file: Path, size: int, runs: int = 20) -> float:
    import numpy as np

    from isnet.build_in.runners.onnxruntime import OnnxRuntimeRunner

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


_CALIBRATE = """
import json, resource, sys, time
from pathlib import Path
from isnet.build_in.calibration import CalibrationSource, compute_tensor_ranges
from isnet.build_in.config import CalibrationMode
from isnet.build_in.ops import Preprocessor, resolve_process_ops
import onnx
model, images, ops, mode, work = json.loads(sys.argv[1])
input_name = onnx.load(model, load_external_data=False).graph.input[0].name
source = CalibrationSource([Path(p) for p in images], Preprocessor.from_specs(resolve_process_ops(ops)), input_name)
started = time.perf_counter()
ranges = compute_tensor_ranges(model, source, CalibrationMode(mode), work)
print(json.dumps({"seconds": time.perf_counter() - started, "tensors": len(ranges.data),
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}))
"""


def _calibrate_in_child(code_root: Path | None, model: Path, images: list[str], ops, mode: str, work: Path) -> dict:
    """``compute_tensor_ranges`` in a fresh process, from ``code_root``'s isnet (default: this checkout)."""
    import os
    import subprocess

    env = dict(os.environ)
    if code_root is not None:  # an older isnet first on the path, ahead of the installed one
        env["PYTHONPATH"] = str(code_root)
    work.mkdir(parents=True, exist_ok=True)
    output = subprocess.run([sys.executable, "-c", _CALIBRATE, json.dumps([str(model), images, ops, mode, str(work)])],
                            env=env, check=True, capture_output=True, text=True, cwd=work).stdout
    return json.loads(output.strip().splitlines()[-1])


def _prepared(source: Path, images: list[str], ops, work: Path) -> tuple[Path, list]:
    """The graph ``isnet build`` calibrates (source preparation, then ORT's pre-processing), and inputs."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from isnet.build_in.ops import Preprocessor, resolve_process_ops
    from isnet.build_in.source_model import prepare_source

    pre = Preprocessor.from_specs(resolve_process_ops(ops))
    inputs = [pre.load(path)[0][None] for path in images]
    work.mkdir(parents=True, exist_ok=True)
    prepare_source(str(source), work / "fp32.onnx", tuple(inputs[0].shape[2:]), [x[0] for x in inputs[:2]])
    quant_pre_process(str(work / "fp32.onnx"), str(work / "prepared.onnx"))
    return work / "prepared.onnx", inputs


def _inference_ms(model: Path, inputs: list) -> float:
    """Median wall time of one fp32 inference of ``model`` over ``inputs`` (after a warm-up)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: inputs[0]})
    times = []
    for x in inputs:
        started = time.perf_counter()
        session.run(None, {name: x})
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def calibration_throughput(args) -> int:
    """The --calibration-throughput table (see the module docstring)."""
    import subprocess

    from pretrained import fetch_u2netp

    from isnet.build_in.imageio import list_images
    from isnet.export.exporter import ExportRequest, export_model
    from isnet.runtime import host_info

    work = Path(args.work or tempfile.mkdtemp(prefix="isnet-bench-calib-"))
    images = [str(p) for p in list_images(ECSSD, ("jpg",))[: args.throughput_images]]
    if args.isnet1024:
        from pretrained import fetch_isnet

        models = [("ISNet (DIS weights) 1024", fetch_isnet()["fp32"], "isnet-1024")]
    else:
        isnet = export_model(ExportRequest(weights="random", arch="isnet", size=(320, 320), output_dir=work / "isnet",
                                           name="isnet", formats=("onnx",))).files["onnx"]
        models = [("U2-Netp (pretrained)", fetch_u2netp(), "u2net"), ("ISNet (full size)", Path(isnet), "isnet-320")]
    modes = [(mode, 1 if mode == "max" else 2) for mode in args.modes.split(",")]
    before = None
    if args.before:
        before = work / "before"
        (before / "isnet").mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "archive", args.before],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before / "isnet")], input=archive, check=True)
    rows = []
    for label, source, ops in models:
        prepared, inputs = _prepared(source, images, ops, work / label.split()[0])
        inference = _inference_ms(prepared, inputs)
        for mode, passes in modes:
            for code, root in (("before", before), ("now", None)) if before else (("now", None),):
                print(f"calibrating {label}, {mode}, {code} ...", file=sys.stderr, flush=True)
                result = _calibrate_in_child(root, prepared, images, ops, mode, work / "calib" / f"{label[:5]}-{mode}-{code}")
                per_pass = 1000 * result["seconds"] / (len(images) * passes)
                rows.append([label, mode, code, str(result["tensors"]), f"{inference:.0f}", f"{per_pass:.0f}",
                             f"{per_pass / inference:.2f}x", f"{result['peak_gb']:.2f}"])
    print(f"\ncalibration statistics vs inference, {len(images)} ECSSD images; "
          f"{host_info()['cpu']}, {host_info()['logical_cores']} threads, Python {platform.python_version()}")
    header = ["model", "mode", "code", "tensors", "inference ms", "calibration ms / image / pass", "ratio",
              "peak GB"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration-throughput", action="store_true",
                        help="time calibration statistics against inference instead of building")
    parser.add_argument("--throughput-images", type=int, default=10, help="images for --calibration-throughput")
    parser.add_argument("--isnet1024", action="store_true",
                        help="with --calibration-throughput: the real ISNet (bench/pretrained.py) at 1024x1024 only")
    parser.add_argument("--modes", default="max,percentile,kl_divergence",
                        help="with --calibration-throughput: calibration modes (comma-separated)")
    parser.add_argument("--before", default=None, help="with --calibration-throughput: also the code of this commit")
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
    if args.calibration_throughput:
        return calibration_throughput(args)

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
