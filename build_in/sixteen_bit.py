"""16-bit activations in a QDQ graph (A16W8) and the integer-only form NPUs need.

An NPU computes integers only: a tensor int8 cannot carry faithfully gets 16-bit integers there,
never float. ONNX Runtime's quantizer writes such tensors as uint16/int16 QuantizeLinear /
DequantizeLinear pairs (opset 21); its CPU kernels emulate the integer arithmetic, so the
artifact measures what the NPU will compute, and the tensor names map onto an NPU toolchain's
mixed-precision settings.

Candidates for 16 bits are grouped by the module that computes them (``/stage1d/...`` ->
``stage1d``): on the real ISNet at 1024 the damage int8 does is a property of whole decoder
stages and of the trunk between them, not of single tensors (docs/int8-isnet.md).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

QUANTIZER_SUFFIX = "_QuantizeLinear_Input"  # ORT renames a graph output it quantizes this way
TRUNK = "(graph)"
SIXTEEN_BIT_TYPES = (4, 5)  # onnx.TensorProto.UINT16, INT16  # the group of tensors computed by nodes outside any module


def node_outputs(graph, nodes: Iterable[str]) -> list[str]:
    """The tensors the named nodes compute, in graph order."""
    wanted = set(nodes)
    return [output for node in graph.node if node.name in wanted for output in node.output if output]


def quantized_activations(model) -> list[str]:
    """The activations a QDQ model quantizes (the inputs of its QuantizeLinear nodes that are not
    weights), by their names in the float graph."""
    weights = {initializer.name for initializer in model.graph.initializer}
    found = [node.input[0].removesuffix(QUANTIZER_SUFFIX) for node in model.graph.node
             if node.op_type == "QuantizeLinear" and node.input[0] not in weights]
    return list(dict.fromkeys(found))


def module_of(node_name: str) -> str:
    """The top-level module a node belongs to (``/stage1d/rebnconv1/conv_s1/Conv`` -> ``stage1d``);
    :data:`TRUNK` for nodes outside modules (``/Concat_7``, ``/Resize_3``)."""
    parts = node_name.strip("/").split("/")
    return parts[0] if len(parts) > 1 else TRUNK


def in_module(node_name: str, module_path: str) -> bool:
    """Whether a node named by the PyTorch exporter (``/stage1d/rebnconv1/conv_s1/Conv``) belongs to
    the module ``module_path`` (``stage1d``, ``stage1d.rebnconv1``; globs allowed)."""
    return fnmatch.fnmatchcase(node_name, f"/{module_path.replace('.', '/')}/*")


def module_groups(graph, tensors: Sequence[str]) -> list[tuple[str, ...]]:
    """``tensors`` grouped by the module whose node computes them, in order; the trunk's tensors
    (between modules: concatenations, upsampling) each make a group of their own, since they
    differ most (measured on ISNet: its trunk concatenations alone drift 0.084 in int8, its
    resizes 0.0002)."""
    producer = {output: node.name for node in graph.node for output in node.output}
    return group_by_module(tensors, lambda tensor: producer.get(tensor, ""))


def group_by_module(items: Sequence[str], node_of=lambda item: item) -> list[tuple[str, ...]]:
    """``items`` grouped by the module of their node (``node_of(item)``, default the item itself),
    in order; items outside any module each alone."""
    groups: dict[str, list[str]] = {}
    for item in items:
        module = module_of(node_of(item))
        groups.setdefault(item if module == TRUNK else f"/{module}", []).append(item)
    return [tuple(group) for group in groups.values()]


def named_by_module(names: Sequence[str]) -> bool:
    """Whether most of ``names`` carry module paths (a PyTorch export's ``/stage1d/...``, not
    ``Conv_787``): grouping by module means something there."""
    return bool(names) and 2 * sum(module_of(name) != TRUNK for name in names) >= len(names)


def sixteen_bit_overrides(tensors: Iterable[str], signed: bool) -> dict:
    """``extra_options["TensorQuantOverrides"]`` for ORT's ``quantize_static``: 16 bits for ``tensors``."""
    from onnxruntime.quantization import QuantType

    kind = QuantType.QInt16 if signed else QuantType.QUInt16
    return {tensor: [{"quant_type": kind}] for tensor in tensors}


def sixteen_bit_weight_overrides(weights: Iterable[str], per_channel: bool) -> dict:
    """``TensorQuantOverrides`` entries giving ``weights`` (Conv weight initializers) symmetric int16."""
    from onnxruntime.quantization import QuantType

    entry = {"quant_type": QuantType.QInt16, "symmetric": True, **({"axis": 0} if per_channel else {})}
    return {weight: [dict(entry)] for weight in weights}


def sixteen_bit_weights(model) -> list[str]:
    """The weights a QDQ model stores as 16-bit integers (its DequantizeLinear inputs that are
    int16/uint16 initializers), by their names in the float graph."""
    weights = {initializer.name: initializer for initializer in model.graph.initializer}
    found = [node.input[0] for node in model.graph.node if node.op_type == "DequantizeLinear"
             and node.input[0] in weights and weights[node.input[0]].data_type in SIXTEEN_BIT_TYPES]
    return [name.removesuffix("_quantized") for name in found]


def sixteen_bit_activations(model) -> list[str]:
    """The activations a QDQ model quantizes to 16 bits, by their names in the float graph. More
    than were asked for: the quantizer gives an op that keeps its input's quantization (Resize,
    MaxPool, ...) the same 16 bits at its output."""
    weights = {initializer.name: initializer for initializer in model.graph.initializer}
    found = [node.input[0].removesuffix(QUANTIZER_SUFFIX) for node in model.graph.node
             if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in weights
             and weights[node.input[2]].data_type in SIXTEEN_BIT_TYPES]
    return list(dict.fromkeys(found))


def convs_reading_float(model) -> list[str]:
    """Convs of a QDQ model with an input (data or weights) that is not a DequantizeLinear's
    output: empty when every Conv reads dequantized integers, as an integer-only artifact must."""
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return [node.name for node in model.graph.node
            if node.op_type == "Conv" and any(name not in dequantized for name in node.input[:2])]
