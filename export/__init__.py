"""export: the ISNet model, official-weight loading and ONNX / TorchScript / ExportedProgram export.

Heavy names (anything needing torch) are imported on first use, so that later stages can import
:class:`IsnetError` without paying for torch.
"""

from __future__ import annotations

import importlib

from isnet.core import IsnetError, did_you_mean

_LAZY = {
    "ISNet": "isnet.export.model",
    "ISNetGTEncoder": "isnet.export.model",
    "IsnetArch": "isnet.export.model",
    "ARCHS": "isnet.export.model",
    "count_macs": "isnet.export.model",
    "build_isnet": "isnet.export.weights",
    "load_isnet_weights": "isnet.export.weights",
    "save_checkpoint": "isnet.export.weights",
    "read_checkpoint_arch": "isnet.export.weights",
    "ExportRequest": "isnet.export.exporter",
    "ExportResult": "isnet.export.exporter",
    "export_model": "isnet.export.exporter",
}

__all__ = ["IsnetError", "did_you_mean", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
