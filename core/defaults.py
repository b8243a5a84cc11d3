"""Defaults more than one stage uses, each written once; commands and configs read them from here."""

from __future__ import annotations

# The input size (height, width) of a model that does not fix one: ISNet's and U²-Net's deploy size.
INPUT_SIZE: tuple[int, int] = (320, 320)

# The ONNX opset isnet exports to, and converts older source graphs up to.
OPSET = 17

# isnet serve's limits and batching: runtime.serving.ServeSettings' defaults and the command's.
SERVE_MAX_BATCH = 4  # requests per inference call
SERVE_MAX_WAIT_MS = 5.0  # how long the first request of a batch waits for others
SERVE_MAX_QUEUE = 32  # requests in flight before 503
SERVE_MAX_BODY_MB = 6.0  # SageMaker's own limit on a request
SERVE_MAX_PIXELS = 50_000_000  # a request peaks at about 16 bytes per pixel
SERVE_BODY_TIMEOUT = 30.0  # seconds to receive a whole body
