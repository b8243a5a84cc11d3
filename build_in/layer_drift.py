"""Layer-wise drift of a quantized (QDQ) ONNX model against its fp32 model, on the same inputs.

For every activation the quantized model quantizes (a ``QuantizeLinear`` reading a float tensor),
the value its consumers see (the ``DequantizeLinear`` output) is compared with the same tensor of
the fp32 model: SQNR in dB and the relative mean |error|. Tensors are matched by name, the way
ONNX Runtime's ``qdq_loss_debug`` matches them; its collectors keep every activation of every image
in memory, so the figures here are accumulated image by image instead.

The quantized model runs with its Q/DQ pairs exposed as outputs, so ONNX Runtime executes them as
written (float kernels between Q and DQ) instead of fusing them into integer kernels: the figures
describe the quantization itself, within rounding of what the deployed kernels compute.

A tensor-wide SQNR hides the worst case of activation quantization: one wide channel (a
near-constant 200 beside channels of 1) holds nearly all of the signal power, so the tensor
scores well while its other channels are left a few levels each. Each tensor therefore also gets
its median per-channel error-to-signal ratio. The error a tensor's own node adds
(:attr:`TensorDrift.added_noise`) is its ratio minus the largest of the tensors it is computed
from, taken for both ratios, whichever is larger: errors arriving from upstream do not count
against a node, so ranking by it finds the layers to keep in float. (Both are needed: on the
pretrained U²-Netp the Conv reading the outlier channel stands out only tensor-wide, on a
network with one lifted channel the lifted tensor only per channel.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from isnet.build_in.channel_ops import RANGE_SHARING


@dataclass(frozen=True)
class TensorDrift:
    """The drift of one quantized activation over the images measured."""

    tensor: str
    order: int  # position of its computing node in the fp32 graph
    nodes: tuple[str, ...]  # the fp32 graph's node computing it, and the pass-through nodes after it
    op: str
    group: str  # the model stage (U²-Net / ISNet module names) or the node's name
    sqnr_db: float  # 10 log10(signal power / error power) over the whole tensor; inf when exact
    channel_sqnr_db: float  # the same from the median channel's error-to-signal ratio
    relative_mae: float  # mean |error| / mean |fp32 value|
    added_noise: float  # error-to-signal ratio minus the largest of its inputs' (tensor-wide or per channel)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["nodes"] = list(self.nodes)
        return data


def quantized_activations(model: onnx.ModelProto) -> dict[str, str]:
    """{float tensor: the DequantizeLinear output its consumers read} for every quantized activation."""
    weights = {init.name for init in model.graph.initializer}
    dequantized = {node.input[0]: node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    found = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in weights and node.output[0] in dequantized:
            found.setdefault(node.input[0], dequantized[node.output[0]])
    return found


_STAGE = re.compile(r"^(stage|side)(\d)(d?)$")


def stage_of(name: str) -> str | None:
    """The U²-Net / ISNet stage a weight or node belongs to, from the module path in its name
    (``stage2d.rebnconv1.conv_s1.weight``, ``/stage2d/rebnconv1/conv_s1/Conv``); None when it names none."""
    head = name.lstrip("/").replace("/", ".").split(".", 1)[0]
    match = _STAGE.match(head)
    if match:
        kind, number, decoder = match.groups()
        if kind == "side":
            return "side heads"
        return f"{'decoder' if decoder else 'encoder'} stage {number}"
    if head == "outconv":
        return "fusion"
    return None


def _producers(graph) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output}


def _origin(tensor: str, producers: dict) -> list[onnx.NodeProto]:
    """The nodes behind ``tensor`` back to the first that shares no range with its input
    (:data:`~isnet.build_in.channel_ops.RANGE_SHARING`), that one first."""
    chain = []
    node = producers.get(tensor)
    while node is not None:
        chain.insert(0, node)
        if node.op_type not in RANGE_SHARING or not node.input:  # a Conv and its ReLU, a ReLU and its MaxPool
            break
        node = producers.get(node.input[0])
    return chain


def _group(node: onnx.NodeProto, weights: set[str]) -> str:
    for name in [*(i for i in node.input[1:] if i in weights), node.name]:
        stage = stage_of(name)
        if stage:
            return stage
    return node.name or node.op_type


def session_with_outputs(model: onnx.ModelProto, names: Iterable[str]):
    """An ONNX Runtime session of ``model`` (left unchanged) with the float tensors ``names`` as outputs too."""
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in names if name not in present)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def measure_layer_drift(reference: str | os.PathLike, quantized: str | os.PathLike,
                        inputs: Iterable[np.ndarray]) -> list[TensorDrift]:
    """Per quantized activation of ``quantized``, its drift from ``reference`` over ``inputs``.

    ``inputs`` are pre-processed (3, H, W) or (N, 3, H, W) arrays. Returns the tensors found in
    both models, most damaging first (lowest SQNR). ValueError when none match (the quantized
    model is not QDQ, or not a quantization of ``reference``).
    """
    reference_model = onnx.load(str(reference))
    quantized_model = onnx.load(str(quantized))
    pairs = quantized_activations(quantized_model)
    producers = _producers(reference_model.graph)
    matched = sorted(t for t in pairs if t in producers)
    if not matched:
        raise ValueError(f"{quantized} has no quantized activation that {reference} computes (is it a QDQ model "
                         "built from it?)")
    fp32 = session_with_outputs(reference_model, matched)
    qdq = session_with_outputs(quantized_model, [pairs[t] for t in matched])
    fp32_input = fp32.get_inputs()[0].name
    qdq_input = qdq.get_inputs()[0].name

    # Per channel (axis 1; a tensor of another rank counts as one channel): signal and error power.
    signal: dict[str, np.ndarray] = {}
    noise: dict[str, np.ndarray] = {}
    absolute = dict.fromkeys(matched, 0.0)
    error = dict.fromkeys(matched, 0.0)
    for tensor in inputs:
        batch = tensor[None] if tensor.ndim == 3 else tensor
        expected = fp32.run(matched, {fp32_input: batch})
        got = qdq.run([pairs[t] for t in matched], {qdq_input: batch})
        for name, a, b in zip(matched, expected, got):
            a = a.astype(np.float64)
            diff = b.astype(np.float64) - a
            axes = (0, *range(2, a.ndim)) if a.ndim >= 3 else tuple(range(a.ndim))
            power, error_power = np.square(a).sum(axis=axes), np.square(diff).sum(axis=axes)
            signal[name] = power + signal.get(name, 0.0)
            noise[name] = error_power + noise.get(name, 0.0)
            absolute[name] += float(np.abs(a).sum())
            error[name] += float(np.abs(diff).sum())

    def decibels(ratio: float) -> float:
        return float("inf") if ratio == 0.0 else float(-10 * np.log10(ratio)) if np.isfinite(ratio) else -np.inf

    def tensor_ratio(name: str) -> float:
        total_noise, total_signal = float(noise[name].sum()), float(signal[name].sum())
        if total_noise == 0.0:
            return 0.0
        return total_noise / total_signal if total_signal > 0 else float("inf")

    def ratio(name: str) -> float:
        live = signal[name] > 0  # a dead channel (all zero in fp32) has no ratio
        if not live.any():
            return 0.0 if not noise[name].any() else float("inf")
        return float(np.median(noise[name][live] / signal[name][live]))

    weights = {init.name for init in reference_model.graph.initializer}
    position = {node.name or id(node): index for index, node in enumerate(reference_model.graph.node)}
    drifts = []
    for name in matched:
        chain = _origin(name, producers)
        head = chain[0]
        upstream: list[str] = []
        for source in head.input:
            node = producers.get(source)
            seen = set()
            # Walk back through unmatched tensors to the matched ones this node's input comes from.
            stack = [source] if source in signal else ([] if node is None else list(node.input))
            while stack:
                item = stack.pop()
                if item in seen:
                    continue
                seen.add(item)
                if item in signal:
                    upstream.append(item)
                elif item in producers:
                    stack.extend(producers[item].input)
        own = ratio(name)
        added = max(tensor_ratio(name) - max(map(tensor_ratio, upstream), default=0.0),
                    own - max(map(ratio, upstream), default=0.0))
        drifts.append(TensorDrift(
            tensor=name, order=position[producers[name].name or id(producers[name])], nodes=tuple(n.name for n in chain), op=head.op_type, group=_group(head, weights),
            sqnr_db=decibels(tensor_ratio(name)), channel_sqnr_db=decibels(own),
            relative_mae=error[name] / absolute[name] if absolute[name] > 0 else 0.0,
            added_noise=added))
    return sorted(drifts, key=lambda d: d.sqnr_db)


def group_drift(drifts: Iterable[TensorDrift]) -> list[dict]:
    """Per group (stage): its tensors, worst SQNR and the error its nodes add; most added error first."""
    groups: dict[str, dict] = {}
    for drift in drifts:
        entry = groups.setdefault(drift.group, {"group": drift.group, "tensors": 0, "worst_sqnr_db": float("inf"),
                                                "added_noise": 0.0})
        entry["tensors"] += 1
        entry["worst_sqnr_db"] = min(entry["worst_sqnr_db"], drift.sqnr_db)
        entry["added_noise"] += max(drift.added_noise, 0.0)
    return sorted(groups.values(), key=lambda g: -g["added_noise"])


def float_candidates(drifts: Iterable[TensorDrift], limit: int) -> list[str]:
    """The ``limit`` tensors whose quantization adds the most error (positive only), most first: the
    ones to keep in float (with every node computing or reading them, see
    :func:`isnet.build_in.int8_plan.float_tensor_nodes`)."""
    ranked = sorted((d for d in drifts if d.added_noise > 0), key=lambda d: -d.added_noise)
    return [d.tensor for d in ranked[:limit]]


def artifact_reference(model_dir: str | os.PathLike, images: Sequence[str | os.PathLike], work: Path,
                       reference: str | os.PathLike | None = None) -> tuple[Path, Path, list[np.ndarray]]:
    """What an int8 ONNX Runtime artifact is measured against: (the fp32 reference ONNX, the artifact's
    model file, ``images`` pre-processed as its ``build.json`` says).

    ``reference`` is an fp32 artifact folder or ONNX file; by default it is the graph the build
    quantized, made again from the source model named in ``build.json`` (:func:`prepare_source` with the
    build's size and frontend settings, into ``work``): an fp16 source is upcast, a source fixed at
    another size made to follow the input, so tensor names and shapes match the artifact's.
    IsnetError for an artifact that is not an ONNX Runtime int8 one, or a reference that cannot be had.
    """
    from isnet.build_in.artifact import is_artifact, read_build_info
    from isnet.build_in.ops import Preprocessor
    from isnet.build_in.source_model import OutputActivation, Upcast, prepare_source
    from isnet.core import IsnetError

    info = read_build_info(model_dir)
    if info["backend"] != "onnxruntime" or info["precision"] != "int8":
        raise IsnetError(f"{model_dir}: a {info['backend']} {info['precision']} artifact; isnet drift measures "
                         "ONNX Runtime int8 artifacts (QDQ models)")
    preprocessor = Preprocessor.from_specs(info["preprocess"])
    inputs = [preprocessor.load(path)[0] for path in images]
    if reference is None:
        source = Path(info["source"]["path"])
        if not source.is_file() or source.suffix.lower() != ".onnx":
            raise IsnetError(f"{model_dir}: its source model {source} is gone or not an ONNX file; give a reference "
                             "model (an fp32 artifact or ONNX file)")
        frontend = info["config"]["frontend"]
        height, width = info["input"]["shape"][2:]
        samples = (inputs * 2)[:2]
        reference = prepare_source(source, work / "reference.onnx", (height, width), samples,
                                   output=frontend.get("output", 0),
                                   activation=OutputActivation(frontend.get("output_activation", "auto")),
                                   upcast=Upcast(frontend.get("upcast", "auto"))).path
    elif is_artifact(reference):
        reference = Path(reference) / read_build_info(reference)["model_file"]
    reference = Path(reference)
    if not reference.is_file():
        raise IsnetError(f"reference model: no such file or artifact: {reference}")
    return reference, Path(model_dir) / info["model_file"], inputs


def plot_layer_drift(drifts: Sequence[TensorDrift], path: str | os.PathLike, title: str = "") -> Path:
    """A PNG: SQNR of every quantized tensor in graph order (tensor-wide and median channel), and the
    error each stage's own nodes add, most first."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from isnet.core import atomic_path

    ordered = sorted(drifts, key=lambda d: d.order)
    figure = Figure(figsize=(12, 7.5), layout="constrained")
    FigureCanvasAgg(figure)
    along, by_group = figure.subplots(2, 1, height_ratios=(3, 2))
    finite = [d for d in ordered if np.isfinite(d.sqnr_db) and np.isfinite(d.channel_sqnr_db)]
    x = np.arange(len(finite))
    along.plot(x, [d.sqnr_db for d in finite], ".-", linewidth=0.8, markersize=3, label="whole tensor")
    along.plot(x, [d.channel_sqnr_db for d in finite], ".-", linewidth=0.8, markersize=3, label="median channel")
    for d in sorted(finite, key=lambda d: -d.added_noise)[:5]:
        index = finite.index(d)
        along.annotate(d.nodes[0], (index, d.channel_sqnr_db), fontsize="x-small", rotation=20,
                       xytext=(4, -12), textcoords="offset points")
    along.set(title=f"{title}: SQNR of each quantized activation vs fp32 (higher is better)".lstrip(": "),
              xlabel="quantized activations in graph order", ylabel="SQNR (dB)")
    along.grid(True, alpha=0.3)
    along.legend(loc="lower left", fontsize="small")
    groups = group_drift(drifts)[:15]
    by_group.barh([g["group"] for g in groups][::-1], [g["added_noise"] for g in groups][::-1])
    by_group.set(title="error its own nodes add, per stage (error/signal ratio)", xlabel="added error")
    by_group.grid(True, axis="x", alpha=0.3)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path
