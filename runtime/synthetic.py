"""Deterministic synthetic photos: an image source for the profiler, tests and benchmarks without data files.

Each photo has what makes real pre-processing and inference representative: a smooth lit
background, a few textured foreground objects with soft edges, and sensor-like noise, at a
typical web-photo size. The same ``(index, seed)`` always gives the same pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from isnet.build_in.imageio import encode_png
from isnet.core import atomic_path

DEFAULT_PHOTO_HW = (300, 400)


def synthetic_photo(index: int, size: tuple[int, int] = DEFAULT_PHOTO_HW, seed: int = 0) -> np.ndarray:
    """An RGB uint8 (H, W, 3) photo-like image, fixed by ``index`` and ``seed``."""
    height, width = size
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    ramp = (yy / max(height - 1, 1))[..., None]
    image = top * (1 - ramp) + bottom * ramp
    light = np.exp(-(((xx - rng.uniform(0, width)) ** 2 + (yy - rng.uniform(0, height)) ** 2)
                     / (2 * (0.5 * max(height, width)) ** 2)))
    image = image * (0.7 + 0.3 * light[..., None])
    for _ in range(int(rng.integers(1, 4))):
        mask = np.zeros((height, width), np.uint8)
        center = (int(rng.uniform(0.2, 0.8) * width), int(rng.uniform(0.2, 0.8) * height))
        axes = (int(rng.uniform(0.1, 0.3) * width), int(rng.uniform(0.1, 0.3) * height))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, thickness=-1)
        soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), sigmaX=2.0)[..., None]
        period = rng.uniform(6, 30)
        stripes = 0.5 + 0.5 * np.sin((xx * np.cos(period) + yy * np.sin(period)) / period * 2 * np.pi)
        colour = rng.uniform(0, 255, 3)
        texture = colour * (0.75 + 0.25 * stripes[..., None])
        image = image * (1 - soft) + texture * soft
    image += rng.normal(0, 4.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_synthetic_photos(folder: str | os.PathLike, count: int, size: tuple[int, int] = DEFAULT_PHOTO_HW,
                           seed: int = 0, suffix: str = "jpg") -> list[Path]:
    """Write ``count`` synthetic photos as ``photo_0000.<suffix>`` (JPEG quality 95 or PNG)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        rgb = synthetic_photo(index, size, seed)
        path = folder / f"photo_{index:04d}.{suffix}"
        if suffix.lower() == "png":
            with atomic_path(path) as tmp:
                encode_png(tmp, rgb)
        else:
            ok, data = cv2.imencode(f".{suffix}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise ValueError(f"OpenCV cannot encode .{suffix}")
            with atomic_path(path) as tmp:
                data.tofile(tmp)
        paths.append(path)
    return paths
