"""The ONNX Runtime backend: fp32 (graph-optimised), fp16 (float weights, fp32 I/O) and int8 (QDQ)."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx

from isnet.build_in.backends.onnxruntime_runner import OnnxRuntimeRunner, open_runner  # noqa: F401 -- a backend opens its artifacts
from isnet.build_in.bias_correction import conv_weight_error_shifts, correct_biases
from isnet.build_in.budget import (DRIFT_IMAGES, MAX_FLOAT_SHARE, SIXTEEN_BIT, DriftJudge,
                                   rank_by_isolated_damage, search_float_nodes)
from isnet.build_in.calibration import (MSE_MAX_BINS, OUTLIER_RATIO, CalibrationSource, compute_tensor_ranges,
                                        float_tensor_nodes, outlier_channels)
from isnet.build_in.config import BuildConfig, CalibrationMode, Precision, QuantType
from isnet.build_in.equalize import equalize_model_file
from isnet.build_in.layer_drift import float_candidates, measure_layer_drift
from isnet.build_in.sixteen_bit import (convs_reading_float, in_module, module_groups, node_outputs, quantized_activations,
                                        sixteen_bit_activations, sixteen_bit_overrides)
from isnet.core import IsnetError

MODEL_FILE = "model.onnx"
# Calibration images bias correction measures the shifts on.
BIAS_CORRECTION_IMAGES = 16
PRECISIONS = (Precision.FP32, Precision.FP16, Precision.INT8)


def versions() -> dict[str, str]:
    """Library versions that determine what this backend produces."""
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


def _optimise_fp32(source: Path, target: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # EXTENDED fusions are portable across CPUs; ENABLE_ALL adds layout changes tied to this
    # machine's instruction set, which ORT applies at load time anyway.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _convert_fp16(source: Path, target: Path, keep_io_types: bool) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=keep_io_types)
    onnx.save(model, str(target))


def resolve_exclude_nodes(model: onnx.ModelProto, patterns: tuple[str, ...]) -> list[str]:
    """Node names matching ``exclude_nodes`` entries: a node-name glob or a PyTorch module path.

    ``side1`` matches the Conv whose weights are ``side1.weight``, or every node named
    ``/side1/...`` (PyTorch's exporter names nodes by module path, and files such as rembg's and
    IMG.LY's ISNet keep those names but not the weights'); ``stage1d.*`` every node whose weights
    live under ``stage1d``; ``node_Conv_4?`` node names directly.
    """
    names = []
    for pattern in patterns:
        hits = [node.name for node in model.graph.node
                if fnmatch.fnmatchcase(node.name, pattern) or in_module(node.name, pattern)
                or any(fnmatch.fnmatchcase(i, f"{pattern}.*") or fnmatch.fnmatchcase(i, pattern) for i in node.input[1:])]
        if not hits:
            convs = [n.name for n in model.graph.node if n.op_type == "Conv"][:3]
            raise IsnetError(f"backend.quantize.exclude_nodes: '{pattern}' matches no node; give a module path "
                             f"such as 'side1' or a node name such as '{convs[0] if convs else 'node_Conv_1'}'")
        names.extend(h for h in hits if h not in names)
    return names


def _quantize_int8(source: Path, target: Path, config: BuildConfig, work: Path,
                   progress: Callable[[str, int, int], None] | None, judge: DriftJudge | None) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType as OrtQuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant = config.backend.quantize
    if quant.calibrate_mode is CalibrationMode.MSE:
        if quant.symmetric_activations:
            raise IsnetError("backend.quantize.calibrate_mode: mse searches asymmetric ranges; "
                             "it does not combine with symmetric_activations: true")
        if quant.num_bins and (quant.num_bins % 2 or quant.num_bins > MSE_MAX_BINS):
            raise IsnetError(f"backend.quantize.num_bins: mse needs an even number of bins up to {MSE_MAX_BINS}, "
                             f"got {quant.num_bins}")
    prepared = work / "prepared.onnx"
    # ORT recommends its pre-processing (symbolic shape inference, basic fusions) before
    # quantization; calibration must run on the very graph that gets quantized. On failure its
    # shape inference dumps a file into the current folder, so run it from the work folder.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.chdir(work):
        # ORT's symbolic shape inference stops ("Incomplete symbolic shape inference") on some
        # foreign graphs; merging dimensions it cannot prove equal, or leaving it out (the
        # quantizer then relies on ONNX shape inference), lets the build go on.
        for options in ({}, {"auto_merge": True}, {"skip_symbolic_shape": True}):
            try:
                quant_pre_process(str(source), str(prepared), **options)
                break
            except Exception:  # noqa: BLE001 -- the last attempt's error is raised below
                if "skip_symbolic_shape" in options:
                    raise
    model = onnx.load(str(prepared), load_external_data=False)
    graph = model.graph
    exclude = resolve_exclude_nodes(model, quant.exclude_nodes)
    sixteen = node_outputs(graph, resolve_exclude_nodes(model, quant.activations_16bit))

    images = config.calibration_images()
    source_data = CalibrationSource(images, config.preprocessor(), config.input_name)
    total = 2 * len(images) if quant.calibrate_mode.value != "max" else len(images)

    def calibrate(excluded: list[str], stage: str, channel_ranges: dict | None = None):
        step = (lambda n: progress(stage, n, total)) if progress else None
        return compute_tensor_ranges(prepared, source_data, quant.calibrate_mode, work, excluded_nodes=excluded,
                                     symmetric=quant.symmetric_activations, percentile=quant.percentile,
                                     num_bins=quant.num_bins, progress=step, channel_ranges=channel_ranges,
                                     # an integer-only build quantizes every tensor whatever it keeps
                                     every_tensor=judge is not None and not quant.integer_only)

    channel_ranges: dict = {}
    ranges = calibrate(exclude, "calibrate", channel_ranges)
    # Tensors with an outlier channel (one per-tensor range for 0..228 leaves a dozen levels to the
    # other channels) stay float: the nodes producing and reading them are left out of quantization.
    # Which tensors the quantizer reads depends on the excluded nodes, so calibration runs again
    # (unless it measured every tensor, as it does for a budgeted build).
    ratio = quant.outlier_channel_ratio or OUTLIER_RATIO
    outliers = outlier_channels(channel_ranges, ratio)
    equalized: list = []
    if quant.equalize and outliers:
        # Equalised channels are quantized like the others; calibration runs again on the
        # rescaled graph, and what equalisation could not reach is left to the float fallback.
        equalized = equalize_model_file(prepared, work / "equalized.onnx", channel_ranges, outliers)
        if equalized:
            prepared = work / "equalized.onnx"
            graph = onnx.load(str(prepared), load_external_data=False).graph
            channel_ranges = {}
            ranges = calibrate(exclude, "calibrate (equalised)", channel_ranges)
            outliers = outlier_channels(channel_ranges, ratio)
    kept_float = []
    if quant.integer_only and quant.outlier_channel_ratio is not None and outliers:
        # No float islands: an outlier-channel tensor gets 16 bits (65,536 levels leave the other
        # channels as many as int8 would give them without the outlier, 256 times over).
        sixteen += [item["tensor"] for item in outliers if item["tensor"] not in sixteen]
    elif quant.outlier_channel_ratio is not None and outliers:
        kept_float = float_tensor_nodes(graph, [item["tensor"] for item in outliers], exclude)
        if kept_float:
            exclude = exclude + kept_float
            if judge is None:
                ranges = calibrate(exclude, "calibrate (outliers in float)")
    cache = work / "calibration.json"
    save_tensors_data(ranges, cache)

    types = {QuantType.INT8: OrtQuantType.QInt8, QuantType.UINT8: OrtQuantType.QUInt8}
    # Bias correction's shifts, {Conv: per channel}, once measured. A Conv kept in float has no weight
    # rounding to correct: it keeps its source bias (with the shift, a layer kept float for accuracy
    # ran off by the other layers' correction: demo int8_auto dMAE +0.0034 -> +0.0006 without it).
    shifts: dict[str, np.ndarray] = {}
    corrected_convs = [0]  # in the model quantize() wrote last

    def float_model(extra_float: list[str]) -> Path:
        """What gets quantized: the prepared graph, with corrected biases on the Convs quantized."""
        if not shifts:
            return prepared
        model = onnx.load(str(prepared))
        kept = set(extra_float)
        corrected_convs[0] = correct_biases(model, {name: shift for name, shift in shifts.items() if name not in kept})
        corrected = work / "bias_corrected.onnx"
        onnx.save(model, str(corrected))
        return corrected

    def quantize(extra: list[str]) -> Path:
        """The model with ``extra`` (nodes, or for an integer-only build tensors) kept from int8."""
        extra_float, extra_wide = ([], extra) if quant.integer_only else (extra, [])
        source = float_model(extra_float)
        options = {"ActivationSymmetric": quant.symmetric_activations,
                   "WeightSymmetric": quant.symmetric_weights,
                   "CalibTensorRangeSymmetric": quant.symmetric_activations}
        wide = list(dict.fromkeys(sixteen + extra_wide))
        if wide:
            options["TensorQuantOverrides"] = sixteen_bit_overrides(wide, quant.activation_type is QuantType.INT8)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_static logs a pre-processing hint we already followed
        try:
            quantize_static(str(source), str(target), calibration_data_reader=None,
                            quant_format=QuantFormat.QDQ, per_channel=quant.quantize_per_channel,
                            activation_type=types[quant.activation_type], weight_type=types[quant.weight_type],
                            calibrate_method=ranges.calibration_method, nodes_to_exclude=exclude + extra_float,
                            calibration_cache_path=str(cache), extra_options=options)
        finally:
            root.setLevel(level)
        return target

    details = {"excluded_nodes": exclude, "calibrated_tensors": len(ranges.data),
               "outlier_tensors": outliers[:10], "outlier_nodes_in_float": kept_float}
    if quant.equalize:
        details["equalized_channels"] = [asdict(item) for item in equalized]
    if quant.bias_correction:
        details["bias_correction"] = _measure_bias_shifts(prepared, quantize, source_data, progress, shifts)
    if judge is None:
        quantize([])
        if shifts:
            details["bias_correction"]["convs"] = corrected_convs[0]
        return _checked_integer_only(target, details, bool(sixteen), quant.integer_only)

    def candidates() -> list[tuple[str, ...]]:
        # Ranked on the model quantize([]) just wrote: the tensors whose quantization adds the most
        # error first, each with the nodes that keep it float.
        drifts = measure_layer_drift(prepared, target, judge.inputs(DRIFT_IMAGES))
        ranked = float_candidates(drifts, max(1, int(len(drifts) * MAX_FLOAT_SHARE)))
        groups = [tuple(float_tensor_nodes(graph, [tensor], exclude)) for tensor in ranked]
        groups = list(dict.fromkeys(group for group in groups if group))  # tensors joined by a ReLU share one
        return groups

    def sixteen_bit_candidates() -> list[tuple[str, ...]]:
        # Every activation the all-int8 model quantize([]) just wrote quantizes, by module
        # (isnet.build_in.sixteen_bit).
        quantized = quantized_activations(onnx.load(str(target), load_external_data=False))
        return module_groups(graph, [tensor for tensor in quantized if tensor not in sixteen])

    if quant.integer_only:
        result = search_float_nodes(quantize, judge, sixteen_bit_candidates, progress,
                                    rank=rank_by_isolated_damage, remedy=SIXTEEN_BIT)
    else:
        result = search_float_nodes(quantize, judge, candidates, progress)
    details["budget"] = judge.summary(result)
    if shifts:
        details["bias_correction"]["convs"] = corrected_convs[0]  # the model written last is the one kept
    return _checked_integer_only(target, details, bool(sixteen), quant.integer_only)


def _checked_integer_only(artifact: Path, details: dict, sixteen: bool, integer_only: bool) -> dict:
    """``details`` with the artifact's 16-bit tensors (what a user maps onto an NPU's mixed-precision
    settings); for an integer-only build once it is checked that every Conv reads dequantized
    integers (a float Conv there would be this toolkit's bug, not the user's)."""
    if not (sixteen or integer_only):
        return details
    model = onnx.load(str(artifact), load_external_data=False)
    details["sixteen_bit_tensors"] = sixteen_bit_activations(model)
    if integer_only:
        details["integer_only"] = True
        floating = convs_reading_float(model)
        if floating:
            raise RuntimeError(f"integer_only build left {len(floating)} Convs reading float tensors: "
                               f"{', '.join(floating[:5])}")
        details["convs_checked"] = sum(node.op_type == "Conv" for node in model.graph.node)
    return details


def _measure_bias_shifts(prepared: Path, quantize: Callable[[list[str]], Path], source_data: CalibrationSource,
                         progress, shifts: dict[str, np.ndarray]) -> dict:
    """:mod:`isnet.build_in.bias_correction` on the calibration images: measure each quantized Conv's
    shift on the all-int8 model into ``shifts``; the record for build.json."""
    count = min(BIAS_CORRECTION_IMAGES, len(source_data))
    if progress:
        progress("bias correction", 0, 1)
    shifts.update(conv_weight_error_shifts(prepared, quantize([]),
                                           (feed for feed, _ in zip(source_data, range(count)))))
    if progress:
        progress("bias correction", 1, 1)
    return {"images": count, "convs": len(shifts),
            "mean_abs_shift": float(np.mean([np.abs(s).mean() for s in shifts.values()])) if shifts else 0.0}


def runtime_options(config: BuildConfig) -> dict:
    """How the runner opens this build's artifact (none for ONNX Runtime)."""
    return {}


def compile_model(source: Path, config: BuildConfig, out_dir: Path, work: Path,
                  progress: Callable[[str, int, int], None] | None = None, judge: DriftJudge | None = None) -> dict:
    """Compile the fp32 ONNX ``source`` into ``out_dir/model.onnx``; return backend details for build.json.

    With a ``judge`` (an int8 build with an accuracy budget), layers stay in float until it holds.
    """
    precision = config.backend.dtype
    if precision not in PRECISIONS:
        raise IsnetError(f"backend.dtype: onnxruntime builds {', '.join(p.value for p in PRECISIONS)}, "
                         f"not {precision.value} (openvino supports bf16)")
    target = out_dir / MODEL_FILE
    details: dict = {}
    if precision is Precision.FP32:
        _optimise_fp32(source, target)
    elif precision is Precision.FP16:
        _convert_fp16(source, target, config.backend.keep_io_types)
    else:
        details = _quantize_int8(source, target, config, work, progress, judge)
    return {"model_file": MODEL_FILE, "runtime_options": runtime_options(config), "details": details}
