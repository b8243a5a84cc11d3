"""Export a deploy-mode ISNet to ONNX, TorchScript and ExportedProgram, and verify each file.

Every file is checked against the PyTorch model on a random input at the export size before it
is moved into place: a difference over :data:`MAX_ABS_DIFF` is an error and nothing is written.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from isnet.core import IsnetError, atomic_path, first_line
from isnet.core.defaults import OPSET
from isnet.core.logs import quiet_loggers
from isnet.export.model import ISNet, count_macs
from isnet.export.weights import build_isnet

FORMATS = ("onnx", "torchscript", "exported-program")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported-program": ".pt2"}
INPUT_NAME = "input"
OUTPUT_NAME = "output"
# fp32 graphs of the same network differ only by operator order and fused kernels; 1e-4 on a
# sigmoid map in [0, 1] is far below one 8-bit grey level (3.9e-3) yet catches any wrong op.
MAX_ABS_DIFF = 1e-4
# torch.export specialises a dimension that is 1, and the deepest ISNet stage is 1 pixel for
# sides up to 64 (six halvings with ceil); a dynamic ExportedProgram therefore guards sides > 64.
PROGRAM_MIN_SIDE = 65


@dataclass(frozen=True)
class ExportRequest:
    """What to export: weights (a path or ``"random"``), size, formats and ONNX options."""

    weights: str
    size: tuple[int, int]
    output_dir: Path
    name: str
    formats: tuple[str, ...] = ("onnx", "torchscript")
    seed: int = 0
    arch: str | None = None
    opset: int = OPSET
    static: bool = False
    simplify: bool = True


@dataclass
class ExportResult:
    """What was written, how, and how close each file is to the PyTorch model."""

    files: dict[str, Path] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    onnx_exporter: str | None = None
    onnx_simplified: bool | None = None
    notes: list[str] = field(default_factory=list)
    arch: str = ""
    params_m: float = 0.0
    gmacs: float = 0.0


# Loggers of the torch.export-based ONNX exporter that report its internals (op registration,
# opset conversion).
_EXPORTER_CHATTER = ("torch.onnx._internal.exporter._registration", "torch.onnx._internal.exporter._compat",
                     "onnxscript.version_converter")


def _validate(request: ExportRequest) -> None:
    h, w = request.size
    if h <= 0 or w <= 0:
        raise IsnetError(f"size must be two positive integers (height width), got {h} {w}")
    unknown = [f for f in request.formats if f not in FORMATS]
    if unknown or not request.formats:
        raise IsnetError(f"unknown format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    if not request.name or "/" in request.name or request.name.startswith("."):
        raise IsnetError(f"name must be a plain file name, got '{request.name}'")
    out = Path(request.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        raise IsnetError(f"output directory {out} is not writable ({exc.strerror or exc})") from None


def _dynamic_shapes(request: ExportRequest):
    if request.static:
        return None
    auto = torch.export.Dim.AUTO
    return {"x": {0: auto, 2: auto, 3: auto}}


def _example(request: ExportRequest) -> torch.Tensor:
    # torch.export specialises dimensions of size 0/1, so a dynamic export traces batch 2.
    batch = 1 if request.static else 2
    generator = torch.Generator().manual_seed(request.seed)
    return torch.rand(batch, 3, *request.size, generator=generator) - 0.5


def _max_diff(a: np.ndarray, b: np.ndarray, fmt: str) -> float:
    if a.shape != b.shape:
        raise IsnetError(f"{fmt} export produced shape {a.shape}, expected {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _export_onnx(model: ISNet, example: torch.Tensor, path: Path, request: ExportRequest,
                 reference: np.ndarray, result: ExportResult) -> float:
    import onnx
    import onnxruntime as ort

    def run_onnx(file: Path) -> np.ndarray:
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {INPUT_NAME: example[:1].numpy()})[0]

    attempts = []
    try:
        # The torch.export-based exporter prints its stages, logs the torchvision ops it cannot
        # register (ISNet uses none), warns that it converts from its own opset (18) to an older
        # requested one, and leaks a torch-internal FutureWarning. None of it is actionable; the
        # opset actually written is checked and reported below instead.
        with contextlib.redirect_stdout(io.StringIO()), quiet_loggers(*_EXPORTER_CHATTER), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=request.opset,
                              dynamic_shapes=_dynamic_shapes(request), external_data=False, verbose=False)
        diff = _max_diff(run_onnx(path), reference, "onnx")
        if diff > MAX_ABS_DIFF:
            raise RuntimeError(f"max |diff| {diff:.3g} > {MAX_ABS_DIFF:g}")
        result.onnx_exporter = "torch.export (dynamo)"
    except Exception as exc:  # any failure of the new exporter: fall back, and say why
        attempts.append(f"torch.export-based ONNX exporter failed ({type(exc).__name__}: "
                        f"{first_line(exc)}); used the legacy exporter")
        axes = None if request.static else {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                                              OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=request.opset, dynamic_axes=axes)
        result.onnx_exporter = "legacy (TorchScript-based)"
    result.notes.extend(attempts)

    proto = onnx.load(str(path))
    if request.simplify:
        try:
            import onnxsim

            simplified, ok = onnxsim.simplify(proto)
            if not ok:
                raise RuntimeError("onnxsim's own check of the simplified model failed")
            proto = simplified
            result.onnx_simplified = True
        except Exception as exc:  # onnxsim is best-effort: keep the unsimplified graph
            result.onnx_simplified = False
            result.notes.append(f"onnxsim failed ({type(exc).__name__}: {str(exc)[:200]}); kept the unsimplified model")
    else:
        result.onnx_simplified = False
    onnx.checker.check_model(proto, full_check=True)
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != request.opset:
        result.notes.append(f"ONNX opset {written} was written; the exporter could not convert to opset {request.opset}")
    onnx.save(proto, str(path))
    return _max_diff(run_onnx(path), reference, "onnx")


def _export_torchscript(model: ISNet, example: torch.Tensor, path: Path, reference: np.ndarray,
                        result: ExportResult) -> float:
    # TorchScript is deprecated upstream; users of the reference recipe still ask for it, so we
    # keep it. Python hides DeprecationWarnings raised inside libraries, so PyTorch's own
    # deprecation messages are passed on as notes instead; other warnings are shown as usual.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
        with torch.no_grad():
            out = loaded(example[:1]).numpy()
    for warning in caught:
        if issubclass(warning.category, DeprecationWarning):
            note = f"PyTorch: {str(warning.message).strip()}"
            if note not in result.notes:
                result.notes.append(note)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return _max_diff(out, reference, "torchscript")


def _export_program(model: ISNet, example: torch.Tensor, path: Path, request: ExportRequest,
                    reference: np.ndarray, result: ExportResult) -> float:
    if not request.static and min(request.size) < PROGRAM_MIN_SIDE:
        raise IsnetError(f"a dynamic exported-program needs an export size of at least {PROGRAM_MIN_SIDE} px "
                         "per side; pass a larger --size or --static")
    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes(request))
    if not request.static:
        result.notes.append(f"exported-program accepts any batch and sides of at least {PROGRAM_MIN_SIDE} px")
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        out = loaded(example[:1]).numpy()
    return _max_diff(out, reference, "exported-program")


def export_model(request: ExportRequest) -> ExportResult:
    """Export ``request.weights`` to every requested format; return paths and verification figures.

    Raises :class:`IsnetError` on bad input or when an exported file disagrees with PyTorch.
    """
    _validate(request)
    model = build_isnet(request.weights, seed=request.seed, arch=request.arch, deploy=True)
    example = _example(request)
    with torch.no_grad():
        reference = model(example[:1]).numpy()
    result = ExportResult(arch=model.arch.name,
                          params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                          gmacs=count_macs(model, *request.size) / 1e9)
    if str(request.weights).lower().endswith(".onnx"):
        result.notes.append(f"weights from {Path(request.weights).name}: its convolutions, with BatchNorm folded in "
                            "by its exporter, loaded exactly (the BatchNorm layers are identities)")
    out = Path(request.output_dir)
    for fmt in request.formats:
        final = out / f"{request.name}{SUFFIXES[fmt]}"
        with atomic_path(final) as tmp:
            if fmt == "onnx":
                diff = _export_onnx(model, example, tmp, request, reference, result)
            elif fmt == "torchscript":
                diff = _export_torchscript(model, example, tmp, reference, result)
            else:
                diff = _export_program(model, example, tmp, request, reference, result)
            if diff > MAX_ABS_DIFF:
                raise IsnetError(f"{fmt} export differs from PyTorch by {diff:.3g} (> {MAX_ABS_DIFF:g}); "
                                 "nothing was written")
        result.files[fmt] = final
        result.max_abs_diff[fmt] = diff
    return result

