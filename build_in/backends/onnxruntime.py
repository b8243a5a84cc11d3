"""The ONNX Runtime backend: fp32 (graph-optimised), fp16 (float weights, fp32 I/O) and int8 (QDQ)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from isnet.build_in.runners.onnxruntime import OnnxRuntimeRunner, open_runner  # noqa: F401 -- a backend opens its artifacts
from isnet.build_in.bias_correction import conv_weight_error_shifts, correct_biases
from isnet.build_in.budget import DRIFT_IMAGES, MAX_FLOAT_SHARE, SIXTEEN_BIT, DriftJudge, group_nodes, search_budget
from isnet.build_in.calibration import CalibrationSource, compute_tensor_ranges
from isnet.build_in.float_borders import pool_before_quantizing
from isnet.build_in.config import BuildConfig, CalibrationMode, Precision, QuantType
from isnet.build_in.int8_plan import (Int8Plan, float_tensor_nodes, graph_structure, matching_nodes,
                                     plan_outlier_channels)
from isnet.build_in.layer_drift import float_candidates, measure_layer_drift
from isnet.build_in.range_search import MSE_MAX_BINS
from isnet.build_in.sixteen_bit import (convs_reading_float, group_by_module, module_groups, named_by_module, node_outputs, quantized_activations,
                                        sixteen_bit_activations, sixteen_bit_overrides, sixteen_bit_weight_overrides,
                                        sixteen_bit_weights)
from isnet.core import IsnetError
from isnet.core.logs import quiet_loggers

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


def resolve_exclude_nodes(graph: onnx.GraphProto, patterns: Sequence[str],
                          key: str = "backend.quantize.exclude_nodes") -> list[str]:
    """ONNX node names of ``graph`` matching ``patterns`` (:func:`isnet.build_in.int8_plan.matching_nodes`:
    node-name globs or PyTorch module paths)."""
    convs = [node.name for node in graph.node if node.op_type == "Conv"]
    return matching_nodes(((node.name, node.input[1:]) for node in graph.node), patterns, key,
                          convs[0] if convs else "node_Conv_1")


def _prepared_for_quantization(source: Path, work: Path) -> tuple[Path, str]:
    """ONNX Runtime's recommended pre-processing (symbolic shape inference, basic fusions) of
    ``source`` into ``work``; calibration must run on the very graph that gets quantized. Returns
    the file and which shape inference held, for build.json.

    ORT's symbolic shape inference stops ("Incomplete symbolic shape inference") on some foreign
    graphs; merging dimensions it cannot prove equal, or leaving it out (the quantizer then relies on
    ONNX shape inference), lets the build go on. On failure it dumps a file into the current
    folder, so it runs from the work folder.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / "prepared.onnx"
    attempts = (("symbolic", {}), ("symbolic, unproven dimensions merged", {"auto_merge": True}),
                ("ONNX only", {"skip_symbolic_shape": True}))
    for label, options in attempts:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.chdir(work):
                quant_pre_process(str(source), str(prepared), **options)
            return prepared, label
        except Exception:  # noqa: BLE001 -- ORT's shape inference raises plain Exceptions; the last attempt's goes up
            if options is attempts[-1][1]:
                raise


class _QdqBuild:
    """One ONNX Runtime int8 build: the :class:`~isnet.build_in.int8_plan.Int8Plan` translated into
    ``quantize_static`` calls (QDQ format, ranges from :mod:`isnet.build_in.calibration`)."""

    def __init__(self, source: Path, target: Path, config: BuildConfig, work: Path,
                 progress: Callable[[str, int, int], None] | None, budgeted: bool):
        quant = self.quant = config.backend.quantize
        if quant.calibrate_mode is CalibrationMode.MSE:
            if quant.symmetric_activations:
                raise IsnetError("backend.quantize.calibrate_mode: mse searches asymmetric ranges; "
                                 "it does not combine with symmetric_activations: true")
            if quant.num_bins and (quant.num_bins % 2 or quant.num_bins > MSE_MAX_BINS):
                raise IsnetError(f"backend.quantize.num_bins: mse needs an even number of bins up to {MSE_MAX_BINS}, "
                                 f"got {quant.num_bins}")
        self.target, self.work, self.progress = target, work, progress
        self.prepared, shape_inference = _prepared_for_quantization(source, work)
        self.graph = graph_structure(self.prepared)
        images = config.calibration_images()
        self.source_data = CalibrationSource(images, config.preprocessor(), config.input_name)
        self.plan = Int8Plan.for_config(quant, len(images), shape_inference=shape_inference)
        self.plan.excluded_nodes = resolve_exclude_nodes(self.graph, quant.exclude_nodes)
        self.plan.sixteen_bit = node_outputs(self.graph, resolve_exclude_nodes(
            self.graph, quant.activations_16bit, "backend.quantize.activations_16bit"))
        # A budgeted CPU build calibrates ranges that hold whatever the search keeps float; an
        # integer-only build quantizes every tensor anyway.
        self.more_excluded_later = budgeted and not quant.integer_only
        self.ranges = None
        # A budgeted CPU build hands the plan's float nodes to the search as a group it may put back in
        # int8 (plan_and_calibrate); bias correction then measures every Conv's shift.
        self.plan_groups: list[tuple[str, ...]] = []
        # Bias correction's shifts, {Conv: per channel}, once measured. A Conv kept in float has no weight
        # rounding to correct: it keeps its source bias (with the shift, a layer kept float for accuracy
        # ran off by the other layers' correction: demo int8_auto dMAE +0.0034 -> +0.0006 without it).
        self.shifts: dict[str, np.ndarray] = {}
        # The same measured with the plan's groups float: what a trial that keeps them runs with (the
        # shift of a Conv depends on the int8 error of what it reads).
        self.shifts_with_plan: dict[str, np.ndarray] = {}
        self.corrected_convs = 0  # in the model quantize() wrote last
        self.pooled_in_float: list[str] = []  # MaxPools after a float layer that pool before quantizing, likewise

    def calibrate(self, path: Path, stage: str, channel_ranges: dict | None = None) -> None:
        """Ranges of ``path``'s tensors with the plan's float nodes excluded, into ``self.ranges``."""
        quant = self.quant
        total = len(self.source_data) * (1 if quant.calibrate_mode is CalibrationMode.MAX else 2)
        step = (lambda n: self.progress(stage, n, total)) if self.progress else None
        self.ranges = compute_tensor_ranges(path, self.source_data, quant.calibrate_mode, self.work,
                                            excluded_nodes=self.plan.excluded_nodes + self.plan.float_nodes,
                                            symmetric=quant.symmetric_activations, percentile=quant.percentile,
                                            num_bins=quant.num_bins, progress=step, channel_ranges=channel_ranges,
                                            more_excluded_later=self.more_excluded_later)

    def measure_channels(self, path: Path, equalised: bool) -> dict:
        """The planner's per-channel ranges: they come with the calibration the build needs anyway."""
        channel_ranges: dict = {}
        self.calibrate(path, "calibrate (equalised)" if equalised else "calibrate", channel_ranges)
        return channel_ranges

    def plan_and_calibrate(self) -> None:
        """Steps 1-3 of the plan; the ranges of the graph that will be quantized."""
        self.prepared = plan_outlier_channels(self.plan, self.prepared, self.quant, self.work, self.measure_channels)
        self.graph = graph_structure(self.prepared)
        if self.plan.float_nodes and not self.more_excluded_later:
            # Which tensors the quantizer reads depends on the nodes left out, so calibrate again.
            self.calibrate(self.prepared, "calibrate (outliers in float)")
        elif self.plan.float_nodes:
            self.plan_groups, self.plan.float_nodes = [tuple(self.plan.float_nodes)], []
        from onnxruntime.quantization.calibrate import save_tensors_data

        save_tensors_data(self.ranges, self.work / "calibration.json")

    def float_model(self, extra_float: list[str]) -> Path:
        """What gets quantized: the prepared graph, with corrected biases on the Convs quantized."""
        if not self.shifts:
            return self.prepared
        model = onnx.load(str(self.prepared))
        kept = set(extra_float)
        plan = set(group_nodes(self.plan_groups))
        shifts = self.shifts_with_plan if plan and plan <= kept else self.shifts
        self.corrected_convs = correct_biases(model, {name: shift for name, shift in shifts.items()
                                                      if name not in kept})
        corrected = self.work / "bias_corrected.onnx"
        onnx.save(model, str(corrected))
        return corrected

    def quantize(self, extra: list[str]) -> Path:
        """The model with ``extra`` (nodes, or for an integer-only build tensors) kept from int8."""
        from onnxruntime.quantization import QuantFormat, QuantType as OrtQuantType, quantize_static

        quant = self.quant
        extra_float, extra_wide = ([], extra) if quant.integer_only else (extra, [])
        options = {"ActivationSymmetric": quant.symmetric_activations,
                   "WeightSymmetric": quant.symmetric_weights,
                   "CalibTensorRangeSymmetric": quant.symmetric_activations}
        wide = list(dict.fromkeys(self.plan.sixteen_bit + extra_wide))
        overrides = {**sixteen_bit_overrides(wide, quant.activation_type is QuantType.INT8),
                     **sixteen_bit_weight_overrides(self.plan.sixteen_bit_weights, quant.quantize_per_channel)}
        if overrides:
            options["TensorQuantOverrides"] = overrides
        types = {QuantType.INT8: OrtQuantType.QInt8, QuantType.UINT8: OrtQuantType.QUInt8}
        with quiet_loggers(""):  # quantize_static logs a pre-processing hint we already followed
            quantize_static(str(self.float_model(extra_float)), str(self.target), calibration_data_reader=None,
                            quant_format=QuantFormat.QDQ, per_channel=quant.quantize_per_channel,
                            activation_type=types[quant.activation_type], weight_type=types[quant.weight_type],
                            calibrate_method=self.ranges.calibration_method,
                            nodes_to_exclude=self.plan.excluded_nodes + self.plan.float_nodes + extra_float,
                            calibration_cache_path=str(self.work / "calibration.json"), extra_options=options)
        if not quant.integer_only:
            model = onnx.load(str(self.target))
            self.pooled_in_float = pool_before_quantizing(model)
            if self.pooled_in_float:
                onnx.save(model, str(self.target))
        return self.target

    def correct_biases(self) -> None:
        """:mod:`isnet.build_in.bias_correction` on the calibration images: each quantized Conv's
        shift measured on the all-int8 model, and for a budgeted build whose plan keeps nodes float
        also with those float (the search tries them back in int8; each trial gets the shifts
        measured on what its Convs read)."""
        count = min(BIAS_CORRECTION_IMAGES, len(self.source_data))
        plan = group_nodes(self.plan_groups)
        passes = [(self.shifts_with_plan, plan)] if plan else []
        passes.append((self.shifts, []))
        for done, (shifts, kept) in enumerate(passes):
            if self.progress:
                self.progress("bias correction", done, len(passes))
            shifts.update(conv_weight_error_shifts(self.prepared, self.quantize(kept),
                                                   (feed for feed, _ in zip(self.source_data, range(count)))))
        if self.progress:
            self.progress("bias correction", len(passes), len(passes))
        self.plan.bias_correction = {"images": count, "convs": len(self.shifts), "mean_abs_shift": float(
            np.mean([np.abs(s).mean() for s in self.shifts.values()])) if self.shifts else 0.0}

    def search(self, judge: DriftJudge) -> None:
        """The budget search (:func:`isnet.build_in.budget.search_budget`); the passing model is left in
        ``target``. An integer-only build gives its candidates 16 bits, a CPU build keeps them float."""
        excluded = set(self.plan.excluded_nodes + group_nodes(self.plan_groups))
        by_module = named_by_module([node.name for node in self.graph.node])

        def quantized_tensors() -> list[str]:
            # Every activation the all-int8 model (written by the search's first trial) quantizes.
            quantized = quantized_activations(onnx.load(str(self.target), load_external_data=False))
            return [tensor for tensor in quantized if tensor not in self.plan.sixteen_bit]

        def quantized_nodes() -> list[str]:
            # The nodes reading or computing those (not the shape arithmetic around a Resize).
            quantized = set(quantized_tensors())
            return [node.name for node in self.graph.node if node.name and node.name not in excluded
                    and (set(node.input) | set(node.output)) & quantized]

        def ranked_layers() -> list[tuple[str, ...]]:
            # The tensors whose quantization adds the most local error first (on that same model).
            drifts = measure_layer_drift(self.prepared, self.target, judge.inputs(DRIFT_IMAGES))
            ranked = float_candidates(drifts, max(1, int(len(drifts) * MAX_FLOAT_SHARE)))
            if self.quant.integer_only:
                return [(tensor,) for tensor in ranked if tensor not in self.plan.sixteen_bit]
            groups = [tuple(float_tensor_nodes(self.graph, [tensor], sorted(excluded))) for tensor in ranked]
            return list(dict.fromkeys(group for group in groups if group))  # tensors joined by a ReLU share one

        if self.quant.integer_only:
            result = search_budget(self.quantize, judge, self.progress, by_module=by_module,
                                   modules=lambda: module_groups(self.graph, quantized_tensors()),
                                   ranked_layers=ranked_layers, remedy=SIXTEEN_BIT)
        else:
            result = search_budget(self.quantize, judge, self.progress, by_module=by_module,
                                   modules=lambda: group_by_module(quantized_nodes()), ranked_layers=ranked_layers,
                                   plan_groups=self.plan_groups)
            self.plan.float_nodes = group_nodes(result.plan_kept)
            self.plan.float_nodes_released = group_nodes(result.plan_released)
        self.plan.budget = judge.summary(result)

    def record(self) -> dict:
        """build.json's backend details: the plan, and what the artifact holds."""
        if self.plan.bias_correction is not None:
            self.plan.bias_correction["convs"] = self.corrected_convs  # in the model written last, the one kept
        details = {"plan": self.plan.record(), "calibrated_tensors": len(self.ranges.data),
                   "maxpools_before_quantize": self.pooled_in_float}
        return _checked_artifact(self.target, details, self.plan)


def _quantize_int8(source: Path, target: Path, config: BuildConfig, work: Path,
                   progress: Callable[[str, int, int], None] | None, judge: DriftJudge | None) -> dict:
    build = _QdqBuild(source, target, config, work, progress, budgeted=judge is not None)
    build.plan_and_calibrate()
    if build.quant.bias_correction:
        build.correct_biases()
    if judge is None:
        build.quantize([])
    else:
        build.search(judge)
    return build.record()


def _checked_artifact(artifact: Path, details: dict, plan: Int8Plan) -> dict:
    """``details`` with the artifact's 16-bit tensors (what a user maps onto an NPU's mixed-precision
    settings); for an integer-only build once it is checked that every Conv reads dequantized
    integers (a float Conv there would be this toolkit's bug, not the user's)."""
    model = onnx.load(str(artifact), load_external_data=False)
    details["sixteen_bit_tensors"] = sixteen_bit_activations(model)
    details["sixteen_bit_weights"] = sixteen_bit_weights(model)
    if plan.integer_only:
        floating = convs_reading_float(model)
        if floating:
            raise RuntimeError(f"integer_only build left {len(floating)} Convs reading float tensors: "
                               f"{', '.join(floating[:5])}")
        details["convs_checked"] = sum(node.op_type == "Conv" for node in model.graph.node)
    return details


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
