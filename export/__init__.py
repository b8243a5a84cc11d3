"""export: the ISNet model, official-weight loading and ONNX / TorchScript / ExportedProgram export.

Heavy names (anything needing torch) are imported on first use, so that later stages can import
:class:`IsnetError` without paying for torch.
"""

from __future__ import annotations

import importlib

from export.errors import IsnetError, did_you_mean

_LAZY = {
    "ISNet": "export.model",
    "ISNetGTEncoder": "export.model",
    "IsnetArch": "export.model",
    "ARCHS": "export.model",
    "count_macs": "export.model",
    "build_isnet": "export.weights",
    "load_isnet_weights": "export.weights",
    "save_checkpoint": "export.weights",
    "read_checkpoint_arch": "export.weights",
    "ExportRequest": "export.exporter",
    "ExportResult": "export.exporter",
    "export_model": "export.exporter",
}

__all__ = ["IsnetError", "did_you_mean", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
