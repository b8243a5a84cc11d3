"""Reading images and masks from real folders: the one decoder every stage uses.

Files are read as bytes and decoded with OpenCV (``cv2.imread`` cannot open non-ASCII paths on
every platform). Colour images come back as RGB ``uint8`` HxWx3 whatever the file holds
(grayscale, RGBA, 16-bit PNG, CMYK JPEG), with EXIF orientation applied. Masks are decoded the
way PySODEvalToolkit reads them (``IMREAD_GRAYSCALE``), so scores match the field's numbers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from isnet.core import IsnetError

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp")


class ImageDecodeError(IsnetError):
    """An image file that cannot be decoded (corrupt, truncated or not an image)."""


def read_file_bytes(path: str | os.PathLike) -> np.ndarray:
    """The bytes of an image file as a uint8 array; :class:`ImageDecodeError` if unreadable or empty."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.size == 0:
        raise ImageDecodeError(f"{path}: empty file")
    return data


def check_complete(path: str | os.PathLike, data: np.ndarray) -> None:
    """Refuse truncated JPEG/PNG files, which OpenCV would decode with a grey or black tail."""
    head = data[:8].tobytes()
    tail = data[-4096:].tobytes()
    if head[:2] == b"\xff\xd8" and b"\xff\xd9" not in tail:
        raise ImageDecodeError(f"{path}: truncated JPEG (no end-of-image marker)")
    if head == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail:
        raise ImageDecodeError(f"{path}: truncated PNG (no IEND chunk)")


def _decode(path: Path, flags: int, data: np.ndarray | None = None) -> np.ndarray:
    data = read_file_bytes(path) if data is None else data
    check_complete(path, data)
    decoded = cv2.imdecode(data, flags)
    if decoded is None:
        raise ImageDecodeError(f"{path}: not a decodable image")
    return decoded


def decode_image(path: str | os.PathLike, data: np.ndarray | None = None) -> np.ndarray:
    """Decode an image file to RGB ``uint8`` (H, W, 3), EXIF orientation applied.

    ``data``: the encoded bytes when they did not come from a file (an HTTP body; ``path`` then
    only names them in errors). Raises :class:`ImageDecodeError` naming the file when it is
    unreadable, corrupt or truncated.
    """
    # IMREAD_COLOR applies EXIF orientation, drops alpha, expands gray, converts CMYK and
    # scales 16-bit samples to 8 bits.
    return cv2.cvtColor(_decode(Path(path), cv2.IMREAD_COLOR, data), cv2.COLOR_BGR2RGB)


def decode_mask(path: str | os.PathLike, data: np.ndarray | None = None) -> np.ndarray:
    """Decode a mask or saliency map to ``uint8`` (H, W) exactly as ``cv2.imread(..., IMREAD_GRAYSCALE)``.

    RGB files are converted to luminance and 16-bit files scaled to 8 bits, as the reference
    evaluation toolkit's reader does. ``data``: the file's bytes when the caller has read them
    (``read_file_bytes``), so the file is not read twice.
    """
    return _decode(Path(path), cv2.IMREAD_GRAYSCALE, data)


def png_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8 gray, RGB or RGBA) as lossless PNG bytes: what :func:`encode_png` writes."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise ImageDecodeError(f"PNG encoding of a {array.dtype} {array.shape} array failed")
    return buffer.tobytes()


def encode_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` (uint8 gray, RGB or RGBA) as a lossless PNG at ``path`` (any file name)."""
    Path(path).write_bytes(png_bytes(array))


def parse_suffixes(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """Normalise ``"jpg,PNG"`` / ``[".jpg"]`` to lower-case suffixes without dots."""
    if text is None:
        return IMAGE_SUFFIXES
    items = text.split(",") if isinstance(text, str) else list(text)
    suffixes = tuple(s.strip().lower().lstrip(".") for s in items if s.strip())
    if not suffixes:
        raise IsnetError("empty suffix list")
    return suffixes


def list_images(root: str | os.PathLike, suffixes: Iterable[str] | None = None,
                recursive: bool = True) -> list[Path]:
    """Image files under ``root`` whose suffix matches (case-insensitive), sorted by relative path.

    Hidden files and folders (names starting with '.') are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise IsnetError(f"image folder not found: {root}")
    wanted = set(parse_suffixes(suffixes) if not isinstance(suffixes, tuple) else suffixes)

    def walk(folder: Path) -> Iterator[Path]:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if recursive:
                    yield from walk(Path(entry.path))
            elif entry.name.rsplit(".", 1)[-1].lower() in wanted and "." in entry.name:
                yield Path(entry.path)

    return sorted(walk(root), key=lambda p: p.relative_to(root).as_posix())


def pair_images_with_masks(image_dir: Path, mask_dir: Path) -> list[tuple[str, Path, Path]]:
    """``(stem, image, mask)`` for every image of ``image_dir``, sorted by stem; masks paired by file stem.

    Every image needs a mask with the same stem (a PNG mask wins over another format), and stems
    must be unique; either problem is an IsnetError.
    """
    images = list_images(image_dir, recursive=False)
    masks: dict[str, Path] = {}
    for path in list_images(mask_dir, recursive=False):
        if path.stem not in masks or path.suffix.lower() == ".png":
            masks[path.stem] = path
    if not images:
        raise IsnetError(f"no images in {image_dir}")
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise IsnetError(f"{image_dir}: several images share a file stem ({', '.join(twice[:3])}); "
                         "masks are paired by stem, so stems must be unique")
    unpaired = [p.name for p in images if p.stem not in masks]
    if unpaired:
        raise IsnetError(f"{len(unpaired)} of {len(images)} images in {image_dir} have no mask in {mask_dir} "
                         f"(e.g. {unpaired[0]}); every image needs a mask with the same stem")
    return [(p.stem, p, masks[p.stem]) for p in images]
