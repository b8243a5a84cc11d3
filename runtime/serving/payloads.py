"""Request bodies in, response bodies out: the same decoding, pre-processing and mask writing as ``isnet run``.

Accepted bodies (by ``Content-Type``, or by their first bytes for ``application/octet-stream``):

- an image (``image/jpeg``, ``image/png``, ``image/webp``, ``application/x-image``, ...): decoded
  by :func:`isnet.build_in.imageio.decode_image` after its header's pixel count is checked;
- ``application/x-npz``: an input npz as ``isnet image2npz`` writes it (``input_0``, uint8
  3 x H x W RGB); ``application/x-npy``: that array alone.

Responses (by ``Accept``): ``image/png``, the 8-bit mask at the original size, byte for byte what
``isnet run`` writes; ``application/x-npy``, the float32 map at the original size;
``application/json``, the mask as base64 PNG with the size, timings and the build's name.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from isnet.build_in.imageio import ImageDecodeError, check_complete, decode_image, png_bytes
from isnet.build_in.ops import Geometry, Preprocessor, mask_from_output
from isnet.runtime.npz import INPUT_KEY

PNG, NPY, NPZ, JSON = "image/png", "application/x-npy", "application/x-npz", "application/json"
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "application/x-image"})
OCTET_STREAM = "application/octet-stream"
BODY = "request body"  # what decoding errors call the image
ACCEPTED_TYPES = (*sorted(IMAGE_TYPES), OCTET_STREAM, NPY, NPZ)
RESPONSE_TYPES = (PNG, NPY, JSON)


class RequestError(Exception):
    """A request the server refuses: ``status`` and a one-line message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def media_type(header: str | None) -> str:
    """``"Image/PNG; charset=x"`` -> ``"image/png"``; empty when there is none."""
    return (header or "").split(";", 1)[0].strip().lower()


def response_type(accept: str | None) -> str:
    """The response type an ``Accept`` header asks for, as RFC 9110 reads it: each served type takes
    the quality of the most specific range that matches it (``image/png``, then ``image/*``, then
    ``*/*``), ``q=0`` refuses it, and the highest quality wins (ties: PNG, JSON, NPY). PNG when
    there is no header; :class:`RequestError` 406 when it admits none of the types served."""
    if not accept or not accept.strip():
        return PNG
    qualities: dict[str, float] = {}
    for part in accept.split(","):
        name, *params = [piece.strip() for piece in part.split(";")]
        if not name:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        qualities.setdefault(name.lower(), quality)  # the first mention of a range counts
    best, best_quality = None, 0.0
    for served in (PNG, JSON, NPY):
        kind = served.split("/")[0]
        for name in (served, f"{kind}/*", "*/*"):
            if name in qualities:
                if qualities[name] > best_quality:
                    best, best_quality = served, qualities[name]
                break
    if best is None:
        raise RequestError(406, f"cannot answer with {accept.strip()}; ask for one of {', '.join(RESPONSE_TYPES)}")
    return best


@dataclass(frozen=True)
class DecodedRequest:
    """A request body ready for the model: its input, where the image lies in it, and the RGB image
    when a cut-out needs it."""

    tensor: np.ndarray
    geometry: Geometry
    rgb: np.ndarray | None = None


def body_kind(content_type: str, body: bytes) -> str:
    """``"image"``, ``"npy"`` or ``"npz"`` for a body; :class:`RequestError` 415 for other types."""
    if content_type == NPY:
        return "npy"
    if content_type == NPZ:
        return "npz"
    if content_type in IMAGE_TYPES or content_type.startswith("image/"):
        return "image"
    if content_type in (OCTET_STREAM, ""):
        if body.startswith(b"\x93NUMPY"):
            return "npy"
        if body.startswith(b"PK\x03\x04"):
            return "npz"
        return "image"
    raise RequestError(415, f"unsupported Content-Type {content_type}; send one of {', '.join(ACCEPTED_TYPES)}")


def check_image_pixels(body: bytes, max_pixels: int) -> None:
    """Refuse an image by its header alone, without decoding it: 413 past ``max_pixels``, 400 when
    the header is no image's.

    Pillow reads only the header here (OpenCV decodes). Pillow refuses headers past twice its own
    ``MAX_IMAGE_PIXELS`` itself; ``isnet serve`` raises that limit to at least ``max_pixels``
    (:func:`allow_pixels`), so such a refusal always means "over this server's limit".
    """
    limit = f"this server takes at most {max_pixels:,} (--max-pixels)"
    try:
        with Image.open(io.BytesIO(body)) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        raise RequestError(413, f"the image's header declares over {2 * Image.MAX_IMAGE_PIXELS:,} pixels; "
                                f"{limit}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        try:
            check_complete(BODY, np.frombuffer(body, np.uint8))  # a header cut short: say "truncated"
        except ImageDecodeError as truncated:
            raise RequestError(400, str(truncated)) from None
        raise RequestError(400, f"not a decodable image ({type(exc).__name__})") from None
    if width * height > max_pixels:
        raise RequestError(413, f"the image is {width}x{height} = {width * height:,} pixels; {limit}")


def allow_pixels(max_pixels: int) -> None:
    """Raise Pillow's decompression-bomb limit (process-wide) to ``max_pixels`` when it is lower, so
    that this server's own limit is the one that answers."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def decode_body(body: bytes, kind: str, preprocessor: Preprocessor, max_pixels: int, keep_rgb: bool = False
                ) -> DecodedRequest:
    """Decode and pre-process one body (run it off the event loop: it is the heavy part of a request)."""
    if not body:
        raise RequestError(400, "empty body")
    if kind == "image":
        check_image_pixels(body, max_pixels)  # first: a huge header is 413 even when the body is cut short
        try:
            rgb = decode_image(BODY, np.frombuffer(body, np.uint8))  # truncated JPEG/PNG refused too
        except ImageDecodeError as exc:
            raise RequestError(400, str(exc)) from None
    else:
        rgb = _array_image(body, kind, max_pixels)
    tensor, geometry = preprocessor.transform(rgb)
    return DecodedRequest(tensor, geometry, rgb if keep_rgb else None)


def _array_image(body: bytes, kind: str, max_pixels: int) -> np.ndarray:
    """The HxWx3 RGB image of an npy body or of an npz body's ``input_0`` (uint8 3 x H x W).

    The array's header is checked before anything is decompressed or allocated: a compressed npz
    of zeros shrinks about 1000:1, so a 6 MB body could otherwise ask for gigabytes.
    """
    try:
        if kind == "npz":
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                member = f"{INPUT_KEY}.npy"
                if member not in archive.namelist():
                    keys = ", ".join(name.removesuffix(".npy") for name in archive.namelist())
                    raise RequestError(400, f"the npz has no '{INPUT_KEY}' array (keys: {keys})")
                with archive.open(member) as stream:
                    _check_array_header(stream, kind, max_pixels)
                with archive.open(member) as stream:
                    array = np.lib.format.read_array(stream, allow_pickle=False)
        else:
            stream = io.BytesIO(body)
            _check_array_header(stream, kind, max_pixels)
            stream.seek(0)
            array = np.lib.format.read_array(stream, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise RequestError(400, f"not a readable {kind} body ({type(exc).__name__})") from None
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def _check_array_header(stream, kind: str, max_pixels: int) -> None:
    """Refuse an .npy stream by its header alone: not uint8 [3, H, W] -> 400, too many pixels -> 413."""
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(stream)  # the header only, no data
    if dtype != np.uint8 or len(shape) != 3 or shape[0] != 3:
        raise RequestError(400, f"the {kind} array is {dtype} {list(shape)}; "
                                "expected uint8 [3, H, W] RGB, as `isnet image2npz` writes")
    if shape[1] * shape[2] > max_pixels:
        raise RequestError(413, f"the array holds {shape[1] * shape[2]:,} pixels; this server takes at most {max_pixels:,}")
    if 0 in shape:
        raise RequestError(400, f"the {kind} array is empty: {list(shape)}")


def mask_png(output: np.ndarray, geometry: Geometry) -> bytes:
    """The PNG mask of the model's 1 x H x W output: the bytes ``isnet run`` writes."""
    return png_bytes(mask_from_output(output[0], geometry))


def cutout_png(rgb: np.ndarray, output: np.ndarray, geometry: Geometry) -> bytes:
    """The RGBA cut-out: the image with the mask of the model's output as its alpha channel."""
    return png_bytes(np.dstack([rgb, mask_from_output(output[0], geometry)]))


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def encode_response(output: np.ndarray, geometry: Geometry, kind: str, details: dict) -> bytes:
    """The response body of type ``kind`` for a model output; ``details`` joins a JSON answer."""
    if kind == NPY:  # the float map at the picture's size
        return npy_bytes(Preprocessor.restore(output[0], geometry))
    png = mask_png(output, geometry)
    if kind == PNG:
        return png
    height, width = geometry.original_hw
    answer = {**details, "width": width, "height": height,
              "mask_png_base64": base64.b64encode(png).decode("ascii")}
    return json.dumps(answer).encode()
