"""The OpenVINO backend: IR artifacts in fp32, fp16 (compressed weights), bf16 (inference
precision hint) and int8 (NNCF post-training quantization fed by the ops registry).

Precision choices are recorded as ``runtime_options`` in ``build.json``, so the runner compiles
the IR exactly as the build intended (on AMX/AVX512-BF16 CPUs OpenVINO would otherwise run an
fp32 IR in bf16 by default).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from isnet.build_in.calibration import CalibrationSource, compute_tensor_ranges, float_tensor_nodes, outlier_channels
from isnet.build_in.config import BuildConfig, CalibrationMode, Precision, QuantType
from isnet.core import IsnetError, first_line

MODEL_FILE = "model.xml"
PRECISIONS = (Precision.FP32, Precision.FP16, Precision.BF16, Precision.INT8)
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
# What each build precision asks of the CPU plugin at compile time.
_INFERENCE_PRECISION = {Precision.FP32: "f32", Precision.FP16: "f32", Precision.BF16: "bf16", Precision.INT8: "f32"}


def versions() -> dict[str, str]:
    """Library versions that determine what this backend produces."""
    import nncf
    import openvino

    return {"openvino": openvino.__version__, "nncf": nncf.__version__}


class OpenVinoRunner:
    """A compiled OpenVINO model on the CPU behind the :class:`~isnet.build_in.runner.Runner` contract.

    The IR has a dynamic batch; the runner reshapes it to each batch size it sees (compiled once
    per size and kept), which is what the CPU plugin runs fastest. ``streams`` > 1 with the
    THROUGHPUT hint lets several infer requests run concurrently (see :meth:`infer_requests`).
    """

    def __init__(self, model_file: str | os.PathLike, threads: int | None = None,
                 inference_precision: str = "f32", performance_hint: str = "LATENCY", streams: int | None = None):
        import openvino as ov

        self.path = Path(model_file)
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for unreadable IR
            raise IsnetError(f"{self.path}: OpenVINO cannot read the model ({first_line(exc)})") from None
        if performance_hint not in PERFORMANCE_HINTS:
            raise IsnetError(f"performance hint must be one of {', '.join(PERFORMANCE_HINTS)}, got '{performance_hint}'")
        self.config = {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": performance_hint}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        if streams:
            self.config["NUM_STREAMS"] = int(streams)
        self.input_name = self.model.inputs[0].get_any_name()
        self.output_name = self.model.outputs[0].get_any_name()
        self._compiled: dict[int, object] = {}
        self._requests: dict[int, object] = {}

    def compiled_for(self, batch: int):
        """The model compiled for a static ``batch`` (cached)."""
        if batch not in self._compiled:
            model = self.model.clone()
            shape = list(model.inputs[0].get_partial_shape())
            shape[0] = batch
            model.reshape({self.input_name: shape})
            self._compiled[batch] = self.core.compile_model(model, "CPU", self.config)
        return self._compiled[batch]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one synchronous request; outputs are float32."""
        array = np.ascontiguousarray(inputs[self.input_name], dtype=np.float32)
        batch = array.shape[0]
        if batch not in self._requests:
            self._requests[batch] = self.compiled_for(batch).create_infer_request()
        result = self._requests[batch].infer({0: array})
        return {self.output_name: np.asarray(result[0], dtype=np.float32).copy()}

    def infer_requests(self, count: int, batch: int = 1) -> list:
        """``count`` independent infer requests on one compiled model, for concurrent use."""
        compiled = self.compiled_for(batch)
        return [compiled.create_infer_request() for _ in range(count)]


def open_runner(model_file, threads=None, inference_precision: str = "f32", performance_hint: str = "LATENCY",
                streams: int | None = None, **_unused) -> OpenVinoRunner:
    """Open an artifact's IR with the precision recorded at build time."""
    return OpenVinoRunner(model_file, threads=threads, inference_precision=inference_precision,
                          performance_hint=performance_hint, streams=streams)


def resolve_ignored_names(model, patterns: tuple[str, ...]) -> list[str]:
    """OpenVINO op names matching ``exclude_nodes``: an op-name glob or a PyTorch module path.

    A module path such as ``side1`` matches the ops fed by constants named ``side1.*`` (the
    ONNX initializer names survive conversion).
    """
    names: list[str] = []
    ops = list(model.get_ops())
    for pattern in patterns:
        hits = []
        for op in ops:
            if op.get_type_name() in ("Constant", "Parameter", "Result"):
                continue
            feeds = [src.get_node() for src in (inp.get_source_output() for inp in op.inputs())]
            constants = [f.get_friendly_name() for f in feeds if f.get_type_name() in ("Constant", "Convert")]
            if fnmatch.fnmatchcase(op.get_friendly_name(), pattern) or any(
                    fnmatch.fnmatchcase(c, f"{pattern}.*") or fnmatch.fnmatchcase(c, pattern) for c in constants):
                hits.append(op.get_friendly_name())
        if not hits:
            raise IsnetError(f"backend.quantize.exclude_nodes: '{pattern}' matches no OpenVINO op; give a module "
                             "path such as 'side1' or an op name")
        names.extend(h for h in hits if h not in names)
    return names


def _nncf_parameters(config: BuildConfig):
    """Map the config's quantize settings to NNCF; refuse settings NNCF has no equivalent for."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    quant = config.backend.quantize
    key = "backend.quantize"
    if quant.calibrate_mode in (CalibrationMode.KL_DIVERGENCE, CalibrationMode.MSE):
        raise IsnetError(f"{key}.calibrate_mode: {quant.calibrate_mode.value} is calibrated by isnet's own "
                         "histograms for ONNX Runtime; NNCF's range estimators are 'max' (min/max over the "
                         "calibration set) and 'percentile' with backend.type openvino")
    if quant.weight_type is not QuantType.INT8 or quant.activation_type is not QuantType.UINT8:
        raise IsnetError(f"{key}: NNCF picks int8 weights and u8/i8 activations itself; leave weight_type and "
                         "activation_type at their defaults (int8, uint8) with backend.type openvino")
    if not quant.symmetric_weights:
        raise IsnetError(f"{key}.symmetric_weights: NNCF's CPU target quantizes weights symmetrically only")
    if quant.num_bins:
        raise IsnetError(f"{key}.num_bins: NNCF's range estimators take no histogram size; remove it")
    if quant.calibrate_mode is CalibrationMode.MAX:
        estimator = RangeEstimatorParametersSet.MINMAX
    else:
        # Mean over images of each image's percentile: NNCF's nearest equivalent of ORT's
        # percentile of the pooled histogram.
        estimator = copy.deepcopy(RangeEstimatorParametersSet.MEAN_QUANTILE)
        outlier = (100.0 - quant.percentile) / 100.0
        estimator.min.quantile_outlier_prob = outlier
        estimator.max.quantile_outlier_prob = outlier
    preset = nncf.QuantizationPreset.PERFORMANCE if quant.symmetric_activations else nncf.QuantizationPreset.MIXED
    advanced = AdvancedQuantizationParameters(
        activations_range_estimator_params=estimator,
        weights_quantization_params=QuantizationParameters(per_channel=quant.quantize_per_channel))
    return preset, advanced


def _outlier_ops(model, source_onnx: Path, config: BuildConfig, source: CalibrationSource, work: Path,
                 progress: Callable[[str, int, int], None] | None) -> tuple[list[dict], list[str]]:
    """Tensors with an outlier channel and the OpenVINO ops to leave out of quantization so they stay float.

    The per-channel ranges come from a min/max pass of ONNX Runtime over the fp32 ONNX graph the IR
    was converted from (the statistics the ONNX Runtime backend takes); the ONNX nodes keeping a
    tensor float (:func:`float_tensor_nodes`) map to the ops OpenVINO made of them, which carry
    the node's name (``Conv_787``, ``Conv_787/WithoutBiases``).
    """
    import onnx

    ratio = config.backend.quantize.outlier_channel_ratio
    if ratio is None:
        return [], []
    channel_ranges: dict = {}
    step = (lambda n: progress("outlier channels", n, len(source))) if progress else None
    compute_tensor_ranges(source_onnx, source, CalibrationMode.MAX, work, progress=step, channel_ranges=channel_ranges)
    outliers = outlier_channels(channel_ranges, ratio)
    if not outliers:
        return [], []
    graph = onnx.load(str(source_onnx), load_external_data=False).graph
    nodes = set(float_tensor_nodes(graph, [item["tensor"] for item in outliers], []))
    ops = [op.get_friendly_name() for op in model.get_ops()
           if op.get_type_name() not in ("Constant", "Parameter", "Result") and _made_from(op.get_friendly_name(), nodes)]
    return outliers, ops


def _made_from(op_name: str, nodes: set[str]) -> bool:
    """Whether an OpenVINO op comes from one of the ONNX ``nodes``: it has the node's name, or the name
    and a suffix (``Conv_787/WithoutBiases``; torch names hold slashes themselves, ``/stage1/.../Conv``)."""
    return op_name in nodes or any(op_name.startswith(f"{node}/") for node in nodes)


def _quantize_int8(model, source_onnx: Path, config: BuildConfig, work: Path,
                   progress: Callable[[str, int, int], None] | None, judge=None):
    import nncf

    preset, advanced = _nncf_parameters(config)
    images = config.calibration_images()
    source = CalibrationSource(images, config.preprocessor(), config.input_name)
    ignored = resolve_ignored_names(model, config.backend.quantize.exclude_nodes)
    # Tensors with an outlier channel stay float, as in ONNX Runtime builds.
    outliers, outlier_ops = _outlier_ops(model, source_onnx, config, source, work, progress)
    ignored += [name for name in outlier_ops if name not in ignored]

    def counted():
        for item in source:
            if progress:
                progress("calibrate", 1, len(images))
            yield item[config.input_name]

    dataset = nncf.Dataset(_Reiterable(counted))
    # NNCF logs through the "nncf" logger and prints its own progress bars; keep ours.
    logging.getLogger("nncf").setLevel(logging.ERROR)
    scope = nncf.IgnoredScope(names=ignored) if ignored else None
    details = {"ignored_ops": ignored, "calibration_images": len(images), "outlier_tensors": outliers[:10],
               "outlier_nodes_in_float": outlier_ops}
    with contextlib.redirect_stdout(io.StringIO()):
        if judge is None:
            quantized = nncf.quantize(model, dataset, preset=preset, subset_size=len(images),
                                      target_device=nncf.TargetDevice.CPU, ignored_scope=scope,
                                      advanced_parameters=advanced)
        else:
            started = time.perf_counter()
            quantized = _quantize_with_accuracy_control(model, dataset, len(images), judge, preset, scope, advanced)
            details["accuracy_control_seconds"] = round(time.perf_counter() - started, 1)
    return quantized, details


def _quantize_with_accuracy_control(model, dataset, subset_size: int, judge, preset, scope, advanced):
    """NNCF's accuracy control with the budget as its one metric: 1 minus the largest share of a bound
    the masks use (:meth:`DriftJudge.budget_used`), so fp32 scores 1 and ``max_drop`` 1 is the budget
    (not 0 for fp32: NNCF divides by it for its relative drop, even when asked for the absolute one).

    NNCF quantizes, and while the metric drops past ``max_drop`` it returns the layers it ranks most
    sensitive to float, as :mod:`isnet.build_in.budget` does for ONNX Runtime.
    """
    import nncf

    def validate(compiled, items) -> float:
        maps, masks = [], []
        for tensor, geometry in items:
            output = np.asarray(compiled(tensor[None])[0], dtype=np.float32)
            maps.append(output)
            masks.append(judge.mask_of(output, geometry))
        return 1.0 - judge.budget_used(judge.check(maps, masks))

    validation = nncf.Dataset(judge.validation_items(), lambda item: item[0][None])
    return nncf.quantize_with_accuracy_control(
        model, dataset, validation, validate, max_drop=1.0, drop_type=nncf.DropType.ABSOLUTE, preset=preset,
        target_device=nncf.TargetDevice.CPU, subset_size=subset_size, ignored_scope=scope,
        advanced_quantization_parameters=advanced)


class _Reiterable:
    """An iterable that restarts its generator on every ``iter`` (NNCF may read the data twice)."""

    def __init__(self, factory):
        self.factory = factory

    def __iter__(self):
        return iter(self.factory())


def _budget_record(judge, model_file: Path, seconds: float) -> dict:
    """Check what accuracy control returned against the budget ourselves; build.json's record of it."""
    check = judge(model_file)
    if not check.within:
        raise IsnetError(f"backend.quantize.max_drift cannot be met: after NNCF's accuracy control the drift on "
                         f"{len(judge.pairs)} validation images is {judge.misses(check)}; no artifact written. "
                         "Loosen the budget or build fp16/bf16")
    return {**judge.record(check), "method": "nncf.quantize_with_accuracy_control",
            "accuracy_control_seconds": seconds, "images_per_second": {"final": round(check.images_per_second, 2)}}


def compile_model(source: Path, config: BuildConfig, out_dir: Path, work: Path,
                  progress: Callable[[str, int, int], None] | None = None, judge=None) -> dict:
    """Convert the fp32 ONNX ``source`` to an IR in ``out_dir``; return backend details for build.json."""
    import openvino as ov

    if config.backend.quantize.bias_correction:
        raise IsnetError("backend.quantize.bias_correction: OpenVINO builds always get NNCF's fast bias "
                         "correction (NNCF's default); the setting is for ONNX Runtime builds")
    precision = config.backend.dtype
    hint = config.backend.performance_hint.upper()
    if hint not in PERFORMANCE_HINTS:
        raise IsnetError(f"backend.performance_hint must be one of {', '.join(PERFORMANCE_HINTS)}, got '{hint}'")
    model = ov.convert_model(str(source))
    details: dict = {}
    if precision is Precision.INT8:
        model, details = _quantize_int8(model, source, config, work, progress, judge)
    ov.save_model(model, str(out_dir / MODEL_FILE), compress_to_fp16=precision is Precision.FP16)
    if judge is not None and precision is Precision.INT8:
        details["budget"] = _budget_record(judge, out_dir / MODEL_FILE, details.pop("accuracy_control_seconds"))
    options = {"inference_precision": _INFERENCE_PRECISION[precision], "performance_hint": hint}
    return {"model_file": MODEL_FILE, "runtime_options": options, "details": details}
