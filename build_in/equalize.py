"""Activation equalisation of outlier channels: scale a wide channel down where it is made and up
where it is used, so the float model computes the same maps and one per-tensor int8 range fits.

Cross-layer equalisation (Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction", ICCV 2019, section 4.1) rests on ReLU being positively homogeneous:
``relu(x / s) = relu(x) / s`` for s > 0. A Conv's output channel c divided by s (its weights and
bias), carried through ops that treat channels independently and commute with a positive scale
(ReLU, max/average pooling, resizing, concatenation), and multiplied back by s in the input
column c of every Conv that reads it, leaves the network's output unchanged -- with zero
padding too, since 0 / s = 0 (which the paper's other remedy, high-bias absorption, cannot claim:
moving a constant into the next layer's bias is wrong on the border pixels a padded Conv sees).

Nagel et al. pick s from the two layers' weights alone. Here the aim is the activation's
per-tensor range, measured on the calibration images: a channel reaching far past the tensor's
median channel (the near-constant 228 beside channels of 11 that breaks int8 U²-Netp) is scaled
to ``target`` times the median. The Convs reading it get that factor in one weight column;
their weights are quantized per output channel, so the column may widen those channels' ranges:
``strength`` (SmoothQuant's migration strength, Xiao et al. 2023) splits the difference, 1 moving
all of it into the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from isnet.build_in.channel_ops import SCALE_COMMUTING, VALUE_BLIND

# A scaled channel is brought down to this many times its tensor's median channel reach.
TARGET_RATIO = 2.0
STRENGTH = 1.0


@dataclass(frozen=True)
class ScaledChannel:
    """One output channel of ``conv`` divided by ``scale``; ``readers`` multiply it back."""

    tensor: str
    channel: int
    conv: str
    conv_channel: int
    scale: float
    readers: tuple[str, ...]


class _Graph:
    """Who makes and who reads each tensor, and how many channels it has."""

    def __init__(self, model: onnx.ModelProto):
        inferred = onnx.shape_inference.infer_shapes(model)
        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in model.graph.node:
            for index, name in enumerate(node.input):
                self.readers.setdefault(name, []).append((node, index))
        self.outputs = {out.name for out in model.graph.output}
        self.initializers = {init.name: init for init in model.graph.initializer}
        self.channels: dict[str, int] = {}
        for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            dims = info.type.tensor_type.shape.dim
            if len(dims) >= 2 and dims[1].HasField("dim_value"):
                self.channels[info.name] = dims[1].dim_value
        for node in model.graph.node:  # a Conv's output channels are its weight's first dimension
            if node.op_type == "Conv" and node.input[1] in self.initializers:
                self.channels.setdefault(node.output[0], self.initializers[node.input[1]].dims[0])

    def origin(self, tensor: str, channel: int) -> tuple[onnx.NodeProto, int] | None:
        """The Conv and output channel that ``channel`` of ``tensor`` is made from, or None."""
        while True:
            node = self.producer.get(tensor)
            if node is None:
                return None
            if node.op_type == "Conv":
                return (node, channel) if self._own_weights(node) else None
            if _channel_wise(node):
                tensor = node.input[0]
            elif node.op_type == "Concat" and _concat_axis(node) == 1:
                for name in node.input:
                    count = self.channels.get(name)
                    if count is None:
                        return None
                    if channel < count:
                        tensor = name
                        break
                    channel -= count
                else:
                    return None  # shape information that does not add up
            else:
                return None

    def region(self, conv: onnx.NodeProto, channel: int) -> list[tuple[onnx.NodeProto, int]] | None:
        """The (Conv, input channel) pairs that read output ``channel`` of ``conv``, through
        channel-wise ops; None where it reaches anything else (an Add, a graph output, ...)."""
        found, stack, seen = [], [(conv.output[0], channel)], set()
        while stack:
            tensor, index = stack.pop()
            if (tensor, index) in seen:
                continue
            seen.add((tensor, index))
            if tensor in self.outputs:
                return None
            for node, slot in self.readers.get(tensor, []):
                if _channel_wise(node) and slot == 0:
                    stack.append((node.output[0], index))
                elif node.op_type == "Concat" and _concat_axis(node) == 1:
                    counts = [self.channels.get(name) for name in node.input[:slot]]
                    if None in counts:
                        return None
                    stack.append((node.output[0], sum(counts) + index))
                elif node.op_type in VALUE_BLIND:
                    continue
                elif node.op_type == "Conv" and slot == 0 and _attribute(node, "group", 1) == 1 \
                        and self._own_weights(node):
                    found.append((node, index))
                else:
                    return None
        return found

    def _own_weights(self, conv: onnx.NodeProto) -> bool:
        """Whether the Conv's weight (and bias) are initializers no other node reads."""
        names = [name for name in conv.input[1:3] if name]
        return all(name in self.initializers and len(self.readers.get(name, [])) == 1 for name in names)

    def weight(self, conv: onnx.NodeProto) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[conv.input[1]]).astype(np.float64)

    def replace(self, name: str, values: np.ndarray) -> None:
        init = self.initializers[name]
        init.CopyFrom(numpy_helper.from_array(values.astype(numpy_helper.to_array(init).dtype), name))


def _channel_wise(node: onnx.NodeProto) -> bool:
    """Whether ``node`` commutes with a positive per-channel scale (:data:`SCALE_COMMUTING`); a crop-and-resize
    fills outside the crop with a constant, which a scale would not reach."""
    return node.op_type in SCALE_COMMUTING and _attribute(node, "coordinate_transformation_mode", "") not in (
        "tf_crop_and_resize", b"tf_crop_and_resize")


def _attribute(node: onnx.NodeProto, name: str, default):
    attr = next((a for a in node.attribute if a.name == name), None)
    return default if attr is None else onnx.helper.get_attribute_value(attr)


def _concat_axis(node: onnx.NodeProto) -> int:
    axis = _attribute(node, "axis", 0)
    return axis + 4 if axis < 0 else axis  # NCHW feature maps: -3 is the channel axis


def equalize_outlier_channels(model: onnx.ModelProto, channel_ranges: dict[str, tuple[np.ndarray, np.ndarray]],
                              outliers: Sequence[dict], target_ratio: float = TARGET_RATIO,
                              strength: float = STRENGTH) -> list[ScaledChannel]:
    """Scale the wide channels of the ``outliers`` tensors (as :func:`outlier_channels` lists them)
    down to ``target_ratio`` times their tensor's median reach, in place; returns what was scaled.

    A channel is left alone when it is not made by a Conv of its own (reached through channel-wise
    ops and concatenations) or when something other than Convs reads it (an Add, a graph output):
    there the scale could not be undone exactly. Each Conv channel is scaled once. A graph with
    subgraphs (If, Loop, Scan) is left as it is.
    """
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in model.graph.node for attr in node.attribute):
        return []  # If / Loop / Scan bodies may read any tensor: the readers would not all be known
    graph = _Graph(model)
    done: list[ScaledChannel] = []
    scaled: set[tuple[str, int]] = set()
    for item in outliers:
        low, high = channel_ranges[item["tensor"]]
        reach = np.maximum(np.abs(low), np.abs(high)).astype(np.float64)
        target = target_ratio * item["median_reach"]
        for channel in np.flatnonzero(reach > target):
            made = graph.origin(item["tensor"], int(channel))
            if made is None or (made[0].output[0], made[1]) in scaled:  # names are optional in ONNX; outputs not
                continue
            conv, out_channel = made
            readers = graph.region(conv, out_channel)
            if not readers:
                continue
            scale = float((reach[channel] / target) ** strength)
            weight = graph.weight(conv)
            weight[out_channel] /= scale
            graph.replace(conv.input[1], weight)
            if len(conv.input) > 2 and conv.input[2]:
                bias = numpy_helper.to_array(graph.initializers[conv.input[2]]).astype(np.float64)
                bias[out_channel] /= scale
                graph.replace(conv.input[2], bias)
            for reader, in_channel in readers:
                weight = graph.weight(reader)
                weight[:, in_channel] *= scale
                graph.replace(reader.input[1], weight)
            scaled.add((conv.output[0], out_channel))
            done.append(ScaledChannel(item["tensor"], int(channel), conv.name, out_channel, round(scale, 3),
                                      tuple(reader.name for reader, _ in readers)))
    return done


def equalize_model_file(source: Path, target: Path, channel_ranges: dict[str, tuple[np.ndarray, np.ndarray]],
                        outliers: Sequence[dict]) -> list[ScaledChannel]:
    """:func:`equalize_outlier_channels` on the ONNX file ``source``; the result is written to
    ``target`` when a channel was scaled (nothing is written otherwise)."""
    model = onnx.load(str(source))
    scaled = equalize_outlier_channels(model, channel_ranges, outliers)
    if scaled:
        onnx.save(model, str(target))
    return scaled
