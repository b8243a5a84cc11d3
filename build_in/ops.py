"""The pre-processing ops registry: the single definition of how an image becomes a model input.

A build config lists ``process_ops`` (``[{type: DecodeImage}, {type: Resize, size: [320, 320]},
...]``). The same list drives calibration, the stream runner, the npz tools and evaluation, and
is stored in every artifact's ``build.json`` so a runner needs nothing else.

Every image is decoded to RGB first; ``DecodeImage``'s ``color`` then picks the channel order the
model wants. Geometry (a keep-ratio resize pads the image) is tracked in :class:`Geometry`, so
:meth:`Preprocessor.restore` can map an output map back onto the original image exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import cv2
import numpy as np

from isnet.build_in.imageio import decode_image
from isnet.core import IsnetError, did_you_mean
from isnet.core.defaults import INPUT_SIZE

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}

CVT_CODES = {
    "RGB2BGR": cv2.COLOR_RGB2BGR,
    "BGR2RGB": cv2.COLOR_BGR2RGB,
    "RGB2GRAY": cv2.COLOR_RGB2GRAY,
    "BGR2GRAY": cv2.COLOR_BGR2GRAY,
    "GRAY2RGB": cv2.COLOR_GRAY2RGB,
    "RGB2HSV": cv2.COLOR_RGB2HSV,
    "RGB2YCrCb": cv2.COLOR_RGB2YCrCb,
}


@dataclass(frozen=True)
class Geometry:
    """Where the image content lies in the model input: original size and content box."""

    original_hw: tuple[int, int]
    content_box: tuple[int, int, int, int]  # top, left, height, width in the model input


class Op:
    """Base of the registry: a frozen dataclass with a ``type`` name and ``apply``."""

    type: ClassVar[str]

    def apply(self, image: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
        raise NotImplementedError

    def to_spec(self) -> dict:
        """The op as a config entry with every parameter spelled out."""
        return {"type": self.type, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class DecodeImage(Op):
    """Decode the file (always as RGB, EXIF applied), then order channels as ``color``."""

    type: ClassVar[str] = "DecodeImage"
    color: str = "RGB"

    def __post_init__(self):
        if self.color not in ("RGB", "BGR"):
            raise IsnetError(f"DecodeImage.color must be 'RGB' or 'BGR', got '{self.color}'")

    def apply(self, image, geometry):
        return (image[..., ::-1] if self.color == "BGR" else image), geometry


@dataclass(frozen=True)
class Resize(Op):
    """Resize to ``size`` = [height, width]; ``keep_ratio`` fits inside it and pads (top-left)."""

    type: ClassVar[str] = "Resize"
    size: tuple[int, int] = INPUT_SIZE
    interpolation: str = "bilinear"
    keep_ratio: bool = False
    pad_value: float = 0.0

    def __post_init__(self):
        if len(self.size) != 2 or any(int(s) <= 0 for s in self.size):
            raise IsnetError(f"Resize.size must be [height, width] of positive integers, got {list(self.size)}")
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if self.interpolation not in INTERPOLATIONS:
            raise IsnetError(f"Resize.interpolation '{self.interpolation}' is unknown"
                             f"{did_you_mean(self.interpolation, INTERPOLATIONS)}; "
                             f"choose from {', '.join(INTERPOLATIONS)}")

    def apply(self, image, geometry):
        height, width = self.size
        h, w = image.shape[:2]
        mode = INTERPOLATIONS[self.interpolation]
        if not self.keep_ratio:
            return cv2.resize(image, (width, height), interpolation=mode), Geometry(
                geometry.original_hw, (0, 0, height, width))
        scale = min(height / h, width / w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        resized = cv2.resize(image, (new_w, new_h), interpolation=mode)
        canvas = np.full((height, width, *image.shape[2:]), self.pad_value, dtype=image.dtype)
        canvas[:new_h, :new_w] = resized.reshape(new_h, new_w, *image.shape[2:])
        return canvas, Geometry(geometry.original_hw, (0, 0, new_h, new_w))


@dataclass(frozen=True)
class CvtColor(Op):
    """OpenCV colour conversion by name, e.g. ``RGB2BGR`` (gray results keep 3 channels)."""

    type: ClassVar[str] = "CvtColor"
    code: str = "RGB2BGR"

    def __post_init__(self):
        if self.code not in CVT_CODES:
            raise IsnetError(f"CvtColor.code '{self.code}' is unknown{did_you_mean(self.code, CVT_CODES)}; "
                             f"choose from {', '.join(CVT_CODES)}")

    def apply(self, image, geometry):
        out = cv2.cvtColor(np.ascontiguousarray(image), CVT_CODES[self.code])
        if out.ndim == 2:
            # The network takes 3 channels; a gray conversion is replicated.
            out = np.repeat(out[..., None], 3, axis=2)
        return out, geometry


@dataclass(frozen=True)
class Normalize(Op):
    """``(pixel * scale - mean) / std`` per channel, as float32 (scale 1/255 maps to [0, 1])."""

    type: ClassVar[str] = "Normalize"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    scale: float = 1 / 255

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise IsnetError("Normalize.mean and Normalize.std need 3 values each")
        if any(s == 0 for s in self.std):
            raise IsnetError("Normalize.std must not contain 0")

    def apply(self, image, geometry):
        mean = np.asarray(self.mean, dtype=np.float32)
        inv_std = 1.0 / np.asarray(self.std, dtype=np.float32)
        return (image.astype(np.float32) * np.float32(self.scale) - mean) * inv_std, geometry

    def chw_from_uint8(self, image: np.ndarray) -> np.ndarray:
        """``apply`` then :class:`ToTensor` in one pass, for a uint8 HxWx3 image; bit-identical.

        A uint8 channel has 256 levels, so each channel's result is a 256-entry table computed
        with exactly ``apply``'s float32 arithmetic; looking it up straight into the CHW tensor
        is faster than the float passes and the transposing copy (1.2 -> 0.7 ms per 320x320
        ECSSD picture here), time the stream runner's decode threads take from inference.
        """
        levels = np.arange(256, dtype=np.uint8)[:, None].repeat(3, axis=1)
        table, _ = self.apply(levels, None)  # 256 x 3: level -> value per channel
        out = np.empty((3, *image.shape[:2]), dtype=np.float32)
        for channel in range(3):
            # mode="clip" never changes a uint8 index (the table has 256 entries) but, unlike the
            # default "raise", lets numpy write into `out` directly instead of through a buffer.
            np.take(np.ascontiguousarray(table[:, channel]), image[..., channel], out=out[channel], mode="clip")
        return out


@dataclass(frozen=True)
class ToTensor(Op):
    """HWC -> CHW float32 (contiguous)."""

    type: ClassVar[str] = "ToTensor"

    def apply(self, image, geometry):
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32), geometry


OPS: dict[str, type[Op]] = {cls.type: cls for cls in (DecodeImage, Resize, CvtColor, Normalize, ToTensor)}

def default_process_ops(size: Sequence[int] = INPUT_SIZE) -> tuple[Mapping, ...]:
    """The reference recipe's pre-processing at ``size`` (height, width), as an immutable op list.

    RGB, bilinear resize, ``(x / 255 - 0.5) / 1.0``: what the official models were
    trained with. Models without a ``build.json``, default build configs, training and the tests
    all take it from here.
    """
    if len(size) != 2 or any(int(s) <= 0 for s in size):
        raise IsnetError(f"the input size must be two positive integers (height width), got {list(size)}")
    ops = ({"type": "DecodeImage", "color": "RGB"},
           {"type": "Resize", "size": (int(size[0]), int(size[1])), "interpolation": "bilinear"},
           {"type": "Normalize", "mean": (0.5, 0.5, 0.5), "std": (1.0, 1.0, 1.0)},
           {"type": "ToTensor"})
    return tuple(MappingProxyType(op) for op in ops)


DEFAULT_OPS: tuple[Mapping, ...] = default_process_ops()


def _u2net_ops() -> tuple[Mapping, ...]:
    # rembg runs U^2-Net, U^2-Netp and Silueta this way: RGB at 320x320, scaled to [0, 1] and
    # normalised with ImageNet's mean and std. (rembg divides by the picture's own maximum rather
    # than 255; the two agree on every picture with a full-white pixel and differ by a scale
    # otherwise.) It resizes with PIL's Lanczos. Measured on ECSSD 0001-0100 with U^2-Netp, masks
    # min-max stretched as rembg's: mean |ours - rembg's| 0.0028 with OpenCV's Lanczos, 0.0033
    # bicubic, 0.0076 area, 0.0078 bilinear; so Lanczos.
    ops = ({"type": "DecodeImage", "color": "RGB"},
           {"type": "Resize", "size": (320, 320), "interpolation": "lanczos"},
           {"type": "Normalize", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
           {"type": "ToTensor"})
    return tuple(MappingProxyType(op) for op in ops)


# Pre-processing by name, accepted wherever process_ops is (build configs, experiments, --preprocess).
PRESETS: Mapping[str, tuple[Mapping, ...]] = MappingProxyType({
    "isnet-320": default_process_ops((320, 320)),    # the edge recipe's size
    "isnet-1024": default_process_ops((1024, 1024)),  # the official ISNet recipe (isnet-general-use)
    "u2net": _u2net_ops(),
})


def with_input_size(specs, size: Sequence[int]) -> tuple[Mapping, ...]:
    """The op list with its (last) Resize producing ``size`` = (height, width); IsnetError if it has none."""
    specs = [dict(spec) for spec in specs]
    resizes = [i for i, spec in enumerate(specs) if isinstance(spec, Mapping) and spec.get("type") == "Resize"]
    if not resizes:
        raise IsnetError("the pre-processing has no Resize, so an input size cannot be set")
    specs[resizes[-1]]["size"] = (int(size[0]), int(size[1]))
    return tuple(MappingProxyType(spec) for spec in specs)


def resolve_process_ops(value, base_dir: str | os.PathLike | None = None, where: str = "process_ops"):
    """An op list from a preset name, a JSON file (relative to ``base_dir``) or a list, as given.

    A JSON file holds the list, or ``{"process_ops": [...]}`` (the reference device's format). A
    preset comes back as plain dicts and lists (a copy the caller may change).
    """
    if not isinstance(value, str):
        return value
    if value in PRESETS:
        return [{k: list(v) if isinstance(v, tuple) else v for k, v in op.items()} for op in PRESETS[value]]
    path = Path(os.path.expanduser(value))
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not value.lower().endswith(".json"):
        raise IsnetError(f"{where}: unknown preset '{value}'{did_you_mean(value, PRESETS)}; presets: "
                         f"{', '.join(PRESETS)} (or a .json file, or a list of ops)")
    try:
        ops = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IsnetError(f"{where}: cannot read {path} ({exc})") from None
    if isinstance(ops, dict):
        if "process_ops" not in ops:
            raise IsnetError(f"{where}: {path} holds no 'process_ops' list (keys: {', '.join(ops) or 'none'})")
        ops = ops["process_ops"]
    return ops


def _check_type(value, annotation, where: str):
    """Coerce/validate one parameter against its dataclass annotation; raise IsnetError if wrong."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if not isinstance(value, bool):
            raise IsnetError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise IsnetError(f"{where} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise IsnetError(f"{where} must be a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise IsnetError(f"{where} must be a list, got {value!r}")
        item_type = typing.get_args(annotation)[0]
        return tuple(_check_type(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise IsnetError(f"{where} must be an integer, got {value!r}")
        return value
    return value


def op_from_spec(spec: Mapping, where: str = "process_ops") -> Op:
    """Build one op from ``{type: Name, **params}``; errors name ``where`` and suggest fixes."""
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise IsnetError(f"{where}: each op needs a 'type' (one of {', '.join(OPS)}), got {spec!r}")
    name = spec["type"]
    if name not in OPS:
        raise IsnetError(f"{where}.type: unknown op '{name}'{did_you_mean(str(name), OPS)}; "
                         f"valid ops: {', '.join(OPS)}")
    cls = OPS[name]
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    params = {}
    for key, value in spec.items():
        if key == "type":
            continue
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            raise IsnetError(f"{where}: {name} has no parameter '{key}'{did_you_mean(key, fields)}; "
                             f"valid: {valid}")
        params[key] = _check_type(value, hints[key], f"{where}.{key}")
    try:
        return cls(**params)
    except IsnetError as exc:
        raise IsnetError(f"{where}: {exc}") from None


class Preprocessor:
    """A validated op list: ``decode`` a file, ``transform`` the RGB image, ``restore`` an output.

    The list must start with ``DecodeImage`` and end with ``ToTensor`` so that every consumer
    gets a CHW float32 array.
    """

    def __init__(self, ops: Sequence[Op]):
        self.ops = tuple(ops)
        if not self.ops or not isinstance(self.ops[0], DecodeImage):
            raise IsnetError("process_ops must start with DecodeImage")
        if not isinstance(self.ops[-1], ToTensor):
            raise IsnetError("process_ops must end with ToTensor")
        if sum(isinstance(op, DecodeImage) for op in self.ops) != 1:
            raise IsnetError("process_ops must contain exactly one DecodeImage")

    @classmethod
    def from_specs(cls, specs: Sequence[Mapping], where: str = "process_ops") -> "Preprocessor":
        """Validate a config list of op dicts."""
        if not isinstance(specs, Sequence) or isinstance(specs, (str, bytes)):
            raise IsnetError(f"{where} must be a list of ops")
        return cls([op_from_spec(s, f"{where}[{i}]") for i, s in enumerate(specs)])

    def to_specs(self) -> list[dict]:
        """The resolved op list (every parameter explicit), as stored in ``build.json``."""
        specs = []
        for op in self.ops:
            spec = op.to_spec()
            specs.append({k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()})
        return specs

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The (height, width) the last Resize produces, or None when the size follows the image."""
        sizes = [op.size for op in self.ops if isinstance(op, Resize)]
        return sizes[-1] if sizes else None

    def decode(self, path: str | os.PathLike) -> np.ndarray:
        """Decode a file to RGB uint8 (H, W, 3)."""
        return decode_image(path)

    def transform(self, rgb: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """Apply every op to an RGB uint8 image; return the CHW float32 input and its geometry."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise IsnetError(f"expected an RGB uint8 HxWx3 image, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        geometry = Geometry((h, w), (0, 0, h, w))
        image = rgb
        index = 0
        while index < len(self.ops):
            op = self.ops[index]
            following = self.ops[index + 1] if index + 1 < len(self.ops) else None
            uint8_rgb = image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            if isinstance(op, Normalize) and isinstance(following, ToTensor) and uint8_rgb:
                image = op.chw_from_uint8(image)
                index += 2
            else:
                image, geometry = op.apply(image, geometry)
                index += 1
        return image, geometry

    def load(self, path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
        """``decode`` then ``transform``."""
        return self.transform(self.decode(path))

    @staticmethod
    def restore(output_map: np.ndarray, geometry: Geometry) -> np.ndarray:
        """Map a model output (H, W) back to the original image size: crop padding, bilinear resize."""
        top, left, height, width = geometry.content_box
        content = output_map[top:top + height, left:left + width]
        oh, ow = geometry.original_hw
        if content.shape == (oh, ow):
            return np.ascontiguousarray(content, dtype=np.float32)
        return cv2.resize(np.ascontiguousarray(content, dtype=np.float32), (ow, oh), interpolation=cv2.INTER_LINEAR)


def mask_from_output(output_map: np.ndarray, geometry: Geometry, min_max: bool = False) -> np.ndarray:
    """The 8-bit mask of a model's (H, W) output map at its picture's size: what ``isnet run`` writes.

    Every path from an output to a mask (run, npz, serve, profile, the budget's judge, training
    validation) goes through here, so they agree to the byte.
    """
    return map_to_uint8(Preprocessor.restore(output_map, geometry), min_max=min_max)


def map_to_uint8(saliency: np.ndarray, min_max: bool = False) -> np.ndarray:
    """A [0, 1] saliency map as 8-bit grey levels (rounded); ``min_max`` stretches it first.

    The official inference script min-max normalises every map before saving; that is an
    option here because it hides calibration drift.
    """
    values = saliency.astype(np.float32)
    if min_max:
        low, high = float(values.min()), float(values.max())
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
