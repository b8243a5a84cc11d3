"""Deployable artifacts: a folder with the compiled model and ``build.json``, which says everything
a runner needs (backend, model file, input shape, pre-processing) and how the build went.

``build.json`` (format 1) holds at least::

    {"format": 1, "name": str, "backend": "onnxruntime" | "openvino",
     "precision": "fp32" | "fp16" | "bf16" | "int8", "model_file": "model.onnx",
     "input": {"name": "input", "shape": [N, 3, H, W]}, "output": {"name": "output"},
     "preprocess": [op specs], "runtime_options": {...}, "config": {...}, "versions": {...},
     "source": {"path", "sha256"}, "artifact_sha256": str,
     "calibration": null | {"mode", "images": [{"path", "sha256"}], "sha256"},
     "build_seconds": float, "fidelity": {...}}

:class:`LoadedModel` is a model opened to run, whatever it is: an artifact (:func:`open_artifact`) or,
through :func:`isnet.runtime.load_model`, a plain ONNX, TorchScript or checkpoint file.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from isnet.build_in.ops import Preprocessor
from isnet.build_in.runners import Runner
from isnet.core import IsnetError

BUILD_JSON = "build.json"
FORMAT_VERSION = 1


def is_artifact(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding a ``build.json``."""
    return (Path(path) / BUILD_JSON).is_file()


def read_build_info(folder: str | os.PathLike) -> dict:
    """Parse and sanity-check ``folder/build.json``."""
    path = Path(folder) / BUILD_JSON
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IsnetError(f"{folder}: not a build artifact (no {BUILD_JSON}); run `isnet build` first") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise IsnetError(f"{path}: unreadable ({exc})") from None
    missing = [k for k in ("backend", "precision", "model_file", "input", "output", "preprocess") if k not in info]
    if missing:
        raise IsnetError(f"{path}: missing keys {', '.join(missing)}")
    if info.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise IsnetError(f"{path}: format {info['format']} is newer than this isnet understands; upgrade isnet")
    return info


class ModelKind(str, enum.Enum):
    """What a model path holds."""

    ARTIFACT = "artifact"
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    CHECKPOINT = "checkpoint"


@dataclass
class LoadedModel:
    """A model ready to run: its runner, its pre-processing and where it came from.

    ``name`` is the artifact's name, or the file name for a plain model file.
    ``fixed_batch`` is the batch size baked into the graph (None when the batch is dynamic);
    :meth:`predict` pads or splits batches to fit it, so callers may use any batch size.
    """

    path: Path
    name: str
    kind: ModelKind
    backend: str
    precision: str
    runner: Runner
    preprocessor: Preprocessor
    fixed_batch: int | None = None
    info: dict = field(default_factory=dict)
    # A bare ONNX file whose output is a logit map: predict() applies the sigmoid (see load_model).
    apply_sigmoid: bool = False

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The model input (height, width), or None when it follows each image."""
        return self.preprocessor.input_size

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run a float32 N x 3 x H x W batch; return the N x 1 x H x W saliency maps (float32)."""
        count = batch.shape[0]
        step = self.fixed_batch or count
        outputs = []
        for start in range(0, count, step):
            chunk = batch[start:start + step]
            real = chunk.shape[0]
            if real < step:
                # A fixed-batch graph cannot take a short final batch: pad with copies of the
                # last image and drop their outputs.
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - real, axis=0)])
            result = self.runner.infer({self.runner.input_name: chunk})[self.runner.output_name]
            outputs.append(result[:real])
        if self.apply_sigmoid:
            outputs = [1.0 / (1.0 + np.exp(-o)) for o in outputs]
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)


def static_dim(value) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _artifact_fixed_batch(info: dict, runner: Runner) -> int | None:
    """The batch an artifact's graph is fixed to: the runner's own input shape when it tells, else build.json."""
    shape = getattr(runner, "input_shape", None)
    if isinstance(shape, (list, tuple)) and len(shape) == 4:
        return static_dim(shape[0])
    if info["input"].get("dynamic_batch"):
        return None
    return static_dim((info["input"].get("shape") or [None])[0])


def open_artifact(folder: str | os.PathLike, threads: int | None = None, **runner_options) -> LoadedModel:
    """Load an artifact folder with the backend named in its ``build.json``."""
    from isnet.build_in.runners import runner_module

    folder = Path(folder)
    info = read_build_info(folder)
    module = runner_module(info["backend"])
    model_file = folder / info["model_file"]
    if not model_file.is_file():
        raise IsnetError(f"{folder}: model file {info['model_file']} named in {BUILD_JSON} is missing")
    options = {**info.get("runtime_options", {}), **runner_options}
    runner = module.open_runner(model_file, threads=threads, **options)
    preprocessor = Preprocessor.from_specs(info["preprocess"], where=f"{folder / BUILD_JSON}: preprocess")
    return LoadedModel(folder, str(info.get("name", folder.name)), ModelKind.ARTIFACT, str(info["backend"]),
                       str(info["precision"]), runner, preprocessor,
                       fixed_batch=_artifact_fixed_batch(info, runner), info=info)
