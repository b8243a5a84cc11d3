"""Synthetic saliency data: procedural images with exact masks, in ECSSD layout.

``generate_dataset(out_dir, count, seed)`` writes ``out_dir/image/NNNN.jpg`` (JPEG quality 95,
4:4:4 chroma) and ``out_dir/mask/NNNN.png`` (8-bit, exactly 0 or 255). Image ``i`` depends only
on ``(seed, i)``, so generation runs in parallel, a rerun skips complete pairs, and a larger
``count`` extends a folder with the same images a fresh run would make. (Bytes are reproducible
for given numpy and OpenCV versions; numpy does not promise identical random streams across
releases, which is why a folder records the seed and :data:`SYNTH_VERSION` in ``synth.json``.)

What the masks mean
    Salient objects and occluders are rasterised 4x4-supersampled, so their coverage of each
    pixel is known to 1/16. The picture is composited from those coverages (anti-aliased,
    sometimes feathered edges) and, alongside, the share of each pixel's colour that comes from a
    salient object. The mask is that share thresholded at 0.5: a pixel is salient when at least
    half of what you see there is a salient object. Binary masks are the convention of the
    saliency datasets (ECSSD, DUTS, DIS5K) and of the metrics, which binarise the ground truth,
    so training and evaluation need no special case; the anti-aliased edge lives in the image,
    and the mask is its exact midline.

The cues that make the task learnable
    Salience is defined by one consistent, locally visible property plus supporting ones, so a
    small network can reach MAE <= 0.03 and max-F >= 0.95 on held-out pictures:

    - Chroma (max(R, G, B) - min(R, G, B)). Salient colours are built in HSV with
      S * V >= 0.40, and textures mix two colours in HSV, so no blend inside an object turns
      grey; background, distractors, occluders and shadows are clipped to chroma <= 0.12. The
      only salient pixels below 0.40 are edge pixels: the anti-aliased rim, and the seam where two
      salient objects of different colours meet. Sensor noise is luminance only and the JPEGs
      keep full-resolution chroma, so the gap survives in the files. A per-pixel chroma threshold
      already gets most of the way (``tests/tools/test_synth.py`` checks how far); a network
      learns the rest: where the midline of each soft edge falls, seams, thin parts.
    - Contrast. Distractors and occluders differ by at most 0.16 in luminance from the
      background they are drawn over (often they are its own texture, shifted), whereas salient
      objects are free in luminance and always differ in colour.
    - Depth order. Salient objects sit in front of distractors and cast soft shadows; occluders
      in front of them are background-like (grey, low contrast), and the pixels they cover leave
      the mask.

    Shape, size and position carry no information: distractors and occluders are drawn from the
    same shape families as salient objects, and salient objects range from tiny (about 0.2% of
    the frame) to frame-filling and out of frame.

Variety
    Image sides 200-480 px with aspect ratios up to 2:1 either way (no side below 160); 1-3
    salient objects from twelve shape families (convex: ellipse, polygon, rounded rectangle;
    concave: star, blob, cross/T/L, crescent; holes: ring, blob with holes; thin parts: creature
    with limbs, stroke, lollipop); textures (flat, gradients, stripes, checks, dots, mottling,
    shading); backgrounds layering gradients, value noise, stripes, checks, blobs, wood rings
    and grain with a slight tint; up to nine low-contrast distractors and thin curves; occluding
    bars and shapes; slight defocus and noise. Thin parts are at least 3 px wide, so they survive
    a downscale to about half size. A scene whose mask would cover less than 0.15% of the frame
    is redrawn (the last attempt keeps objects whole), so no mask is empty.

Speed
    About 20 ms per picture on one core (rendering, JPEG, PNG); ``bench/synth.py`` times 2,000.
"""

from __future__ import annotations

import colorsys
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from isnet.build_in.imageio import encode_png
from isnet.core import IsnetError, atomic_path, write_bytes_atomic, write_text_atomic

__all__ = ["BACKGROUND_MAX_CHROMA", "SALIENT_MIN_CHROMA", "SHAPE_FAMILIES", "SYNTH_VERSION", "SynthSample",
           "SynthSummary", "generate_dataset", "render_sample", "sample_stem"]

# Bump when the pictures for a given (seed, index) change: a folder made by another version is
# refused instead of silently mixed.
SYNTH_VERSION = 1

SALIENT_MIN_CHROMA = 0.40
BACKGROUND_MAX_CHROMA = 0.12

_MANIFEST = "synth.json"
_JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95,
                # 4:2:0 subsampling would smear the chroma cue across edges by a pixel or two.
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
_SUPERSAMPLE = 4           # salient objects and occluders: coverage known to 1/16 pixel
_DISTRACTOR_SUPERSAMPLE = 2  # distractors never reach the mask; 2x keeps their edges smooth
_MIN_LINE_PX = 3.0         # thin parts of salient objects
_MIN_VISIBLE = 0.0015      # a scene whose mask covers less of the frame than this is redrawn
_ATTEMPTS = 6
_DISTRACTOR_CONTRAST = (0.04, 0.16)


@dataclass(frozen=True)
class SynthSample:
    """One generated picture: ``image`` RGB uint8 (H, W, 3), ``mask`` uint8 (H, W) of 0/255,
    and ``shapes``, the shape family of each salient object (for tests and statistics)."""

    image: np.ndarray
    mask: np.ndarray
    shapes: tuple[str, ...]


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate_dataset` did: ``written`` new pairs, ``skipped`` complete ones."""

    out_dir: Path
    count: int
    seed: int
    written: int
    skipped: int
    seconds: float

    @property
    def image_dir(self) -> Path:
        return self.out_dir / "image"

    @property
    def mask_dir(self) -> Path:
        return self.out_dir / "mask"


def sample_stem(index: int) -> str:
    """File stem of picture ``index``: ``0007`` (``image/0007.jpg`` pairs with ``mask/0007.png``)."""
    return f"{index:04d}"


# --------------------------------------------------------------------------------------------
# Shapes: lists of drawing ops in unit coordinates (radius about 1), placed by an affine map.
# An op is ("fill", points, value) or ("line", points, value, width); value 0 cuts a hole.


def _outline(t: np.ndarray, r: np.ndarray | float, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _circle(r: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 64) -> np.ndarray:
    return _outline(np.linspace(0, 2 * np.pi, n, endpoint=False), r, cx, cy)


def _blob_outline(rng: np.random.Generator, n: int = 96) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones_like(t)
    for k in range(2, 7):
        r += rng.uniform(0, 0.32) / math.sqrt(k) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = np.clip(r, 0.3, None)
    return _outline(t, r / r.max())


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _shape_ellipse(rng):
    return [("fill", _circle(), 255)]


def _shape_polygon(rng):
    k = int(rng.integers(3, 9))
    t = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(-0.3, 0.3, k) * (2 * np.pi / k)
    return [("fill", _outline(np.sort(t), 1.0), 255)]


def _shape_rounded_rect(rng):
    a = rng.uniform(0.35, 1.0)
    r = rng.uniform(0.05, 0.9) * a
    corners = [(1 - r, a - r, 0.0), (-1 + r, a - r, 0.5), (-1 + r, -a + r, 1.0), (1 - r, -a + r, 1.5)]
    arcs = [_outline(np.linspace(s * np.pi, (s + 0.5) * np.pi, 9), r, cx, cy) for cx, cy, s in corners]
    return [("fill", np.concatenate(arcs), 255)]


def _shape_star(rng):
    k = int(rng.integers(4, 9))
    t = np.linspace(0, 2 * np.pi, 2 * k, endpoint=False)
    r = np.where(np.arange(2 * k) % 2 == 0, 1.0, rng.uniform(0.35, 0.65))
    return [("fill", _outline(t, r), 255)]


def _shape_blob(rng):
    return [("fill", _blob_outline(rng), 255)]


def _shape_cross(rng):
    w = rng.uniform(0.18, 0.4)
    kind = rng.integers(3)
    if kind == 0:  # plus
        rects = [_rect(-1, -w, 1, w), _rect(-w, -1, w, 1)]
    elif kind == 1:  # T
        rects = [_rect(-1, -1, 1, -1 + 2 * w), _rect(-w, -1, w, 1)]
    else:  # L
        rects = [_rect(-1, -1, -1 + 2 * w, 1), _rect(-1, 1 - 2 * w, 1, 1)]
    return [("fill", r, 255) for r in rects]


def _shape_crescent(rng):
    a = rng.uniform(0, 2 * np.pi)
    d = rng.uniform(0.35, 0.7)
    return [("fill", _circle(), 255), ("fill", _circle(rng.uniform(0.75, 1.0), d * math.cos(a), d * math.sin(a)), 0)]


def _shape_ring(rng):
    outer = _circle() if rng.random() < 0.5 else _blob_outline(rng)
    return [("fill", outer, 255), ("fill", outer * rng.uniform(0.35, 0.6), 0)]


def _shape_holes(rng):
    ops = [("fill", _blob_outline(rng), 255)]
    for _ in range(int(rng.integers(1, 4))):
        a, d, r = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.4), rng.uniform(0.08, 0.2)
        ops.append(("fill", _circle(r, d * math.cos(a), d * math.sin(a), n=32), 0))
    return ops


def _shape_creature(rng):
    body = rng.uniform(0.4, 0.6)
    ops = [("fill", _blob_outline(rng) * body, 255)]
    width = rng.uniform(0.05, 0.12)
    for a in rng.uniform(0, 2 * np.pi, int(rng.integers(2, 7))):
        length = rng.uniform(0.6, 1.0)
        bends = a + np.cumsum(rng.uniform(-0.5, 0.5, 3))
        steps = np.stack([np.cos(bends), np.sin(bends)], axis=1) * (length / 3)
        ops.append(("line", np.concatenate([[[0.0, 0.0]], np.cumsum(steps, axis=0)]), 255, width))
    return ops


def _shape_stroke(rng):
    angle = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.35, 40))
    pts = np.cumsum(np.stack([np.cos(angle), np.sin(angle)], axis=1), axis=0)
    pts -= (pts.max(0) + pts.min(0)) / 2
    pts /= np.abs(pts).max()
    return [("line", pts, 255, rng.uniform(0.1, 0.25))]


def _shape_lollipop(rng):
    head = rng.uniform(0.3, 0.55)
    outline = _circle(head, 0, -1 + head) if rng.random() < 0.6 else _rect(-head, -1, head, -1 + 1.4 * head)
    return [("fill", outline, 255), ("line", np.array([[0.0, -1 + head], [0.0, 1.0]]), 255, rng.uniform(0.07, 0.15))]


_SHAPES = {
    "ellipse": _shape_ellipse, "polygon": _shape_polygon, "rounded-rect": _shape_rounded_rect,
    "star": _shape_star, "blob": _shape_blob, "cross": _shape_cross, "crescent": _shape_crescent,
    "ring": _shape_ring, "holes": _shape_holes, "creature": _shape_creature, "stroke": _shape_stroke,
    "lollipop": _shape_lollipop,
}
SHAPE_FAMILIES = tuple(_SHAPES)


@dataclass(frozen=True)
class _Placed:
    """A shape placed in the image: ops in pixel coordinates, its centre and scale (about its radius)."""

    ops: list
    cx: float
    cy: float
    scale: float


def _place(ops: list, scale: float, stretch: float, theta: float, cx: float, cy: float,
           min_width: float) -> _Placed:
    c, s = math.cos(theta), math.sin(theta)
    affine = np.array([[c, -s], [s, c]]) @ np.diag([1.0, stretch]) * scale
    placed = []
    for op in ops:
        pts = op[1] @ affine.T + (cx, cy)
        if op[0] == "line":
            placed.append(("line", pts, op[2], max(min_width, op[3] * scale * math.sqrt(stretch))))
        else:
            placed.append((op[0], pts, op[2]))
    return _Placed(placed, cx, cy, scale)


def _coverage(ops: list, h: int, w: int, ss: int, margin: int = 1):
    """Rasterise ops ``ss`` x ``ss`` supersampled; return (coverage float32 in [0, 1], y0, x0).

    The coverage array spans the ops' bounding box (plus ``margin``) clipped to the image;
    None when the ops miss the image entirely.
    """
    lo = np.full(2, np.inf)
    hi = np.full(2, -np.inf)
    for op in ops:
        pad = op[3] / 2 if op[0] == "line" else 0.0
        lo = np.minimum(lo, op[1].min(0) - pad)
        hi = np.maximum(hi, op[1].max(0) + pad)
    x0, y0 = max(0, int(math.floor(lo[0])) - margin), max(0, int(math.floor(lo[1])) - margin)
    x1, y1 = min(w, int(math.ceil(hi[0])) + margin + 1), min(h, int(math.ceil(hi[1])) + margin + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    bw, bh = x1 - x0, y1 - y0
    canvas = np.zeros((bh * ss, bw * ss), np.uint8)
    shift = 4
    for op in ops:
        # Pixel x spans [x - 0.5, x + 0.5]; in the canvas that is subpixel centres ss*x .. ss*x+ss-1,
        # exactly the block INTER_AREA averages back into pixel x.
        pts = ((op[1] - (x0, y0) + 0.5) * ss - 0.5) * (1 << shift)
        pts = np.round(pts).astype(np.int32).reshape(-1, 1, 2)
        if op[0] == "line":
            cv2.polylines(canvas, [pts], False, op[2], thickness=max(1, int(round(op[3] * ss))),
                          lineType=cv2.LINE_8, shift=shift)
        else:
            cv2.fillPoly(canvas, [pts], op[2], lineType=cv2.LINE_8, shift=shift)
    if ss > 1:
        canvas = cv2.resize(canvas, (bw, bh), interpolation=cv2.INTER_AREA)
    return canvas.astype(np.float32) * (1 / 255), y0, x0


# --------------------------------------------------------------------------------------------
# Colour and texture.


def _grid(h: int, w: int, y0: int = 0, x0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(y0, y0 + h, dtype=np.float32)[:, None], np.arange(x0, x0 + w, dtype=np.float32)[None, :])


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Value noise in [0, 1] with about ``cells`` features along the longer side."""
    gh = max(2, int(round(cells * h / max(h, w))) + 1)
    gw = max(2, int(round(cells * w / max(h, w))) + 1)
    up = cv2.resize(rng.random((gh, gw), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(up.min()), float(up.max())
    return (up - lo) / max(hi - lo, 1e-6)


def _tint(hue: float, chroma: float) -> np.ndarray:
    """An RGB offset with zero mean whose chroma (max - min) is exactly ``chroma``."""
    v = np.array(colorsys.hsv_to_rgb(hue % 1.0, 1.0, 1.0), dtype=np.float32)
    return (v - v.mean()) * chroma  # a fully saturated, full-value colour has max - min = 1


def _limit_chroma(rgb: np.ndarray, max_chroma: float) -> np.ndarray:
    """Pull colours toward their grey so no pixel's chroma exceeds ``max_chroma``."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # Channel-wise maximum/minimum: numpy reductions over a last axis of 3 are several times slower.
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    k = np.minimum(1.0, max_chroma / np.maximum(chroma, 1e-6))[..., None]
    mean = ((r + g + b) * (1 / 3))[..., None]
    return mean + (rgb - mean) * k


def _pattern(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, scale: float) -> np.ndarray:
    """A texture weight field in [0, 1] over a region (coordinates yy, xx)."""
    kind = rng.choice(["flat", "gradient", "radial", "stripes", "checks", "dots", "mottled"],
                      p=[0.22, 0.18, 0.12, 0.16, 0.1, 0.1, 0.12])
    theta = rng.uniform(0, 2 * np.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    period = max(4.0, scale * rng.uniform(0.15, 0.6))
    if kind == "flat":
        return np.zeros(np.broadcast_shapes(yy.shape, xx.shape), np.float32)
    if kind == "gradient":
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
        return np.broadcast_to(t, np.broadcast_shapes(yy.shape, xx.shape)).astype(np.float32)
    if kind == "radial":
        cy, cx = float(yy.mean()), float(xx.mean())
        return np.clip(np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / scale, 0, 1).astype(np.float32)
    if kind == "stripes":
        return (0.5 + 0.5 * np.tanh(4 * np.sin(2 * np.pi * u / period))).astype(np.float32)
    if kind == "checks":
        checks = np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)
        return (0.5 + 0.5 * np.tanh(4 * checks)).astype(np.float32)
    if kind == "dots":
        du = (u / period) % 1.0 - 0.5
        dv = (v / period) % 1.0 - 0.5
        return np.clip((0.3 - np.sqrt(du * du + dv * dv)) * 12 + 0.5, 0, 1).astype(np.float32)
    h, w = np.broadcast_shapes(yy.shape, xx.shape)
    return _smooth_noise(rng, h, w, max(2.0, max(h, w) / period))


def _salient_fill(rng: np.random.Generator, y0: int, x0: int, h: int, w: int, scale: float) -> np.ndarray:
    """An RGB float32 (h, w, 3) texture whose every pixel has chroma >= SALIENT_MIN_CHROMA.

    Two saturated colours are mixed in HSV (never in RGB, where red + cyan would give grey),
    then shaded; value is floored so that saturation * value stays above the cue's threshold.
    """
    yy, xx = _grid(h, w, y0, x0)
    weight = _pattern(rng, yy, xx, scale)
    h1 = rng.uniform(0, 360)
    h2 = h1 + float(rng.choice([-1, 1]) * rng.uniform(20, 100))
    s1, s2 = map(float, rng.uniform(0.55, 1.0, 2))
    v1, v2 = map(float, rng.uniform(0.5, 1.0, 2))
    hue = h1 + (h2 - h1) * weight
    sat = s1 + (s2 - s1) * weight
    val = v1 + (v2 - v1) * weight
    if rng.random() < 0.5:  # soft light from one side
        a = rng.uniform(0, 2 * np.pi)
        ly, lx = float(yy.mean()) + scale * math.sin(a), float(xx.mean()) + scale * math.cos(a)
        dist = np.sqrt((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * scale)
        val = val * (1 - rng.uniform(0.1, 0.4) * np.clip(dist, 0, 1))
    sat = np.clip(sat, 0.5, 1.0)
    val = np.clip(np.maximum(val, (SALIENT_MIN_CHROMA + 0.02) / sat), 0, 1.0)
    hsv = np.dstack([np.broadcast_to(hue % 360, (h, w)), np.broadcast_to(sat, (h, w)),
                     np.broadcast_to(val, (h, w))]).astype(np.float32)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A low-chroma, cluttered RGB float32 background: gradient, textures and a slight tint."""
    yy, xx = _grid(h, w)
    lum = np.full((h, w), rng.uniform(0.15, 0.85), np.float32)
    if rng.random() < 0.7:
        theta = rng.uniform(0, 2 * np.pi)
        c, s = math.cos(theta), math.sin(theta)
        ramp = (xx * c + yy * s) / (abs(c) * w + abs(s) * h)
        lum = lum + rng.uniform(0.05, 0.3) * (ramp - float(ramp.mean()))
    kinds = rng.choice(["noise", "stripes", "checks", "blobs", "grain", "wood"], size=int(rng.integers(1, 4)),
                       replace=False)
    for kind in kinds:
        amp = rng.uniform(0.03, 0.12)
        theta = rng.uniform(0, 2 * np.pi)
        u = xx * math.cos(theta) + yy * math.sin(theta)
        period = rng.uniform(6, 60)
        if kind == "noise":
            layer = _smooth_noise(rng, h, w, rng.uniform(3, 20)) - 0.5
            layer += 0.5 * (_smooth_noise(rng, h, w, rng.uniform(20, 60)) - 0.5)
        elif kind == "stripes":
            layer = np.tanh(rng.uniform(0.5, 5) * np.sin(2 * np.pi * u / period)) * 0.5
        elif kind == "checks":
            v = -xx * math.sin(theta) + yy * math.cos(theta)
            layer = np.tanh(3 * np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)) * 0.5
        elif kind == "blobs":
            layer = np.zeros((h, w), np.float32)
            for _ in range(int(rng.integers(3, 13))):
                centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                axes = (int(rng.integers(4, max(5, w // 4))), int(rng.integers(4, max(5, h // 4))))
                cv2.ellipse(layer, centre, axes, rng.uniform(0, 180), 0, 360, float(rng.uniform(-1, 1)), -1)
            layer = cv2.GaussianBlur(layer, (0, 0), rng.uniform(2, 12))
        elif kind == "grain":
            layer = rng.standard_normal((h, w), dtype=np.float32) * 0.5
        else:  # wood: wobbly concentric rings
            cy, cx = rng.uniform(-h, 2 * h), rng.uniform(-w, 2 * w)
            r = np.sqrt((yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.2, 1)) ** 2)
            r = r + _smooth_noise(rng, h, w, 4) * period
            layer = np.sin(2 * np.pi * r / period) * 0.5
        lum = lum + amp * layer
    lum = np.clip(lum, 0.03, 0.97)
    t1 = _tint(rng.uniform(), rng.uniform(0, 0.08))
    t2 = _tint(rng.uniform(), rng.uniform(0, 0.08))
    mix = _smooth_noise(rng, h, w, rng.uniform(1, 5))[..., None]
    return lum[..., None] + t1 * (1 - mix) + t2 * mix


def _dull_fill(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A low-contrast fill for a distractor or occluder over the background patch ``under``."""
    delta = float(rng.choice([-1, 1]) * rng.uniform(*_DISTRACTOR_CONTRAST))
    if rng.random() < 0.5:  # camouflage: the background's own texture, a little lighter or darker
        return under + delta
    colour = under.reshape(-1, 3).mean(0) + delta + _tint(rng.uniform(), rng.uniform(0, 0.08))
    return np.broadcast_to(colour.astype(np.float32), under.shape)


def _composite(image: np.ndarray, alpha: np.ndarray, y0: int, x0: int, fill: np.ndarray) -> None:
    h, w = alpha.shape
    region = image[y0:y0 + h, x0:x0 + w]
    a = alpha[..., None]
    region *= 1 - a
    region += fill * a


# --------------------------------------------------------------------------------------------
# Scenes.


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    long = int(rng.integers(200, 481))
    ratio = 1.0 if rng.random() < 0.15 else math.exp(rng.uniform(0, math.log(2.0)))
    short = max(160, int(round(long / ratio)))
    return (short, long) if rng.random() < 0.5 else (long, short)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _scale_for(area_fraction: float, h: int, w: int) -> float:
    """The unit-shape scale giving about ``area_fraction`` of an h x w frame (as a circle)."""
    return math.sqrt(area_fraction * h * w / math.pi)


def _random_shape(rng: np.random.Generator, scale: float, cx: float, cy: float, min_width: float):
    """A shape of a random family at (cx, cy); return (family, placed shape)."""
    family = SHAPE_FAMILIES[int(rng.integers(len(SHAPE_FAMILIES)))]
    ops = _SHAPES[family](rng)
    return family, _place(ops, scale, rng.uniform(0.45, 1.0), rng.uniform(0, 2 * np.pi), cx, cy, min_width)


def _centre(rng: np.random.Generator, side: int, radius: float) -> float:
    """A centre keeping a shape of ``radius`` inside [0, side] where it fits, near the middle otherwise."""
    lo, hi = radius, side - radius
    if lo > hi:
        lo, hi = max(0.2 * side, hi), min(0.8 * side, lo)
    return rng.uniform(lo, hi)


def _render_scene(rng: np.random.Generator, h: int, w: int, fallback: bool):
    """Compose one scene; return (RGB float32 image, salient share float32, salient families).

    ``fallback`` keeps every salient object inside the frame, at least 1% of it, unoccluded.
    """
    image = _background(rng, h, w)
    for _ in range(int(rng.integers(0, 10))):
        scale = _scale_for(_log_uniform(rng, 0.001, 0.15), h, w)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.2:  # a thin low-contrast curve; unit width 0 so min_width sets it
            shape = _place([("line", _shape_stroke(rng)[0][1], 255, 0.0)], scale, 1.0, 0.0, cx, cy,
                           rng.uniform(1.0, 3.0))
        else:
            shape = _random_shape(rng, scale, cx, cy, 1.0)[1]
        hit = _coverage(shape.ops, h, w, _DISTRACTOR_SUPERSAMPLE)
        if hit is not None:
            alpha, y0, x0 = hit
            under = image[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]]
            _composite(image, alpha, y0, x0, _dull_fill(rng, under))
    image = _limit_chroma(np.clip(image, 0, 1), BACKGROUND_MAX_CHROMA)
    plain = image.copy()

    n_objects = 1 + int(rng.random() < 0.35) + int(rng.random() < 0.12)
    # The main object: one in five small to tiny, the rest up to larger than the frame.
    small = not fallback and rng.random() < 0.2
    fractions = [_log_uniform(rng, 0.004, 0.03) if small else _log_uniform(rng, 0.05, 2.0)]
    fractions += [_log_uniform(rng, 0.003, 0.2) for _ in range(n_objects - 1)]
    if rng.random() < 0.8:  # usually the small ones in front
        fractions.sort(reverse=True)
    objects = []
    for fraction in fractions:
        scale = _scale_for(fraction, h, w)
        if fallback or rng.random() < 0.75:
            cx, cy = _centre(rng, w, scale), _centre(rng, h, scale)
        else:  # anywhere: often partly out of frame
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        objects.append(_random_shape(rng, scale, cx, cy, _MIN_LINE_PX))

    if rng.random() < 0.3:  # soft shadows on the background, one light for the scene
        a = rng.uniform(0, 2 * np.pi)
        strength = rng.uniform(0.2, 0.45)
        for _, shape in objects:
            offset = np.array([math.cos(a), math.sin(a)]) * shape.scale * rng.uniform(0.03, 0.1)
            sigma = 1 + shape.scale * rng.uniform(0.02, 0.08)
            moved = [(op[0], op[1] + offset, *op[2:]) for op in shape.ops]
            hit = _coverage(moved, h, w, 2, margin=int(3 * sigma) + 1)
            if hit is not None:
                alpha, y0, x0 = hit
                alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
                image[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]] *= (1 - strength * alpha)[..., None]

    salient = np.zeros((h, w), np.float32)
    for _, shape in objects:
        sigma = rng.uniform(0.4, 1.2) if rng.random() < 0.3 else 0.0  # a feathered edge
        hit = _coverage(shape.ops, h, w, _SUPERSAMPLE, margin=int(3 * sigma) + 1)
        if hit is None:
            continue
        alpha, y0, x0 = hit
        if sigma:
            alpha = cv2.GaussianBlur(alpha, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        bh, bw = alpha.shape
        _composite(image, alpha, y0, x0, _salient_fill(rng, y0, x0, bh, bw, shape.scale))
        share = salient[y0:y0 + bh, x0:x0 + bw]
        share += (1 - share) * alpha

    if not fallback and rng.random() < 0.3:  # background-like things in front of the objects
        for _ in range(int(rng.integers(1, 3))):
            target = objects[int(rng.integers(len(objects)))][1]
            cx = target.cx + rng.uniform(-0.8, 0.8) * target.scale
            cy = target.cy + rng.uniform(-0.8, 0.8) * target.scale
            if rng.random() < 0.5:  # a bar across the object
                a = rng.uniform(0, 2 * np.pi)
                half = np.array([math.cos(a), math.sin(a)]) * target.scale * rng.uniform(1.2, 2.5)
                width = max(2.0, target.scale * rng.uniform(0.08, 0.25))
                ops = [("line", np.array([[cx, cy] - half, [cx, cy] + half]), 255, width)]
            else:
                ops = _random_shape(rng, target.scale * rng.uniform(0.2, 0.5), cx, cy, 2.0)[1].ops
            hit = _coverage(ops, h, w, _SUPERSAMPLE)
            if hit is None:
                continue
            alpha, y0, x0 = hit
            bh, bw = alpha.shape
            fill = _limit_chroma(_dull_fill(rng, plain[y0:y0 + bh, x0:x0 + bw]), BACKGROUND_MAX_CHROMA)
            _composite(image, alpha, y0, x0, fill)
            salient[y0:y0 + bh, x0:x0 + bw] *= 1 - alpha

    if rng.random() < 0.2:  # slight defocus
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 0.7))
    if rng.random() < 0.5:  # sensor noise, luminance only so the chroma gap survives
        image = image + rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(0.004, 0.02)
    return image, salient, tuple(family for family, _ in objects)


def render_sample(seed: int, index: int) -> SynthSample:
    """Render picture ``index`` of the dataset with ``seed``, in memory (nothing is written).

    The result depends only on ``(seed, index)`` and :data:`SYNTH_VERSION`.
    """
    rng = np.random.default_rng([seed, index])
    h, w = _image_size(rng)
    for attempt in range(_ATTEMPTS):
        # The last attempt keeps every object inside the frame and skips occluders.
        image, salient, shapes = _render_scene(rng, h, w, fallback=attempt == _ATTEMPTS - 1)
        mask = np.where(salient >= 0.5, 255, 0).astype(np.uint8)
        if np.count_nonzero(mask) >= _MIN_VISIBLE * h * w:
            break
    rgb = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return SynthSample(rgb, mask, shapes)


# --------------------------------------------------------------------------------------------
# Writing a folder.


def _paths(out_dir: Path, index: int) -> tuple[Path, Path]:
    stem = sample_stem(index)
    return out_dir / "image" / f"{stem}.jpg", out_dir / "mask" / f"{stem}.png"


def _write_one(job: tuple[str, int, int]) -> int:
    out_dir, seed, index = job
    image_path, mask_path = _paths(Path(out_dir), index)
    sample = render_sample(seed, index)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR), _JPEG_PARAMS)
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {image_path}")
    write_bytes_atomic(image_path, jpeg.tobytes())
    with atomic_path(mask_path) as tmp:
        encode_png(tmp, sample.mask)
    return index


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the pool is the parallelism; OpenCV's own threads would oversubscribe


def _prepare_folder(out_dir: Path, seed: int) -> None:
    """Create the folders and the manifest; refuse a folder made with another seed or version."""
    manifest = out_dir / _MANIFEST
    if out_dir.exists() and not out_dir.is_dir():
        raise IsnetError(f"output folder {out_dir} is a file; choose a folder path")
    try:
        (out_dir / "image").mkdir(parents=True, exist_ok=True)
        (out_dir / "mask").mkdir(exist_ok=True)
        if manifest.exists():
            held = json.loads(manifest.read_text())
            if held.get("seed") != seed or held.get("version") != SYNTH_VERSION:
                raise IsnetError(
                    f"{out_dir} holds synthetic data of seed {held.get('seed')} (generator version "
                    f"{held.get('version')}); use that seed to extend it, or a new output folder")
        else:
            write_text_atomic(manifest, json.dumps({"generator": "isnet synth", "version": SYNTH_VERSION,
                                                    "seed": seed}, indent=2) + "\n")
    except OSError as exc:
        raise IsnetError(f"cannot write to {out_dir}: {exc.strerror or exc}; choose a writable output folder") from None
    except (json.JSONDecodeError, AttributeError):
        raise IsnetError(f"{manifest} is not a synth manifest; remove it or choose a new output folder") from None


def generate_dataset(out_dir: str | os.PathLike, count: int, seed: int = 0, workers: int = 1,
                     progress: Callable[[int, int], None] | None = None) -> SynthSummary:
    """Write pictures ``0 .. count-1`` of the synthetic set ``seed`` to ``out_dir`` in ECSSD layout.

    Pairs already complete (both files exist; each is written atomically) are skipped, so an
    interrupted run resumes and a larger ``count`` extends the set. ``workers`` > 1 renders in
    that many processes. ``progress(done, count)`` is called as pairs complete, skipped ones
    included. Raises :class:`IsnetError` for a non-positive count or worker number,
    a negative seed, an unwritable folder or one holding another seed's data.
    """
    for name, value, low in (("count", count, 1), ("workers", workers, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise IsnetError(f"{name} must be an integer >= {low}, got {value!r}")
    count, seed, workers, out_dir = int(count), int(seed), int(workers), Path(out_dir)
    start = time.perf_counter()
    _prepare_folder(out_dir, seed)
    todo = [i for i in range(count) if not (_paths(out_dir, i)[0].exists() and _paths(out_dir, i)[1].exists())]
    done = count - len(todo)
    if progress:
        progress(done, count)
    jobs = [(str(out_dir), seed, i) for i in todo]
    workers = min(workers, len(jobs))
    if workers <= 1:
        results = map(_write_one, jobs)
        pool = None
    else:
        # spawn, not fork: the caller may have threads (a progress bar's monitor, a trainer).
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker)
        results = pool.imap_unordered(_write_one, jobs, chunksize=4)
    try:
        for _ in results:
            done += 1
            if progress:
                progress(done, count)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return SynthSummary(out_dir=out_dir, count=count, seed=seed, written=len(todo), skipped=count - len(todo),
                        seconds=time.perf_counter() - start)
