"""Training data: pairs from an ECSSD-layout folder, augmented, then pre-processed as at deployment.

All randomness is counter-based (see the package docstring), so loader workers hold no random state.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from isnet.build_in.imageio import decode_image, decode_mask
from isnet.build_in.ops import Geometry, Preprocessor, Resize, default_process_ops
from isnet.core import IsnetError


def data_digest(pairs: Sequence[tuple[str, Path, Path]]) -> str:
    return hashlib.sha256("\n".join(stem for stem, _, _ in pairs).encode()).hexdigest()[:16]


def deploy_preprocessor(size: tuple[int, int]) -> Preprocessor:
    """The deployment pre-processing (the reference recipe's) at ``size``."""
    return Preprocessor.from_specs(default_process_ops(size))


def resize_op(pre: Preprocessor) -> Resize:
    return next(op for op in pre.ops if isinstance(op, Resize))


def resize_mask(resize: Resize, mask: np.ndarray) -> np.ndarray:
    """A mask through the same Resize op as its image (bilinear: soft targets along edges)."""
    resized, _ = resize.apply(mask, Geometry(mask.shape[:2], (0, 0, *mask.shape[:2])))
    return resized


def random_crop(rng: np.random.Generator, height: int, width: int, scale_min: float) -> tuple[int, int, int, int]:
    """A box (top, left, h, w) covering ``scale_min``-1 of the area, aspect within 3:4-4:3 of the picture's."""
    if scale_min >= 1:
        return 0, 0, height, width
    area = rng.uniform(scale_min, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    h = min(height, max(1, round(height * math.sqrt(area / ratio))))
    w = min(width, max(1, round(width * math.sqrt(area * ratio))))
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return top, left, h, w


class LoadFailure:
    """A sample that could not be loaded, carried to the main process as a message."""

    def __init__(self, message: str):
        self.message = message


def _rotate(arrays: list[np.ndarray], degrees: float) -> list[np.ndarray]:
    """Rotate image-sized arrays about their centre, reflecting at the border (so no black corners)."""
    height, width = arrays[0].shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return [cv2.warpAffine(a, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            for a in arrays]


def _photometric(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter, sometimes grayscale, blur or sensor noise."""
    rgb = image.astype(np.float32)
    rgb = rgb * rng.uniform(0.7, 1.3)                                              # brightness
    rgb = (rgb - rgb.mean()) * rng.uniform(0.7, 1.3) + rgb.mean()                  # contrast
    gray = rgb @ np.float32([0.299, 0.587, 0.114])
    if rng.random() < 0.1:
        rgb = np.repeat(gray[..., None], 3, axis=2)
    else:
        rgb = gray[..., None] + (rgb - gray[..., None]) * rng.uniform(0.6, 1.4)   # saturation
        hsv = cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(-6, 7))) % 180  # hue, of 180
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    if rng.random() < 0.15:
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigmaX=rng.uniform(0.5, 1.5))
    if rng.random() < 0.15:
        rgb = rgb + rng.normal(0.0, rng.uniform(2.0, 8.0), rgb.shape).astype(np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


class PairDataset(torch.utils.data.Dataset):
    """Augmented training samples; an index is ``(epoch, i)`` so workers need no random state.

    Masks (and teacher maps, when ``teacher_dir`` holds ``<stem>.png`` for every picture) go
    through the same geometry as their picture; ``heavy`` adds a rotation of up to 15 degrees
    before the crop and colour, blur and noise changes to the picture alone.
    """

    def __init__(self, pairs, size: tuple[int, int], seed: int, scale_min: float, flip: bool, masks_only: bool,
                 teacher_dir: Path | None = None, heavy: bool = False):
        self.pairs = pairs
        self.pre = deploy_preprocessor(size)
        self.resize = resize_op(self.pre)
        self.seed, self.scale_min, self.flip, self.masks_only = seed, scale_min, flip, masks_only
        self.teacher_dir, self.heavy = teacher_dir, heavy
        if teacher_dir is not None:
            missing = [stem for stem, _, _ in pairs if not (teacher_dir / f"{stem}.png").is_file()]
            if missing:
                raise IsnetError(f"{teacher_dir}: no teacher map for {len(missing)} of {len(pairs)} pictures "
                                 f"(e.g. {missing[0]}.png); write them with `isnet run --model TEACHER "
                                 f"--output-dir {teacher_dir}`")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        stem, image_path, mask_path = self.pairs[index]
        teacher_path = self.teacher_dir / f"{stem}.png" if self.teacher_dir is not None else None
        try:
            named = [(decode_mask(mask_path), mask_path)]
            if teacher_path is not None:
                named.append((decode_mask(teacher_path), teacher_path))
            if not self.masks_only:
                named.append((decode_image(image_path), image_path))
        except IsnetError as exc:
            return LoadFailure(str(exc))
        height, width = named[0][0].shape
        for array, path in named[1:]:
            if array.shape[:2] != (height, width):
                return LoadFailure(f"{path} is {array.shape[1]}x{array.shape[0]} but its mask {mask_path} is "
                                   f"{width}x{height}; a picture, its mask and its teacher map must have one size")
        maps = [array for array, path in named if path != image_path]
        image = named[-1][0] if not self.masks_only else None
        rng = np.random.default_rng([self.seed, epoch, index])
        arrays = maps + ([image] if image is not None else [])
        if self.heavy and rng.random() < 0.5:
            arrays = _rotate(arrays, rng.uniform(-15.0, 15.0))
        top, left, h, w = random_crop(rng, height, width, self.scale_min)
        flip = self.flip and rng.random() < 0.5
        arrays = [a[top:top + h, left:left + w] for a in arrays]
        if flip:
            arrays = [a[:, ::-1] for a in arrays]
        maps, image = arrays[:len(maps)], (arrays[-1] if image is not None else None)
        resized = [resize_mask(self.resize, np.ascontiguousarray(m)).astype(np.float32) / 255.0 for m in maps]
        sample = {"mask": torch.from_numpy(resized[0])[None]}
        if self.teacher_dir is not None:
            sample["teacher"] = torch.from_numpy(resized[1])[None]
        if image is not None:
            image = np.ascontiguousarray(image)
            if self.heavy:
                image = _photometric(rng, image)
            tensor, _ = self.pre.transform(image)
            sample["image"] = torch.from_numpy(tensor)
        return sample


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` for an epoch's permutation, whole batches only.

    It runs in the training process, so :meth:`set_epoch` between epochs is seen by persistent
    loader workers too.
    """

    def __init__(self, count: int, batch_size: int, seed: int):
        self.count, self.batch_size, self.seed = count, batch_size, seed
        self.set_epoch(0, 0)

    def set_epoch(self, epoch: int, skip_batches: int) -> None:
        """Serve epoch ``epoch`` from its batch ``skip_batches`` on (a resumed run skips the done ones)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.count)
        usable = self.count // self.batch_size * self.batch_size
        self.order = order[skip_batches * self.batch_size:usable]
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        return iter([(self.epoch, int(i)) for i in self.order])


def collate(samples):
    for sample in samples:
        if isinstance(sample, LoadFailure):
            return sample
    return torch.utils.data.default_collate(samples)


def worker_init(_worker_id: int) -> None:
    # One OpenCV thread per loader process: the cores belong to the training threads.
    cv2.setNumThreads(1)
