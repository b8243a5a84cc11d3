"""Running the app under uvicorn: bind first (a taken port is a one-line error), stop when the
model cannot be loaded, drain in-flight requests on SIGTERM within SageMaker's 30 seconds."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import warnings
from pathlib import Path

from PIL import Image

from isnet.core import IsnetError
from isnet.runtime.serving.app import create_app
from isnet.runtime.serving.settings import ServeSettings

# SageMaker sends SIGTERM and kills the container 30 s later; in-flight requests get 25 of them.
GRACEFUL_SHUTDOWN_SECONDS = 25


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise IsnetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8080,
          settings: ServeSettings | None = None) -> None:
    """Serve ``model_path`` until SIGINT/SIGTERM; :class:`IsnetError` if the port is taken or the
    model cannot be loaded (any other failure to load or warm it up goes up as it is)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    # Pillow only reads headers here, and the app refuses images past --max-pixels (413) by itself.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    failure: list[Exception] = []
    server: uvicorn.Server | None = None

    def stop(error: Exception) -> None:
        failure.append(error)
        if server is not None:
            server.should_exit = True

    app = create_app(model_path, settings, on_load_error=stop)
    sock = _listen(host, port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    server = uvicorn.Server(config)
    logging.getLogger("isnet.serve").info("listening on http://%s:%d (loading %s)", host, port, model_path)
    # uvicorn drains on SIGINT/SIGTERM, then raises the signal again for the handler it found: a
    # quiet one here, so that a drained server exits 0 (and Ctrl-C prints no traceback).
    previous = {number: signal.signal(number, lambda *_: None) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    if failure:
        raise failure[0]
