"""``isnet serve``: any build behind an HTTP endpoint (SageMaker's container contract, rembg's API, a page).

Needs the ``serve`` extra (Starlette, uvicorn, python-multipart) and no PyTorch: a serving image
carries only the runtime libraries. :func:`create_app` is the ASGI app, :func:`serve` runs it.
"""

from isnet.runtime.serving.app import ServeSettings, create_app
from isnet.runtime.serving.server import serve

__all__ = ["ServeSettings", "create_app", "serve"]
