"""ONNX files that compute in fp16 (or bf16), turned into the fp32 graph they were made from.

Model files are often shipped at half precision to halve the download: IMG.LY's ISNet keeps
every weight in fp16, casts the input to fp16, and casts to fp32 and back around each Resize
(which CPUs run in fp32 only). Built as they are, such files keep computing in fp16 whatever
precision the build says. :func:`fp32_from_half` rewrites one in place:

- every fp16 / bf16 weight (initializers, Constant nodes, ``ConstantOfShape`` values) becomes
  float32 -- exactly, since every half-precision number is a float32 number;
- every ``Cast`` or ``dtype`` attribute to a half type becomes float32, and the casts that then
  turn float32 into float32 are removed;
- half-precision graph inputs, outputs and recorded value types become float32.

The result computes in fp32 with the file's own weights; fp16 / bf16 / int8 builds are then made
from it like from any fp32 model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from isnet.export.onnx_graph import subgraphs

# ONNX's element types (TensorProto.DataType, fixed by the standard): FLOAT, FLOAT16, BFLOAT16.
FLOAT = 1
HALF_TYPES = frozenset({10, 16})


@dataclass(frozen=True)
class UpcastReport:
    """What :func:`fp32_from_half` changed."""

    weights: int        # half-precision tensors (initializers, constants) made float32
    casts_removed: int  # casts that became float32 -> float32 and were dropped
    retyped: int        # graph inputs, outputs and value types, and dtype attributes, made float32

    @property
    def changed(self) -> bool:
        return bool(self.weights or self.casts_removed or self.retyped)

    def describe(self) -> str:
        """One line for the build's notes."""
        return (f"upcast from fp16 to fp32: {self.weights} half-precision weights made float32 (exactly), "
                f"{self.casts_removed} casts removed, {self.retyped} types and attributes retyped")


def _graphs(model) -> Iterator:
    yield model.graph
    for node in model.graph.node:
        yield from subgraphs(node)


def _tensor_types(graph) -> Iterator:
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type"):
            yield value.type.tensor_type


def _float32(tensor):
    from onnx import numpy_helper

    array = numpy_helper.to_array(tensor).astype(np.float32)
    return numpy_helper.from_array(array, tensor.name)


def computes_in_half(model) -> bool:
    """Whether ``model`` holds any fp16 / bf16 tensor, type, cast or dtype attribute."""
    for graph in _graphs(model):
        if any(init.data_type in HALF_TYPES for init in graph.initializer):
            return True
        if any(t.elem_type in HALF_TYPES for t in _tensor_types(graph)):
            return True
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t") and attribute.t.data_type in HALF_TYPES:
                    return True
                if attribute.name in ("to", "dtype") and attribute.i in HALF_TYPES:
                    return True
    return False


def _retype(graph) -> tuple[int, int]:
    """Make every half-precision weight, type and attribute of ``graph`` float32: (weights, retyped)."""
    weights = retyped = 0
    for index, init in enumerate(graph.initializer):
        if init.data_type in HALF_TYPES:
            graph.initializer[index].CopyFrom(_float32(init))
            weights += 1
    for tensor_type in _tensor_types(graph):
        if tensor_type.elem_type in HALF_TYPES:
            tensor_type.elem_type = FLOAT
            retyped += 1
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t") and attribute.t.data_type in HALF_TYPES:
                attribute.t.CopyFrom(_float32(attribute.t))
                weights += 1
            elif attribute.name in ("to", "dtype") and attribute.type == attribute.INT and attribute.i in HALF_TYPES:
                attribute.i = FLOAT
                retyped += 1
    return weights, retyped


def _rename_reads(graph, old: str, new: str) -> None:
    """Every read of ``old`` in ``graph`` (and the subgraphs of its nodes) reads ``new`` instead."""
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new
        for inner in subgraphs(node):
            _rename_reads(inner, old, new)


def _drop_float_casts(model) -> int:
    """Remove the top-level casts to float32 whose input is float32 already; returns how many."""
    from onnx import shape_inference

    graph = model.graph
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False).graph
    except shape_inference.InferenceError:
        return 0  # the casts stay: they are float32 -> float32 no-ops, and ONNX Runtime drops them itself
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.input, *inferred.output, *inferred.value_info)
             if v.type.HasField("tensor_type")}
    types.update({init.name: init.data_type for init in graph.initializer})
    graph_inputs = {i.name for i in graph.input} | {init.name for init in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    removed = 0
    for node in list(graph.node):
        if node.op_type != "Cast" or types.get(node.input[0]) != FLOAT:
            continue
        if next(a.i for a in node.attribute if a.name == "to") != FLOAT:
            continue
        source, target = node.input[0], node.output[0]
        if target not in graph_outputs:
            _rename_reads(graph, target, source)
        elif source not in graph_inputs and source not in graph_outputs:
            # The cast names a graph output: its producer takes that name instead.
            for other in graph.node:
                other.output[:] = [target if name == source else name for name in other.output]
            _rename_reads(graph, source, target)
        else:
            continue  # a graph input passed straight to an output: keep the (no-op) cast
        graph.node.remove(node)
        removed += 1
    return removed


def fp32_from_half(model) -> UpcastReport:
    """Rewrite an ONNX ``ModelProto`` that computes in fp16 / bf16 to compute in fp32 (see the module
    docstring); a model without half-precision parts is left as it is."""
    weights = retyped = 0
    for graph in _graphs(model):
        w, r = _retype(graph)
        weights, retyped = weights + w, retyped + r
    casts = _drop_float_casts(model) if weights or retyped else 0
    return UpcastReport(weights, casts, retyped)
