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
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from isnet.build_in.ops import Preprocessor
from isnet.build_in.runner import Runner
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


@dataclass
class Artifact:
    """An opened artifact: its runner, its pre-processing and its ``build.json`` contents."""

    path: Path
    info: dict
    runner: Runner
    preprocessor: Preprocessor

    @property
    def name(self) -> str:
        return str(self.info.get("name", self.path.name))


def open_artifact(folder: str | os.PathLike, threads: int | None = None, **runner_options) -> Artifact:
    """Load an artifact folder with the backend named in its ``build.json``."""
    from isnet.build_in.backends import get_runner

    folder = Path(folder)
    info = read_build_info(folder)
    backend = get_runner(info["backend"])
    model_file = folder / info["model_file"]
    if not model_file.is_file():
        raise IsnetError(f"{folder}: model file {info['model_file']} named in {BUILD_JSON} is missing")
    options = {**info.get("runtime_options", {}), **runner_options}
    runner = backend.open_runner(model_file, threads=threads, **options)
    preprocessor = Preprocessor.from_specs(info["preprocess"], where=f"{folder / BUILD_JSON}: preprocess")
    return Artifact(folder, info, runner, preprocessor)
