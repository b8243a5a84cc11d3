"""Loading ISNet weights: official checkpoints, wrapped or DataParallel ones, and this project's own.

A checkpoint written by :func:`save_checkpoint` carries its architecture (``arch``), so a light
ISNet loads with no extra flags. Checkpoints without one (the official releases) are matched
against every known architecture by key and shape.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from isnet.core import IsnetError, atomic_path, first_line
from isnet.export.model import ARCHS, ISNet, ISNetGTEncoder, IsnetArch

RANDOM = "random"


def _unwrap(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], IsnetArch | None]:
    arch = None
    if isinstance(obj, Mapping) and "arch" in obj and isinstance(obj["arch"], Mapping):
        arch = IsnetArch.from_dict(dict(obj["arch"]))
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise IsnetError(f"{path}: not an ISNet checkpoint (expected a state dict of tensors, "
                         "optionally under 'state_dict' or 'model')")
    state = {}
    for key, value in obj.items():
        # DataParallel / DistributedDataParallel save every key under `module.`.
        state[key[len("module."):] if key.startswith("module.") else key] = value
    return state, arch


def _mismatch(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between a checkpoint and a model's state dict."""
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape conflicts", shapes)):
        if items:
            shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
            problems.append(f"{label}: {shown}")
    return problems


def load_checkpoint_file(path: str | os.PathLike, what: str = "weights file") -> object:
    """``torch.load`` a checkpoint safely (``weights_only``); IsnetError saying why in a few words if it fails."""
    path = Path(path)
    if not path.is_file():
        raise IsnetError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a non-checkpoint (IndexError, too)
        raise IsnetError(f"{path}: not a readable PyTorch checkpoint ({_load_failure(path, exc)})") from None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], IsnetArch | None]:
    """Read a checkpoint file; return its state dict (keys normalised) and stored arch, if any."""
    path = Path(path)
    if not path.is_file():
        raise IsnetError(f"weights file not found: {path} (pass a .pth checkpoint or 'random')")
    return _unwrap(load_checkpoint_file(path), path)


def _load_failure(path: Path, exc: Exception) -> str:
    """Why ``torch.load`` refused a file, in a few words (its own message is a paragraph of advice)."""
    with path.open("rb") as stream:
        head = stream.read(4)
    # torch.save writes a zip archive; very old checkpoints are a bare pickle (protocol 2+: 0x80).
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        return "a truncated or damaged zip archive"
    if not head.startswith((b"PK", b"\x80")):
        return "neither a zip archive nor a pickle"
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0].strip()
        return f"it holds objects that safe loading (weights_only) refuses: {reason}"
    return first_line(exc, limit=400)


def read_checkpoint_arch(path: str | os.PathLike) -> IsnetArch:
    """The architecture a checkpoint holds: its recorded ``arch`` or the known one its shapes match."""
    state, arch = read_checkpoint(path)
    return arch or _match_arch(state, Path(path))


def _match_arch(state: Mapping[str, torch.Tensor], path: Path) -> IsnetArch:
    for arch in ARCHS.values():
        if not _mismatch(state, ISNet(arch).state_dict()):
            return arch
    problems = _mismatch(state, ISNet("isnet").state_dict())
    raise IsnetError(f"{path}: weights do not fit ISNet ({'; '.join(problems)})")


def load_isnet_weights(model: ISNet, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` strictly, tolerating only absent ``num_batches_tracked``.

    Raises :class:`IsnetError` listing missing/unexpected keys and shape conflicts.
    """
    expected = model.state_dict()
    problems = _mismatch(state, expected)
    if problems:
        raise IsnetError(f"{source}: weights do not fit ISNet '{model.arch.name}' ({'; '.join(problems)})")
    full = dict(state)
    for key, value in expected.items():
        # Older checkpoints were saved before BatchNorm tracked batch counts.
        full.setdefault(key, value)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in full.items()})


def build_isnet(weights: str | os.PathLike, seed: int = 0, arch: str | None = None,
                deploy: bool = True) -> ISNet:
    """Build an ISNet in eval mode from a checkpoint path, an ISNet ONNX file (:func:`isnet_from_onnx`),
    or ``"random"`` with ``seed``.

    ``arch`` names a known architecture; for a checkpoint or ONNX file it is read from the file when
    omitted, for ``random`` it defaults to the official ``isnet``.
    """
    if arch is not None and arch not in ARCHS:
        raise IsnetError(f"unknown architecture '{arch}' (choose from {', '.join(ARCHS)})")
    if str(weights) == RANDOM:
        torch.manual_seed(seed)
        model = ISNet(arch or "isnet", deploy=deploy)
    elif str(weights).lower().endswith(".onnx"):
        model, _ = isnet_from_onnx(weights, arch=arch, deploy=deploy)
    else:
        state, stored = read_checkpoint(weights)
        chosen = ARCHS[arch] if arch else stored or _match_arch(state, Path(weights))
        model = ISNet(chosen, deploy=deploy)
        load_isnet_weights(model, state, source=str(weights))
    return model.eval()


def load_gt_encoder(path: str | os.PathLike, arch: str | None = None) -> ISNetGTEncoder:
    """Load a GT encoder written by ``isnet train-gt-encoder`` (``gt-encoder.pth`` or its ``last.pth``).

    ``arch``, when given, is the ISNet architecture it must match. Returns the encoder in eval mode.
    """
    path = Path(path)
    state, stored = read_checkpoint(path)
    if stored is None:
        raise IsnetError(f"{path}: not a GT encoder checkpoint (no architecture recorded); "
                         "train one with `isnet train-gt-encoder`")
    if arch is not None and stored.name != arch:
        raise IsnetError(f"{path}: GT encoder of '{stored.name}' cannot supervise ISNet '{arch}'; "
                         f"train one with `isnet train-gt-encoder --arch {arch}`")
    encoder = ISNetGTEncoder(stored)
    expected = encoder.state_dict()
    if set(state) - set(expected) or {k for k in expected if not k.endswith("num_batches_tracked")} - set(state):
        raise IsnetError(f"{path}: not a GT encoder checkpoint (its keys are those of another network); "
                         "train one with `isnet train-gt-encoder`")
    try:
        encoder.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                                strict=False)
    except RuntimeError as exc:
        raise IsnetError(f"{path}: GT encoder weights do not fit ({first_line(exc)})") from None
    return encoder.eval()


@dataclass(frozen=True)
class OnnxConvolution:
    """One convolution of an ONNX file: its node name and its float32 weight and bias."""

    name: str
    weight: np.ndarray
    bias: np.ndarray


def _load_onnx(path: Path):
    import onnx

    if not path.is_file():
        raise IsnetError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises its own DecodeError
        raise IsnetError(f"{path}: not a readable ONNX model ({first_line(exc, 160)})") from None


def _integer_convolution(node, constants: dict, producers: dict, readers: dict
                         ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Float weight and bias of a ``ConvInteger`` written by ONNX Runtime's dynamic quantization, or None.

    That pattern is ``ConvInteger(x_q, w_q, x_zero, w_zero) -> Cast -> Mul(input scale x weight scale)
    -> Add(bias)``: the weight is (w_q - w_zero) x weight scale, the bias the constant added last.
    """
    def only_reader(name: str, op_type: str):
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    cast = only_reader(node.output[0], "Cast")
    rescale = cast and only_reader(cast.output[0], "Mul")
    scales = rescale and producers.get(next(i for i in rescale.input if i != cast.output[0]))
    if node.input[1] not in constants or not scales or scales.op_type != "Mul":
        return None
    weight_scale = next((constants[i] for i in scales.input if i in constants), None)
    if weight_scale is None:
        return None
    quantized = constants[node.input[1]].astype(np.float32)
    zero = constants[node.input[3]].astype(np.float32) if len(node.input) > 3 and node.input[3] in constants else 0.0
    weight = (quantized - zero) * np.asarray(weight_scale, np.float32).reshape(-1, *([1] * (quantized.ndim - 1)))
    add = only_reader(rescale.output[0], "Add")
    bias = None
    for name in add.input if add else ():
        source = producers.get(name)
        if source is not None and source.op_type == "Reshape":
            name = source.input[0]  # the bias, reshaped to broadcast over N x C x H x W
        if name in constants:
            bias = constants[name]
    return weight, bias


def onnx_convolutions(path: str | os.PathLike) -> list[OnnxConvolution]:
    """Every convolution of an ONNX file whose weights are constants, in graph order, as float32.

    Reads float convolutions (fp32, or fp16 / bf16 weights, made float32 exactly) and the
    ``ConvInteger`` of dynamically quantized files (IMG.LY's 8-bit ISNet), whose weights are
    dequantized (:func:`_integer_convolution`).
    """
    from isnet.export.onnx_graph import constant_values, producers_and_readers

    path = Path(path)
    graph = _load_onnx(path).graph
    constants = constant_values(graph)
    producers, readers = producers_and_readers(graph)
    convolutions = []
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] in constants:
            weight = constants[node.input[1]].astype(np.float32)
            bias = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        elif node.op_type == "ConvInteger" and (found := _integer_convolution(node, constants, producers, readers)):
            weight, bias = found
        else:
            continue
        bias = np.zeros(weight.shape[0], np.float32) if bias is None else np.array(bias, np.float32).reshape(-1)
        convolutions.append(OnnxConvolution(node.name or node.output[0], weight, bias))
    return convolutions


def _module_name(node_name: str) -> str:
    """The PyTorch module a traced node belongs to: ``/stage1/rebnconvin/conv_s1/Conv`` -> ``stage1.rebnconvin.conv_s1``."""
    return ".".join(node_name.strip("/").split("/")[:-1])


# Side heads a deploy-mode export (this project's own, sigmoid(d1) only) leaves out of the graph.
_DEPLOY_ONLY_MISSING = frozenset(f"side{i}" for i in range(2, 7))


def read_isnet_onnx(path: Path, arch: str | None = None) -> tuple[IsnetArch, dict[str, OnnxConvolution], list[str]]:
    """The architecture an ISNet ONNX file holds, its convolutions by module name, and the side heads it
    leaves out; IsnetError when its convolutions are not an ISNet's."""
    convolutions = onnx_convolutions(path)
    if not convolutions:
        raise IsnetError(f"{path}: no convolutions with constant weights; not an ISNet ONNX file")
    candidates = [ARCHS[arch]] if arch else list(ARCHS.values())
    problems = []
    for candidate in candidates:
        expected = {name: tuple(module.weight.shape) for name, module in ISNet(candidate).named_modules()
                    if isinstance(module, torch.nn.Conv2d)}
        by_name = {_module_name(c.name): c for c in convolutions}
        if set(by_name) - set(expected) or len(by_name) != len(convolutions):
            # Names that are not module paths (another exporter): pair in order, when the shapes agree.
            order = list(expected)
            if [tuple(c.weight.shape) for c in convolutions] == [expected[n] for n in order[:len(convolutions)]]:
                by_name = dict(zip(order, convolutions))
        wrong = [f"{n}: file {tuple(c.weight.shape)} vs model {expected[n]}" for n, c in by_name.items()
                 if n in expected and tuple(c.weight.shape) != expected[n]]
        missing = [n for n in expected if n not in by_name]
        unknown = [n for n in by_name if n not in expected]
        if not wrong and not unknown and set(missing) <= _DEPLOY_ONLY_MISSING:
            return candidate, by_name, missing
        problems.append(f"'{candidate.name}': {len(missing)} of its {len(expected)} convolutions missing"
                        + (f", shapes differ ({'; '.join(wrong[:2])})" if wrong else "")
                        + (f", {len(unknown)} unknown" if unknown else ""))
    raise IsnetError(f"{path}: not an ISNet ONNX file ({len(convolutions)} convolutions; "
                     f"{'; '.join(problems)})")


def _absorb_input_affine(weight: np.ndarray, bias: np.ndarray, affine: tuple[np.ndarray, np.ndarray]
                         ) -> tuple[np.ndarray, np.ndarray]:
    """A first convolution that takes ``scale * x + shift`` (per input channel) instead of ``x``."""
    scale, shift = (np.asarray(v, dtype=np.float32) for v in affine)
    # W * (scale x + shift) + b = (W scale) x + (b + sum W shift), exact away from the border.
    return weight * scale[None, :, None, None], bias + np.einsum("oikl,i->o", weight, shift)


def load_folded_convolutions(model: ISNet, convolutions: Mapping[str, OnnxConvolution],
                             input_affine: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Copy convolutions whose BatchNorm an exporter folded in into ``model`` exactly: each conv gets the
    folded weight and bias, and the BatchNorm after it becomes an exact identity in eval mode (mean 0,
    variance 1 - eps, scale 1, shift 0), so ``model`` computes what the file computes. ``input_affine``
    (scale, shift) maps ``model``'s input to the file's when their pre-processing differs: ``conv_in``
    absorbs it."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, convolution in convolutions.items():
            conv = modules[name]
            weight, bias = convolution.weight, convolution.bias
            if name == "conv_in" and input_affine is not None:
                weight, bias = _absorb_input_affine(weight, bias, input_affine)
            conv.weight.copy_(torch.as_tensor(weight))
            conv.bias.copy_(torch.as_tensor(bias))
            bn = modules.get(name.rsplit(".", 1)[0] + ".bn_s1") if name.endswith("conv_s1") else None
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.reset_parameters()
                # (x - 0) / sqrt((1 - eps) + eps) * 1 + 0 is x to the last bit in float32.
                bn.running_var.fill_(1.0 - bn.eps)


def isnet_from_onnx(path: str | os.PathLike, arch: str | None = None, deploy: bool = True
                    ) -> tuple[ISNet, list[str]]:
    """An ISNet holding the weights of an ISNet ONNX file (rembg's ``isnet-general-use.onnx``, IMG.LY's
    fp16 and 8-bit files, this project's own exports), in eval mode, and the side heads the file left
    out (kept at their initial values).

    Convolutions are matched to modules by the node names tracing exporters write
    (``/stage1/rebnconvin/conv_s1/Conv``), else in order when every shape agrees; BatchNorm, folded
    into the convolutions by the exporter, is loaded as such (:func:`load_folded_convolutions`).
    The architecture (``isnet``, ``isnet-lite``) is read from the shapes unless ``arch`` names it.
    """
    found, convolutions, missing = read_isnet_onnx(Path(path), arch)
    model = ISNet(found, deploy=deploy)
    load_folded_convolutions(model, convolutions)
    return model.eval(), missing


def _execution_order(model: torch.nn.Module, images: torch.Tensor) -> list[str]:
    """Names of the model's Conv2d modules in the order a forward pass runs them."""
    names = {module: name for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)}
    order: list[str] = []
    handles = [module.register_forward_hook(lambda m, _i, _o: order.append(names[m])) for module in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.side_logits(images[:1]) if hasattr(model, "side_logits") else model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return list(dict.fromkeys(order))


def _align(ours: list[tuple], theirs: list[tuple]) -> list[tuple[int, int]]:
    """The longest order-preserving pairing of equal shapes (an LCS over the two shape sequences)."""
    rows, cols = len(ours), len(theirs)
    table = np.zeros((rows + 1, cols + 1), dtype=np.int32)
    for i in range(rows - 1, -1, -1):
        for j in range(cols - 1, -1, -1):
            table[i, j] = table[i + 1, j + 1] + 1 if ours[i] == theirs[j] else max(table[i + 1, j], table[i, j + 1])
    pairs, i, j = [], 0, 0
    while i < rows and j < cols:
        if ours[i] == theirs[j]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif table[i + 1, j] >= table[i, j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def init_from_onnx(model: torch.nn.Module, path: str | os.PathLike, images: torch.Tensor,
                   input_affine: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[int, int]:
    """Start ``model`` from the convolutions of another network's ONNX file, where shapes match.

    Exporters fold each BatchNorm into the convolution before it, so a convolution of the file is
    one of ``model``'s conv -> BN pairs. Convolutions are paired in execution order, by shape
    (the longest order-preserving match). The BN after a copied convolution is set from the
    statistics of its output on ``images`` (N x 3 x H x W, ``model``'s own pre-processing), so
    that conv -> BN reproduces the file's convolution in training and in eval mode alike. An
    unmatched convolution that keeps its channel count starts as the identity (its BN too), so
    the copied layers around it still see what they were trained on. ``input_affine`` =
    (scale, shift) per input channel maps ``model``'s input to the file's (its pre-processing
    differs): the first copied convolution absorbs it. Returns (convolutions copied, convolutions
    in ``model``).
    """
    path = Path(path)
    theirs = [(c.weight, c.bias) for c in onnx_convolutions(path)]
    order = _execution_order(model, images)
    modules = dict(model.named_modules())
    pairs = _align([tuple(modules[name].weight.shape) for name in order], [tuple(w.shape) for w, _ in theirs])
    matched = {mine for mine, _ in pairs}
    was_training = model.training
    model.eval()
    batch_norms = {}

    def identity_batch_norm(conv_name: str) -> None:
        bn = modules.get(conv_name.rsplit(".", 1)[0] + ".bn_s1") if conv_name.endswith("conv_s1") else None
        if isinstance(bn, torch.nn.BatchNorm2d):
            # Identity first, so that the statistics below see the file's own convolution.
            bn.reset_parameters()
            bn.running_var.fill_(1.0 - bn.eps)
            batch_norms[conv_name] = bn

    with torch.no_grad():
        for index, (mine, other) in enumerate(pairs):
            conv = modules[order[mine]]
            weight, bias = (np.array(a, dtype=np.float32) for a in theirs[other])
            if index == 0 and input_affine is not None and weight.shape[1] == len(input_affine[0]):
                weight, bias = _absorb_input_affine(weight, bias, input_affine)
            conv.weight.copy_(torch.from_numpy(weight))
            if conv.bias is not None:
                conv.bias.copy_(torch.from_numpy(bias))
            identity_batch_norm(order[mine])
        for index, name in enumerate(order):
            conv = modules[name]
            out_ch, in_ch, kh, kw = conv.weight.shape
            if index not in matched and out_ch == in_ch and kh % 2 and kw % 2 and conv.groups == 1:
                torch.nn.init.dirac_(conv.weight)
                if conv.bias is not None:
                    conv.bias.zero_()
                identity_batch_norm(name)
        outputs: dict[str, list[torch.Tensor]] = {name: [] for name in batch_norms}
        handles = [modules[name].register_forward_hook(lambda m, _i, out, name=name: outputs[name].append(out))
                   for name in batch_norms]
        try:
            model.side_logits(images) if hasattr(model, "side_logits") else model(images)
        finally:
            for handle in handles:
                handle.remove()
        for name, bn in batch_norms.items():
            values = torch.cat(outputs[name]).transpose(0, 1).reshape(bn.num_features, -1)
            mean, var = values.mean(dim=1), values.var(dim=1, unbiased=False)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.weight.copy_(torch.sqrt(var + bn.eps))
            bn.bias.copy_(mean)
    model.train(was_training)
    return len(pairs), len(order)


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, half: bool = False, **extra) -> Path:
    """Write ``{'arch', 'state_dict', **extra}`` atomically; ``half`` stores float tensors as fp16."""
    path = Path(path)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().clone()
             for k, v in model.state_dict().items()}
    payload = {"arch": model.arch.to_dict(), "state_dict": state, **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path
