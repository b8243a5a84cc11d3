"""The OpenVINO backend: IR artifacts in fp32, fp16 (compressed weights), bf16 (inference
precision hint) and int8 (NNCF post-training quantization fed by the ops registry).

Precision choices are recorded as ``runtime_options`` in ``build.json``, so the runner compiles
the IR exactly as the build intended (on AMX/AVX512-BF16 CPUs OpenVINO would otherwise run an
fp32 IR in bf16 by default).
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from isnet.build_in.runners.openvino import (PERFORMANCE_HINTS, OpenVinoRunner,  # noqa: F401 -- a backend
                                                     open_runner)  # opens its artifacts
from isnet.build_in.budget import DRIFT_IMAGES, MAX_FLOAT_SHARE, DriftJudge, search_budget
from isnet.build_in.calibration import CalibrationSource, compute_tensor_ranges
from isnet.build_in.channel_ops import NNCF_QUANTIZATION_AGNOSTIC
from isnet.build_in.config import BuildConfig, CalibrationMode, Precision, QuantType
from isnet.build_in.int8_plan import Int8Plan, matching_nodes, plan_outlier_channels
from isnet.build_in.sixteen_bit import group_by_module, named_by_module
from isnet.core import IsnetError, first_line
from isnet.core.logs import quiet_loggers

MODEL_FILE = "model.xml"
PRECISIONS = (Precision.FP32, Precision.FP16, Precision.BF16, Precision.INT8)
# What each build precision asks of the CPU plugin at compile time (int8: its float layers', per
# quantize.float_precision).
_INFERENCE_PRECISION = {Precision.FP32: "f32", Precision.FP16: "f32", Precision.BF16: "bf16"}


def versions() -> dict[str, str]:
    """Library versions that determine what this backend produces."""
    import nncf
    import openvino

    return {"openvino": openvino.__version__, "nncf": nncf.__version__}


def resolve_ignored_names(model, patterns: Sequence[str]) -> list[str]:
    """OpenVINO op names matching ``exclude_nodes`` (:func:`isnet.build_in.int8_plan.matching_nodes`):
    the ONNX initializer names survive conversion as the constants' names, and the ONNX node names
    as the ops' (``/side1/Conv``)."""
    ops = []
    for op in model.get_ops():
        if op.get_type_name() in ("Constant", "Parameter", "Result"):
            continue
        feeds = [source.get_node() for source in (inp.get_source_output() for inp in op.inputs())]
        ops.append((op.get_friendly_name(), [feed.get_friendly_name() for feed in feeds
                                             if feed.get_type_name() in ("Constant", "Convert")]))
    return matching_nodes(ops, patterns, "backend.quantize.exclude_nodes", "an OpenVINO op name")


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
    # NNCF's fast bias correction is on by default in NNCF but off here unless asked for: on the
    # pretrained U²-Netp (outlier fallback on) it shifted the maps by +0.019 on average and took
    # their mean |diff| from fp32 from 0.0017 to 0.020 (12 ECSSD pictures, 20 calibration images).
    advanced = AdvancedQuantizationParameters(
        disable_bias_correction=not quant.bias_correction,
        activations_range_estimator_params=estimator,
        weights_quantization_params=QuantizationParameters(per_channel=quant.quantize_per_channel))
    return preset, advanced


def _planned_onnx(source_onnx: Path, plan: Int8Plan, config: BuildConfig, source: CalibrationSource, work: Path,
                  progress: Callable[[str, int, int], None] | None) -> Path:
    """Steps 1-3 of the int8 plan (:func:`isnet.build_in.int8_plan.plan_outlier_channels`) on the fp32 ONNX
    graph the IR is converted from; returns the ONNX file to convert (equalised, if asked).

    The per-channel ranges come from a min/max pass of ONNX Runtime over that graph (the statistics
    the ONNX Runtime backend takes); NNCF calibrates the IR itself afterwards.
    """
    quant = config.backend.quantize
    if quant.outlier_channel_ratio is None and not quant.equalize:
        return source_onnx

    def measure(path: Path, equalised: bool) -> dict:
        channel_ranges: dict = {}
        stage = "outlier channels (equalised)" if equalised else "outlier channels"
        step = (lambda n: progress(stage, n, len(source))) if progress else None
        compute_tensor_ranges(path, source, CalibrationMode.MAX, work, progress=step, channel_ranges=channel_ranges)
        return channel_ranges

    return plan_outlier_channels(plan, source_onnx, quant, work, measure)


def _made_from(op_name: str, nodes: set[str]) -> bool:
    """Whether an OpenVINO op comes from one of the ONNX ``nodes``: it has the node's name, or the name
    and a suffix (``Conv_787/WithoutBiases``; torch names hold slashes themselves, ``/stage1/.../Conv``)."""
    return op_name in nodes or any(op_name.startswith(f"{node}/") for node in nodes)


def _quantize_int8(model, config: BuildConfig, source: CalibrationSource, plan: Int8Plan,
                   progress: Callable[[str, int, int], None] | None):
    """NNCF's post-training quantization of the IR with the plan's float nodes in its ignored scope;
    the quantized IR and the backend's own details for build.json."""
    import nncf

    preset, advanced = _nncf_parameters(config)
    plan.excluded_nodes = resolve_ignored_names(model, config.backend.quantize.exclude_nodes)
    # The ops OpenVINO made of the ONNX nodes the plan keeps float carry those nodes' names.
    float_nodes = set(plan.float_nodes)
    outlier_ops = [op.get_friendly_name() for op in model.get_ops()
                   if op.get_type_name() not in ("Constant", "Parameter", "Result")
                   and _made_from(op.get_friendly_name(), float_nodes)]
    ignored = plan.excluded_nodes + [name for name in outlier_ops if name not in plan.excluded_nodes]

    def counted():
        for item in source:
            if progress:
                progress("calibrate", 1, len(source))
            yield item[config.input_name]

    dataset = nncf.Dataset(_Reiterable(counted))
    scope = nncf.IgnoredScope(names=ignored) if ignored else None
    with contextlib.redirect_stdout(io.StringIO()), quiet_loggers("nncf"):  # NNCF's own log lines and progress bars
        quantized = nncf.quantize(model, dataset, preset=preset, subset_size=len(source),
                                  target_device=nncf.TargetDevice.CPU, ignored_scope=scope,
                                  advanced_parameters=advanced)
    return quantized, {"ignored_ops": ignored, "nncf_fast_bias_correction": config.backend.quantize.bias_correction}


_CONVOLUTIONS = ("Convolution", "GroupConvolution")


def _float_weights(model) -> dict[str, np.ndarray]:
    """{convolution op: its float weights} of an IR before quantization (constant weights only)."""
    found = {}
    for op in model.get_ops():
        source = op.input_value(1).get_node() if op.get_type_name() in _CONVOLUTIONS else None
        if source is not None and source.get_type_name() == "Constant":
            found[op.get_friendly_name()] = source.get_data().copy()
    return found


def _input_fakequantizes(op) -> list[tuple[object, int]]:
    """The FakeQuantize ops that round what convolution ``op`` reads, as (reader, input index) pairs
    whose source is one: its own data input, or the inputs of the quantization-agnostic ops
    (concatenation, pooling, resizing) that data input comes through."""
    found, stack, seen = [], [(op, 0)], set()
    while stack:
        reader, index = stack.pop()
        source = reader.input_value(index).get_node()
        if source.get_type_name() == "FakeQuantize":
            found.append((reader, index))
        elif source.get_type_name() in NNCF_QUANTIZATION_AGNOSTIC and source.get_instance_id() not in seen:
            seen.add(source.get_instance_id())  # not id(): Python wrappers of ops come and go
            stack.extend((source, i) for i in range(source.get_input_size())
                         if source.input_value(i).get_node().get_type_name() != "Constant")
    return found


def _activation_fakequantizes(model) -> list:
    """The FakeQuantize ops rounding activations (NNCF names them ``<producer>/fq_output_<port>``)."""
    return [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"
            and "fq_weights" not in op.get_friendly_name()]


def _quantized_convolutions(model) -> list:
    """The convolutions NNCF quantized: their weights are not a float constant any more."""
    return [op for op in model.get_ops() if op.get_type_name() in _CONVOLUTIONS
            and not (op.input_value(1).get_node().get_type_name() == "Constant"
                     and op.input_value(1).get_element_type().is_real())]


def _with_float_layers(quantized, float_weights: dict[str, np.ndarray], names: set[str]):
    """A copy of ``quantized`` where the named convolutions compute in float (and the named
    FakeQuantize ops round nothing): what they read is no
    longer rounded (the FakeQuantize ops before it are bypassed for the path to this convolution;
    ops on that path, a Concat say, pass the float values to their other readers too), and their
    int8 weights are replaced by the float ones (the weights carry most of the error on some
    models: on the demo checkpoint, removing every activation FakeQuantize took the maps' mean
    |diff| from fp32 only from 0.0039 to 0.0037)."""
    import openvino as ov

    model = quantized.clone()
    for op in _activation_fakequantizes(model):  # named themselves: rounding nothing any more
        if op.get_friendly_name() in names:
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(op.input_value(0))
    for op in _quantized_convolutions(model):
        name = op.get_friendly_name()
        if name not in names:
            continue
        while found := _input_fakequantizes(op):  # a FakeQuantize bypassed can uncover one before it
            for reader, index in found:
                reader.input(index).replace_source_output(reader.input_value(index).get_node().input_value(0))
        if name in float_weights:
            op.input(1).replace_source_output(ov.op.Constant(float_weights[name]).output(0))
    return model


def _int8_weight_noise(weights: np.ndarray) -> float:
    """Relative power of the rounding error of symmetric per-output-channel int8 weights (as NNCF's
    CPU target stores them): |W_int8 - W|^2 / |W|^2. Grouped weights (G, O/G, ...) have G x O/G channels."""
    channels = weights.shape[0] * weights.shape[1] if weights.ndim == 5 else weights.shape[0]
    flat = weights.reshape(channels, -1).astype(np.float64)
    scale = np.abs(flat).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    power = np.square(flat).sum()
    return float(np.square(np.round(flat / scale) * scale - flat).sum() / power) if power > 0 else 0.0


def _layer_noise(quantized, float_weights: dict[str, np.ndarray], inputs: list[np.ndarray]) -> list[tuple[str, float]]:
    """(quantized convolution, relative noise power its int8 input and weights add) over ``inputs``,
    noisiest first: the error of the FakeQuantize ops rounding what it reads (over the tensors they
    read, in the quantized model as it runs) plus its weights' rounding error."""
    import openvino as ov

    model = quantized.clone()
    layers = _quantized_convolutions(model)
    inputs_of = {op.get_instance_id(): [reader.input_value(index).get_node() for reader, index in
                                        _input_fakequantizes(op)] for op in layers}
    fakes = list({f.get_instance_id(): f for found in inputs_of.values() for f in found}.values())
    ports = [port for op in fakes for port in (op.input_value(0), op.output(0))]
    base = len(model.outputs)
    model.add_outputs(ports)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    signal, noise = np.zeros(len(fakes)), np.zeros(len(fakes))
    # add_outputs skips a port that already feeds a result; rank by the weights alone then.
    if len(compiled.outputs) == base + len(ports):
        for tensor in inputs:
            results = compiled({0: tensor[None]})
            for index in range(len(fakes)):
                before = np.asarray(results[compiled.outputs[base + 2 * index]], dtype=np.float64)
                after = np.asarray(results[compiled.outputs[base + 2 * index + 1]], dtype=np.float64)
                signal[index] += np.square(before).sum()
                noise[index] += np.square(after - before).sum()
    position = {f.get_instance_id(): i for i, f in enumerate(fakes)}
    ranked = []
    for op in layers:
        rows = [position[f.get_instance_id()] for f in inputs_of[op.get_instance_id()]]
        total = float(noise[rows].sum() / signal[rows].sum()) if rows and signal[rows].sum() > 0 else 0.0
        name = op.get_friendly_name()
        if name in float_weights:
            total += _int8_weight_noise(float_weights[name])
        ranked.append((name, total))
    return sorted(ranked, key=lambda item: -item[1])


def _search_float_layers(quantized, float_weights: dict[str, np.ndarray], target: Path, judge: DriftJudge,
                         progress: Callable[[str, int, int], None] | None) -> dict:
    """The budgeted OpenVINO int8 build: :func:`isnet.build_in.budget.search_budget` over the quantized
    IR's convolutions and activation FakeQuantize ops (whole modules where the graph names them;
    single convolutions otherwise, ranked by the noise their int8 input and weights add, as ONNX
    Runtime ranks its layers by local error). A convolution kept float gets its float weights back and
    loses the FakeQuantize on its input, in the IR NNCF made (one NNCF pass: no re-calibration per
    trial). Writes the passing IR to ``target``.

    NNCF's own ``quantize_with_accuracy_control`` does this job too, but calibrates and validates
    far more: on the pretrained U²-Netp it had not finished after 35 minutes; this search takes a
    few minutes.
    """
    import openvino as ov

    def quantize(names: list[str]) -> Path:
        ov.save_model(_with_float_layers(quantized, float_weights, set(names)), str(target), compress_to_fp16=False)
        return target

    def ranked_layers() -> list[tuple[str, ...]]:
        noise = _layer_noise(quantized, float_weights, judge.inputs(DRIFT_IMAGES))
        return [(name,) for name, _ in noise[:max(1, int(len(noise) * MAX_FLOAT_SHARE))]]

    # A module kept float takes its activations' FakeQuantize ops with it (a residual Add's output,
    # a side head's logit: no convolution reads them through agnostic ops only).
    convolutions = [op.get_friendly_name() for op in _quantized_convolutions(quantized)]
    layers = convolutions + [op.get_friendly_name() for op in _activation_fakequantizes(quantized)]
    started = time.perf_counter()
    result = search_budget(quantize, judge, progress, by_module=named_by_module(convolutions),
                           modules=lambda: group_by_module(layers), ranked_layers=ranked_layers)
    return {**judge.summary(result), "search_seconds": round(time.perf_counter() - started, 1)}


class _Reiterable:
    """An iterable that restarts its generator on every ``iter`` (NNCF may read the data twice)."""

    def __init__(self, factory):
        self.factory = factory

    def __iter__(self):
        return iter(self.factory())


def runtime_options(config: BuildConfig) -> dict:
    """How the runner compiles this build's IR: the inference precision (an int8 build's float
    layers in ``quantize.float_precision``) and the performance hint."""
    hint = config.backend.performance_hint.value.upper()  # OpenVINO's spelling
    precision = config.backend.dtype
    if precision is Precision.INT8:
        precision = config.backend.quantize.float_precision
    return {"inference_precision": _INFERENCE_PRECISION[precision], "performance_hint": hint}


def _converted(ov, source: Path):
    """OpenVINO's model of the ONNX file ``source``. The file runs on ONNX Runtime (checked before the
    build), so OpenVINO refusing it is a limit of OpenVINO the user can route around: one line."""
    try:
        return ov.convert_model(str(source))
    except Exception as exc:  # noqa: BLE001 -- OpenVINO's frontends raise their own types (OpConversionFailure, ...)
        raise IsnetError(f"OpenVINO cannot convert this model ({type(exc).__name__}: {first_line(exc, 200)}); "
                         "build it with backend.type: onnxruntime") from None


def compile_model(source: Path, config: BuildConfig, out_dir: Path, work: Path,
                  progress: Callable[[str, int, int], None] | None = None, judge=None) -> dict:
    """Convert the fp32 ONNX ``source`` to an IR in ``out_dir``; return backend details for build.json."""
    import openvino as ov

    precision = config.backend.dtype
    options = runtime_options(config)
    details: dict = {}
    target = out_dir / MODEL_FILE
    if precision is Precision.INT8:
        quant = config.backend.quantize
        if judge is not None and quant.bias_correction:
            raise IsnetError("backend.quantize.bias_correction: NNCF's fast bias correction cannot be undone for "
                             "the layers an OpenVINO max_drift search keeps in float; leave it off with max_drift")
        calibration = CalibrationSource(config.calibration_images(), config.preprocessor(), config.input_name)
        plan = Int8Plan.for_config(quant, len(calibration))
        source = _planned_onnx(source, plan, config, calibration, work, progress)
        model = _converted(ov, source)
        float_weights = _float_weights(model) if judge is not None else {}
        model, details = _quantize_int8(model, config, calibration, plan, progress)
        if quant.bias_correction:
            plan.bias_correction = {"nncf_fast_bias_correction": True}
        if judge is not None:
            plan.budget = _search_float_layers(model, float_weights, target, judge, progress)
        else:
            ov.save_model(model, str(target), compress_to_fp16=False)
        details["plan"] = plan.record()
    else:
        ov.save_model(_converted(ov, source), str(target), compress_to_fp16=precision is Precision.FP16)
    return {"model_file": MODEL_FILE, "runtime_options": options, "details": details}
