"""PyTorch runners behind the :class:`~isnet.build_in.runners.Runner` contract: TorchScript files and ``.pth``
checkpoints, for reference runs next to compiled artifacts.

torch is imported when a runner is created, never at module import. ``threads`` calls
``torch.set_num_threads``, which is process-wide in PyTorch: the last runner created wins.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from isnet.core import IsnetError, first_line

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def _import_torch():
    try:
        import torch
    except ImportError:
        raise IsnetError("running .pt/.pth models needs PyTorch: pip install torch") from None
    return torch


class _TorchModuleRunner:
    """Shared ``infer`` for a module mapping ``N x 3 x H x W`` to the ``N x 1 x H x W`` sigmoid map."""

    input_name = INPUT_NAME
    output_name = OUTPUT_NAME

    def __init__(self, module, threads: int | None):
        self._torch = _import_torch()
        if threads:
            self._torch.set_num_threads(int(threads))
        self.module = module

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the module under ``inference_mode``; the output is float32."""
        batch = np.ascontiguousarray(inputs[self.input_name], dtype=np.float32)
        with self._torch.inference_mode():
            output = self.module(self._torch.from_numpy(batch))
        return {self.output_name: output.float().numpy()}


class TorchScriptRunner(_TorchModuleRunner):
    """A TorchScript file written by ``isnet export`` (or any module with the same signature)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        torch = _import_torch()
        self.path = Path(path)
        try:
            module = torch.jit.load(str(self.path), map_location="cpu")
        except Exception as exc:  # torch.jit.load raises RuntimeError and others on a bad file
            raise IsnetError(f"{self.path}: not a loadable TorchScript file ({first_line(exc)})") from None
        super().__init__(module.eval(), threads)


class CheckpointRunner(_TorchModuleRunner):
    """An ISNet checkpoint (``.pth``) built in deploy mode; the architecture is read from the file."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from isnet.export import build_isnet

        self.path = Path(path)
        model = build_isnet(self.path, deploy=True)
        self.arch = model.arch.name
        super().__init__(model, threads)
