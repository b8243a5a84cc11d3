"""The int8 plan: what an int8 build keeps from int8, what it rescales and corrects, and why.

Both backends take the same decisions on the same ONNX graph, in the same order, here:

1. per-channel ranges of every activation over the calibration images;
2. tensors with an outlier channel (:func:`outlier_channels`), rescaled into their producing
   convolution where that is exact (``quantize.equalize``, :mod:`isnet.build_in.equalize`), then
   measured again;
3. what is left of them stays float with every node sharing their range (:func:`float_tensor_nodes`;
   the CPU form) or gets 16-bit integers (``quantize.integer_only``: no float anywhere);
4. bias correction and the budget search (:mod:`isnet.build_in.budget`), recorded here too.

A backend only translates the plan into its quantizer's terms (ONNX Runtime: ``nodes_to_exclude``
and ``TensorQuantOverrides``; OpenVINO: NNCF's ignored scope), and build.json records the plan
(``backend_details.plan``, :meth:`Int8Plan.record`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from isnet.build_in.channel_ops import RANGE_SHARING
from isnet.build_in.config import OUTLIER_RATIO, QuantizeConfig
from isnet.build_in.sixteen_bit import in_module
from isnet.core import IsnetError

def outlier_channels(channel_ranges: dict[str, tuple[np.ndarray, np.ndarray]],
                     ratio: float = OUTLIER_RATIO) -> list[dict]:
    """Tensors one of whose channels spans far more than the others: per-tensor int8 ranges fail there.

    For each tensor, each channel's reach is max(|min|, |max|) over the calibration images; a
    tensor is listed when its widest channel reaches ``ratio`` times the median live channel
    (reach > 0: dead ReLU channels would drag the median down) or more.
    ``near_constant`` counts the channels among those above the median whose values stay within
    5% of their reach (a "high-bias" channel, Nagel et al. 2019). Sorted widest first.
    """
    found = []
    for name, (low, high) in channel_ranges.items():
        reach = np.maximum(np.abs(low), np.abs(high)).astype(np.float64)
        if reach.size < 2 or not np.isfinite(reach).all():
            continue
        live = reach[reach > 0]
        median = float(np.median(live)) if live.size >= 2 else 0.0
        widest = int(np.argmax(reach))
        if median <= 0 or reach[widest] < ratio * median:
            continue
        wide = reach > median
        constant = wide & ((high - low) <= 0.05 * reach)
        found.append({"tensor": name, "channel": widest, "reach": float(reach[widest]), "median_reach": median,
                      "ratio": float(reach[widest] / median), "near_constant": int(constant.sum()),
                      "channels": int(reach.size)})
    return sorted(found, key=lambda item: -item["ratio"])


def _range_sharing_carriers(graph, tensors: Iterable[str]) -> set[str]:
    """``tensors`` and every tensor joined to one of them through :data:`RANGE_SHARING` ops."""
    carriers = set(tensors)
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if node.op_type not in RANGE_SHARING or not node.input or not node.output:
                continue
            source, output = node.input[0], node.output[0]
            if (source in carriers) != (output in carriers):
                carriers |= {source, output}
                changed = True
    return carriers


def conv_weights_reading(graph, tensors: Iterable[str]) -> list[str]:
    """The weight initializers of the Convs that read ``tensors`` (or what shares their range), in graph order."""
    carriers = _range_sharing_carriers(graph, tensors)
    weights = {initializer.name for initializer in graph.initializer}
    return [node.input[1] for node in graph.node
            if node.op_type == "Conv" and node.input[0] in carriers and node.input[1] in weights]


def float_tensor_nodes(graph, tensors: Iterable[str], already: Sequence[str]) -> list[str]:
    """The nodes to leave in float so that ``tensors`` stay float (outliers, the budget's choices).

    Excluding only the node that computes or reads a tensor is not enough: the quantizer still
    quantizes the tensor for its other readers (on the pretrained U²-Netp, leaving one Conv in
    float that way drifts 10x more than quantizing it). An outlier channel passes unchanged through the ops the quantizer gives a neighbour's range
    (ReLU, pooling, resizing, reshaping), so the tensors joined to an outlier tensor through them
    carry it too; once the measured tensor is left in float the quantizer would quantize those on
    their own. Returns the nodes producing or reading any of them, not in ``already``, in graph
    order. Nodes without a name are left out: ONNX Runtime matches ``nodes_to_exclude`` by name,
    and every unnamed node would match "".
    """
    carriers = _range_sharing_carriers(graph, tensors)
    return [node.name for node in graph.node
            if node.name and node.name not in already and (set(node.output) | set(node.input)) & carriers]


def matching_nodes(nodes: Iterable[tuple[str, Sequence[str]]], patterns: Sequence[str], key: str,
                   example: str) -> list[str]:
    """The names of ``nodes`` (``(name, names of the constants it reads)``) that each of ``patterns``
    matches: a node-name glob (``node_Conv_4?``), a PyTorch module path (``side1``, ``stage1d.*``)
    matched against the exporter's node names (``/side1/Conv``) or the constants' (``side1.weight``;
    files such as rembg's and IMG.LY's ISNet keep the nodes' names but not the weights'). A pattern
    that matches nothing is the user's mistake (``key`` names the config entry)."""
    nodes = list(nodes)
    found: list[str] = []
    for pattern in patterns:
        hits = [name for name, constants in nodes
                if fnmatch.fnmatchcase(name, pattern) or in_module(name, pattern)
                or any(fnmatch.fnmatchcase(c, f"{pattern}.*") or fnmatch.fnmatchcase(c, pattern) for c in constants)]
        if not hits:
            raise IsnetError(f"{key}: '{pattern}' matches no node; give a module path such as 'side1' "
                             f"or a node name such as '{example}'")
        found.extend(hit for hit in hits if hit not in found)
    return found


@dataclass
class Int8Plan:
    """One int8 build's decisions (see the module docstring); node names are the backend's."""

    integer_only: bool
    calibration: dict  # mode, images, and how the graph was prepared
    excluded_nodes: list[str] = field(default_factory=list)  # quantize.exclude_nodes, resolved
    outlier_ratio: float | None = OUTLIER_RATIO  # None: outlier tensors are quantized anyway
    outliers: list[dict] = field(default_factory=list)  # as outlier_channels lists them, after equalisation
    equalized: list = field(default_factory=list)  # isnet.build_in.equalize.ScaledChannel
    float_nodes: list[str] = field(default_factory=list)  # ONNX nodes kept float around outlier tensors
    # Nodes around outlier tensors the budget search found it could put back in int8 (another remedy,
    # such as bias correction, having made them unneeded)
    float_nodes_released: list[str] = field(default_factory=list)
    sixteen_bit: list[str] = field(default_factory=list)  # tensors asked 16 bits: activations_16bit, outliers
    sixteen_bit_weights: list[str] = field(default_factory=list)  # weights of Convs reading outlier tensors
    bias_correction: dict | None = None
    budget: dict | None = None  # budget.DriftJudge.summary of the search

    @classmethod
    def for_config(cls, quant: QuantizeConfig, images: int, **calibration) -> "Int8Plan":
        """An empty plan for ``quant``: nothing decided yet."""
        return cls(integer_only=quant.integer_only, outlier_ratio=quant.outlier_channel_ratio,
                   calibration={"mode": quant.calibrate_mode.value, "images": images, **calibration})

    def record(self) -> dict:
        """The plan as build.json keeps it."""
        return {"form": "integer-only" if self.integer_only else "cpu", "calibration": self.calibration,
                "excluded_nodes": self.excluded_nodes, "outlier_ratio": self.outlier_ratio,
                "outlier_tensors": self.outliers[:10], "outlier_count": len(self.outliers),
                "equalized_channels": [asdict(item) for item in self.equalized],
                "outlier_nodes_in_float": self.float_nodes, "outlier_nodes_back_in_int8": self.float_nodes_released,
                "sixteen_bit_requested": self.sixteen_bit,
                "sixteen_bit_weights": self.sixteen_bit_weights,
                "bias_correction": self.bias_correction, "budget": self.budget}


def graph_structure(path: Path):
    """The graph of the ONNX file ``path`` without its weights' values (names and shapes kept): what
    the plan's decisions read, without holding a second copy of a large model through the build."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for initializer in model.graph.initializer:
        for payload in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
            initializer.ClearField(payload)
    return model.graph


# measure(onnx file, equalised?) -> {tensor: (per-channel min, per-channel max)} over the calibration images
ChannelMeasure = Callable[[Path, bool], dict[str, tuple[np.ndarray, np.ndarray]]]


def plan_outlier_channels(plan: Int8Plan, source: Path, quant: QuantizeConfig, work: Path,
                          measure: ChannelMeasure) -> Path:
    """Steps 1-3 of the plan on the ONNX file ``source``: fills ``plan.outliers``, ``equalized``,
    ``float_nodes`` (CPU form) or ``sixteen_bit`` (integer-only form), and returns the ONNX file to
    quantize (``source``, or its equalised copy in ``work``)."""
    from isnet.build_in.equalize import equalize_model_file  # onnx: build-time only

    ratio = quant.outlier_channel_ratio or OUTLIER_RATIO
    channel_ranges = measure(source, False)
    outliers = outlier_channels(channel_ranges, ratio)
    if quant.equalize and outliers:
        # Equalised channels are quantized like the others; what equalisation could not reach
        # (a channel read through a Concat by more than one Conv, say) is measured again.
        plan.equalized = equalize_model_file(source, work / "equalized.onnx", channel_ranges, outliers)
        if plan.equalized:
            source = work / "equalized.onnx"
            outliers = outlier_channels(measure(source, True), ratio)
    plan.outliers = outliers
    if quant.outlier_channel_ratio is None or not outliers:
        return source
    tensors = [item["tensor"] for item in outliers]
    graph = graph_structure(source)
    if quant.integer_only:
        # No float islands: an outlier-channel tensor gets 16 bits (65,536 levels leave the other
        # channels as many as int8 would give them without the outlier, 256 times over), and so do
        # the weights of the Convs reading it: a channel that sits near 228 on every picture
        # multiplies their rounding error by 228, a shift 16-bit activations cannot take off (the
        # pretrained U²-Netp's error is there; docs/int8-isnet.md).
        plan.sixteen_bit += [tensor for tensor in tensors if tensor not in plan.sixteen_bit]
        plan.sixteen_bit_weights = conv_weights_reading(graph, tensors)
    else:
        # One per-tensor range for 0..228 leaves a dozen levels to the other channels.
        plan.float_nodes = float_tensor_nodes(graph, tensors, plan.excluded_nodes)
    return source
