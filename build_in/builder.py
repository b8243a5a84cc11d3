"""``build_artifact``: from a validated config to a deployable folder with ``build.json``.

The steps are the same for every backend: get an fp32 ONNX (exporting a ``.pth`` through
export/ first), fix its spatial size (batch stays dynamic) and simplify it, let the backend
compile it, then run the artifact and the fp32 model side by side on held-out images. All of it
happens in a temporary folder that is renamed into place at the very end, so a failed or
interrupted build leaves nothing and never clobbers a good artifact unless ``force``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from isnet.build_in.artifact import BUILD_JSON, FORMAT_VERSION
from isnet.build_in.backends import get_backend
from isnet.build_in.runners.onnxruntime import OnnxRuntimeRunner
from isnet.build_in.budget import DriftJudge, MaskScorer
from isnet.build_in.config import BuildConfig, FrontendType, Precision
from isnet.build_in.difference import DifferenceAccumulator
from isnet.build_in.ops import Preprocessor
from isnet.build_in.source_model import prepare_source
from isnet.core import IsnetError, atomic_dir, sha256_file

Progress = Callable[[str, int, int], None]
BUILD_STEPS = 4


@dataclass
class BuildResult:
    """Where the artifact is and what its ``build.json`` says."""

    artifact_dir: Path
    info: dict


def _source_onnx(config: BuildConfig, work: Path) -> tuple[Path, str | None]:
    """The fp32 ONNX to compile, exporting a PyTorch checkpoint first; also the arch name if known."""
    if config.frontend.type is FrontendType.ONNX:
        return config.frontend.checkpoint, None
    from isnet.export.exporter import ExportRequest, export_model

    result = export_model(ExportRequest(weights=str(config.frontend.checkpoint), size=tuple(config.input_shape[2:]),
                                        output_dir=work, name="exported", formats=("onnx",),
                                        arch=config.frontend.arch, opset=config.frontend.opset))
    return result.files["onnx"], result.arch


def _combined_hash(items: list[dict]) -> str:
    digest = hashlib.sha256()
    for item in sorted(i["sha256"] for i in items):
        digest.update(item.encode())
    return digest.hexdigest()


def _sample_inputs(preprocessor: Preprocessor, images: list[Path], size: tuple[int, int],
                   count: int = 2) -> list[tuple[str, np.ndarray]]:
    """Pre-processed inputs from ``images``, or deterministic smooth pseudo-images when there are none."""
    inputs = [(p.name, preprocessor.load(p)[0]) for p in images]
    rng = np.random.default_rng(0)
    while len(inputs) < count:
        rgb = (rng.random((size[0] // 8 + 1, size[1] // 8 + 1, 3)) * 255).astype(np.uint8)
        rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
        inputs.append((f"synthetic-{len(inputs)}", preprocessor.transform(rgb)[0]))
    return inputs


def _fidelity(reference: Path, artifact_runner, inputs: list[tuple[str, np.ndarray]], source: str) -> dict:
    """Run the fp32 model and the artifact on the same inputs; summarise |difference|."""
    fp32 = OnnxRuntimeRunner(reference)
    difference = DifferenceAccumulator()
    for _, tensor in inputs:
        feed = tensor[None]
        expected = fp32.infer({fp32.input_name: feed})[fp32.output_name]
        got = artifact_runner.infer({artifact_runner.input_name: feed})[artifact_runner.output_name]
        difference.add(expected, got)
    total = difference.total()
    return {"source": source, "images": [name for name, _ in inputs],
            "mean_abs_diff": total.mean_abs, "max_abs_diff": total.max_abs, "nonfinite_values": total.nonfinite}


# Mean |difference| of the output maps from fp32 (on the held-out images) past which a build of
# that precision is reported as changing the masks. A good int8 build of an ISNet / U²-Net drifts
# 5e-4 to 2e-3; the pretrained U²-Netp's broken int8 builds drift 0.05 (bench/README.md).
DEFAULT_DRIFT_BOUNDS = {Precision.FP16: 0.002, Precision.BF16: 0.01, Precision.INT8: 0.01}


def _check_drift(config: BuildConfig, fidelity: dict) -> dict:
    """The drift bound that applies and its verdict; an error when ``backend.quantize.max_drift`` is exceeded.

    Past the default bound the build still succeeds, with a warning in build.json (``fidelity.warning``)
    that ``isnet build`` and ``isnet compare`` print.
    """
    precision = config.backend.dtype
    strict = config.backend.quantize.max_drift.mean_abs if precision is Precision.INT8 else None
    bound = strict if strict is not None else DEFAULT_DRIFT_BOUNDS.get(precision)
    if bound is None:
        return {}
    drift = fidelity["mean_abs_diff"]
    verdict = {"drift_bound": bound, "drift_bound_source": "backend.quantize.max_drift.mean_abs" if strict is not None
               else "default", "within_bound": drift <= bound}
    if drift <= bound:
        return verdict
    figure = (f"mean |diff| from fp32 {drift:.4f} on {len(fidelity['images'])} {fidelity['source']} is past "
              f"{'backend.quantize.max_drift.mean_abs' if strict is not None else 'the ' + precision.value + ' bound'} "
              f"{bound:g}")
    if strict is not None:
        raise IsnetError(f"{config.name}: {figure}; no artifact written. Try another calibrate_mode, keep the "
                         "drifting layers in float (backend.quantize.exclude_nodes) or build a wider precision")
    verdict["warning"] = (f"{figure}: this build changes the masks. Measure the accuracy cost with isnet compare "
                          "(drift and metric columns); try another calibrate_mode or keep layers in float "
                          "(backend.quantize.exclude_nodes); set backend.quantize.max_drift.mean_abs to make "
                          "this an error")
    return verdict


# The subpackages whose code makes an artifact: ``isnet compare`` reuses a build only where theirs is
# unchanged (the package version does not move between commits: demo builds made before a change of
# the budget search were reused after it).
BUILD_CODE = ("build_in", "export", "core", "eval")  # eval: the budget's scorer


@functools.lru_cache(maxsize=1)
def build_code_digest() -> str:
    """A digest of the isnet code that makes artifacts (:data:`BUILD_CODE`), recorded in build.json's
    ``versions.isnet_code``."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for folder in BUILD_CODE:
        for path in sorted((root / folder).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _versions(backend) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        isnet_version = version("isnet")
    except PackageNotFoundError:
        isnet_version = "unknown"
    return {"isnet": isnet_version, "isnet_code": build_code_digest(), "python": platform.python_version(), "numpy": np.__version__,
            "opencv": cv2.__version__, **backend.versions()}


def _compile(backend, reference: Path, config: BuildConfig, out: Path, work: Path, progress: Progress | None,
             judge: DriftJudge | None) -> dict:
    """The backend's compile step. The source model has been checked to load and run (:mod:`.source_model`),
    so a failure here is not the user's to fix: it goes up with its traceback."""
    if judge is not None:
        return backend.compile_model(reference, config, out, work, progress, judge=judge)
    return backend.compile_model(reference, config, out, work, progress)


def _load_check(backend, model_file: Path, runtime_options: dict, config: BuildConfig, sample: np.ndarray):
    """Open what the backend wrote, as the runtime will, and run it once, before it is renamed into place
    (OpenVINO compiles on the first inference). A model its own runtime refuses is this toolkit's bug:
    the error goes up with its traceback, and nothing is written."""
    runner = backend.open_runner(model_file, **runtime_options)
    runner.infer({runner.input_name: sample[None]})
    return runner


def build_artifact(config: BuildConfig, force: bool = False, progress: Progress | None = None,
                   scorer: MaskScorer | None = None) -> BuildResult:
    """Compile ``config`` into ``<workspace>/<name>/``; return the folder and its ``build.json`` contents.

    ``scorer`` scores masks for an int8 build with a metric budget (``backend.quantize.max_drift``
    with ``validation``; see :mod:`isnet.build_in.budget`): ``partial(isnet.eval.selection_scores, smeasure=True)``.

    Raises IsnetError for user-fixable problems (existing artifact without ``force``, a model that
    does not match the config, a backend that is not installed, non-finite outputs).
    """
    started = time.perf_counter()
    target = config.artifact_dir
    if target.exists() and not force:
        raise IsnetError(f"artifact {target} already exists; build with force (isnet build --force) to replace it")
    backend = get_backend(config.backend.type.value)
    if config.backend.dtype not in backend.PRECISIONS:
        raise IsnetError(f"backend.dtype: {config.backend.type.value} builds "
                         f"{', '.join(p.value for p in backend.PRECISIONS)}, not {config.backend.dtype.value}")
    preprocessor = config.preprocessor()
    calibration = config.calibration_images()
    held_out, disjoint = config.held_out_images()
    size = tuple(config.input_shape[2:])
    samples = _sample_inputs(preprocessor, held_out, size)
    if not held_out:
        sample_source = "synthetic images (no dataset configured)"
    else:
        sample_source = "held-out images" if disjoint else "calibration images (no other images in dataset.path)"

    def step() -> None:
        # The build's own steps (source, compile, load check, fidelity) as one bar; calibration has its own.
        if progress:
            progress("build", 1, BUILD_STEPS)

    if progress:
        progress("build", 0, BUILD_STEPS)
    with tempfile.TemporaryDirectory(prefix="isnet-build-") as work_name:
        work = Path(work_name)
        source, arch = _source_onnx(config, work)
        reference = work / "fp32.onnx"
        prepared = prepare_source(source, reference, size, [tensor for _, tensor in samples],
                                  output=config.frontend.output, activation=config.frontend.output_activation,
                                  upcast=config.frontend.upcast)
        step()
        judge = None
        if config.backend.dtype is Precision.INT8 and config.backend.quantize.validation.path is not None:
            judge = DriftJudge(config, reference, scorer, backend.open_runner, progress,
                               candidate_options=backend.runtime_options(config))
        with atomic_dir(target, replace=force) as out:
            compiled = _compile(backend, reference, config, out, work, progress, judge)
            step()
            runner = _load_check(backend, out / compiled["model_file"], compiled["runtime_options"], config,
                                 samples[0][1])
            step()
            fidelity = _fidelity(reference, runner, samples[:len(held_out)] or samples, sample_source)
            step()
            if fidelity["nonfinite_values"]:
                raise IsnetError(f"the {config.backend.dtype.value} build produces {fidelity['nonfinite_values']} "
                                 f"NaN/inf values on {fidelity['source']}; keep more layers in float "
                                 "(backend.quantize.exclude_nodes) or use a wider precision")
            fidelity.update(_check_drift(config, fidelity))
            model_files = sorted(p for p in out.iterdir() if p.is_file())
            calibration_items = [{"path": str(p), "sha256": sha256_file(p)} for p in calibration]
            info = {
                "format": FORMAT_VERSION,
                "name": config.name,
                "backend": config.backend.type.value,
                "precision": config.backend.dtype.value,
                "model_file": compiled["model_file"],
                "input": {"name": runner.input_name, "shape": list(config.input_shape),
                          "dynamic_batch": prepared.dynamic_batch},
                "output": {"name": runner.output_name, "activation": prepared.activation.value,
                           "activation_reason": prepared.activation_reason},
                "preprocess": preprocessor.to_specs(),
                "runtime_options": compiled["runtime_options"],
                "arch": arch,
                "config": config.to_dict(),
                "config_file": str(config.config_path) if config.config_path else None,
                "versions": _versions(backend),
                "source": {"path": str(config.frontend.checkpoint), "sha256": sha256_file(config.frontend.checkpoint),
                           "input": prepared.input_name, "output": prepared.output_name,
                           "opset": list(prepared.opset), "notes": prepared.notes,
                           "upcast": dataclasses.asdict(prepared.upcast) if prepared.upcast else None},
                "artifact_sha256": {p.name: sha256_file(p) for p in model_files},
                "calibration": None if config.backend.dtype is not Precision.INT8 else {
                    "mode": config.backend.quantize.calibrate_mode.value,
                    "images": calibration_items,
                    "sha256": _combined_hash(calibration_items),
                },
                "backend_details": compiled["details"],
                "fidelity": fidelity,
                "build_seconds": round(time.perf_counter() - started, 3),
            }
            (out / BUILD_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return BuildResult(target, info)
