"""The ONNX Runtime backend: fp32 (graph-optimised), fp16 and int8 (QDQ) artifacts."""

from __future__ import annotations

from build_in.backends.onnxruntime_runner import OnnxRuntimeRunner

MODEL_FILE = "model.onnx"


def open_runner(model_file, threads=None, **options) -> OnnxRuntimeRunner:
    """Open an artifact's model file with ONNX Runtime (no runtime options are used)."""
    return OnnxRuntimeRunner(model_file, threads=threads)
