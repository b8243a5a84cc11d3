"""Loading ISNet weights: official checkpoints, wrapped or DataParallel ones, and this project's own.

A checkpoint written by :func:`save_checkpoint` carries its architecture (``arch``), so a light
ISNet loads with no extra flags. Checkpoints without one (the official releases) are matched
against every known architecture by key and shape.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
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
    """Build an ISNet in eval mode from a checkpoint path, or from ``"random"`` with ``seed``.

    ``arch`` names a known architecture; for a checkpoint it is read from the file when
    omitted, for ``random`` it defaults to the official ``isnet``.
    """
    if arch is not None and arch not in ARCHS:
        raise IsnetError(f"unknown architecture '{arch}' (choose from {', '.join(ARCHS)})")
    if str(weights) == RANDOM:
        torch.manual_seed(seed)
        model = ISNet(arch or "isnet", deploy=deploy)
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


def _onnx_convolutions(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of every Conv of an ONNX model, in graph (execution) order."""
    import onnx

    from isnet.export.onnx_graph import constant_values

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises its own DecodeError
        raise IsnetError(f"{path}: not a readable ONNX model ({first_line(exc, 160)})") from None
    weights = constant_values(model.graph)
    convolutions = []
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in weights:
            weight = weights[node.input[1]]
            bias = weights.get(node.input[2]) if len(node.input) > 2 else None
            convolutions.append((weight, bias if bias is not None else np.zeros(weight.shape[0], weight.dtype)))
    return convolutions


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
    theirs = _onnx_convolutions(path)
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
                scale, shift = (np.asarray(v, dtype=np.float32) for v in input_affine)
                # W * (scale x + shift) + b = (W scale) x + (b + sum W shift), exact away from the border.
                bias = bias + np.einsum("oikl,i->o", weight, shift)
                weight = weight * scale[None, :, None, None]
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
