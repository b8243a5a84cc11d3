"""Every way isnet executes a model, behind one contract: ``infer(inputs: dict) -> dict``.

- :mod:`.onnxruntime` -- ONNX files (plain, or an ONNX Runtime artifact's) on ONNX Runtime's CPU provider;
- :mod:`.openvino` -- an OpenVINO artifact's IR on the CPU plugin;
- :mod:`.pytorch` -- TorchScript files and ``.pth`` checkpoints, for reference runs.

Each module imports its runtime library only when a runner is made, and none imports the build
tools (ONNX, NNCF, calibration), so a serving image needs only the runtime library of its artifact.
:func:`runner_module` gives an artifact's backend's module, with a one-line error naming the extra
to install when the library is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol

import numpy as np

from isnet.core import IsnetError, did_you_mean


class Runner(Protocol):
    """A loaded model. ``infer`` maps input names to arrays and returns output names to arrays.

    ISNet runners take ``{"input": float32 N x 3 x H x W}`` and return
    ``{"output": float32 N x 1 x H x W}`` (the sigmoid map), whatever precision runs inside.
    """

    input_name: str
    output_name: str

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...


# Backend name -> the module whose ``open_runner(model_file, threads=None, **runtime_options)`` opens
# that backend's artifacts.
RUNNERS = {"onnxruntime": "isnet.build_in.runners.onnxruntime", "openvino": "isnet.build_in.runners.openvino"}
# The package each backend needs, and the extra that installs it (None: a core dependency).
REQUIRES = {"onnxruntime": ("onnxruntime", None), "openvino": ("openvino", "openvino")}


def require(backend: str) -> None:
    """IsnetError naming what to install when ``backend``'s runtime library is missing (or unknown)."""
    if backend not in REQUIRES:
        raise IsnetError(f"unknown backend '{backend}'{did_you_mean(backend, REQUIRES)}; "
                         f"choose from {', '.join(REQUIRES)}")
    package, extra = REQUIRES[backend]
    try:
        importlib.import_module(package)
    except ImportError:
        hint = f"pip install 'isnet[{extra}]'" if extra else f"pip install {package}"
        raise IsnetError(f"backend '{backend}' needs the {package} package: {hint}") from None


def runner_module(backend: str) -> ModuleType:
    """The runner module of ``backend`` (see :data:`RUNNERS`), once its library is known to be installed."""
    require(backend)
    return importlib.import_module(RUNNERS[backend])


__all__ = ["REQUIRES", "RUNNERS", "Runner", "require", "runner_module"]
