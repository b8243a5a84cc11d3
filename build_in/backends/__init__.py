"""Compile targets. Each backend module offers ``compile_model`` and ``open_runner``; running an
artifact imports only the backend's runner module (:func:`get_runner`), so that a serving image
needs the runtime library and none of the build tools.

Backends are imported lazily: an optional one that is not installed gives a one-line error
naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from isnet.core import IsnetError, did_you_mean

BACKENDS = {
    "onnxruntime": "isnet.build_in.backends.onnxruntime",
    "openvino": "isnet.build_in.backends.openvino",
}
# The module that opens a backend's artifacts (``open_runner``), without the build code.
RUNNERS = {
    "onnxruntime": "isnet.build_in.backends.onnxruntime_runner",
    "openvino": "isnet.build_in.backends.openvino_runner",
}
# The package each backend needs, and the extra that installs it.
_REQUIRES = {"onnxruntime": ("onnxruntime", None), "openvino": ("openvino", "openvino")}


def get_backend(name: str) -> ModuleType:
    """Import the backend module for ``name``; IsnetError if unknown or not installed."""
    return _import(name, BACKENDS)


def get_runner(name: str) -> ModuleType:
    """Import the module with ``open_runner`` for backend ``name``; IsnetError if unknown or not installed."""
    return _import(name, RUNNERS)


def _import(name: str, modules: dict[str, str]) -> ModuleType:
    if name not in modules:
        raise IsnetError(f"unknown backend '{name}'{did_you_mean(name, BACKENDS)}; choose from {', '.join(BACKENDS)}")
    package, extra = _REQUIRES[name]
    try:
        importlib.import_module(package)
    except ImportError:
        hint = f"pip install 'isnet[{extra}]'" if extra else f"pip install {package}"
        raise IsnetError(f"backend '{name}' needs the {package} package: {hint}") from None
    return importlib.import_module(modules[name])


__all__ = ["BACKENDS", "RUNNERS", "get_backend", "get_runner"]
