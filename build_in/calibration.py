"""int8 calibration with memory that stays flat in the number of images.

ONNX Runtime's stock ``quantize_static`` keeps every activation of every calibration image in
memory before building histograms (13.3 GB for ISNet at 320x320 on 50 images). Here the same
statistics are gathered image by image in two passes:

1. min / max of every calibrated tensor (enough on its own for ``max`` calibration). For ``max``
   the reductions run inside the graph (a ReduceMin and a ReduceMax per channel of each tensor are
   the session's outputs, not the tensors), so ONNX Runtime frees each activation as it would in
   inference: the real ISNet at 1024x1024 calibrates in about the memory of an fp32 inference
   instead of holding all its activations of a picture at once (4-6 GB);
2. for the histogram methods, a fixed-range histogram per tensor over exactly the range the
   stock path would use, accumulated image by image.

A histogram with fixed edges is additive over images, so the histograms are *identical* to the
stock ones (tests compare them). ``percentile`` thresholds come from ONNX Runtime's own histogram
code; ``kl_divergence`` thresholds from :func:`kl_threshold`, our vectorised search over 2048
bins judged on the 256-level uint8 grid (ONNX Runtime's stock entropy calibrator, with 128 bins,
has a single candidate and equals min-max). Ranges are handed back to ``quantize_static`` through
its calibration cache, so ONNX Runtime still writes the QDQ graph.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from isnet.build_in.channel_ops import ORT_REMOVABLE_ACTIVATIONS, ORT_SAME_AS_INPUT
from isnet.build_in.config import CalibrationMode
from isnet.build_in.ops import Preprocessor
from isnet.build_in.range_search import DEFAULT_BINS, QUANTIZED_BINS, fixed_range_histogram, kl_threshold, mse_range


class CalibrationSource:
    """Calibration images read through the ops registry; iterating yields ``{input_name: 1x3xHxW}``."""

    def __init__(self, images: Sequence[Path], preprocessor: Preprocessor, input_name: str = "input"):
        self.images = list(images)
        self.preprocessor = preprocessor
        self.input_name = input_name

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.starting_at(0)

    def starting_at(self, index: int) -> Iterator[dict[str, np.ndarray]]:
        """The inputs from image ``index`` on."""
        for path in self.images[index:]:
            tensor, _ = self.preprocessor.load(path)
            yield {self.input_name: tensor[None]}


# Activations the first pass may keep for the second (histogram modes), so those images are not run
# twice; the memory of a calibration stays flat in the number of images whatever this is.
KEPT_BYTES = 256 << 20
def _ort_method(mode: CalibrationMode):
    from onnxruntime.quantization import CalibrationMethod

    return {CalibrationMode.MSE: CalibrationMethod.Entropy, CalibrationMode.KL_DIVERGENCE: CalibrationMethod.Entropy,
            CalibrationMode.MAX: CalibrationMethod.MinMax,
            CalibrationMode.PERCENTILE: CalibrationMethod.Percentile}[mode]


def _histogram_method(mode: CalibrationMode) -> str:
    return {CalibrationMode.KL_DIVERGENCE: "entropy", CalibrationMode.PERCENTILE: "percentile"}[mode]


def ranges_taken_over(model, names: Sequence[str], symmetric: bool,
                      excluded_nodes: Sequence[str] = (), more_excluded_later: bool = False) -> dict[str, str]:
    """{tensor: tensor whose range it gets} for calibrated tensors whose own range the quantizer never reads.

    ONNX Runtime's QDQ quantizer (the defaults ``isnet build`` uses):

    - with asymmetric activations, removes a Relu or Clip whose input has no other reader and is
      not a graph input or output, and quantizes that input with the range of the activation's
      *output* (``QDQRemovableActivation``, ``try_replacing_upstream_output``);
    - quantizes the output of MaxPool, Resize and the other "direct 8-bit" ops with the parameters
      of their input when that input is already quantized (``QDQDirect8BitOp``,
      ``quantize_output_same_as_input``).

    Whether it does depends on node order and on the nodes left in float (``excluded_nodes``), so
    each candidate found in the graph is confirmed by a dry run of the quantizer itself
    (:func:`_ranges_the_quantizer_reads`); without that, nothing is taken over. Those tensors
    need no statistics: their ranges are copied from the tensor named. Not collecting them leaves
    convolutions and their ReLUs fusable in the calibration graph, and more than halves the
    statistics of a U²-Net (the quantized model is the same; tests check, with nodes excluded too).

    ``more_excluded_later`` (a budget search may leave more nodes in float) also takes over tensors
    whose own range the quantizer reads now, as long as the range given holds for any nodes left out: the
    input of a removable activation gets the activation's range (if the activation ends up in
    float, its input is quantized with the activation's output range, which clamps exactly what the
    activation clamps, so the model computes what the fused one does); the outputs of MaxPool,
    Resize, Reshape, ... take their input's range, which holds every value they can compute (with
    ``max`` ranges: it may be a little wider than their own, never narrower; the budgeted builds
    calibrate with ``max``). Measuring those tensors instead keeps each
    Conv's output apart from its ReLU's: ISNet at 1024x1024 calibrated at 4.35 GB, against 2.90 GB
    so (2026-12-07, AMD EPYC).
    """
    read = _ranges_the_quantizer_reads(model, names, symmetric, excluded_nodes)
    if read is None:
        return {}
    if more_excluded_later:
        read = set()
    graph = model.graph
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    edges = {i.name for i in graph.input} | {o.name for o in graph.output}
    calibrated = set(names)
    taken: dict[str, str] = {}
    for node in graph.node:
        if not node.input or not node.output:
            continue
        source, output = node.input[0], node.output[0]
        if source not in calibrated or output not in calibrated:
            continue
        if (node.op_type in ORT_REMOVABLE_ACTIVATIONS and not symmetric and readers.get(source) == 1
                and source not in edges and source not in read):
            taken[source] = output
        elif (node.op_type in ORT_SAME_AS_INPUT and output not in read
              and not (more_excluded_later and _may_overshoot(node))):
            taken[output] = source
    # A tensor may get its range from one that gets it from another (MaxPool after a ReLU).
    for tensor in list(taken):
        seen = {tensor}
        while taken[tensor] in taken and taken[tensor] not in seen:
            seen.add(taken[tensor])
            taken[tensor] = taken[taken[tensor]]
    return taken


def _may_overshoot(node) -> bool:
    """Whether ``node`` (a same-as-input op) can compute values outside its input's range: a cubic Resize."""
    return node.op_type == "Resize" and any(attribute.name == "mode" and attribute.s == b"cubic"
                                            for attribute in node.attribute)


def _ranges_the_quantizer_reads(model, names: Sequence[str], symmetric: bool,
                                excluded_nodes: Sequence[str]) -> set[str] | None:
    """The calibrated tensors whose own range ``quantize_static`` would read, or None if unknown.

    Runs the node pass of ONNX Runtime's QDQ quantizer (what ``quantize_model`` does before it
    computes any parameter) on a copy of the graph, with placeholder ranges. It uses the
    quantizer's internals, so any failure (another ONNX Runtime version) answers None and the
    caller then collects every tensor.
    """
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import TensorData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.registry import CreateQDQQuantizer, QDQRegistry, QLinearOpsRegistry

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    placeholder = {name: TensorData(lowest=np.float32(0.0), highest=np.float32(1.0)) for name in names}
    try:
        quantizer = QDQQuantizer(copy, True, False, QuantType.QInt8, QuantType.QUInt8, placeholder, [],
                                 list(excluded_nodes), sorted(set(QDQRegistry) | set(QLinearOpsRegistry)),
                                 {"ActivationSymmetric": symmetric})
        for node in quantizer.model.nodes():
            if quantizer.should_quantize_node(node):
                CreateQDQQuantizer(quantizer, node).quantize()
        return {name for name, info in quantizer.tensors_to_quantize.items() if not info.is_shared}
    except Exception:  # noqa: BLE001 -- an unknown quantizer: collect everything instead
        return None


def _with_channel_min_max(model, names: Sequence[str], value_infos: dict) -> tuple[object, dict[str, bool]]:
    """``model`` whose outputs are, for each tensor of ``names``, its min and its max (``NAME/min``,
    ``NAME/max``): per channel (over axes 0, 2, 3) for a 4-D tensor, over the whole tensor
    otherwise. Returns the model and which tensors are per channel."""
    import onnx
    from onnx import helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    graph = augmented.graph
    del graph.output[:]
    per_channel: dict[str, bool] = {}
    axes_name = "isnet_calibration_channel_axes"
    if opset >= 18:  # ReduceMin/Max take their axes as an input from opset 18 on
        graph.initializer.append(onnx.numpy_helper.from_array(np.array([0, 2, 3], np.int64), axes_name))
    for name in names:
        info = value_infos.get(name)
        dims = info.type.tensor_type.shape.dim if info is not None and info.type.HasField("tensor_type") else None
        per_channel[name] = dims is not None and len(dims) == 4
        for op, suffix in (("ReduceMin", "min"), ("ReduceMax", "max")):
            output = f"{name}/{suffix}"
            if per_channel[name] and opset >= 18:
                node = helper.make_node(op, [name, axes_name], [output], keepdims=0)
            elif per_channel[name]:
                node = helper.make_node(op, [name], [output], axes=[0, 2, 3], keepdims=0)
            else:
                node = helper.make_node(op, [name], [output], keepdims=0)
            graph.node.append(node)
            graph.output.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    return augmented, per_channel


# Inputs up to this many pixels calibrate with ONNX Runtime's memory arena (see _augmented_session).
ARENA_PIXELS = 512 * 512


def input_pixels(model) -> int:
    """Height x width of the model's first input (0 when not fixed)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    values = [dim.dim_value for dim in dims[2:]] if len(dims) == 4 else []
    return values[0] * values[1] if len(values) == 2 and all(values) else 0


def _augmented_session(model_path: Path, mode: CalibrationMode, work_dir: Path, excluded_nodes, extra: dict,
                       more_excluded_later: bool = False):
    """ORT's own augmented model (every calibrated tensor an output) and a session to run it; for
    ``max``, the same tensors reduced to their (per-channel) min and max inside the graph.

    Returns the calibrator (None for ``max``), the session, the tensors it outputs and the tensors whose ranges are
    taken over from an activation (:func:`ranges_taken_over`; not outputs, so ORT fuses them),
    and for ``max`` which tensors are reduced per channel. The
    stock calibrators run the graph with all optimisations off; EXTENDED gives bit-identical
    activations (checked against the stock path in the tests) and runs faster. ``max`` runs with
    every optimisation (its ranges then agree with the stock path's within float rounding).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import EntropyCalibrater, PercentileCalibrater

    augmented = work_dir / "augmented.onnx"
    bins = extra.get("num_bins") or DEFAULT_BINS
    if mode is CalibrationMode.PERCENTILE:
        calibrator = PercentileCalibrater(model_path, [], str(augmented), symmetric=extra["symmetric"],
                                          num_bins=bins, percentile=extra["percentile"])
    else:
        # For `max` the entropy calibrator only provides the augmented graph; its tensor
        # selection is the base method every ORT calibrator uses.
        calibrator = EntropyCalibrater(model_path, [], str(augmented), symmetric=extra["symmetric"],
                                       num_bins=bins, num_quantized_bins=QUANTIZED_BINS)
    # The graph as loaded (and shape-inferred) by the calibrator, before augment_graph adds every
    # calibrated tensor to its outputs in place (and saves it), so neither file is read again.
    original = onnx.ModelProto()
    original.CopyFrom(calibrator.model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if mode is CalibrationMode.MAX:
        tensors, value_infos = calibrator.select_tensors_to_calibrate(original)
        taken_over = ranges_taken_over(original, tensors, extra["symmetric"], excluded_nodes, more_excluded_later)
        names = sorted(t for t in tensors if t not in taken_over)
        model, per_channel = _with_channel_min_max(original, names, value_infos)
        # The session's outputs are a few numbers per tensor, so ORT's layout optimisations (NCHWc
        # convolutions, as in inference) still pay: with them the pretrained U²-Netp calibrates at
        # 1.3x an inference's time per picture instead of 1.8x (2026-12-07, AMD EPYC, 2 threads).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's arena is most of the rest (U²-Netp: 405 -> 303 ms per picture), but at 1024x1024 it
        # grew ISNet's calibration to 3.9 GB against 2.8 GB allocating from the system (2.2 s against
        # 2.5 s per picture): past ARENA_PIXELS the memory goal (a 3 GB build) wins.
        options.enable_cpu_mem_arena = input_pixels(original) <= ARENA_PIXELS
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return None, session, names, taken_over, per_channel
    calibrator.augment_graph()
    model = calibrator.model
    taken_over = ranges_taken_over(original, calibrator.tensors_to_calibrate, extra["symmetric"], excluded_nodes,
                                   more_excluded_later)
    kept = [o for o in model.graph.output if o.name not in taken_over]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    available = {o.name for o in session.get_outputs()}
    names = sorted(n for n in calibrator.tensors_to_calibrate if n in available)
    return calibrator, session, names, {up: act for up, act in taken_over.items() if act in available}, {}


def compute_tensor_ranges(model_path: str | os.PathLike, source: CalibrationSource, mode: CalibrationMode,
                          work_dir: str | os.PathLike, excluded_nodes: Sequence[str] = (),
                          symmetric: bool = False, percentile: float = 99.999, num_bins: int = 0,
                          progress: Callable[[int], None] | None = None,
                          channel_ranges: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                          more_excluded_later: bool = False):
    """Calibrate ``model_path`` on ``source``; return ONNX Runtime ``TensorsData`` for ``quantize_static``.

    ``excluded_nodes`` are the nodes ``quantize_static`` will leave in float. ``progress(n)`` is
    called after each image of each pass (2 passes for histogram methods). The result equals what
    ``quantize_static``'s own calibrator computes on the same inputs. A ``channel_ranges`` dict is
    filled with each measured 4-D tensor's per-channel (min, max) over the images, from the same
    reductions that give its range (see :func:`outlier_channels`). With ``more_excluded_later``
    every tensor the quantizer might read gets a range, not only those it reads with
    ``excluded_nodes`` in float, so the ranges hold when more nodes are left out later (the budgeted
    build's search; see :func:`ranges_taken_over`).
    """
    from onnxruntime.quantization import TensorsData
    from onnxruntime.quantization.calibrate import HistogramCollector

    histogram_mode = mode is not CalibrationMode.MAX
    extra = {"symmetric": symmetric, "percentile": percentile}
    if num_bins:
        extra["num_bins"] = num_bins
    calibrator, session, names, taken_over, per_channel = _augmented_session(Path(model_path), mode, Path(work_dir),
                                                                list(excluded_nodes), extra, more_excluded_later)
    absolute = mode is CalibrationMode.PERCENTILE and symmetric

    # The first pass keeps the activations of its first images while they fit in KEPT_BYTES, so the
    # second pass does not run the model on those again.
    kept: list[dict[str, np.ndarray]] = []
    kept_bytes = 0

    reduced_outputs = [f"{name}/{end}" for name in names for end in ("min", "max")] if not histogram_mode else []

    def inferred(start: int) -> Iterator[dict[str, np.ndarray]]:
        for inputs in source.starting_at(start):
            if histogram_mode:
                yield dict(zip(names, session.run(names, inputs)))
            else:  # name -> (min, max), per channel where calibrator says so
                values = session.run(reduced_outputs, inputs)
                yield {name: (values[2 * i], values[2 * i + 1]) for i, name in enumerate(names)}

    def each_image(outputs_per_image: Iterable[dict[str, np.ndarray]],
                   consume: Callable[[dict[str, np.ndarray]], None]) -> None:
        # Statistics of image i are computed in a second thread while ORT runs image i + 1: numpy
        # and OpenCV release the GIL in their loops, so the two overlap on a 2-core host.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for outputs in outputs_per_image:
                if pending is not None:
                    pending.result()
                pending = pool.submit(consume, outputs)
                if progress:
                    progress(1)
            if pending is not None:
                pending.result()

    def first_pass() -> Iterator[dict[str, np.ndarray]]:
        nonlocal kept_bytes
        keeping = histogram_mode
        for outputs in inferred(0):
            if keeping:
                size = sum(value.nbytes for value in outputs.values())
                keeping = kept_bytes + size <= KEPT_BYTES
            if keeping:
                kept.append(outputs)
                kept_bytes += size
            yield outputs

    def second_pass() -> Iterator[dict[str, np.ndarray]]:
        count = len(kept)
        while kept:
            yield kept.pop(0)  # released as soon as it is binned
        yield from inferred(count)

    # Pass 1: global min / max (of |x| too for symmetric percentile), float32 like the stock path.
    lows: dict[str, np.ndarray] = {}
    highs: dict[str, np.ndarray] = {}
    abs_lows: dict[str, np.ndarray] = {}
    abs_highs: dict[str, np.ndarray] = {}

    def track_range(outputs: dict[str, np.ndarray]) -> None:
        for name, value in outputs.items():
            if not histogram_mode:  # reduced in the graph: per channel, or over the whole tensor
                channel_low, channel_high = value
                if channel_ranges is None or not per_channel[name]:
                    channel_low, channel_high = np.nanmin(channel_low), np.nanmax(channel_high)
            elif channel_ranges is not None and value.ndim == 4:
                # Per channel first; min and max are exact in any order, so the tensor's range is the same.
                channel_low, channel_high = np.nanmin(value, axis=(0, 2, 3)), np.nanmax(value, axis=(0, 2, 3))
            else:
                channel_low, channel_high = np.nanmin(value), np.nanmax(value)
            if np.ndim(channel_low) == 1:
                if name in channel_ranges:
                    channel_low = np.fmin(channel_ranges[name][0], channel_low)
                    channel_high = np.fmax(channel_ranges[name][1], channel_high)
                channel_ranges[name] = (channel_low, channel_high)
            low, high = np.nanmin(channel_low), np.nanmax(channel_high)
            lows[name] = low if name not in lows else min(lows[name], low)
            highs[name] = high if name not in highs else max(highs[name], high)
            if absolute:
                magnitude = np.abs(value)
                alow, ahigh = np.nanmin(magnitude), np.nanmax(magnitude)
                abs_lows[name] = alow if name not in abs_lows else min(abs_lows[name], alow)
                abs_highs[name] = ahigh if name not in abs_highs else max(abs_highs[name], ahigh)

    each_image(first_pass(), track_range)
    if not lows:
        raise ValueError("no calibration data")

    if not histogram_mode:
        ranges = {}
        for name in names:
            low, high = lows[name], highs[name]
            if symmetric:
                bound = np.nanmax([np.abs(low), np.abs(high)])
                low, high = -bound, bound
            # Shaped (1,) float32 like the stock min-max calibrator's ReduceMin/ReduceMax outputs.
            ranges[name] = (np.asarray(low, np.float32).reshape(1), np.asarray(high, np.float32).reshape(1))
        return TensorsData(_ort_method(mode), _with_taken_over(ranges, taken_over))

    # Pass 2: fixed-range histograms over exactly the range the stock collector derives when it
    # sees all images at once, so the summed counts equal its single big histogram.
    bins = calibrator.num_bins
    counts: dict[str, np.ndarray] = {}
    edges: dict[str, np.ndarray] = {}
    bounds = {name: np.array(max(abs(lows[name]), abs(highs[name])), dtype=np.float32) for name in names}

    def accumulate(outputs: dict[str, np.ndarray]) -> None:
        for name, value in outputs.items():
            if absolute:
                hist, edge = fixed_range_histogram(np.abs(value), bins, abs_lows[name], abs_highs[name])
            else:
                hist, edge = fixed_range_histogram(value, bins, -bounds[name], bounds[name])
            counts[name] = hist if name not in counts else counts[name] + hist
            edges.setdefault(name, edge)

    each_image(second_pass(), accumulate)
    if mode is CalibrationMode.MSE:
        found = {}
        for name in names:
            lo, hi = mse_range(counts[name], edges[name], float(lows[name]), float(highs[name]))
            found[name] = (np.float32(lo), np.float32(hi), counts[name], edges[name])
        return TensorsData(_ort_method(mode), _with_taken_over(found, taken_over))
    if mode is CalibrationMode.KL_DIVERGENCE:
        # One threshold search per tensor; numpy releases the GIL in them, so threads share the cores.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            found = pool.map(lambda name: kl_threshold(counts[name], edges[name], lows[name], highs[name],
                                                       calibrator.num_quantized_bins), names)
            thresholds = {name: (*threshold, counts[name], edges[name]) for name, threshold in zip(names, found)}
        return TensorsData(_ort_method(mode), _with_taken_over(thresholds, taken_over))
    collector = HistogramCollector(method=_histogram_method(mode), symmetric=symmetric, num_bins=bins,
                                   num_quantized_bins=calibrator.num_quantized_bins, percentile=percentile,
                                   scenario="same")
    for name in names:
        if absolute:
            collector.histogram_dict[name] = (counts[name], edges[name].astype(np.float32), lows[name], highs[name])
        else:
            collector.histogram_dict[name] = (counts[name], edges[name], lows[name], highs[name], bounds[name])
    # ORT's percentile search prints progress lines; they are not our output.
    with contextlib.redirect_stdout(io.StringIO()):
        thresholds = collector.compute_collection_result()
    return TensorsData(_ort_method(mode), _with_taken_over(thresholds, taken_over))


def _with_taken_over(ranges: dict, taken_over: dict[str, str]) -> dict:
    """The ranges, plus each taken-over tensor with its activation's (see :func:`ranges_taken_over`)."""
    return {**ranges, **{upstream: ranges[activation] for upstream, activation in taken_over.items()}}
