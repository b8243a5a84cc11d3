"""Running OpenVINO IR artifacts on the CPU, without the build code (NNCF, ONNX, calibration), so
that a serving image needs only the ``openvino`` package."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from isnet.core import IsnetError, first_line

PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")


class OpenVinoRunner:
    """A compiled OpenVINO model on the CPU behind the :class:`~isnet.build_in.runners.Runner` contract.

    The IR has a dynamic batch; the runner reshapes it to each batch size it sees (compiled once
    per size and kept), which is what the CPU plugin runs fastest. ``streams`` > 1 with the
    THROUGHPUT hint lets several infer requests run concurrently (see :meth:`infer_requests`).
    """

    def __init__(self, model_file: str | os.PathLike, threads: int | None = None,
                 inference_precision: str = "f32", performance_hint: str = "LATENCY", streams: int | None = None):
        import openvino as ov

        self.path = Path(model_file)
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for unreadable IR
            raise IsnetError(f"{self.path}: OpenVINO cannot read the model ({first_line(exc)})") from None
        if performance_hint not in PERFORMANCE_HINTS:
            raise IsnetError(f"performance hint must be one of {', '.join(PERFORMANCE_HINTS)}, got '{performance_hint}'")
        self.config = {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": performance_hint}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        if streams:
            self.config["NUM_STREAMS"] = int(streams)
        self.input_name = self.model.inputs[0].get_any_name()
        self.output_name = self.model.outputs[0].get_any_name()
        self._compiled: dict[int, object] = {}
        self._requests: dict[int, object] = {}

    def compiled_for(self, batch: int):
        """The model compiled for a static ``batch`` (cached)."""
        if batch not in self._compiled:
            model = self.model.clone()
            shape = list(model.inputs[0].get_partial_shape())
            shape[0] = batch
            model.reshape({self.input_name: shape})
            self._compiled[batch] = self.core.compile_model(model, "CPU", self.config)
        return self._compiled[batch]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one synchronous request; outputs are float32."""
        array = np.ascontiguousarray(inputs[self.input_name], dtype=np.float32)
        batch = array.shape[0]
        if batch not in self._requests:
            self._requests[batch] = self.compiled_for(batch).create_infer_request()
        result = self._requests[batch].infer({0: array})
        return {self.output_name: np.asarray(result[0], dtype=np.float32).copy()}

    def infer_requests(self, count: int, batch: int = 1) -> list:
        """``count`` independent infer requests on one compiled model, for concurrent use."""
        compiled = self.compiled_for(batch)
        return [compiled.create_infer_request() for _ in range(count)]


def open_runner(model_file, threads=None, inference_precision: str = "f32", performance_hint: str = "LATENCY",
                streams: int | None = None, **_unused) -> OpenVinoRunner:
    """Open an artifact's IR with the precision recorded at build time."""
    return OpenVinoRunner(model_file, threads=threads, inference_precision=inference_precision,
                          performance_hint=performance_hint, streams=streams)
