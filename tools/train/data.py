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


class PairDataset(torch.utils.data.Dataset):
    """Augmented training samples; an index is ``(epoch, i)`` so workers need no random state."""

    def __init__(self, pairs, size: tuple[int, int], seed: int, scale_min: float, flip: bool, masks_only: bool):
        self.pairs = pairs
        self.pre = deploy_preprocessor(size)
        self.resize = resize_op(self.pre)
        self.seed, self.scale_min, self.flip, self.masks_only = seed, scale_min, flip, masks_only

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        _, image_path, mask_path = self.pairs[index]
        try:
            mask = decode_mask(mask_path)
            image = None if self.masks_only else decode_image(image_path)
        except IsnetError as exc:
            return LoadFailure(str(exc))
        if image is not None and image.shape[:2] != mask.shape:
            return LoadFailure(f"{image_path.name} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                            f"{mask.shape[1]}x{mask.shape[0]}; an image and its mask must have the same size")
        rng = np.random.default_rng([self.seed, epoch, index])
        top, left, h, w = random_crop(rng, *mask.shape, self.scale_min)
        flip = self.flip and rng.random() < 0.5
        mask = mask[top:top + h, left:left + w]
        if flip:
            mask = mask[:, ::-1]
        mask = resize_mask(self.resize, np.ascontiguousarray(mask))
        sample = {"mask": torch.from_numpy(mask.astype(np.float32) / 255.0)[None]}
        if image is not None:
            image = image[top:top + h, left:left + w]
            if flip:
                image = image[:, ::-1]
            tensor, _ = self.pre.transform(np.ascontiguousarray(image))
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
