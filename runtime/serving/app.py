"""The ASGI app behind ``isnet serve``: SageMaker's inference-container contract, rembg's
``/api/remove`` and a page to try the build.

- ``GET /ping``: 200, empty, once the model is loaded and has answered a warm-up inference; 503 before.
- ``POST /invocations``: an image or npz/npy body (see :mod:`.payloads`); the answer follows ``Accept``.
- ``POST /api/remove``: rembg's multipart form (field ``file``; ``om=true`` for the mask, otherwise
  the RGBA cut-out), so rembg clients work unchanged.
- ``GET /``: the page (plain HTML and JS, no external resources).

Every request past the checks that need no body counts against ``max_queue``: one more is answered
503 with ``Retry-After`` before its body is read, so at most ``max_queue`` requests hold a body (and,
once decoded, an image) at a time. A body must arrive whole within ``body_timeout`` seconds (408
past it), so clients that stall their uploads hold those places only that long.
Decoding and encoding run on worker threads, inference on one thread behind a
:class:`~.batcher.MicroBatcher`; the event loop only moves bytes. Every error is JSON
``{"error": "..."}``; the access log has one line per request (method, path, status, bytes, ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from isnet.core import first_line
from isnet.core.defaults import INPUT_SIZE
from isnet.runtime.models import LoadedModel, load_model
from isnet.runtime.pipeline import default_io_threads
from isnet.runtime.serving import payloads
from isnet.runtime.serving.batcher import MicroBatcher, QueueFull
from isnet.runtime.serving.payloads import RequestError
from isnet.runtime.serving.settings import ServeSettings
from isnet.runtime.synthetic import synthetic_photo

log = logging.getLogger("isnet.serve")
RETRY_AFTER_SECONDS = 1


# Headers every answer of a status carries: when to retry a busy server; a stalled upload's
# connection is closed rather than waited on again.
STATUS_HEADERS = {503: {"Retry-After": str(RETRY_AFTER_SECONDS)}, 408: {"Connection": "close"}}


def _error(status: int, message: str, **headers: str) -> Response:
    """The JSON answer ``{"error": message}``, with the headers its status carries."""
    return Response(json.dumps({"error": message}), status_code=status, media_type=payloads.JSON,
                    headers={**STATUS_HEADERS.get(status, {}), **headers})


class _Serving:
    """The model, its batcher and the request counters of one app."""

    def __init__(self, model_path: Path, settings: ServeSettings,
                 on_load_error: Callable[[Exception], None] | None):
        self.model_path, self.settings, self.on_load_error = model_path, settings, on_load_error
        self.model: LoadedModel | None = None
        self.batcher: MicroBatcher | None = None
        self.io: ThreadPoolExecutor | None = None
        self.in_flight = 0

    async def start(self) -> None:
        self.io = ThreadPoolExecutor(max_workers=default_io_threads(), thread_name_prefix="isnet-io")
        try:
            model = await asyncio.get_running_loop().run_in_executor(self.io, self._load_and_warm_up)
        except Exception as exc:  # noqa: BLE001 -- handed to on_load_error: the server stops, serve() raises it
            log.error("cannot serve %s: %s", self.model_path, first_line(exc))
            if self.on_load_error:
                self.on_load_error(exc)
            return
        settings = self.settings
        self.batcher = MicroBatcher(model.predict, settings.max_batch, settings.max_wait_ms / 1000,
                                    settings.max_queue)
        self.batcher.start()
        self.model = model
        log.info("ready: %s (%s %s, input %s)", model.name, model.backend, model.precision,
                 "x".join(map(str, model.input_size)) if model.input_size else "per image")

    def _load_and_warm_up(self) -> LoadedModel:
        model = load_model(self.model_path, threads=self.settings.threads)
        tensor, _ = model.preprocessor.transform(synthetic_photo(0, model.input_size or INPUT_SIZE))
        for batch in sorted({1, self.settings.max_batch}):
            model.predict(tensor[None].repeat(batch, axis=0))
        return model

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self.io is not None:
            self.io.shutdown(wait=True, cancel_futures=True)

    async def in_io_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    @contextlib.contextmanager
    def admitted(self):
        """Count a request as in flight; :class:`RequestError` 503 when ``max_queue`` are."""
        if self.in_flight >= self.settings.max_queue:
            raise RequestError(503, f"busy: {self.in_flight} requests in flight; retry shortly")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def details(self, prediction, started: float, decoded_at: float) -> dict:
        model = self.model
        return {"model": model.name, "backend": model.backend, "precision": model.precision,
                "batch": prediction.batch,
                "timings_ms": {"decode": round(1000 * (decoded_at - started), 2),
                               "queue": round(1000 * prediction.queued_seconds, 2),
                               "inference": round(1000 * prediction.inference_seconds, 2),
                               "total": round(1000 * (time.perf_counter() - started), 2)}}


def _json_errors(endpoint):
    """Turn refusals into their JSON answer, and anything unexpected into a one-line 500."""
    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except RequestError as exc:
            return _error(exc.status, str(exc))
        except QueueFull as exc:
            return _error(503, f"busy: {exc}; retry shortly")
        except HTTPException as exc:  # Starlette's own refusals (a malformed multipart form: 400)
            return _error(exc.status_code, str(exc.detail), **(exc.headers or {}))
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it; the access log shows the request
        except Exception as exc:  # noqa: BLE001 -- a bug must not take the server down or leak a traceback
            log.exception("internal error on %s %s", request.method, request.url.path)
            return _error(500, f"internal error: {first_line(exc)}")
    return wrapped


def create_app(model_path: str | Path, settings: ServeSettings | None = None,
               on_load_error: Callable[[Exception], None] | None = None) -> Starlette:
    """The app serving ``model_path`` (an artifact folder or any model ``isnet run`` takes).

    The model is loaded and warmed up in the background once the app starts; ``on_load_error(exception)``
    is called if that fails (``isnet serve`` then stops the server).
    """
    settings = settings or ServeSettings()
    serving = _Serving(Path(model_path), settings, on_load_error)
    page = resources.files("isnet.runtime.serving").joinpath("page.html").read_text(encoding="utf-8")

    def ready_model() -> LoadedModel:
        if serving.model is None:
            raise RequestError(503, "the model is still loading; retry shortly")
        return serving.model

    async def ping(request: Request) -> Response:
        if serving.model is None:
            return _error(503, "the model is still loading")
        return Response(b"", status_code=200)

    async def predict(model: LoadedModel, body: bytes, kind: str, keep_rgb: bool = False):
        started = time.perf_counter()
        decoded = await serving.in_io_thread(payloads.decode_body, body, kind, model.preprocessor,
                                             settings.max_pixels, keep_rgb)
        decoded_at = time.perf_counter()
        prediction = await serving.batcher.submit(decoded.tensor)
        return decoded, prediction, serving.details(prediction, started, decoded_at)

    @_json_errors
    async def invocations(request: Request) -> Response:
        answer_type = payloads.response_type(request.headers.get("accept"))
        content_type = payloads.media_type(request.headers.get("content-type"))
        payloads.body_kind(content_type, b"")  # 415 before the body is read
        model = ready_model()
        with serving.admitted():
            body = await request.body()
            decoded, prediction, details = await predict(model, body, payloads.body_kind(content_type, body))
            content = await serving.in_io_thread(payloads.encode_response, prediction.output, decoded.geometry,
                                                 answer_type, details)
        return Response(content, media_type=answer_type)

    @_json_errors
    async def remove(request: Request) -> Response:
        model = ready_model()
        with serving.admitted():
            form = await request.form(max_files=1, max_fields=16)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise RequestError(400, "send the image as the multipart form field 'file'")
            body = await upload.read()
            only_mask = str(request.query_params.get("om", form.get("om", ""))).lower() in ("true", "1", "yes", "on")
            await form.close()
            decoded, prediction, _ = await predict(model, body, "image", keep_rgb=not only_mask)

            def encode() -> bytes:
                if only_mask:
                    return payloads.mask_png(prediction.output, decoded.geometry)
                return payloads.cutout_png(decoded.rgb, prediction.output, decoded.geometry)

            content = await serving.in_io_thread(encode)
        return Response(content, media_type=payloads.PNG)

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail), **(exc.headers or {}))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loading = asyncio.create_task(serving.start())
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            await serving.stop()

    routes = [Route("/ping", ping, methods=["GET"]), Route("/invocations", invocations, methods=["POST"]),
              Route("/api/remove", remove, methods=["POST"]), Route("/", index, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.serving = serving
    return AccessLog(BodyLimit(app, settings.max_body_bytes, settings.body_timeout))


# A refused request's body is read and dropped, up to this many bytes, before its answer is
# completed: a client that sends its whole body before reading (urllib, SageMaker's runtime) then
# reads the answer; closing with its bytes unread would reset the connection and lose the answer.
DRAIN_BYTES = 64 << 20


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, before it is read whole; 408 for a body
    that has not arrived whole ``timeout`` seconds after the request's headers.

    A declared ``Content-Length`` over the limit is refused at once; a body sent without one
    (chunked) is counted as it arrives and refused when it passes the limit. Every refusal (4xx,
    5xx) that leaves part of the body unread is sent at once, and its last byte only once the rest
    of the body (up to :data:`DRAIN_BYTES`, within ``timeout``) has been read and dropped; not for a
    408 (that client is not sending) or a client waiting on ``Expect: 100-continue`` (it sends
    nothing unless asked).
    """

    def __init__(self, app, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    def __getattr__(self, name):  # the wrapped app's state, for tests and tools
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        waits_for_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        received, complete, status = 0, declared in (None, b"0") and b"transfer-encoding" not in headers, 200
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout

        async def drain() -> None:
            nonlocal received, complete
            dropped = 0
            while not complete and dropped <= DRAIN_BYTES:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    return
                if message["type"] != "http.request":
                    return  # the client went away
                dropped += len(message.get("body", b""))
                complete = not message.get("more_body", False)

        async def answer(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            last = message["type"] == "http.response.body" and not message.get("more_body", False)
            unread = not complete and status >= 400 and status != 408 and not (waits_for_continue and received == 0)
            if last and unread:
                await send({**message, "more_body": True})
                await drain()
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        limit = f"bodies over {self.max_bytes / 1024 / 1024:g} MB are refused (--max-body-mb)"
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                return await _error(400, "invalid Content-Length")(scope, receive, answer)
            if too_large:
                return await _error(413, f"the body is {int(declared):,} bytes; {limit}")(scope, receive, answer)

        async def counted():
            nonlocal received, complete
            if complete:  # past the body, the app only listens for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise RequestError(408, f"the body was not received within {self.timeout:g} s "
                                        f"({received:,} bytes came); --body-timeout") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise RequestError(413, f"the body passed {self.max_bytes:,} bytes; {limit}")
            return message

        await self.app(scope, counted, answer)


class AccessLog:
    """ASGI middleware: one log line per request: method, path, status, response bytes, milliseconds."""

    def __init__(self, app):
        self.app = app

    def __getattr__(self, name):
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, sent = time.perf_counter(), 500, 0

        async def logged(message):
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logged)
        finally:
            log.info("%s %s %d %d %.1fms", scope["method"], scope["path"], status, sent,
                     1000 * (time.perf_counter() - started))
