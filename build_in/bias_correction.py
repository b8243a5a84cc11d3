"""Empirical bias correction of a QDQ int8 model (Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction", ICCV 2019, section 4.2).

Quantizing a Conv's weights and inputs shifts the mean of each of its output channels; the shifts
add up through a deep network and move the output maps as a whole (on the pretrained U²-Netp,
its int8 build's maps sit 0.0004 below fp32's on average, a third of their mean |difference|).
For every Conv whose weights are quantized, the mean per output channel of ``conv(x, W_q - W)`` --
the shift its weight rounding causes, on its input ``x`` as the quantized model computes it -- is
measured on calibration images and subtracted from the float model's bias, which is then
quantized again. (Measuring each Conv's whole output shift against fp32 instead counts the
shifts of upstream layers again at every layer; correcting all layers at once from that
diverges: tried on U²-Netp, the maps' mean shift grew from 0.0004 to 0.015.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper



def _dequantized_weights(model: onnx.ModelProto) -> Iterator[tuple[str, np.ndarray]]:
    """(Conv node name, its weight as the quantized model computes with it) for each Conv with quantized
    weights, one at a time (float64: the weights of a whole ISNet at once would be 350 MB)."""
    initializers = {init.name: init for init in model.graph.initializer}
    dequantizers = {node.output[0]: node for node in model.graph.node if node.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        dq = dequantizers.get(node.input[1]) if node.op_type == "Conv" and node.name else None
        if dq is None or dq.input[0] not in initializers:
            continue
        values = numpy_helper.to_array(initializers[dq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(initializers[dq.input[1]]).astype(np.float64)
        zero = (numpy_helper.to_array(initializers[dq.input[2]]).astype(np.float64)
                if len(dq.input) > 2 and dq.input[2] else 0.0)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        if np.ndim(scale):
            shape = [1] * values.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zero = np.reshape(zero, shape) if np.ndim(zero) else zero
        yield node.name, (values - zero) * scale


def conv_weight_error_shifts(reference: str | os.PathLike, quantized: str | os.PathLike,
                             inputs: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """{Conv node name: per output channel, the mean of conv(x, W_quantized - W)} over ``inputs``.

    ``x`` is the Conv's input as the quantized model computes it, so each Conv's shift is its own
    (the weight rounding's), not what upstream layers pass on; correcting every layer at once then
    does not count a shift twice. Covers the Convs of ``quantized`` whose weights are quantized
    and whose float weights ``reference`` holds under the same node name.

    The quantized model itself is the probe: beside each such Conv, a Conv with ``W_quantized - W``
    and the per-channel mean of its output, which are the probe's only outputs. Each probe sits
    right after its Conv, so its input is freed as it would be in inference.
    """
    import onnxruntime as ort

    from isnet.build_in.calibration import ARENA_PIXELS, input_pixels

    reference_model = onnx.load(str(reference))
    float_weights = {node.name: node.input[1] for node in reference_model.graph.node if node.op_type == "Conv"}
    initializers = {init.name: init for init in reference_model.graph.initializer}
    probe = onnx.load(str(quantized))
    opset = next(o.version for o in probe.opset_import if o.domain in ("", "ai.onnx"))
    convs = {node.name: node for node in probe.graph.node if node.op_type == "Conv"}
    probes: dict[str, list] = {}
    outputs = {}
    for name, weight in _dequantized_weights(probe):
        if float_weights.get(name) not in initializers:
            continue
        node = convs[name]
        error = (weight - numpy_helper.to_array(initializers[float_weights[name]])).astype(np.float32)
        error_name, conv_out, mean_out = (f"{name}/bias_correction/{part}" for part in ("dW", "conv", "mean"))
        probe.graph.initializer.append(numpy_helper.from_array(error, error_name))
        added = [onnx.helper.make_node("Conv", [node.input[0], error_name], [conv_out], name=conv_out,
                                       **{a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})]
        if opset >= 18:
            axes = f"{name}/bias_correction/axes"
            probe.graph.initializer.append(numpy_helper.from_array(np.array([0, 2, 3], np.int64), axes))
            added.append(onnx.helper.make_node("ReduceMean", [conv_out, axes], [mean_out], name=mean_out, keepdims=0))
        else:
            added.append(onnx.helper.make_node("ReduceMean", [conv_out], [mean_out], name=mean_out,
                                               axes=[0, 2, 3], keepdims=0))
        probes[name] = added
        outputs[name] = mean_out
    del reference_model, initializers
    if not outputs:
        return {}
    ordered = []
    for node in probe.graph.node:
        ordered.append(node)
        ordered.extend(probes.get(node.name, ()))
    del probe.graph.node[:]
    probe.graph.node.extend(ordered)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in outputs.values())
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # As in calibration: past ARENA_PIXELS, allocating from the system keeps the peak down.
    options.enable_cpu_mem_arena = input_pixels(probe) <= ARENA_PIXELS
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del probe
    names = list(outputs)
    totals: dict[str, np.ndarray] = {}
    count = 0
    for feed in inputs:
        batch = next(iter(feed.values())).shape[0]
        for name, mean in zip(names, session.run([outputs[n] for n in names], feed)):
            totals[name] = mean.astype(np.float64) * batch + totals.get(name, 0.0)
        count += batch
    return {name: total / count for name, total in totals.items()}


def correct_biases(model: onnx.ModelProto, shifts: dict[str, np.ndarray]) -> int:
    """Subtract ``shifts`` from the biases of the named Convs of the float ``model`` (in place).

    A Conv without a bias gets one. Returns how many Convs changed.
    """
    initializers = {init.name: init for init in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name not in shifts:
            continue
        shift = shifts[node.name]
        if len(node.input) > 2 and node.input[2] in initializers and readers.get(node.input[2]) == 1:
            init = initializers[node.input[2]]
            bias = numpy_helper.to_array(init).astype(np.float64)
            init.CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), init.name))
        elif len(node.input) <= 2 or not node.input[2]:
            name = f"{node.name}_corrected_bias"
            model.graph.initializer.append(numpy_helper.from_array((-shift).astype(np.float32), name))
            if len(node.input) == 2:
                node.input.append(name)
            else:
                node.input[2] = name
        else:
            continue  # a bias shared with another node, or computed: left alone
        changed += 1
    return changed
