"""One model file, any input size: fixed Resize sizes made to follow the tensors they meet.

ISNet and the U²-Net family upsample each decoder map to the size of the encoder map it is
concatenated with, and each side map to the input's size, so the network itself works at any
input size. Exporters tracing at one size, though, often write those target sizes into the file
as constants (IMG.LY's ISNet resizes to ``[32, 32]`` ... ``[1024, 1024]``; rembg's
``isnet-general-use.onnx`` was exported the same way), and the file then runs at that size only.

:func:`resizes_follow_input` puts back what the constants stood for: each Resize whose output
size is a constant takes, instead, the height and width of the tensor its output is combined
with (through Concat, Add, Mul ...; found by matching the constant against that tensor's size in
the file), or of the graph input when it resizes to the input's size. At the file's own size the
result computes exactly what the file did; at another size it computes what the network would.
"""

from __future__ import annotations

import numpy as np

from isnet.core import IsnetError
from isnet.export.onnx_graph import constant_values, producers_and_readers, sort_topologically

# Ops that combine their inputs element-wise or along channels: a map resized to meet one of these
# must have the spatial size of the other inputs.
_MEETING_OPS = frozenset({"Concat", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean"})
# Ops that pass a map on with its spatial size unchanged.
_PASS_THROUGH = frozenset({"Cast", "Identity", "Relu", "Sigmoid", "Clip", "LeakyRelu"})


def _spatial_shapes(model) -> dict[str, tuple[int, int]]:
    """Height and width of every 4-D tensor whose size shape inference can tell."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model, data_prop=True).graph
    shapes = {}
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
            shapes[value.name] = (dims[2].dim_value, dims[3].dim_value)
    return shapes


def _fixed_target(sizes: str, constants: dict[str, np.ndarray], producers: dict) -> tuple[int, int] | None:
    """The constant (height, width) a Resize's ``sizes`` input holds, or None when it is computed."""
    if sizes in constants and constants[sizes].size == 4:
        return int(constants[sizes][2]), int(constants[sizes][3])
    node = producers.get(sizes)
    # The tracing exporters' form: Concat(Shape(x)[0:2], constant [h, w]).
    if node is not None and node.op_type == "Concat" and node.input[-1] in constants:
        tail = constants[node.input[-1]]
        if tail.size == 2:
            return int(tail[0]), int(tail[1])
    return None


def _partner(resize, target: tuple[int, int], graph, shapes: dict, readers: dict) -> str | None:
    """A tensor the Resize's output meets whose size in the file is ``target``, or the graph input
    when ``target`` is the input's size."""
    chain, frontier = {resize.output[0]}, [resize.output[0]]
    while frontier:
        name = frontier.pop()
        for reader in readers.get(name, []):
            if reader.op_type in _PASS_THROUGH:
                chain.add(reader.output[0])
                frontier.append(reader.output[0])
            elif reader.op_type in _MEETING_OPS:
                for other in reader.input:
                    if other and other not in chain and shapes.get(other) == target:
                        return other
    graph_input = graph.input[0].name
    return graph_input if shapes.get(graph_input) == target else None


def resizes_follow_input(model) -> int:
    """Make every Resize of ``model`` (an onnx ModelProto, opset >= 15, its input at the size the
    file was made for) whose output size is a constant take it from the tensor it meets instead.

    Returns how many Resize ops were changed. IsnetError when a fixed size matches no tensor
    beside it: the model then works at its file's input size only.
    """
    from onnx import helper

    graph = model.graph
    constants = constant_values(graph)
    producers, readers = producers_and_readers(graph)
    shapes = _spatial_shapes(model)
    changed = 0
    for node in list(graph.node):
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
            continue
        target = _fixed_target(node.input[3], constants, producers)
        if target is None:
            continue
        partner = _partner(node, target, graph, shapes, readers)
        if partner is None:
            raise IsnetError(f"the Resize '{node.name or node.output[0]}' resizes to a fixed {target[0]}x{target[1]} "
                             "that no tensor beside it has, so the model runs only at its file's input size")
        stem = f"{node.name or node.output[0]}_isnet_sizes"
        leading, spatial, sizes = f"{stem}_nc", f"{stem}_hw", stem
        graph.node.extend([
            helper.make_node("Shape", [node.input[0]], [leading], name=leading, end=2),
            helper.make_node("Shape", [partner], [spatial], name=spatial, start=2, end=4),
            helper.make_node("Concat", [leading, spatial], [sizes], name=sizes, axis=0),
        ])
        node.input[3] = sizes
        changed += 1
    if changed:
        sort_topologically(graph)
    return changed
