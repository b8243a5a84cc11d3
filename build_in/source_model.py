"""The source of a build: any single-input saliency ONNX, prepared into the fp32 graph every backend compiles.

The files users hold are not all shaped like this project's exports. rembg's U^2-Netp, for one,
takes ``input.1`` at a fixed 1x3x320x320, returns seven maps (the fused one first), and is opset
11. :func:`prepare_source` turns any such file into one graph with:

- the one input, its height and width fixed at the build's size and the batch dynamic where the
  graph allows it (checked by running a batch of two against two single runs);
- the one chosen output (``frontend.output``, a name or an index, default the first); the others
  and every node only they needed are removed, so they cost nothing;
- float32 arithmetic: a file that computes in fp16 (IMG.LY's ISNet) is upcast exactly first
  (:mod:`isnet.build_in.upcast`; ``frontend.upcast``: ``auto`` / ``never``);
- opset 17 at least (per-channel int8 needs 13; one opset for every backend), converted with a note;
- the build's input size, also where the file fixes another one: Resize ops with sizes written in
  as constants then follow the tensors they meet (:mod:`isnet.build_in.input_size`);
- a probability map: an output that is not already a sigmoid and takes values outside [0, 1] on
  the sample images is a logit map, and gets a Sigmoid (``frontend.output_activation``: ``auto``
  detects, ``sigmoid`` / ``none`` decide).

Every step that changes the graph is reported as a note, and the build records them.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from isnet.build_in.input_size import resizes_follow_input
from isnet.build_in.upcast import HALF_TYPES, UpcastReport, computes_in_half, fp32_from_half
from isnet.core import IsnetError, first_line
from isnet.core.defaults import OPSET
from isnet.export.onnx_graph import constant_values, names_read

TARGET_OPSET = OPSET
# |batched - single| above this (relative and absolute) means the graph does not really take a dynamic batch.
_BATCH_TOLERANCE = 1e-4
# A probability map may leave [0, 1] by float rounding only.
_PROBABILITY_SLACK = 1e-5


class OutputActivation(str, enum.Enum):
    """What turns the chosen output into a probability map."""

    AUTO = "auto"        # detect: a final Sigmoid, or values within [0, 1], mean probabilities
    SIGMOID = "sigmoid"  # the output is a logit map: add a Sigmoid
    NONE = "none"        # the output is a probability map already


class Upcast(str, enum.Enum):
    """What a build does with a source file that computes in fp16 / bf16."""

    AUTO = "auto"    # upcast it to fp32, exactly (isnet.build_in.upcast)
    NEVER = "never"  # build it as it is: it keeps computing in half precision


class MapKind(str, enum.Enum):
    """What the prepared graph's output was in the source file (the prepared graph always gives probabilities)."""

    PROBABILITIES = "probabilities"
    LOGITS = "sigmoid added"


@dataclass(frozen=True)
class OnnxSignature:
    """What a build needs to know of an ONNX file before it starts: its input, outputs and opset."""

    input_name: str
    input_dims: tuple[int | None, ...]  # None where the dimension is dynamic
    outputs: tuple[str, ...]
    opset: int
    input_half: bool = False  # the input is fp16 / bf16 (upcast to float32 by the build)

    @property
    def static_hw(self) -> tuple[int, int] | None:
        """The input's height and width when both are fixed in the file."""
        if len(self.input_dims) == 4 and None not in self.input_dims[2:]:
            return int(self.input_dims[2]), int(self.input_dims[3])
        return None

    def output_name(self, output: int | str) -> str:
        """The output named, or at index, ``output``; IsnetError listing the outputs otherwise."""
        listing = ", ".join(f"{i}: '{name}'" for i, name in enumerate(self.outputs))
        if isinstance(output, int) and not isinstance(output, bool):
            if not 0 <= output < len(self.outputs):
                raise IsnetError(f"output index {output} is out of range; the model's outputs are {listing}")
            return self.outputs[output]
        if output not in self.outputs:
            raise IsnetError(f"the model has no output '{output}'; its outputs are {listing}")
        return str(output)


def _load(path: Path, load_external_data: bool = True):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # protobuf raises its own DecodeError, onnx its own errors
        raise IsnetError(f"{path} is not a readable ONNX model ({first_line(exc, 160)})") from None


def _graph_inputs(model) -> list:
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def read_onnx_signature(path: str | os.PathLike) -> OnnxSignature:
    """The input, outputs and opset of an ONNX file (weights are not read); IsnetError when it is
    unreadable or does not take exactly one N x C x H x W input."""
    import onnx

    path = Path(path)
    model = _load(path, load_external_data=False)
    inputs = _graph_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(f"'{i.name}'" for i in inputs) or "none"
        raise IsnetError(f"{path} has {len(inputs)} inputs ({names}); isnet builds models with exactly one "
                         "image input")
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in inputs[0].type.tensor_type.shape.dim)
    if len(dims) != 4:
        raise IsnetError(f"{path}: the input '{inputs[0].name}' has rank {len(dims)}; isnet needs an "
                         "N x 3 x H x W image input")
    if dims[1] not in (None, 3):
        raise IsnetError(f"{path}: the input '{inputs[0].name}' has {dims[1]} channels; isnet feeds 3 (RGB or BGR)")
    if dims[0] not in (None, 1):
        raise IsnetError(f"{path}: the input's batch is fixed at {dims[0]}; isnet builds models that take one "
                         "image (batch 1) or any number (dynamic)")
    element = inputs[0].type.tensor_type.elem_type
    if element != onnx.TensorProto.FLOAT and element not in HALF_TYPES:
        raise IsnetError(f"{path}: the input '{inputs[0].name}' is {onnx.TensorProto.DataType.Name(element).lower()};"
                         " isnet builds from models that take float images (float32, or fp16 / bf16)")
    if not model.graph.output:
        raise IsnetError(f"{path} has no outputs")
    return OnnxSignature(inputs[0].name, dims, tuple(o.name for o in model.graph.output), _default_opset(model),
                         input_half=element in HALF_TYPES)


@dataclass
class PreparedSource:
    """What :func:`prepare_source` made, and the notes that say how."""

    path: Path
    input_name: str
    output_name: str
    dynamic_batch: bool
    activation: MapKind
    activation_reason: str
    opset: tuple[int, int]           # (in the source file, in the prepared graph)
    notes: list[str] = field(default_factory=list)
    upcast: UpcastReport | None = None  # what the fp16 -> fp32 upcast changed, when the file computed in half


def _keep_only(model, output_name: str) -> int:
    """Drop every graph output but ``output_name`` and the nodes and weights only the others needed."""
    graph = model.graph
    dropped = len(graph.output) - 1
    kept = [o for o in graph.output if o.name == output_name]
    del graph.output[:]
    graph.output.extend(kept)
    producers = {out: node for node in graph.node for out in node.output}
    needed, stack = set(), [output_name]
    while stack:
        node = producers.get(stack.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(names_read(node))  # subgraphs (If/Loop bodies) read outer values by name too
    nodes = [node for node in graph.node if id(node) in needed]
    del graph.node[:]
    graph.node.extend(nodes)
    used = set().union(*(names_read(node) for node in nodes)) | {output_name}
    weights = {init.name for init in graph.initializer}
    initializers = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    # Files of IR version < 4 list their weights as graph inputs too: a dropped weight goes there as well.
    inputs = [i for i in graph.input if i.name not in weights or i.name in used]
    del graph.input[:]
    graph.input.extend(inputs)
    return dropped


def _set_input_dims(model, input_name: str, dims: Sequence[int | str]) -> None:
    graph_input = next(i for i in model.graph.input if i.name == input_name)
    shape = graph_input.type.tensor_type.shape
    for dim, value in zip(shape.dim, dims):
        if isinstance(value, str):
            dim.Clear()
            dim.dim_param = value
        else:
            dim.Clear()
            dim.dim_value = int(value)
    # Shapes recorded for the old input size would contradict the new one; inference redoes them.
    del model.graph.value_info[:]
    for output in model.graph.output:
        for index, dim in enumerate(output.type.tensor_type.shape.dim):
            dim.Clear()
            dim.dim_param = f"{output.name}_dim{index}"


def _simplify(model, notes: list[str]):
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim fails in many ways on unusual graphs; the model still runs
        notes.append(f"onnxsim could not simplify the graph ({first_line(exc, 120)}); kept as is")
        return model
    if not ok:
        notes.append("onnxsim's check of the simplified graph failed; kept the graph unsimplified")
        return model
    return simplified


def _drop_empty_resize_inputs(model) -> int:
    """Leave out Resize's ``roi`` / ``scales`` where they are empty constants; returns how many.

    Opset 11 made both inputs compulsory, so exporters of that time pass empty tensors; from opset
    13 they are optional. Left as empty tensors, a pass that wraps them (ONNX Runtime's fp16
    converter puts a Cast in front) hides that they are empty, and the model no longer loads
    ("Either sizes or scales must be provided").
    """
    empty = {name for name, value in constant_values(model.graph).items() if value.size == 0}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        for index in (1, 2):  # roi, scales
            if index < len(node.input) and node.input[index] in empty:
                node.input[index] = ""
                changed += 1
    if changed:
        _keep_only(model, model.graph.output[0].name)  # drops the constants nobody reads now
    return changed


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing batch-of-two probe is expected on some graphs: no log
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise IsnetError(f"ONNX Runtime cannot run the prepared source model ({first_line(exc)})") from None


def _run(session, batch: np.ndarray) -> np.ndarray:
    return np.asarray(session.run(None, {session.get_inputs()[0].name: batch})[0], dtype=np.float32)


def looks_like_logits(model, output_name: str, values: np.ndarray) -> tuple[bool, str]:
    """Whether ``output_name`` of ``model`` (an onnx ModelProto) is a logit map, judged from its last
    node and from ``values`` it produced on sample images; and the reason, for the record."""
    producer = next((n for n in model.graph.node if output_name in n.output), None)
    if producer is not None and producer.op_type == "Sigmoid":
        return False, "the output is computed by a Sigmoid"
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return False, "no finite values on the sample images"
    low, high = float(finite.min()), float(finite.max())
    if low < -_PROBABILITY_SLACK or high > 1 + _PROBABILITY_SLACK:
        return True, (f"values from {low:.3g} to {high:.3g} on the sample images: a logit map "
                      "(set frontend.output_activation: none if it is not)")
    return False, f"values within [0, 1] on the sample images ({low:.3g} to {high:.3g})"


def _unused_name(model, stem: str) -> str:
    taken = {name for node in model.graph.node for name in (*node.input, *node.output)}
    taken |= {i.name for i in model.graph.input} | {init.name for init in model.graph.initializer}
    name, index = stem, 1
    while name in taken:
        name, index = f"{stem}_{index}", index + 1
    return name


def _append(model, op_type: str, output_name: str, extra_inputs: Sequence = ()) -> str:
    """Add ``op_type`` after the graph's output (``extra_inputs``: (name stem, array) constants); return the new output."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inputs = [output_name]
    for stem, array in extra_inputs:
        name = _unused_name(model, stem)
        graph.initializer.append(numpy_helper.from_array(array, name))
        inputs.append(name)
    new_name = _unused_name(model, f"{output_name}_{op_type.lower()}")
    graph.node.append(helper.make_node(op_type, inputs, [new_name], name=_unused_name(model, f"isnet_{op_type}")))
    graph.output[0].name = new_name
    graph.output[0].type.tensor_type.ClearField("shape")
    return new_name


def prepare_source(source: str | os.PathLike, target: str | os.PathLike, input_hw: tuple[int, int],
                   samples: Sequence[np.ndarray], output: int | str = 0,
                   activation: OutputActivation = OutputActivation.AUTO,
                   upcast: Upcast = Upcast.AUTO) -> PreparedSource:
    """Write the fp32 graph every backend compiles from ``source`` to ``target`` (see the module docstring).

    ``samples`` are pre-processed CHW inputs at ``input_hw`` (at least two): the activation and the
    dynamic batch are judged on them. Raises IsnetError, one line, for a model it cannot use.
    """
    import onnx
    from onnx import version_converter

    source, target = Path(source), Path(target)
    signature = read_onnx_signature(source)
    output_name = signature.output_name(output)
    model = _load(source)
    notes: list[str] = []

    upcast_report = None
    if computes_in_half(model):
        if upcast is Upcast.AUTO:
            upcast_report = fp32_from_half(model)
            notes.append(upcast_report.describe())
        else:
            notes.append("the file computes in fp16 and frontend.upcast is never: built as it is, it keeps "
                         "computing in half precision whatever backend.dtype says")
    dropped = _keep_only(model, output_name)
    if dropped:
        notes.append(f"kept output '{output_name}' ({signature.outputs.index(output_name)} of "
                     f"{len(signature.outputs)}); the other {dropped} and the nodes only they needed are removed")
    opset = _default_opset(model)
    if opset < TARGET_OPSET:
        try:
            model = version_converter.convert_version(model, TARGET_OPSET)
        except Exception as exc:  # the converter raises RuntimeError / ConvertError on unsupported ops
            raise IsnetError(f"{source}: cannot convert opset {opset} to {TARGET_OPSET} ({first_line(exc, 160)})") \
                from None
        notes.append(f"converted opset {opset} to {TARGET_OPSET}")
    height, width = input_hw
    if signature.static_hw not in (None, (height, width)):
        fixed = f"{signature.static_hw[0]}x{signature.static_hw[1]}"
        try:
            changed = resizes_follow_input(model)
        except IsnetError as exc:
            raise IsnetError(f"{source}: the model's input is fixed at {fixed}, and {exc}; build it at {fixed}") \
                from None
        notes.append(f"the file's input is fixed at {fixed}; built at {height}x{width}"
                     + (f", with its {changed} Resize ops of fixed output size made to follow the tensors they "
                        "meet" if changed else ""))
    _set_input_dims(model, signature.input_name, ["batch", 3, height, width])
    model = _simplify(model, notes)
    if _drop_empty_resize_inputs(model):
        notes.append("left out the empty roi/scales inputs of Resize (optional since opset 13)")

    batch = np.stack([np.asarray(s, dtype=np.float32) for s in samples[:2]])
    if batch.shape[1:] != (3, height, width) or batch.shape[0] < 2:
        raise ValueError(f"prepare_source needs two samples of shape (3, {height}, {width})")  # a caller's bug
    session = _session(model)
    try:
        single = np.concatenate([_run(session, batch[i:i + 1]) for i in range(2)])
    except Exception as exc:  # noqa: BLE001 -- ORT's own errors for a graph it cannot run
        raise IsnetError(f"{source}: ONNX Runtime cannot run the model on a {height}x{width} image "
                         f"({first_line(exc)})") from None
    final_output = model.graph.output[0].name
    if single.ndim == 3:
        # N x H x W maps (some exporters squeeze the channel): isnet's maps are N x 1 x H x W.
        final_output = _append(model, "Unsqueeze", final_output, [("isnet_axis1", np.array([1], np.int64))])
        single = single[:, None]
        notes.append("added an Unsqueeze: the output is N x H x W, isnet's maps are N x 1 x H x W")
    if single.ndim != 4 or single.shape[1] != 1:
        raise IsnetError(f"{source}: the output '{output_name}' is {' x '.join(map(str, single.shape[1:]))} per "
                         f"image for a {height}x{width} input; isnet needs one map per image, 1 x H x W (choose "
                         "another output with frontend.output)")
    if single.shape[2:] != (height, width):
        raise IsnetError(f"{source}: the output '{output_name}' is {single.shape[2]}x{single.shape[3]} for a "
                         f"{height}x{width} input; isnet needs the map at the input size")
    try:
        batched = _run(_session(model) if final_output != output_name else session, batch)
        dynamic = batched.shape == single.shape and bool(np.allclose(batched, single, rtol=_BATCH_TOLERANCE,
                                                                    atol=_BATCH_TOLERANCE, equal_nan=True))
    except Exception:  # noqa: BLE001 -- a graph that fixes the batch fails here in many ways
        dynamic = False
    if not dynamic:
        notes.append("the graph does not compute a batch of two like two single images (its batch is baked "
                     "in); the batch is fixed at 1 and larger batches run one image per call")
        _set_input_dims(model, signature.input_name, [1, 3, height, width])
        model = _simplify(model, notes)

    if activation is OutputActivation.SIGMOID:
        kind, reason = MapKind.LOGITS, "frontend.output_activation: sigmoid"
    elif activation is OutputActivation.NONE:
        kind, reason = MapKind.PROBABILITIES, "frontend.output_activation: none"
    else:
        logits, reason = looks_like_logits(model, final_output, single)
        kind = MapKind.LOGITS if logits else MapKind.PROBABILITIES
    if kind is MapKind.LOGITS:
        final_output = _append(model, "Sigmoid", final_output)
        notes.append(f"added a Sigmoid after the output ({reason})")
    onnx.save(model, str(target))
    return PreparedSource(target, signature.input_name, final_output, dynamic, kind, reason,
                          (signature.opset, _default_opset(model)), notes, upcast_report)
