"""The experiment of ``isnet compare``: a typed, validated config, like a build config.

An experiment (YAML or JSON; every key can also come from flags or ``--set``)::

    name: demo
    model: isnet.pth                  # .pth (exported first) or any single-input .onnx (u2netp.onnx, ...)
    input_size: [320, 320]            # optional for an .onnx whose input size is fixed (default 320 for .pth)
    process_ops: u2net                # optional: a preset (isnet-320, isnet-1024, u2net), a .json or a list
    frontend: {output: 0, output_activation: auto}   # optional: build-config frontend keys for every build
    dataset: {path: ECSSD}            # ECSSD layout (image/, mask/), or {json: datasets.json, name: ECSSD}
    calibration: {path: calib/image, count: 50}
    builds:                           # build-config overrides, a config file, or an existing artifact
      fp32: {backend: {dtype: fp32}}
      bf16_768: {preset: ov_bf16, input_size: [768, 768]}   # a preset at another input size
      int8_kl: {backend: {dtype: int8, quantize: {calibrate_mode: kl_divergence}}}
      mine: {config: my_build.yaml}
      old: {artifact: deploy_weights/old}
    reference: fp32                   # drift and gating are measured against this build
    run: {batch: 1, io_threads: null, threads: null, drift_images: 100}
    profile: {seconds: 3, batch: 1}
    max_delta: {mae: 0.002, sm: 0.003, maxfmeasure: 0.005}
    report: {path: report, strip_images: 4, photos: ["matplotlib:mpl-data/sample_data/grace_hopper.jpg"],
             notes: ["int8_kl is the reference recipe's mode, shown for comparison"]}

A build's ``input_size`` runs it at another size than the experiment's (the pre-processing resizes
to it; a model file fixed at one size is made to follow the input, see
:mod:`isnet.build_in.input_size`), so one report can set sizes against precisions; ``preset`` starts
a build from a preset (:data:`PRESETS`) that its other keys then change.

``report.photos`` are extra pictures without ground truth, each a file or ``package:path`` inside an
installed Python package (entries whose package is not installed are left out with a note):
every build runs on them too, and they join the strip of masks. ``report.notes`` are lines for the
report's Notes. ``builds`` may also be a list (or comma-separated string) of preset names (:data:`PRESETS`).
Unknown keys anywhere are refused with the key, the file and a did-you-mean; wrong value types
are one-line errors. Relative paths resolve against the experiment file's folder, paths given
with ``--set`` against the current folder.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from isnet.build_in import read_build_info
from isnet.build_in.config import BUDGET_METRICS, BuildConfig, load_build_config, validate_build_config
from isnet.build_in.ops import resolve_process_ops, with_input_size
from isnet.core import (IsnetError, apply_overrides, bounded, did_you_mean, load_dataclass, read_yaml_mapping,
                        resolve_path)
from isnet.core.defaults import INPUT_SIZE
from isnet.eval import ecssd_folders

# Metrics shown per build in the report, and those a gate may bound.
METRIC_COLUMNS = ("mae", "maxfmeasure", "avgfmeasure", "adpfmeasure", "maxem", "avgem", "adpem", "sm", "wfm")
GATE_METRICS = METRIC_COLUMNS + ("maxprecision", "avgprecision", "maxrecall", "avgrecall", "drift")
# Named builds usable in an experiment's `builds` list or with --builds.
PRESETS: dict[str, dict] = {
    "fp32": {"backend": {"dtype": "fp32"}},
    "fp16": {"backend": {"dtype": "fp16"}},
    "int8_kl": {"backend": {"dtype": "int8", "quantize": {"calibrate_mode": "kl_divergence"}}},
    "int8_max": {"backend": {"dtype": "int8", "quantize": {"calibrate_mode": "max"}}},
    "int8_percentile": {"backend": {"dtype": "int8", "quantize": {"calibrate_mode": "percentile"}}},
    "int8_mse": {"backend": {"dtype": "int8", "quantize": {"calibrate_mode": "mse"}}},
    # Budgeted: max_drift from the experiment's max_delta, validated on calibration-folder images
    # the calibration does not use (see BUDGETED_PRESETS). Bias correction: measured to help on the
    # pretrained U²-Netp (bench/README.md).
    "int8_auto": {"backend": {"dtype": "int8", "quantize": {"calibrate_mode": "max", "bias_correction": True}}},
    # Integer-only (for NPUs): where the budget needs it, tensors get 16 bits instead of float.
    "int8_npu_auto": {"backend": {"dtype": "int8", "quantize": {"calibrate_mode": "max", "integer_only": True}}},
    "ov_fp32": {"backend": {"type": "openvino", "dtype": "fp32"}},
    "ov_fp16": {"backend": {"type": "openvino", "dtype": "fp16"}},
    "ov_bf16": {"backend": {"type": "openvino", "dtype": "bf16"}},
    "ov_int8_max": {"backend": {"type": "openvino", "dtype": "int8", "quantize": {"calibrate_mode": "max"}}},
    "ov_int8_percentile": {"backend": {"type": "openvino", "dtype": "int8",
                                       "quantize": {"calibrate_mode": "percentile"}}},
    "ov_int8_auto": {"backend": {"type": "openvino", "dtype": "int8", "quantize": {"calibrate_mode": "max"}}},
    # The same, with the layers the budget keeps float computing in bf16 (CPUs with bf16 units).
    "ov_int8_bf16_auto": {"backend": {"type": "openvino", "dtype": "int8",
                                      "quantize": {"calibrate_mode": "max", "float_precision": "bf16"}}},
}
# Presets that get an accuracy budget: backend.quantize.max_drift from max_delta (mae, sm,
# maxfmeasure) and backend.quantize.validation from the calibration folder.
BUDGETED_PRESETS = ("int8_auto", "int8_npu_auto", "ov_int8_auto", "ov_int8_bf16_auto")


@dataclass(frozen=True)
class DatasetSection:
    """The evaluation set: a folder in ECSSD layout, or one dataset of a PySODEvalToolkit JSON."""

    path: Path | None = None
    json: Path | None = None
    name: str | None = None


@dataclass(frozen=True)
class CalibrationSection:
    """Calibration images for int8 builds (default: the evaluation images, with a warning)."""

    path: Path | None = None
    count: int = bounded(50, minimum=1)


@dataclass(frozen=True)
class RunSection:
    """How every build runs over the evaluation set."""

    batch: int = bounded(1, minimum=1)
    io_threads: int | None = bounded(None, minimum=1)
    threads: int | None = bounded(None, minimum=1)
    drift_images: int = bounded(100, minimum=1)


@dataclass(frozen=True)
class ProfileSection:
    """Speed measurement per build (inference only)."""

    seconds: float = bounded(3.0, above=0)
    batch: int = bounded(1, minimum=1)


@dataclass(frozen=True)
class ReportSection:
    """Where the report goes (default ``<name>-report`` beside the experiment) and its mask strip."""

    path: Path | None = None
    strip_images: int = bounded(4, minimum=0)
    photos: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # lines for the report's Notes, e.g. why a build that drifts is shown


@dataclass(frozen=True)
class ExperimentFile:
    """The experiment as written, validated key by key."""

    model: Path
    dataset: DatasetSection
    builds: Mapping[str, Mapping]
    name: str = "experiment"
    input_size: tuple[int, int] | None = None
    process_ops: str | tuple[Mapping, ...] | None = None
    frontend: Mapping = field(default_factory=dict)
    calibration: CalibrationSection = field(default_factory=CalibrationSection)
    reference: str | None = None
    run: RunSection = field(default_factory=RunSection)
    profile: ProfileSection = field(default_factory=ProfileSection)
    max_delta: Mapping[str, float] = field(default_factory=dict)
    report: ReportSection = field(default_factory=ReportSection)


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
    """A validated experiment with its folders and builds resolved."""

    name: str
    model: Path
    input_size: tuple[int, int] | None
    images: Path
    masks: Path
    builds: tuple[BuildEntry, ...]
    reference: str
    output: Path
    run: RunSection = field(default_factory=RunSection)
    profile: ProfileSection = field(default_factory=ProfileSection)
    max_delta: Mapping[str, float] = field(default_factory=dict)
    strip_images: int = 4
    photos: tuple[Path, ...] = ()
    notes: tuple[str, ...] = ()


def _merge(base: dict, extra: Mapping) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _builds_mapping(value, source: str) -> dict:
    """``builds`` as a mapping of build names to specs: preset names (a list or ``a,b``) expanded."""
    if isinstance(value, str):
        value = [b.strip() for b in value.split(",") if b.strip()]
    if isinstance(value, list):
        for preset in value:
            if not isinstance(preset, str) or preset not in PRESETS:
                raise IsnetError(f"{source}: builds: unknown preset '{preset}'{did_you_mean(str(preset), PRESETS)}; "
                                 f"presets: {', '.join(PRESETS)}")
        value = {preset: copy.deepcopy(PRESETS[preset]) for preset in value}
    if not isinstance(value, Mapping) or not value:
        raise IsnetError(f"{source}: builds: expected preset names or a mapping of build names to settings, "
                         f"got {value!r}")
    return {str(name): ({} if spec is None else spec) for name, spec in value.items()}


def _evaluation_folders(dataset: DatasetSection, source: str) -> tuple[Path, Path]:
    if (dataset.path is None) == (dataset.json is None):
        raise IsnetError(f"{source}: dataset: give either path (a folder in ECSSD layout) or json (a PySODEvalToolkit "
                         "dataset JSON, with name)")
    if dataset.path is not None:
        if dataset.name is not None:
            raise IsnetError(f"{source}: dataset.name: names a dataset of dataset.json; remove it with dataset.path")
        try:
            return ecssd_folders(dataset.path, "dataset.path")
        except IsnetError as exc:
            raise IsnetError(f"{source}: {exc}") from None
    if not dataset.json.is_file():
        raise IsnetError(f"{source}: dataset.json: file not found: {dataset.json}")
    try:
        return ecssd_folders(dataset.json, "dataset.json", name=dataset.name)
    except IsnetError as exc:
        raise IsnetError(f"{source}: dataset.json: {exc}") from None


def _build_entry(name: str, spec, base_config: dict, source: str, base: Path, given: frozenset[str]) -> BuildEntry:
    """One build: ``{artifact: DIR}``, ``{config: FILE}`` or build-config overrides. ``given`` are the key
    paths set on the command line, whose paths resolve against the current folder."""
    key = f"builds.{name}"
    mine = frozenset(k.removeprefix(f"{key}.") for k in given if k.startswith(f"{key}."))
    if key in given:
        mine = frozenset(spec) if isinstance(spec, Mapping) else frozenset()
    if not isinstance(spec, Mapping):
        raise IsnetError(f"{source}: {key}: expected build-config overrides, {{config: FILE}} or {{artifact: DIR}}, "
                         f"got {spec!r}")
    for special in ("artifact", "config"):
        if special in spec:
            if len(spec) != 1 or not isinstance(spec[special], (str, os.PathLike)):
                raise IsnetError(f"{source}: {key}: {{{special}: PATH}} takes one path and no other keys")
            path = resolve_path(spec[special], Path.cwd() if special in mine else base)
            try:
                if special == "artifact":
                    read_build_info(path)  # refuses a folder without build.json
                    return BuildEntry(name, artifact=path)
                return BuildEntry(name, config=load_build_config(path))
            except IsnetError as exc:
                raise IsnetError(f"{source}: {key}.{special}: {exc}") from None
    spec = dict(spec)
    size = spec.pop("input_size", None)
    merged = _merge(base_config, spec)
    if size is not None:
        _set_input_size(merged, size, f"{source}: {key}.input_size")
    merged["name"] = name
    return BuildEntry(name, config=validate_build_config(merged, source=f"{source}: {key}", base_dir=base,
                                                         cwd_keys=mine))


def _set_input_size(config: dict, size, where: str) -> None:
    """Make a build config (a dict) run at ``size`` = [height, width]: its shape, and its Resize if it has one."""
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise IsnetError(f"{where}: expected [height, width] of positive integers, got {size!r}")
    config.setdefault("frontend", {})["shape"] = [1, 3, *size]
    ops = (config.get("dataset") or {}).get("process_ops")
    if ops is not None:
        try:
            resized = with_input_size(ops, size)
        except IsnetError as exc:
            raise IsnetError(f"{where}: {exc}") from None
        config["dataset"]["process_ops"] = [{k: list(v) if isinstance(v, tuple) else v for k, v in op.items()}
                                            for op in resized]


def _override_key(override) -> str:
    key = override[0] if isinstance(override, tuple) else str(override).split("=", 1)[0]
    return ".".join(k for k in key.strip().split(".") if k)


def load_experiment(data: Mapping, source: str, base: Path, overrides: Sequence[str] = ()) -> Experiment:
    """Validate an experiment dict (see the module docstring); paths resolve against ``base``.

    ``overrides`` are ``key.path=value`` strings (``--set``); their paths resolve against the
    current folder.
    """
    data = copy.deepcopy(dict(data))
    # `builds` itself first (--builds, --set builds=...), then keys inside it (--set builds.fp16.x=...),
    # which must extend the builds a preset list names rather than replace the list.
    whole = [o for o in overrides if _override_key(o) == "builds"]
    overridden = apply_overrides(data, whole)
    if "builds" in data:
        data["builds"] = _builds_mapping(data["builds"], source)
    overridden |= apply_overrides(data, [o for o in overrides if _override_key(o) != "builds"])
    spec = load_dataclass(ExperimentFile, data, source, base, frozenset(overridden))
    if spec.input_size is not None and any(s <= 0 for s in spec.input_size):
        raise IsnetError(f"{source}: input_size: expected [height, width] of positive integers, "
                         f"got {list(spec.input_size)}")
    if not spec.model.is_file():
        raise IsnetError(f"{source}: model: file not found: {spec.model}")
    for metric in spec.max_delta:
        if metric not in GATE_METRICS:
            raise IsnetError(f"{source}: max_delta.{metric}: unknown metric{did_you_mean(metric, GATE_METRICS)}; "
                             f"choose from {', '.join(GATE_METRICS)}")
        if spec.max_delta[metric] < 0:
            raise IsnetError(f"{source}: max_delta.{metric}: expected a non-negative number, "
                             f"got {spec.max_delta[metric]}")
    images, masks = _evaluation_folders(spec.dataset, source)
    output = spec.report.path or resolve_path(f"{spec.name}-report", base)
    calibration_dir = spec.calibration.path or images

    is_onnx = spec.model.suffix.lower() == ".onnx"
    input_size = spec.input_size
    if input_size is None and not is_onnx and spec.process_ops is None:
        input_size = INPUT_SIZE
    for key in ("checkpoint", "type", "shape"):
        if key in spec.frontend:
            raise IsnetError(f"{source}: frontend.{key}: set by the experiment's "
                             f"{'input_size' if key == 'shape' else 'model'}; remove it here")
    frontend = {**spec.frontend, "type": "onnx" if is_onnx else "pytorch", "checkpoint": str(spec.model)}
    dataset = {"path": str(calibration_dir), "sampler": {"get_data_num": spec.calibration.count}}
    if spec.process_ops is not None:
        try:
            dataset["process_ops"] = resolve_process_ops(
                spec.process_ops, Path.cwd() if "process_ops" in overridden else base, "process_ops")
        except IsnetError as exc:
            raise IsnetError(f"{source}: {exc}") from None
    base_config = {"frontend": frontend, "backend": {"type": "onnxruntime"}, "dataset": dataset,
                   "workspace": {"path": str(output / "artifacts")}}
    if input_size is not None:
        _set_input_size(base_config, list(input_size), f"{source}: input_size")
    specs = {}
    for name, build in spec.builds.items():
        build, preset = _from_preset(name, build, source)
        specs[name] = _with_budget(name, preset, build, spec, calibration_dir, images, source)
    builds = tuple(_build_entry(name, build, base_config, source, base, frozenset(overridden))
                   for name, build in specs.items())
    names = [b.name for b in builds]
    reference = spec.reference or next((b.name for b in builds if b.config is not None
                                        and b.config.backend.dtype.value == "fp32"), names[0])
    if reference not in names:
        raise IsnetError(f"{source}: reference: '{reference}' is not a build{did_you_mean(reference, names)}; "
                         f"builds: {', '.join(names)}")
    photos, notes = _photos(spec.report.photos, base, source)
    if input_size is None:
        input_size = next((tuple(b.config.input_shape[2:]) for b in builds if b.config is not None), None)
    return Experiment(name=spec.name, model=spec.model, input_size=input_size, images=images, masks=masks,
                      builds=builds, reference=reference, output=output, run=spec.run, profile=spec.profile,
                      max_delta=dict(spec.max_delta), strip_images=spec.report.strip_images, photos=photos,
                      notes=tuple(spec.report.notes) + tuple(notes))


def _from_preset(name: str, build, source: str) -> tuple[object, str]:
    """A build's settings with its ``preset`` key expanded (the preset's settings, then the build's own
    on top), and the preset it is (its own name when it gives none)."""
    if not isinstance(build, Mapping) or "preset" not in build:
        return build, name
    preset = build["preset"]
    if not isinstance(preset, str) or preset not in PRESETS:
        raise IsnetError(f"{source}: builds.{name}.preset: unknown preset '{preset}'"
                         f"{did_you_mean(str(preset), PRESETS)}; presets: {', '.join(PRESETS)}")
    rest = {key: value for key, value in build.items() if key != "preset"}
    return _merge(PRESETS[preset], rest), preset


def _with_budget(name: str, preset: str, build, spec: ExperimentFile, calibration_dir: Path, images: Path,
                 source: str):
    """A budgeted preset (:data:`BUDGETED_PRESETS`) with its max_drift and validation filled in."""
    if preset not in BUDGETED_PRESETS or not isinstance(build, Mapping):
        return build
    quantize = dict(build.get("backend", {}).get("quantize", {}))
    budget = {key: spec.max_delta[key] for key in BUDGET_METRICS if key in spec.max_delta}
    if "max_drift" not in quantize:
        if not budget:
            raise IsnetError(f"{source}: builds.{name}: the budget comes from max_delta; give max_delta.mae, .sm "
                             f"or .maxfmeasure, or builds.{name}.backend.quantize.max_drift")
        quantize["max_drift"] = budget
    if "validation" not in quantize:
        if calibration_dir.resolve() == images.resolve():
            raise IsnetError(f"{source}: builds.{name}: validates on calibration-folder images the calibration "
                             "does not use, and calibration.path is the evaluation set; give calibration.path "
                             "(a folder with a mask/ folder beside it, or in ECSSD layout)")
        quantize["validation"] = {"path": str(calibration_dir)}
    return _merge(dict(build), {"backend": {"quantize": quantize}})


def _photos(entries: Sequence[str], base: Path, source: str) -> tuple[tuple[Path, ...], list[str]]:
    """``report.photos``: files, or ``package:path`` inside an installed package (skipped with a note if absent)."""
    import importlib.util

    photos, notes = [], []
    for index, entry in enumerate(entries):
        package, colon, inner = entry.partition(":")
        if colon and package.isidentifier():
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                notes.append(f"report.photos: '{entry}' left out: the package {package} is not installed")
                continue
            path = Path(next(iter(spec.submodule_search_locations))) / inner
        else:
            path = resolve_path(entry, base)
        if not path.is_file():
            raise IsnetError(f"{source}: report.photos[{index}]: file not found: {path}")
        photos.append(path)
    return tuple(photos), notes


def read_experiment(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Experiment:
    """Read an experiment file (YAML or JSON) and validate it."""
    path = Path(path)
    data = read_yaml_mapping(path, "experiment file")
    return load_experiment(data, str(path), path.resolve().parent, overrides)
