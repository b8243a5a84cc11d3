"""``isnet serve``."""

from __future__ import annotations

import argparse
import os

from isnet.core import IsnetError, defaults
from isnet.tools.args import non_negative_float, non_negative_int, positive_float, positive_int

# Where SageMaker unpacks the model archive in an inference container.
SAGEMAKER_MODEL_DIR = "/opt/ml/model"
# The serving image sets this to 0.0.0.0; anywhere else the server listens on loopback unless told.
HOST_ENV = "ISNET_SERVE_HOST"


class ServeCommand:
    """Serve a build over HTTP: SageMaker's container contract, rembg's /api/remove and a page at /.

    GET /ping answers 200 once the model has answered a warm-up inference. POST /invocations takes an
    image (or an npz/npy input) and answers with the mask PNG (the bytes `isnet run` writes), the
    float map (Accept: application/x-npy) or JSON (Accept: application/json). Requests that arrive
    together share one inference call (--max-batch, --max-wait-ms); past --max-queue requests in
    flight the server answers 503 with Retry-After. SIGTERM drains requests in flight and exits.
    Needs the serve extra: pip install 'isnet[serve]'.
    """

    name = "serve"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", default=SAGEMAKER_MODEL_DIR, metavar="MODEL",
                            help="artifact folder from `isnet build` (or a .onnx/.pth) "
                                 f"(default {SAGEMAKER_MODEL_DIR}, where SageMaker puts the model)")
        parser.add_argument("--host", default=os.environ.get(HOST_ENV, "127.0.0.1"),
                            help=f"address to listen on (default ${HOST_ENV}, else 127.0.0.1)")
        parser.add_argument("--port", type=non_negative_int, default=8080, help="port (default 8080)")
        parser.add_argument("--threads", type=positive_int, default=None,
                            help="inference threads (default: the library's choice, one per core)")
        parser.add_argument("--max-batch", type=positive_int, default=defaults.SERVE_MAX_BATCH,
                            help=f"most requests per inference call (default {defaults.SERVE_MAX_BATCH}; 1 turns batching off)")
        parser.add_argument("--max-wait-ms", type=non_negative_float, default=defaults.SERVE_MAX_WAIT_MS,
                            help=f"how long the first request of a batch waits for others (default {defaults.SERVE_MAX_WAIT_MS:g})")
        parser.add_argument("--max-queue", type=positive_int, default=defaults.SERVE_MAX_QUEUE,
                            help=f"requests in flight before new ones get 503 + Retry-After (default {defaults.SERVE_MAX_QUEUE})")
        parser.add_argument("--max-body-mb", type=positive_float, default=defaults.SERVE_MAX_BODY_MB,
                            help=f"largest request body in MB, 413 past it (default {defaults.SERVE_MAX_BODY_MB:g}, "
                                 "SageMaker's limit)")
        parser.add_argument("--max-pixels", type=positive_int, default=defaults.SERVE_MAX_PIXELS,
                            help=f"largest image in pixels, by its header, 413 past it (default {defaults.SERVE_MAX_PIXELS}; "
                                 "a request peaks at about 16 bytes per pixel, 0.75 GB at 49 MP)")
        parser.add_argument("--body-timeout", type=positive_float, default=defaults.SERVE_BODY_TIMEOUT,
                            help=f"seconds a client has to send a whole body, 408 past it "
                                 f"(default {defaults.SERVE_BODY_TIMEOUT:g})")

    def run(self, args: argparse.Namespace) -> int:
        try:
            import python_multipart  # noqa: F401 -- for /api/remove's form
            import starlette  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as exc:
            raise IsnetError(f"isnet serve needs the serve extra ({exc.name} is missing): "
                             "pip install 'isnet[serve]'") from None
        from isnet.runtime.models import model_kind
        from isnet.runtime.serving import ServeSettings, serve
        from isnet.runtime.serving.payloads import allow_pixels

        model_kind(args.model)  # a missing or unknown model is a one-line error before anything starts
        settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                                 max_body_mb=args.max_body_mb, max_pixels=args.max_pixels,
                                 body_timeout=args.body_timeout, threads=args.threads)
        allow_pixels(settings.max_pixels)  # Pillow's own limit, process-wide: set here, once
        serve(args.model, host=args.host, port=args.port, settings=settings)
        return 0
