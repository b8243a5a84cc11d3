"""What each quantized tensor of an int8 (QDQ) model does to the output map on its own.

:mod:`isnet.build_in.layer_drift` measures every quantized activation inside the int8 model as it
runs, so a tensor's figure carries the errors of everything before it. Here each quantization is
switched on *alone* in the fp32 model, and the effect is read where it matters, on the output
map: which activations and which weights the masks are sensitive to, and whether the int8 model's
error is held in a few tensors or spread over all of them (the sum of the isolated effects
against the effect of all of them at once, the accumulated drift).

One ONNX Runtime session does it all (:func:`switchable_model`): the fp32 graph with each
quantization's error added behind a switch, one entry of an extra graph input per quantized
activation and per convolution's weights. All switches off computes the fp32 model, all on the
int8 model (up to the rounding of fused integer kernels), one on that quantization alone. Biases stay float (ONNX Runtime quantizes them to int32 at the scale of input x
weights, an error orders of magnitude below the others).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from isnet.build_in.layer_drift import quantized_activations, stage_of
from isnet.export.onnx_graph import constant_values, sort_topologically

SWITCHES = "isnet_quantization_switches"


@dataclass(frozen=True)
class Switch:
    """One quantization that can be switched on alone."""

    name: str   # the activation tensor, or the weight tensor of the convolution
    kind: str   # "activation" or "weights"
    node: str   # the node computing the activation, or the convolution reading the weights
    group: str  # its model stage where the names tell it (ISNet / U²-Net module paths), else the node


@dataclass(frozen=True)
class IsolatedDrift:
    """The output map's drift from fp32 with one quantization switched on."""

    name: str
    kind: str
    node: str
    group: str
    mean_abs: float  # mean |map - fp32 map| over the images
    max_abs: float

    def to_dict(self) -> dict:
        return asdict(self)


def _dequantized(node, constants: dict[str, np.ndarray]) -> np.ndarray | None:
    """The float values of a DequantizeLinear of constants (per-tensor or per-axis)."""
    if node.input[0] not in constants or node.input[1] not in constants:
        return None
    values = constants[node.input[0]].astype(np.float64)
    scale = constants[node.input[1]].astype(np.float64)
    zero = constants[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] in constants else 0.0
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1 and values.ndim > 1:
        shape = [1] * values.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
    return ((values - zero) * scale).astype(np.float32)


def _scalar_zero_graph(name: str):
    """A branch that gives a float scalar 0 (the Add after the If then costs one pass over the tensor)."""
    nothing = f"{name}_nothing"
    return helper.make_graph([helper.make_node("Constant", [], [nothing], value=numpy_helper.from_array(
        np.array(0.0, np.float32)))], f"{name}_off", [], [_untyped(nothing)])


def _untyped(name: str):
    """A float value info without a shape (the two branches of an If give different shapes)."""
    value = onnx.ValueInfoProto()
    value.name = name
    value.type.tensor_type.elem_type = TensorProto.FLOAT
    return value


def switchable_model(reference: onnx.ModelProto, quantized: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Switch]]:
    """The fp32 ``reference`` with every quantization of ``quantized`` (a QDQ model built from it) behind a
    switch: an extra float input :data:`SWITCHES` of one entry per returned switch.

    A switch adds its error only when it is on: ``x + If(on, error, 0)``, where the error of an
    activation is ``dq(q(x)) - x`` with the QDQ model's scale and zero point, and that of a
    convolution's weights ``conv(input, W_int8 - W)`` (the convolution is linear in its weights), so
    every weight stays a constant ONNX Runtime prepares once, and a run costs the fp32 model plus the
    one error switched on. Activations and convolutions are matched by name, as
    :mod:`isnet.build_in.layer_drift` matches them. ValueError when nothing matches.
    """
    model = onnx.ModelProto.FromString(reference.SerializeToString())
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    weights = {init.name for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    original_nodes = list(graph.node)
    reference_constants = constant_values(graph)
    q_constants = constant_values(quantized.graph)
    q_producers = {out: node for node in quantized.graph.node for out in node.output}
    quantizers = {node.output[0]: node for node in quantized.graph.node if node.op_type == "QuantizeLinear"}
    dequantizers = {node.output[0]: node for node in quantized.graph.node if node.op_type == "DequantizeLinear"}
    graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), f"{SWITCHES}_threshold"))

    switches: list[Switch] = []
    latest: dict[str, str] = {}  # tensor -> the name its readers read once its switches are in

    def add_switch(tensor: str, stem: str, error_nodes: list, error: str, switch: Switch) -> None:
        index = len(switches)
        position, on = f"{stem}_index", f"{stem}_on"
        graph.initializer.append(numpy_helper.from_array(np.array(index, np.int64), position))
        base = latest.get(tensor, tensor)
        graph.node.extend([
            helper.make_node("Gather", [SWITCHES, position], [f"{stem}_value"], axis=0),
            helper.make_node("Greater", [f"{stem}_value", f"{SWITCHES}_threshold"], [on]),
            helper.make_node("If", [on], [f"{stem}_error"],
                             then_branch=helper.make_graph(error_nodes, f"{stem}_on_branch", [], [_untyped(error)]),
                             else_branch=_scalar_zero_graph(stem)),
            helper.make_node("Add", [base, f"{stem}_error"], [f"{stem}_out"]),
        ])
        latest[tensor] = f"{stem}_out"
        switches.append(switch)

    # Weights first: a Conv of the QDQ model reading dequantized int8 weights, and the same Conv here.
    reference_convs = {node.name: node for node in original_nodes if node.op_type == "Conv" and node.name}
    for node in quantized.graph.node:
        mine = reference_convs.get(node.name)
        source = q_producers.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if mine is None or source is None or source.op_type != "DequantizeLinear" or mine.input[1] not in weights:
            continue
        rounded = _dequantized(source, q_constants)
        original = reference_constants[mine.input[1]]
        if rounded is None or rounded.shape != original.shape:
            continue
        stem = f"{mine.name}_isnet_w"
        graph.initializer.append(numpy_helper.from_array((rounded - original).astype(np.float32), f"{stem}_delta"))
        conv = helper.make_node("Conv", [mine.input[0], f"{stem}_delta"], [f"{stem}_conv"])
        conv.attribute.extend(mine.attribute)
        add_switch(mine.output[0], stem, [conv], f"{stem}_conv",
                   Switch(mine.input[1], "weights", mine.name, stage_of(mine.name) or mine.name))

    # Activations: the QDQ model's QuantizeLinear on a float tensor computed here (after its weights' switch).
    for tensor, dq_output in sorted(quantized_activations(quantized).items()):
        if tensor not in producers or tensor in outputs:
            continue
        q = quantizers[dequantizers[dq_output].input[0]]
        scale, zero = q.input[1], q.input[2] if len(q.input) > 2 else ""
        if scale not in q_constants or (zero and zero not in q_constants):
            continue
        stem = f"{tensor}_isnet_q"
        graph.initializer.append(numpy_helper.from_array(q_constants[scale], f"{stem}_scale"))
        if zero:
            graph.initializer.append(numpy_helper.from_array(q_constants[zero], f"{stem}_zero"))
        zero_name = f"{stem}_zero" if zero else ""
        base = latest.get(tensor, tensor)
        error_nodes = [
            helper.make_node("QuantizeLinear", [base, f"{stem}_scale", zero_name], [f"{stem}_int"]),
            helper.make_node("DequantizeLinear", [f"{stem}_int", f"{stem}_scale", zero_name], [f"{stem}_rounded"]),
            helper.make_node("Sub", [f"{stem}_rounded", base], [f"{stem}_diff"]),
        ]
        node = producers[tensor]
        add_switch(tensor, stem, error_nodes, f"{stem}_diff",
                   Switch(tensor, "activation", node.name or node.op_type, stage_of(node.name) or node.name
                          or node.op_type))
    if not switches:
        raise ValueError("the int8 model quantizes no tensor the reference computes (is it a QDQ model built "
                         "from it?)")
    # The model's own nodes read each switched tensor with its switches in.
    for node in original_nodes:
        for index, name in enumerate(node.input):
            if name in latest:
                node.input[index] = latest[name]
    graph.input.append(helper.make_tensor_value_info(SWITCHES, TensorProto.FLOAT, [len(switches)]))
    sort_topologically(graph)
    return model, switches


def isolated_drift(reference: onnx.ModelProto, quantized: onnx.ModelProto, inputs: Iterable[np.ndarray],
                   threads: int | None = None, progress: Callable[[int, int], None] | None = None
                   ) -> tuple[list[IsolatedDrift], dict]:
    """Every quantization of ``quantized`` switched on alone in ``reference`` over ``inputs`` (pre-processed
    3 x H x W arrays): the output map's drift for each, largest first, and a summary (the drift with all
    of them on, the sum of the isolated drifts, and how much of it the leading tensors hold).
    ``progress(finished, runs)`` is called as runs finish (one per switch, and two more, each over every input)."""
    import onnxruntime as ort

    model, switches = switchable_model(reference, quantized)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = next(i.name for i in session.get_inputs() if i.name != SWITCHES)
    output_name = session.get_outputs()[0].name
    batches = [np.asarray(x, np.float32)[None] for x in inputs]
    count = len(switches)
    runs = count + 2

    def run(on: np.ndarray) -> list[np.ndarray]:
        return [session.run([output_name], {input_name: x, SWITCHES: on})[0].astype(np.float64) for x in batches]

    def drift(maps: list[np.ndarray], base: list[np.ndarray]) -> tuple[float, float]:
        errors = [np.abs(m - b) for m, b in zip(maps, base)]
        return float(np.mean([e.mean() for e in errors])), float(max(e.max() for e in errors))

    fp32 = run(np.zeros(count, np.float32))
    everything = drift(run(np.ones(count, np.float32)), fp32)
    if progress:
        progress(2, runs)
    results = []
    for index, switch in enumerate(switches):
        on = np.zeros(count, np.float32)
        on[index] = 1.0
        mean_abs, max_abs = drift(run(on), fp32)
        results.append(IsolatedDrift(switch.name, switch.kind, switch.node, switch.group, mean_abs, max_abs))
        if progress:
            progress(1, runs)
    results.sort(key=lambda r: -r.mean_abs)
    total = sum(r.mean_abs for r in results)
    leading = np.cumsum([r.mean_abs for r in results]) / total if total > 0 else np.zeros(len(results))
    summary = {
        "images": len(batches), "switches": count,
        "activations": sum(1 for s in switches if s.kind == "activation"),
        "weights": sum(1 for s in switches if s.kind == "weights"),
        "accumulated_mean_abs": everything[0], "accumulated_max_abs": everything[1],
        "isolated_sum": total,
        "activations_sum": sum(r.mean_abs for r in results if r.kind == "activation"),
        "weights_sum": sum(r.mean_abs for r in results if r.kind == "weights"),
        # how many of the largest isolated effects it takes to hold half, and 90%, of their sum
        "tensors_for_half": int(np.searchsorted(leading, 0.5) + 1) if total > 0 else 0,
        "tensors_for_90_percent": int(np.searchsorted(leading, 0.9) + 1) if total > 0 else 0,
    }
    return results, summary
