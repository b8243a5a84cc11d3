"""``isnet serve``: any build behind an HTTP endpoint (SageMaker's container contract, rembg's API, a page).

Needs the ``serve`` extra (Starlette, uvicorn, python-multipart) and no PyTorch: a serving image
carries only the runtime libraries. :func:`create_app` is the ASGI app, :func:`serve` runs it.
"""

from isnet.runtime.serving.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "serve"]


def __getattr__(name: str):
    # The app and the server need the serve extra; ServeSettings does not (``isnet serve --help``).
    if name == "create_app":
        from isnet.runtime.serving.app import create_app

        return create_app
    if name == "serve":
        from isnet.runtime.serving.server import serve

        return serve
    raise AttributeError(f"module 'isnet.runtime.serving' has no attribute {name!r}")
