"""Compile targets. Each backend module offers ``compile_model`` (and, from :mod:`isnet.build_in.runners`,
``open_runner``); running an artifact imports only the runner module, so that a serving image
needs the runtime library and none of the build tools.

Backends are imported lazily: an optional one that is not installed gives a one-line error
naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from isnet.build_in.runners import require

BACKENDS = {
    "onnxruntime": "isnet.build_in.backends.onnxruntime",
    "openvino": "isnet.build_in.backends.openvino",
}


def get_backend(name: str) -> ModuleType:
    """Import the backend module for ``name``; IsnetError if unknown or not installed."""
    require(name)
    return importlib.import_module(BACKENDS[name])


__all__ = ["BACKENDS", "get_backend"]
