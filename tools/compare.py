"""``isnet compare``: build every precision of one model, run, evaluate and profile each build,
and write one report that puts accuracy, drift from the reference and speed side by side.

An experiment (YAML or JSON; every key can also come from flags)::

    name: demo
    model: isnet.pth                  # .pth (exported first) or .onnx
    input_size: [320, 320]
    dataset: {path: ECSSD}            # ECSSD layout (image/, mask/), or {json: datasets.json, name: ECSSD}
    calibration: {path: calib/image, count: 50}
    builds:                           # build-config overrides, a config file, or an existing artifact
      fp32: {backend: {dtype: fp32}}
      int8_kl: {backend: {dtype: int8, quantize: {calibrate_mode: kl_divergence}}}
      mine: {config: my_build.yaml}
      old: {artifact: deploy_weights/old}
    reference: fp32                   # drift and gating are measured against this build
    run: {batch: 1, workers: null, threads: null, drift_images: 100}
    profile: {seconds: 3, batch: 1}
    max_delta: {mae: 0.002, sm: 0.003, maxfmeasure: 0.005}
    report: {path: report, strip_images: 4}

Every stage keeps a manifest with the hashes of its inputs; a rerun reuses builds, masks,
scores and profiles whose inputs did not change.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from build_in import build_artifact, decode_image, decode_mask, list_images, read_build_info, sha256_file
from build_in.config import BuildConfig, FrontendType, load_build_config, validate_build_config
from build_in.ops import DEFAULT_OPS
from export.atomic import atomic_path, write_text_atomic
from export.errors import IsnetError, did_you_mean

METRIC_COLUMNS = ("mae", "maxfmeasure", "avgfmeasure", "adpfmeasure", "maxem", "avgem", "adpem", "sm", "wfm")
HEADERS = {"mae": "MAE", "maxfmeasure": "maxF", "avgfmeasure": "avgF", "adpfmeasure": "adpF", "maxem": "maxE",
           "avgem": "avgE", "adpem": "adpE", "sm": "Sm", "wfm": "wFm"}
# Metrics where lower is better (for the sign of a drift).
LOWER_IS_BETTER = {"mae"}
# Named builds usable in an experiment's `builds` list or with --builds.
PRESETS: dict[str, dict] = {
    "fp32": {"backend": {"dtype": "fp32"}},
    "fp16": {"backend": {"dtype": "fp16"}},
    "int8_kl": {"backend": {"dtype": "int8", "quantize": {"calibrate_mode": "kl_divergence"}}},
    "int8_max": {"backend": {"dtype": "int8", "quantize": {"calibrate_mode": "max"}}},
    "int8_percentile": {"backend": {"dtype": "int8", "quantize": {"calibrate_mode": "percentile"}}},
    "ov_fp32": {"backend": {"type": "openvino", "dtype": "fp32"}},
    "ov_fp16": {"backend": {"type": "openvino", "dtype": "fp16"}},
    "ov_bf16": {"backend": {"type": "openvino", "dtype": "bf16"}},
    "ov_int8_max": {"backend": {"type": "openvino", "dtype": "int8", "quantize": {"calibrate_mode": "max"}}},
    "ov_int8_percentile": {"backend": {"type": "openvino", "dtype": "int8",
                                       "quantize": {"calibrate_mode": "percentile"}}},
}
_TOP_KEYS = ("name", "model", "input_size", "dataset", "calibration", "builds", "reference", "run", "profile",
             "max_delta", "report")
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BuildEntry:
    """One build of the experiment: a resolved build config, or an existing artifact folder."""

    name: str
    config: BuildConfig | None = None
    artifact: Path | None = None

    @property
    def artifact_dir(self) -> Path:
        return self.artifact if self.artifact is not None else self.config.artifact_dir


@dataclass(frozen=True)
class Experiment:
    """A validated experiment."""

    name: str
    model: Path
    input_size: tuple[int, int]
    images: Path
    masks: Path
    builds: tuple[BuildEntry, ...]
    reference: str
    output: Path
    batch: int = 1
    workers: int | None = None
    threads: int | None = None
    drift_images: int = 100
    profile_seconds: float = 3.0
    profile_batch: int = 1
    max_delta: Mapping[str, float] = field(default_factory=dict)
    strip_images: int = 4


@dataclass
class BuildReport:
    """Everything measured for one build."""

    name: str
    artifact: Path
    info: dict
    metrics: dict[str, float]
    curves: dict[str, np.ndarray]
    drift_mean_abs: float | None
    throughput_ips: float
    latency_p50_ms: float
    size_mb: float
    reused: list[str] = field(default_factory=list)
    calibration_overlap: int = 0

    @property
    def precision(self) -> str:
        return str(self.info.get("precision", "?"))

    @property
    def backend(self) -> str:
        return str(self.info.get("backend", "?"))

    @property
    def calibration_mode(self) -> str:
        calibration = self.info.get("calibration")
        return calibration["mode"] if calibration else "-"


@dataclass
class CompareResult:
    """The report folder, the per-build figures and the gate's verdict."""

    output: Path
    reports: list[BuildReport]
    reference: str
    violations: list[str]
    warnings: list[str]
    files: dict[str, Path]


# --------------------------------------------------------------------------------------------
# Loading the experiment


def _fail(source: str, key: str, message: str) -> IsnetError:
    return IsnetError(f"{source}: {key}: {message}")


def _resolve(base: Path, value) -> Path:
    path = Path(os.path.expanduser(str(value)))
    # normpath, not resolve(): shows `a/b` for `a/x/../b` but keeps symlinked folders as named.
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _merge(base: dict, extra: Mapping) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _dataset_folders(data: Mapping, base: Path, source: str) -> tuple[Path, Path]:
    if not isinstance(data, Mapping):
        raise _fail(source, "dataset", "expected {path: DIR} (ECSSD layout) or {json: FILE, name: DATASET}")
    unknown = set(data) - {"path", "json", "name"}
    if unknown:
        key = sorted(unknown)[0]
        raise _fail(source, f"dataset.{key}", f"unknown key{did_you_mean(key, ['path', 'json', 'name'])}")
    if "json" in data:
        # A PySODEvalToolkit dataset JSON: {name: {image: {path}, mask: {path}}}, paths relative to it.
        json_path = _resolve(base, data["json"])
        try:
            datasets = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise _fail(source, "dataset.json", f"cannot read {json_path} ({exc})") from None
        name = data.get("name") or (next(iter(datasets)) if len(datasets) == 1 else None)
        if name not in datasets:
            raise _fail(source, "dataset.name", f"choose one of {', '.join(datasets)}")
        entry = datasets[name]
        if not all(isinstance(entry.get(k), dict) and "path" in entry[k] for k in ("image", "mask")):
            raise _fail(source, "dataset.json", f"dataset '{name}' needs image.path and mask.path")
        if any(entry[k].get("prefix") for k in ("image", "mask")):
            raise _fail(source, "dataset.json", "compare pairs images and masks by file stem; prefixes are not supported")
        return _resolve(json_path.parent, entry["image"]["path"]), _resolve(json_path.parent, entry["mask"]["path"])
    if "path" not in data:
        raise _fail(source, "dataset.path", "required key is missing")
    root = _resolve(base, data["path"])
    images, masks = root / "image", root / "mask"
    if not images.is_dir() or not masks.is_dir():
        raise _fail(source, "dataset.path", f"{root} needs image/ and mask/ sub-folders (ECSSD layout)")
    return images, masks


def load_experiment(data: Mapping, source: str, base: Path, overrides: Sequence[str] = ()) -> Experiment:
    """Validate an experiment dict (see the module docstring); paths resolve against ``base``."""
    from build_in.config import apply_overrides

    data = copy.deepcopy(dict(data))
    apply_overrides(data, overrides)
    for key in data:
        if key not in _TOP_KEYS:
            raise _fail(source, key, f"unknown key{did_you_mean(key, _TOP_KEYS)}; valid keys: {', '.join(_TOP_KEYS)}")
    for key in ("model", "dataset", "builds"):
        if key not in data:
            raise _fail(source, key, "required key is missing")
    name = str(data.get("name", "experiment"))
    images, masks = _dataset_folders(data["dataset"], base, source)
    size = data.get("input_size", [320, 320])
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise _fail(source, "input_size", f"expected [height, width] of positive integers, got {size!r}")
    model = _resolve(base, data["model"])
    if not model.is_file():
        raise _fail(source, "model", f"file not found: {model}")
    output = _resolve(base, (data.get("report") or {}).get("path", f"{name}-report"))
    calibration = data.get("calibration") or {"path": str(images)}
    if not isinstance(calibration, Mapping) or "path" not in calibration:
        raise _fail(source, "calibration", "expected {path: DIR, count: N}")
    calib_dir = _resolve(base, calibration["path"])
    count = calibration.get("count", 50)

    ops = [dict(op) for op in DEFAULT_OPS]
    ops[1]["size"] = list(size)
    base_config = {
        "frontend": {"type": "onnx" if model.suffix == ".onnx" else "pytorch", "checkpoint": str(model),
                     "shape": {"input": [1, 3, *size]}},
        "backend": {"type": "onnxruntime"},
        "dataset": {"path": str(calib_dir), "sampler": {"get_data_num": count}, "process_ops": ops},
        "workspace": {"path": str(output / "artifacts")},
    }
    builds_data = data["builds"]
    if isinstance(builds_data, str):
        builds_data = [b.strip() for b in builds_data.split(",") if b.strip()]
    if isinstance(builds_data, list):
        unknown = [b for b in builds_data if b not in PRESETS]
        if unknown:
            raise _fail(source, "builds", f"unknown preset '{unknown[0]}'{did_you_mean(str(unknown[0]), PRESETS)}; "
                                          f"presets: {', '.join(PRESETS)}")
        builds_data = {b: PRESETS[b] for b in builds_data}
    if not isinstance(builds_data, Mapping) or not builds_data:
        raise _fail(source, "builds", "expected preset names or a mapping of build names to settings")
    builds = []
    for build_name, spec in builds_data.items():
        key = f"builds.{build_name}"
        spec = spec or {}
        if not isinstance(spec, Mapping):
            raise _fail(source, key, "expected build-config overrides, {config: FILE} or {artifact: DIR}")
        if "artifact" in spec:
            artifact = _resolve(base, spec["artifact"])
            read_build_info(artifact)  # refuses a folder without build.json
            builds.append(BuildEntry(str(build_name), artifact=artifact))
            continue
        if "config" in spec:
            config = load_build_config(_resolve(base, spec["config"]))
        else:
            merged = _merge(base_config, spec)
            merged["name"] = str(build_name)
            config = validate_build_config(merged, source=f"{source}: {key}", base_dir=base)
        builds.append(BuildEntry(str(build_name), config=config))
    names = [b.name for b in builds]
    reference = str(data.get("reference", next((b.name for b in builds if b.config is not None
                                                 and b.config.backend.dtype.value == "fp32"), names[0])))
    if reference not in names:
        raise _fail(source, "reference", f"'{reference}' is not a build{did_you_mean(reference, names)}")
    run = data.get("run") or {}
    profile = data.get("profile") or {}
    max_delta = data.get("max_delta") or {}
    valid_metrics = METRIC_COLUMNS + ("maxprecision", "avgprecision", "maxrecall", "avgrecall", "drift")
    for metric, tolerance in max_delta.items():
        if metric not in valid_metrics:
            raise _fail(source, f"max_delta.{metric}", f"unknown metric{did_you_mean(metric, valid_metrics)}")
        if not isinstance(tolerance, (int, float)) or tolerance < 0:
            raise _fail(source, f"max_delta.{metric}", f"expected a non-negative number, got {tolerance!r}")
    return Experiment(
        name=name, model=model, input_size=(size[0], size[1]), images=images, masks=masks, builds=tuple(builds), reference=reference, output=output,
        batch=int(run.get("batch", 1)), workers=run.get("workers"), threads=run.get("threads"),
        drift_images=int(run.get("drift_images", 100)), profile_seconds=float(profile.get("seconds", 3.0)),
        profile_batch=int(profile.get("batch", 1)), max_delta={k: float(v) for k, v in max_delta.items()},
        strip_images=int((data.get("report") or {}).get("strip_images", 4)))


def read_experiment(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Experiment:
    """Read an experiment file (YAML or JSON) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise IsnetError(f"experiment file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise IsnetError(f"{path}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise IsnetError(f"{path}: the top level must be a mapping")
    return load_experiment(data, str(path), path.resolve().parent, overrides)


# --------------------------------------------------------------------------------------------
# Stages with manifests


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class _Manifests:
    """``<output>/manifests/<stage>-<build>.json``: the input hash and result of a finished stage."""

    def __init__(self, root: Path):
        self.root = root / "manifests"

    def get(self, stage: str, build: str, inputs: str):
        path = self.root / f"{stage}-{build}.json"
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return record.get("result") if record.get("inputs") == inputs else None

    def put(self, stage: str, build: str, inputs: str, result) -> None:
        write_text_atomic(self.root / f"{stage}-{build}.json",
                          json.dumps({"inputs": inputs, "result": result}, indent=1, default=_jsonable))


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value))


def _build_stage(entry: BuildEntry, force: bool, progress: Progress | None) -> tuple[dict, bool]:
    """Build (or reuse) one artifact; return its build.json and whether it was reused."""
    if entry.config is None:
        return read_build_info(entry.artifact), True
    target = entry.config.artifact_dir
    if target.is_dir() and not force:
        try:
            info = read_build_info(target)
        except IsnetError:
            info = None
        if (info and info.get("config") == entry.config.to_dict()
                and info.get("source", {}).get("sha256") == sha256_file(entry.config.frontend.checkpoint)):
            return info, True
    result = build_artifact(entry.config, force=True,
                            progress=(lambda stage, n, total: progress(f"{entry.name} {stage}", n, total))
                            if progress else None)
    return result.info, False


def _artifact_key(info: dict) -> str:
    return _digest({"artifact": info.get("artifact_sha256"), "preprocess": info.get("preprocess"),
                    "runtime": info.get("runtime_options")})


def _image_list_key(images: list[Path]) -> str:
    return _digest([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in images])


def _drift(reference, model, images: list[Path], batch: int) -> float:
    """Mean |difference| of the raw float output maps (model resolution) against the reference."""
    total, count = 0.0, 0
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        tensors = np.stack([reference.preprocessor.load(p)[0] for p in chunk])
        expected = reference.predict(tensors).astype(np.float64)
        got = model.predict(np.stack([model.preprocessor.load(p)[0] for p in chunk])).astype(np.float64)
        total += float(np.abs(got - expected).sum())
        count += expected.size
    return total / max(count, 1)


def _strip(path: Path, images: list[Path], masks_dir: Path, builds: list[str], mask_dirs: dict[str, Path]) -> Path:
    """A grid: one row per image (photo, GT, each build's mask), columns labelled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = ["image", "ground truth", *builds]
    figure = Figure(figsize=(2.2 * len(columns), 2.2 * len(images) + 0.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(images), len(columns), squeeze=False)
    for row, image in enumerate(images):
        panels = [decode_image(image), decode_mask(masks_dir / f"{image.stem}.png")]
        panels += [decode_mask(mask_dirs[b] / f"{image.stem}.png") for b in builds]
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(panel, cmap=None if panel.ndim == 3 else "gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=10)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80)
    return path


def _export_once(experiment: Experiment, manifests: "_Manifests", force: bool) -> tuple[BuildEntry, ...]:
    """Export a ``.pth`` source to ONNX once, and point every build made from it at that file."""
    from export.exporter import ExportRequest, export_model

    from_model = [e for e in experiment.builds if e.config is not None
                  and e.config.frontend.type is FrontendType.PYTORCH and e.config.frontend.checkpoint == experiment.model]
    if not from_model:
        return experiment.builds
    target = experiment.output / "source" / f"{experiment.model.stem}.onnx"
    inputs = _digest({"model": sha256_file(experiment.model), "size": experiment.input_size})
    if force or manifests.get("export", "source", inputs) is None or not target.is_file():
        export_model(ExportRequest(weights=str(experiment.model), size=experiment.input_size, output_dir=target.parent,
                                   name=target.stem, formats=("onnx",)))
        manifests.put("export", "source", inputs, {"onnx": str(target)})
    builds = []
    for entry in experiment.builds:
        if entry in from_model:
            frontend = dataclasses.replace(entry.config.frontend, type=FrontendType.ONNX, checkpoint=target)
            entry = dataclasses.replace(entry, config=dataclasses.replace(entry.config, frontend=frontend))
        builds.append(entry)
    return tuple(builds)


def run_experiment(experiment: Experiment, force: bool = False, progress: Progress | None = None) -> CompareResult:
    """Build, run, evaluate and profile every build; write the report; check the gate."""
    from eval import evaluate_folders
    from runtime import load_model, profile_model, run_folder

    out = experiment.output
    out.mkdir(parents=True, exist_ok=True)
    manifests = _Manifests(out)
    images = list_images(experiment.images)
    if not images:
        raise IsnetError(f"no images in {experiment.images}")
    image_hashes = {sha256_file(p): p for p in images}
    image_key = _image_list_key(images)
    mask_key = _image_list_key(list_images(experiment.masks))
    notes: list[str] = []
    reports: list[BuildReport] = []
    mask_dirs: dict[str, Path] = {}

    experiment = dataclasses.replace(experiment, builds=_export_once(experiment, manifests, force))
    infos = {}
    for entry in experiment.builds:
        info, reused = _build_stage(entry, force, progress)
        infos[entry.name] = (info, reused)

    for entry in experiment.builds:
        info, built_reused = infos[entry.name]
        artifact = entry.artifact_dir
        reused = ["build"] if built_reused else []
        key = _artifact_key(info)

        calibration = info.get("calibration") or {}
        overlap = sum(1 for item in calibration.get("images", []) if item["sha256"] in image_hashes)
        if overlap:
            notes.append(f"{entry.name}: {overlap} of the {len(images)} evaluation images were also calibration "
                         "images; its scores are optimistic")

        masks = out / "masks" / entry.name
        mask_dirs[entry.name] = masks
        run_inputs = _digest({"artifact": key, "images": image_key, "batch": experiment.batch})
        if not force and manifests.get("run", entry.name, run_inputs) is not None and masks.is_dir():
            reused.append("masks")
        else:
            model = load_model(artifact, threads=experiment.threads)
            step = (lambda n, total, name=entry.name: progress(f"{name} run", n, total)) if progress else None
            result = run_folder(model, experiment.images, masks, batch=experiment.batch, workers=experiment.workers,
                                progress=step)
            if result.failed:
                raise IsnetError(f"{entry.name}: {result.failed} images failed; see {result.failures_path}")
            manifests.put("run", entry.name, run_inputs, {"done": result.done, "seconds": result.seconds})

        eval_inputs = _digest({"run": run_inputs, "masks": mask_key})
        scored = None if force else manifests.get("eval", entry.name, eval_inputs)
        if scored is None:
            result = evaluate_folders(masks, experiment.masks)
            scored = {"metrics": result.metrics, "curves": {k: v.tolist() for k, v in result.curves.items()}}
            manifests.put("eval", entry.name, eval_inputs, scored)
        else:
            reused.append("scores")

        profile_inputs = _digest({"artifact": key, "seconds": experiment.profile_seconds,
                                  "batch": experiment.profile_batch, "threads": experiment.threads})
        profiled = None if force else manifests.get("profile", entry.name, profile_inputs)
        if profiled is None:
            record = profile_model(artifact, batches=(experiment.profile_batch,), threads=experiment.threads,
                                   duration=experiment.profile_seconds, iterations=None,
                                   image_dir=experiment.images)[0]
            profiled = {"throughput_ips": record.throughput_ips, "p50_ms": record.latency_ms.p50}
            manifests.put("profile", entry.name, profile_inputs, profiled)
        else:
            reused.append("profile")

        files = [artifact / name for name in info.get("artifact_sha256", {})]
        reports.append(BuildReport(
            name=entry.name, artifact=artifact, info=info, metrics=scored["metrics"],
            curves={k: np.asarray(v) for k, v in scored["curves"].items()}, drift_mean_abs=None,
            throughput_ips=profiled["throughput_ips"], latency_p50_ms=profiled["p50_ms"],
            size_mb=sum(f.stat().st_size for f in files if f.is_file()) / 1e6, reused=reused,
            calibration_overlap=overlap))

    # Drift of raw output maps against the reference build, on the first `drift_images` images.
    by_name = {r.name: r for r in reports}
    reference = by_name[experiment.reference]
    drift_images = images[: experiment.drift_images]
    reference_model = None
    for report in reports:
        if report.name == experiment.reference:
            report.drift_mean_abs = 0.0
            continue
        drift_inputs = _digest({"ref": _artifact_key(reference.info), "build": _artifact_key(report.info),
                                "images": _image_list_key(drift_images)})
        cached = None if force else manifests.get("drift", report.name, drift_inputs)
        if cached is None:
            reference_model = reference_model or load_model(reference.artifact, threads=experiment.threads)
            model = load_model(report.artifact, threads=experiment.threads)
            if reference_model.input_size != model.input_size:
                notes.append(f"{report.name}: input size differs from {experiment.reference}; no drift figure")
                cached = {"mean_abs": None}
            else:
                cached = {"mean_abs": _drift(reference_model, model, drift_images, experiment.batch)}
            manifests.put("drift", report.name, drift_inputs, cached)
        report.drift_mean_abs = cached["mean_abs"]

    violations = gate(reports, experiment.reference, experiment.max_delta)
    files = write_report(experiment, reports, notes, violations, mask_dirs, images)
    return CompareResult(out, reports, experiment.reference, violations, notes, files)


def gate(reports: list[BuildReport], reference: str, max_delta: Mapping[str, float]) -> list[str]:
    """Each build whose metric moved from the reference by more than its tolerance, as a sentence."""
    ref = next(r for r in reports if r.name == reference)
    violations = []
    for report in reports:
        if report.name == reference:
            continue
        for metric, tolerance in max_delta.items():
            if metric == "drift":
                delta = report.drift_mean_abs
                if delta is not None and delta > tolerance:
                    violations.append(f"{report.name}: mean |diff| vs {reference} {delta:.4f} > {tolerance}")
                continue
            delta = report.metrics[metric] - ref.metrics[metric]
            if abs(delta) > tolerance:
                violations.append(f"{report.name}: {metric} {report.metrics[metric]:.4f} vs {reference} "
                                  f"{ref.metrics[metric]:.4f} (delta {delta:+.4f}, allowed {tolerance})")
    return violations


def table_rows(reports: list[BuildReport], reference: str) -> tuple[list[str], list[list[str]]]:
    """The report table: header and rows of formatted cells."""
    header = ["build", "backend", "precision", "calibration", "size MB", *[HEADERS[m] for m in METRIC_COLUMNS],
              f"drift vs {reference}", "images/s", "p50 ms"]
    rows = []
    for r in reports:
        rows.append([r.name, r.backend, r.precision, r.calibration_mode, f"{r.size_mb:.1f}",
                     *[f"{r.metrics[m]:.4f}" for m in METRIC_COLUMNS],
                     "-" if r.drift_mean_abs is None else f"{r.drift_mean_abs:.2e}",
                     f"{r.throughput_ips:.1f}", f"{r.latency_p50_ms:.1f}"])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(experiment: Experiment, reports: list[BuildReport], notes: list[str], violations: list[str],
                 mask_dirs: dict[str, Path], images: list[Path]) -> dict[str, Path]:
    """Write report.md, report.json, the curve plots and the mask strip; return their paths."""
    from eval import EvalResult, plot_curves

    out = experiment.output
    header, rows = table_rows(reports, experiment.reference)
    results = {experiment.name: {r.name: EvalResult(metrics=r.metrics, curves=r.curves, num_images=len(images))
                                 for r in reports}}
    plots = plot_curves(out, results)
    count = min(experiment.strip_images, len(images))
    picks = [images[round(i * (len(images) - 1) / max(count - 1, 1))] for i in range(count)] if count else []
    strip = _strip(out / "strip.png", picks, experiment.masks, [r.name for r in reports], mask_dirs) if picks else None

    md = [f"# {experiment.name}: accuracy and speed per build", "",
          f"{len(images)} images from `{experiment.images}`, ground truth `{experiment.masks}`. "
          f"Drift is the mean absolute difference of the raw output maps from build `{experiment.reference}` on "
          f"{min(experiment.drift_images, len(images))} images; speed is inference only, batch "
          f"{experiment.profile_batch}, {experiment.profile_seconds:g} s per build.", "",
          markdown_table(header, rows), ""]
    if plots:
        md += ["## Curves", ""] + [f"![PR and F-measure curves]({p.name})" for p in plots] + [""]
    if strip:
        md += ["## Masks side by side", "", f"![masks per build]({strip.name})", ""]
    if experiment.max_delta:
        md += ["## Gate", "", "Allowed drift from the reference: "
               + ", ".join(f"{k} {v}" for k, v in experiment.max_delta.items()), ""]
        md += [f"- FAIL {v}" for v in violations] or ["- all builds within tolerance"]
        md.append("")
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    report_md = write_text_atomic(out / "report.md", "\n".join(md))
    payload = {
        "name": experiment.name, "images": str(experiment.images), "masks": str(experiment.masks),
        "reference": experiment.reference, "max_delta": dict(experiment.max_delta), "violations": violations,
        "notes": notes,
        "builds": [{"name": r.name, "artifact": str(r.artifact), "backend": r.backend, "precision": r.precision,
                    "calibration": r.calibration_mode, "size_mb": r.size_mb, "metrics": r.metrics,
                    "drift_mean_abs": r.drift_mean_abs, "throughput_ips": r.throughput_ips,
                    "latency_p50_ms": r.latency_p50_ms, "reused": r.reused,
                    "calibration_overlap": r.calibration_overlap} for r in reports],
    }
    report_json = write_text_atomic(out / "report.json", json.dumps(payload, indent=2, default=_jsonable) + "\n")
    files = {"report.md": report_md, "report.json": report_json}
    files.update({p.name: p for p in plots})
    if strip:
        files[strip.name] = strip
    return files
