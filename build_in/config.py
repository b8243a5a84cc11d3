"""Build configs: YAML in the reference recipe's layout, loaded into typed, frozen objects.

Everything is validated before any work starts: unknown keys are refused with a suggestion,
types are checked, relative paths resolve against the config file's folder, files must exist,
and the pre-processing must produce the model's input shape. Every error names the key path
and the config file.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from isnet.build_in.imageio import list_images, parse_suffixes
from isnet.build_in.ops import Preprocessor, default_process_ops, resolve_process_ops
from isnet.build_in.source_model import OutputActivation, Upcast, read_onnx_signature
from isnet.core import IsnetError, apply_overrides, bounded, internal, load_dataclass, read_yaml_mapping, to_plain
from isnet.core.defaults import OPSET


class FrontendType(str, enum.Enum):
    """Where the model comes from."""

    ONNX = "onnx"
    PYTORCH = "pytorch"


class BackendType(str, enum.Enum):
    """The runtime an artifact is compiled for."""

    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Precision(str, enum.Enum):
    """Numeric precision of the compiled model."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


class PerformanceHint(str, enum.Enum):
    """What an OpenVINO build is tuned for: one picture at a time, or many in flight (batch jobs)."""

    LATENCY = "latency"
    THROUGHPUT = "throughput"


class CalibrationMode(str, enum.Enum):
    """How activation ranges are chosen for int8 (the reference's ``calibrate_mode`` names)."""

    KL_DIVERGENCE = "kl_divergence"
    MAX = "max"
    PERCENTILE = "percentile"
    MSE = "mse"  # the range of least expected quantization error (isnet.build_in.range_search.mse_range)


class QuantType(str, enum.Enum):
    """8-bit integer type of weights or activations."""

    INT8 = "int8"
    UINT8 = "uint8"


@dataclass(frozen=True)
class FrontendConfig:
    """The source model: any single-input ONNX file, or a PyTorch checkpoint exported through export/ first.

    ``shape`` is ``[N, 3, H, W]`` (or ``{input_name: [N, 3, H, W]}``, the reference recipe's form);
    it may be left out when the ONNX file's input size is fixed, or when ``dataset.process_ops``
    resizes to the size; it may differ from a size fixed in the file (the build makes the file's
    fixed Resize sizes follow the input). ``output`` picks one of several outputs by name or index;
    ``output_activation`` says whether it is a logit map; ``upcast`` whether a file that computes
    in fp16 is made fp32 first (see :mod:`isnet.build_in.source_model`).
    """

    checkpoint: Path
    shape: tuple[int, ...] | Mapping[str, tuple[int, ...]] | None = None
    type: FrontendType = FrontendType.ONNX
    dtype: Precision = Precision.FP32  # of the source model's weights: isnet reads fp32 (fp16 files are upcast)
    arch: str | None = None
    opset: int = OPSET
    output: int | str = 0
    output_activation: OutputActivation = OutputActivation.AUTO
    upcast: Upcast = Upcast.AUTO


# The metric keys of a drift budget: |metric of the int8 build - metric of fp32| on validation images.
BUDGET_METRICS = ("mae", "sm", "maxfmeasure")


@dataclass(frozen=True)
class DriftBudget:
    """How far an int8 build may drift from fp32: past it the build fails, or with ``validation``
    keeps layers in float until it holds (:mod:`isnet.build_in.budget`)."""

    mean_abs: float | None = bounded(None, minimum=0)  # mean |difference| of the maps
    mae: float | None = bounded(None, minimum=0)  # the metrics' |change| on the validation images
    sm: float | None = bounded(None, minimum=0)
    maxfmeasure: float | None = bounded(None, minimum=0)

    def metric_bounds(self) -> dict[str, float]:
        """The metric keys that are set ({"mae": 0.0005, ...})."""
        return {key: getattr(self, key) for key in BUDGET_METRICS if getattr(self, key) is not None}


@dataclass(frozen=True)
class ValidationConfig:
    """Images with masks on which an int8 build checks its drift budget: neither calibration nor
    evaluation images. ``path`` is a folder in ECSSD layout (``image/``, ``mask/``) or an image
    folder with a sibling ``mask/`` folder; calibration images in it are skipped."""

    path: Path | None = None
    count: int = bounded(50, minimum=1)
    # The budget must hold at this confidence on pictures the build has not seen: a build is accepted
    # when the one-sided bootstrap upper bound of each budgeted drift is within its bound.
    confidence: float = bounded(0.95, above=0)


# Widest channel / median channel past which a tensor counts as having an outlier channel.
OUTLIER_RATIO = 10.0


@dataclass(frozen=True)
class QuantizeConfig:
    """int8 settings. Weights are symmetric int8 per channel by default, activations asymmetric uint8."""

    calibrate_mode: CalibrationMode = CalibrationMode.KL_DIVERGENCE
    quantize_per_channel: bool = True
    percentile: float = 99.999
    weight_type: QuantType = QuantType.INT8
    activation_type: QuantType = QuantType.UINT8
    symmetric_weights: bool = True
    symmetric_activations: bool = False
    exclude_nodes: tuple[str, ...] = ()
    num_bins: int = 0  # histogram bins; 0: 2048 (isnet.build_in.range_search.DEFAULT_BINS)
    max_drift: DriftBudget = field(default_factory=DriftBudget)  # unset: a warning past DEFAULT_DRIFT_BOUNDS
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    # A tensor whose widest channel reaches this many times its median channel stays in float
    # (isnet.build_in.int8_plan.outlier_channels); null quantizes it anyway.
    outlier_channel_ratio: float | None = bounded(OUTLIER_RATIO, above=1)
    # Fold each quantized Conv's mean output shift into its bias (ONNX Runtime:
    # isnet.build_in.bias_correction; OpenVINO: NNCF's fast bias correction).
    bias_correction: bool = False
    # Scale outlier channels down where they are made and up in the Convs reading them, so they
    # can be quantized instead of kept float (isnet.build_in.equalize); what it cannot reach the
    # outlier_channel_ratio fallback keeps in float.
    equalize: bool = False
    # Activations computed by these nodes (module paths or node-name globs, as exclude_nodes) get
    # 16-bit integers (A16W8: uint16 with uint8 activations, int16 with int8); onnxruntime only.
    activations_16bit: tuple[str, ...] = ()
    # The form NPUs need: no node left float. Where a tensor needs more than int8 (an outlier
    # channel, a budget the all-int8 model misses) it gets 16-bit integers instead; onnxruntime only.
    integer_only: bool = False
    # OpenVINO int8: the precision the layers left float compute in. bf16 runs them on the bf16
    # units of CPUs that have them (AVX-512 BF16, AMX; elsewhere OpenVINO computes fp32): on the
    # real ISNet at 1024, int8 encoder + bf16 decoder ran 1.24x faster than all-bf16 (AMD EPYC).
    float_precision: Precision = Precision.FP32


@dataclass(frozen=True)
class BackendConfig:
    """Compile target and precision."""

    type: BackendType = BackendType.ONNXRUNTIME
    dtype: Precision = Precision.FP32
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    keep_io_types: bool = True
    performance_hint: PerformanceHint = PerformanceHint.LATENCY  # OpenVINO only


@dataclass(frozen=True)
class SamplerConfig:
    """Which images of the dataset folder calibrate: the first ``get_data_num`` by name."""

    suffix: tuple[str, ...] = ("jpg", "jpeg", "png")
    get_data_num: int = 50


@dataclass(frozen=True)
class DatasetConfig:
    """Calibration images and the pre-processing every consumer of the artifact will use."""

    path: Path
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    process_ops: tuple[Mapping, ...] | None = None  # None: the reference recipe's at frontend.shape's size


@dataclass(frozen=True)
class WorkspaceConfig:
    """Where artifacts are written: ``<path>/<name>/``."""

    path: Path = Path("deploy_weights")


@dataclass(frozen=True)
class VerifyConfig:
    """The post-build fidelity check on held-out images."""

    images: int = 4


@dataclass(frozen=True)
class BuildConfig:
    """A whole build config, validated."""

    name: str
    frontend: FrontendConfig
    backend: BackendConfig = field(default_factory=BackendConfig)
    dataset: DatasetConfig | None = None
    workspace: WorkspaceConfig = field(default_factory=WorkspaceConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    config_path: Path | None = internal()
    # (input name, [N, 3, H, W]) as read from the model and the config; set by validate_build_config.
    resolved_input: tuple[str, tuple[int, ...]] | None = internal()

    @property
    def input_name(self) -> str:
        return self.resolved_input[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.resolved_input[1]

    @property
    def artifact_dir(self) -> Path:
        return self.workspace.path / self.name

    def preprocessor(self) -> Preprocessor:
        """The validated pre-processing (the dataset's ops, or the reference default at the input size)."""
        if self.dataset is not None and self.dataset.process_ops is not None:
            return Preprocessor.from_specs(list(self.dataset.process_ops), where="dataset.process_ops")
        return Preprocessor.from_specs(default_process_ops(self.input_shape[2:]))

    def calibration_images(self) -> list[Path]:
        """The calibration images, in order (empty for non-int8 builds)."""
        if self.backend.dtype is not Precision.INT8 or self.dataset is None:
            return []
        return _dataset_images(self.dataset)[: self.dataset.sampler.get_data_num]

    def held_out_images(self) -> tuple[list[Path], bool]:
        """Images for the fidelity check and whether they are disjoint from the calibration set."""
        if self.dataset is None:
            return [], True
        images = _dataset_images(self.dataset)
        calibration = set(self.calibration_images())
        rest = [p for p in images if p not in calibration]
        if rest:
            return rest[: self.verify.images], True
        return images[: self.verify.images], False

    def to_dict(self) -> dict:
        """The resolved config as plain JSON-able data (stored in ``build.json``)."""
        return to_plain(self)


def _dataset_images(dataset: DatasetConfig) -> list[Path]:
    return list_images(dataset.path, dataset.sampler.suffix)


def _inline_process_ops(data: dict, base_dir: Path, source: str, cwd_keys: frozenset[str]) -> None:
    """``dataset.process_ops`` may name a preset (``u2net``) or a JSON file holding the op list (relative
    to the config's folder, or to the current one when given with ``--set``)."""
    dataset = data.get("dataset")
    if not isinstance(dataset, dict) or not isinstance(dataset.get("process_ops"), str):
        return
    given = {"dataset", "dataset.process_ops"} & cwd_keys
    try:
        dataset["process_ops"] = resolve_process_ops(dataset["process_ops"], Path.cwd() if given else base_dir,
                                                      "dataset.process_ops")
    except IsnetError as exc:
        raise IsnetError(f"{source}: {exc}") from None


def load_build_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> BuildConfig:
    """Read, override and validate a build config; raise IsnetError naming the key on any problem."""
    path = Path(path)
    data = read_yaml_mapping(path, "build config")
    overridden = apply_overrides(data, overrides)
    return validate_build_config(data, source=str(path), base_dir=path.resolve().parent, config_path=path,
                                 cwd_keys=frozenset(overridden))


def validate_build_config(data: Mapping, source: str, base_dir: Path, config_path: Path | None = None,
                          cwd_keys: frozenset[str] = frozenset()) -> BuildConfig:
    """Validate an already-parsed config dict (see :func:`load_build_config`).

    Relative paths resolve against ``base_dir``, except keys in ``cwd_keys`` (``--set`` values),
    which resolve against the current folder.
    """
    data = dict(data)
    _inline_process_ops(data, base_dir, source, cwd_keys)
    config = load_dataclass(BuildConfig, data, source, base_dir, cwd_keys)
    config = dataclasses.replace(config, config_path=config_path)
    config = dataclasses.replace(config, resolved_input=_resolve_input(config, source))
    _check_semantics(config, source)
    return config


def _resolve_input(config: BuildConfig, source: str) -> tuple[str, tuple[int, ...]]:
    """The model's input name and [N, 3, H, W]: the name from the ONNX file, the size from
    ``frontend.shape``, the file's fixed size or the pre-processing's Resize, which must agree."""
    def fail(key: str, message: str) -> IsnetError:
        return IsnetError(f"{source}: {key}: {message}")

    front = config.frontend
    if not config.name or "/" in config.name or config.name.startswith("."):
        raise fail("name", f"must be a plain folder name, got '{config.name}'")
    if not front.checkpoint.is_file():
        raise fail("frontend.checkpoint", f"file not found: {front.checkpoint}")
    if front.dtype is not Precision.FP32:
        raise fail("frontend.dtype", f"only fp32 source models are supported, got '{front.dtype.value}' "
                                     "(an fp16 ONNX file is upcast: see frontend.upcast)")
    if front.type is FrontendType.ONNX:
        try:
            signature = read_onnx_signature(front.checkpoint)
        except IsnetError as exc:
            raise fail("frontend.checkpoint", str(exc)) from None
        try:
            signature.output_name(front.output)
        except IsnetError as exc:
            raise fail("frontend.output", str(exc)) from None
        name, static_hw = signature.input_name, signature.static_hw
        if signature.input_half and front.upcast is Upcast.NEVER:
            raise fail("frontend.upcast", "never keeps the file's fp16 input, and isnet feeds float32 images; "
                                          "use auto (the default)")
    else:
        if front.output != 0:
            raise fail("frontend.output", "applies to ONNX models; an exported ISNet has one output")
        name, static_hw = "input", None
    given = front.shape
    key = "frontend.shape"
    if isinstance(given, Mapping):
        if len(given) != 1:
            raise fail(key, f"give the one input's shape, e.g. [1, 3, 320, 320], got {dict(given)}")
        given_name, shape = next(iter(given.items()))
        if given_name != name:
            raise fail(key, f"the model's input is named '{name}', not '{given_name}' (write shape: [1, 3, H, W]; "
                            "the name is read from the model)")
        given, key = shape, f"frontend.shape.{given_name}"
    resize = None
    if config.dataset is not None and config.dataset.process_ops is not None:
        try:
            resize = Preprocessor.from_specs(list(config.dataset.process_ops), where="dataset.process_ops").input_size
        except IsnetError as exc:
            raise IsnetError(f"{source}: {exc}") from None
    if given is not None:
        shape = tuple(given)
        if len(shape) != 4 or shape[1] != 3 or any(s <= 0 for s in shape):
            raise fail(key, f"expected [N, 3, H, W] with positive sizes, got {list(shape)}")
        return name, shape
    hw = resize or static_hw
    if hw is None:
        raise fail("frontend.shape", "the model's input size is not fixed in the file; give frontend.shape: "
                                     "[1, 3, H, W] or a Resize in dataset.process_ops")
    return name, (1, 3, *hw)


def _refuse_ignored_keys(config: BuildConfig, fail) -> None:
    """Keys that the build's backend or precision would not read: refused, not silently dropped."""
    backend = config.backend
    if config.frontend.type is FrontendType.ONNX and config.frontend.opset != OPSET:
        raise fail("frontend.opset", f"the opset a PyTorch checkpoint is exported to; an ONNX source keeps its own "
                                     f"(older ones are converted to {OPSET})")
    if backend.performance_hint is not PerformanceHint.LATENCY and backend.type is not BackendType.OPENVINO:
        raise fail("backend.performance_hint", f"an OpenVINO setting; {backend.type.value} builds do not read it")
    if not backend.keep_io_types and (backend.type is not BackendType.ONNXRUNTIME or backend.dtype is not Precision.FP16):
        raise fail("backend.keep_io_types", "only ONNX Runtime fp16 builds read it (the others keep fp32 inputs "
                                            "and outputs)")
    if backend.dtype is not Precision.INT8 and backend.quantize != QuantizeConfig():
        changed = next(f.name for f in dataclasses.fields(QuantizeConfig)
                       if getattr(backend.quantize, f.name) != getattr(QuantizeConfig(), f.name))
        raise fail(f"backend.quantize.{changed}", f"quantization settings apply to int8 builds; this one is "
                                                  f"{backend.dtype.value} (remove backend.quantize; on the "
                                                  "command line --set backend.quantize=null)")


def _check_semantics(config: BuildConfig, source: str) -> None:
    def fail(key: str, message: str) -> IsnetError:
        return IsnetError(f"{source}: {key}: {message}")

    shape = config.input_shape
    quant = config.backend.quantize
    if not 0 < quant.percentile <= 100:
        raise fail("backend.quantize.percentile", f"must be in (0, 100], got {quant.percentile}")
    if quant.num_bins < 0:
        raise fail("backend.quantize.num_bins", "must be >= 0")
    if config.verify.images < 0:
        raise fail("verify.images", "must be >= 0")
    try:
        preprocessor = config.preprocessor()
    except IsnetError as exc:
        raise IsnetError(f"{source}: {exc}") from None
    size = preprocessor.input_size
    if size is None:
        raise fail("dataset.process_ops", "needs a Resize to the model input size")
    if tuple(size) != tuple(shape[2:]):
        raise fail("dataset.process_ops", f"Resize.size {list(size)} does not match the model's input "
                                          f"{list(shape)} (H, W = {list(shape[2:])})")
    _refuse_ignored_keys(config, fail)
    if config.backend.type is not BackendType.ONNXRUNTIME:
        for key in ("activations_16bit", "integer_only"):
            if getattr(quant, key):
                raise fail(f"backend.quantize.{key}", "16-bit activations are built with backend.type: onnxruntime "
                           "(its QDQ graph runs on any ONNX runtime and maps onto NPU mixed-precision settings)")
    if quant.float_precision not in (Precision.FP32, Precision.BF16):
        raise fail("backend.quantize.float_precision", f"fp32 or bf16, not {quant.float_precision.value}")
    if quant.float_precision is Precision.BF16 and config.backend.type is not BackendType.OPENVINO:
        raise fail("backend.quantize.float_precision", "bf16 layers in an int8 build are an OpenVINO feature "
                   "(backend.type: openvino)")
    if quant.integer_only and quant.exclude_nodes:
        raise fail("backend.quantize.exclude_nodes", "an integer_only build leaves no node in float; give the "
                   "nodes 16 bits with backend.quantize.activations_16bit instead")
    if quant.validation.confidence >= 1:
        raise fail("backend.quantize.validation.confidence", f"a confidence below 1, got {quant.validation.confidence}")
    budget = quant.max_drift.metric_bounds()
    if config.backend.dtype is Precision.INT8 and budget and quant.validation.path is None:
        raise fail(f"backend.quantize.max_drift.{next(iter(budget))}", "a metric budget is checked on images with "
                   "masks: give backend.quantize.validation.path (neither calibration nor evaluation images)")
    if quant.validation.path is not None and not budget and quant.max_drift.mean_abs is None:
        raise fail("backend.quantize.validation", "checks a drift budget; set backend.quantize.max_drift "
                   "(mae, sm, maxfmeasure, mean_abs)")
    if quant.validation.path is not None and not quant.validation.path.is_dir():
        raise fail("backend.quantize.validation.path", f"folder not found: {quant.validation.path}")
    dataset = config.dataset
    if config.backend.dtype is Precision.INT8 and dataset is None:
        raise fail("dataset", "int8 builds need a calibration dataset (dataset.path with images)")
    if dataset is not None:
        if not dataset.path.is_dir():
            raise fail("dataset.path", f"folder not found: {dataset.path}")
        try:
            suffixes = parse_suffixes(dataset.sampler.suffix)
        except IsnetError as exc:
            raise fail("dataset.sampler.suffix", str(exc)) from None
        wanted = dataset.sampler.get_data_num
        if wanted <= 0:
            raise fail("dataset.sampler.get_data_num", f"must be positive, got {wanted}")
        found = len(list_images(dataset.path, suffixes))
        if found == 0:
            raise fail("dataset.path", f"no images with suffix {', '.join(suffixes)} in {dataset.path}")
        if config.backend.dtype is Precision.INT8 and found < wanted:
            raise fail("dataset.sampler.get_data_num", f"asks for {wanted} calibration images but "
                                                       f"{dataset.path} has only {found}")
