"""Model resolution: one call turns whatever the user points at into a runner plus its pre-processing.

Accepted models:

- an artifact folder (``build.json`` beside the model file): backend, pre-processing and input
  shape come from ``build.json``;
- a plain ``.onnx`` file, run with ONNX Runtime;
- a TorchScript file (``.torchscript.pt``, or any ``.pt``/``.pth`` that is a TorchScript archive);
- a ``.pth`` checkpoint (official, DataParallel or this project's own), built with
  :func:`isnet.export.build_isnet` in deploy mode.

Models without a ``build.json`` get the reference recipe (:func:`isnet.build_in.ops.default_process_ops`) with the
Resize size taken from a static ONNX input shape, else from ``size``, else 320x320.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from isnet.build_in.artifact import BUILD_JSON, LoadedModel, ModelKind, is_artifact, open_artifact, static_dim
from isnet.build_in.ops import Preprocessor, default_process_ops, resolve_process_ops, with_input_size
from isnet.core import IsnetError, first_line
from isnet.core.defaults import INPUT_SIZE as DEFAULT_SIZE


def _bare_preprocessor(path: Path, preprocess, size: tuple[int, int] | None,
                       static_hw: tuple[int, int] | None = None) -> Preprocessor:
    """The pre-processing of a model file without build.json: ``preprocess`` (a preset, a JSON file or
    an op list) or the reference recipe, at ``size``, else the model's static size, else 320x320."""
    if preprocess is None:
        return Preprocessor.from_specs(default_process_ops(size or static_hw or DEFAULT_SIZE),
                                       where="default pre-processing")
    where = "--preprocess"
    specs = resolve_process_ops(preprocess, where=where)
    if size or static_hw:
        # A preset's recipe at the size the model takes (or the one asked for).
        specs = with_input_size(specs, size or static_hw)
    return Preprocessor.from_specs(specs, where=where)


def _bare_onnx_gives_logits(model: LoadedModel) -> bool:
    """Whether a bare ONNX file's first output is a logit map (as :func:`looks_like_logits` judges it on a
    synthetic photo), so that ``isnet run`` on it writes probabilities like an artifact built from it."""
    import onnx

    from isnet.build_in.source_model import looks_like_logits
    from isnet.runtime.synthetic import synthetic_photo

    graph = onnx.load(str(model.path), load_external_data=False)
    size = model.preprocessor.input_size or DEFAULT_SIZE
    tensor, _ = model.preprocessor.transform(synthetic_photo(0, size))
    try:
        values = model.predict(tensor[None])
    except Exception as exc:  # noqa: BLE001 -- ORT's own errors for an input it does not take
        raise IsnetError(f"{model.path}: ONNX Runtime cannot run the model on a {size[0]}x{size[1]} image "
                         f"({first_line(exc)}); check --size and --preprocess") from None
    return looks_like_logits(graph, model.runner.output_name, values)[0]


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or any(int(s) <= 0 for s in size):
        raise IsnetError(f"size must be two positive integers (height width), got {list(size)}")
    return int(size[0]), int(size[1])


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder; checkpoints have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


def model_kind(path: str | os.PathLike) -> ModelKind:
    """Classify a model path; :class:`IsnetError` when it is missing or of no known kind."""
    path = Path(path)
    if path.is_dir():
        if is_artifact(path):
            return ModelKind.ARTIFACT
        raise IsnetError(f"{path}: a folder without {BUILD_JSON} is not a build artifact; "
                         "pass an artifact folder from `isnet build`, or a .onnx, .torchscript.pt or .pth file")
    if not path.is_file():
        raise IsnetError(f"model not found: {path}")
    name = path.name.lower()
    if name.endswith(".onnx"):
        return ModelKind.ONNX
    if name.endswith((".pt", ".pth")):
        return ModelKind.TORCHSCRIPT if _is_torchscript_archive(path) else ModelKind.CHECKPOINT
    raise IsnetError(f"{path}: unknown model type; pass an artifact folder, a .onnx, a .torchscript.pt "
                     "or a .pth checkpoint")


def load_model(path: str | os.PathLike, threads: int | None = None,
               size: tuple[int, int] | None = None, runner_options: dict | None = None,
               preprocess=None) -> LoadedModel:
    """Open a model (artifact folder, ``.onnx``, TorchScript or ``.pth``) for inference.

    ``threads`` sets intra-op threads (None: the library default). ``size`` (height, width) is
    the input size and ``preprocess`` the pre-processing (a preset name such as ``u2net``, a JSON
    file or an op list; default: the reference recipe) for models without ``build.json``; both
    are refused for artifacts, which carry their own, and must agree with a static ONNX input
    shape. ``runner_options`` override an artifact's recorded runtime options (e.g. OpenVINO
    ``performance_hint``, ``streams``); other model kinds take none.
    """
    if runner_options and not is_artifact(path):
        raise IsnetError(f"{path}: runner options ({', '.join(runner_options)}) apply to OpenVINO artifacts only")
    path = Path(path)
    kind = model_kind(path)
    size = _check_size(size)
    if kind is ModelKind.ARTIFACT:
        if size is not None or preprocess is not None:
            raise IsnetError(f"{path}: an artifact's pre-processing and input size come from its {BUILD_JSON}; "
                             "drop --size and --preprocess")
        return open_artifact(path, threads=threads, **(runner_options or {}))
    if kind is ModelKind.ONNX:
        from isnet.build_in.runners.onnxruntime import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(path, threads=threads)
        shape = runner.input_shape
        if len(shape) != 4:
            raise IsnetError(f"{path}: expected an N x 3 x H x W input, the model takes {shape}")
        if runner.session.get_inputs()[0].type not in ("tensor(float)", "tensor(float16)"):
            raise IsnetError(f"{path}: the input is {runner.session.get_inputs()[0].type}; isnet feeds float images")
        static_hw = (static_dim(shape[2]), static_dim(shape[3]))
        static_hw = None if None in static_hw else static_hw
        if static_hw is not None and size is not None and size != static_hw:
            raise IsnetError(f"{path}: the model's input is fixed at {static_hw[0]}x{static_hw[1]}; "
                             f"--size {size[0]} {size[1]} does not fit it (drop --size)")
        model = LoadedModel(path, path.name, kind, "onnxruntime", "fp32", runner,
                            _bare_preprocessor(path, preprocess, size, static_hw), fixed_batch=static_dim(shape[0]))
        model.apply_sigmoid = _bare_onnx_gives_logits(model)
        return model
    from isnet.build_in.runners.pytorch import CheckpointRunner, TorchScriptRunner

    if kind is ModelKind.TORCHSCRIPT:
        runner = TorchScriptRunner(path, threads=threads)
    else:
        runner = CheckpointRunner(path, threads=threads)
    return LoadedModel(path, path.name, kind, "pytorch", "fp32", runner, _bare_preprocessor(path, preprocess, size))
