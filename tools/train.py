"""Training ISNet on an ECSSD-layout folder pair, with the paper's intermediate supervision.

Two entry points, both returning a :class:`TrainResult` and reporting progress through a callback:

- :func:`train_gt_encoder` -- the GT encoder learns to reproduce masks (mask in, six side maps
  out, BCE on every side). It is self-supervised: only the ``mask/`` folder is read.
- :func:`train_isnet` -- ISNet with deep supervision (BCE on all six side outputs against the
  GT; the side outputs are already at the input size) plus, given a trained GT encoder, the
  feature-synchronisation loss: MSE between ISNet's six decoder features
  ``[stage1d ... stage5d, stage6]`` and the frozen encoder's six stage features for the same
  mask (ISNET.md; Qin et al., "Highly Accurate Dichotomous Image Segmentation", ECCV 2022).

What the network sees
    Pictures are decoded with the project's decoder (RGB uint8), augmented geometrically (random
    crop of 50-100 % of the area with a little aspect jitter, horizontal flip) and then turned
    into tensors by the *deployment* pre-processing: ``build_in.ops.DEFAULT_OPS`` with only the
    Resize size changed to the training size. The mask goes through the same Resize op. So a
    network trained here is fed exactly what ``isnet run`` feeds it, apart from the size.
    Validation runs every epoch at the deploy size (320x320 by default) in fp32, maps each
    prediction back to the original image size as ``isnet run`` does, and scores it with
    ``eval.validation_scores`` (the numbers ``isnet eval`` would report on the saved masks).

Determinism and resuming
    All data randomness is counter-based: the order of epoch ``e`` is a permutation drawn from
    ``(seed, e)`` and the augmentation of picture ``i`` in epoch ``e`` from ``(seed, e, i)``.
    Loader worker processes therefore hold no random state, any ``workers`` count gives the same
    batches, and a resumed run replays exactly the batches an uninterrupted one would have seen.
    ``last.pth`` (written atomically after every epoch and every ``checkpoint_every`` steps)
    holds the weights, optimizer, scheduler, step, epoch, running loss sums, the torch RNG state
    and the settings; resuming refuses settings that would change the result. With the same
    thread count, an interrupted and resumed run ends with the same weights bit for bit.

Speed on a CPU (training isnet-lite, batch 8, one thread, on the shared 2-core Xeon with AMX-BF16
the demo model was trained on; milliseconds per picture for forward + backward + AdamW, medians
of six interleaved rounds on a quiet machine; export/weights/MODEL_CARD.md has the whole story)
    - bf16 autocast (``precision="bf16"``): convolutions run in bf16 on AMX while losses, the
      optimizer and the master weights stay fp32; saved weights are fp32. 111 -> 76 ms at 160x160.
      fp16 autocast has no AMX-FP16 path on this CPU and was over 100x slower.
    - channels_last for the model and the batch: 76 -> 59 ms with bf16 (111 -> 100 in fp32); in
      it the bf16 bilinear upsampling and its backward are ~6x faster. Always on.
    - Together 111 -> 59 ms, 1.9x.
    - ``threads``: on a quiet machine two threads beat one (about 1.5x); on a busy one (load ~6
      on 2 cores) a single thread was 5-10x faster than two, which then spend their time waiting
      at OpenMP barriers for a descheduled partner. The demo run used one thread.
    - The training size: cost follows the pixel count (59 / 95 / 178 ms at 160 / 224 / 320).
      A pilot trained at 160 matched one trained at 224 step for step in validation at 320,
      since random crops enlarge objects to the scales 320x320 deployment shows.
    - Batch 16 is ~20 % cheaper per picture than batch 8 (46 ms); the demo run kept 8 (more steps).
    - Data loading takes ~5 ms per picture in the training process; a loader worker process
      (``workers``) gained <= 2 % on 2 cores and is off by default. Workers are spawned, so a
      script calling this with ``workers > 0`` needs the ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from build_in.imageio import decode_image, decode_mask, list_images
from build_in.ops import DEFAULT_OPS, Geometry, Preprocessor, Resize
from eval import validation_scores
from export.atomic import write_text_atomic
from export.errors import IsnetError, did_you_mean
from export.model import ARCHS, ISNet, ISNetGTEncoder
from export.weights import load_isnet_weights, read_checkpoint, read_checkpoint_arch, save_checkpoint

__all__ = ["Precision", "TrainConfig", "TrainEvent", "TrainResult", "Task", "deep_supervision_loss",
           "feature_sync_loss", "gt_encoder_loss", "isnet_loss", "load_gt_encoder", "train_gt_encoder",
           "train_isnet"]

LAST_CHECKPOINT = "last.pth"
HISTORY = "history.json"
MODEL_FILES = {"isnet": "model.pth", "gt-encoder": "gt-encoder.pth"}
_MIN_SIZE = 32
_MIN_LR_RATIO = 0.01  # the cosine schedule ends at 1 % of the peak learning rate
_VAL_BATCH = 8


class Task(str, Enum):
    """What is trained: ISNet itself, or the GT encoder used for its intermediate supervision."""

    ISNET = "isnet"
    GT_ENCODER = "gt-encoder"


class Precision(str, Enum):
    """Arithmetic of the training forward/backward pass (validation and saved weights are fp32)."""

    FP32 = "fp32"
    BF16 = "bf16"

    @classmethod
    def default(cls) -> "Precision":
        """bf16 where the CPU computes it natively (AVX512-BF16 or AMX), else fp32."""
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu helpers
        native = any(getattr(torch.cpu, name, lambda: False)() for name in probes)
        return cls.BF16 if native else cls.FP32


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    ``data_dir``/``val_dir`` are ECSSD-layout folders (``image/`` and ``mask/``, paired by file
    stem). ``arch`` defaults to the architecture of ``init_weights``, else the official ``isnet``.
    ``train_size``/``val_size`` are (height, width); ``scale_min`` is the smallest area fraction
    of a random crop (1.0 disables cropping). ``checkpoint_every`` adds a ``last.pth`` every so
    many steps besides the one after each epoch (0: epochs only). ``threads`` sets torch's
    intra-op threads for the run (None: torch's default, one per core); results are
    reproducible for a given thread count. ``fp16_weights`` stores the
    final model's float tensors as fp16 (half the file; loaders cast back to fp32).
    ``resume`` continues the run saved in that ``last.pth``.
    """

    data_dir: Path
    output_dir: Path
    val_dir: Path | None = None
    arch: str | None = None
    init_weights: Path | None = None
    gt_encoder: Path | None = None
    feature_weight: float = 1.0
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    train_size: tuple[int, int] = (224, 224)
    val_size: tuple[int, int] = (320, 320)
    scale_min: float = 0.5
    flip: bool = True
    seed: int = 0
    precision: Precision = field(default_factory=Precision.default)
    workers: int = 0
    threads: int | None = None
    checkpoint_every: int = 0
    fp16_weights: bool = False
    resume: Path | None = None

    def __post_init__(self):
        for name in ("data_dir", "output_dir", "val_dir", "init_weights", "gt_encoder", "resume"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        for name in ("train_size", "val_size"):
            size = tuple(getattr(self, name))
            if len(size) != 2 or any(not isinstance(s, int) or s < _MIN_SIZE for s in size):
                raise IsnetError(f"{name.replace('_', ' ')} must be two integers >= {_MIN_SIZE} (height width), "
                                 f"got {list(size)}")
            object.__setattr__(self, name, size)
        try:
            object.__setattr__(self, "precision", Precision(self.precision))
        except ValueError:
            raise IsnetError(f"precision must be one of {', '.join(p.value for p in Precision)}, "
                             f"got '{self.precision}'") from None
        if self.arch is not None and self.arch not in ARCHS:
            raise IsnetError(f"unknown architecture '{self.arch}'{did_you_mean(self.arch, ARCHS)}; "
                             f"choose from {', '.join(ARCHS)}")
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"learning rate must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_steps >= 0, f"warmup steps must be >= 0, got {self.warmup_steps}"),
            (0 < self.scale_min <= 1, f"scale-min must be in (0, 1], got {self.scale_min}"),
            (self.feature_weight >= 0, f"feature weight must be >= 0, got {self.feature_weight}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}"),
            (self.checkpoint_every >= 0, f"checkpoint-every must be >= 0, got {self.checkpoint_every}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise IsnetError(message)

    def to_dict(self) -> dict:
        """JSON-serialisable settings (paths as strings), as stored in checkpoints and history.json."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out


# Settings that do not change the trained weights, so a resumed run may change them.
# The training pictures may move (their file names are compared instead); the initial weights
# are replaced by the checkpoint's anyway.
_FREE_ON_RESUME = {"output_dir", "val_dir", "workers", "threads", "checkpoint_every", "fp16_weights", "resume",
                   "data_dir", "init_weights"}


@dataclass(frozen=True)
class TrainEvent:
    """A progress report: ``kind`` is ``"start"``, ``"step"`` or ``"epoch"``.

    ``step``/``total_steps`` count optimizer steps over the whole run; ``epoch`` (from 1) is the
    epoch a step belongs to, the epoch just finished, or the first one to run; ``loss`` is the step's
    loss (``"step"``) or the epoch's mean (``"epoch"``); ``metrics`` holds the validation scores
    (``mae``, ``maxfmeasure``) after an epoch when there is a validation folder; ``parts`` the
    step's loss terms (``bce``, and ``feature`` with a GT encoder).
    """

    kind: str
    step: int
    total_steps: int
    epoch: int
    epochs: int
    loss: float | None = None
    lr: float | None = None
    metrics: dict | None = None
    parts: dict | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    """What a run produced: the final model, the resumable state, per-epoch history and timing.

    ``seconds`` is the wall time of this call; ``train_seconds`` adds up every call of the run
    (resumed runs included), validation and checkpointing counted.
    """

    task: Task
    arch: str
    model_path: Path
    last_path: Path
    history: tuple[dict, ...]
    steps: int
    seconds: float
    train_seconds: float

    @property
    def metrics(self) -> dict | None:
        """The last validation scores, if the run had a validation folder."""
        return self.history[-1].get("val") if self.history else None


# --------------------------------------------------------------------------------------------
# Losses


def deep_supervision_loss(logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Sum over side outputs of the BCE between ``logits`` and ``target`` (in [0, 1]).

    The side logits of ISNet and of the GT encoder are already upsampled to the input size; a
    side of another size is compared with the target resized bilinearly to it.
    """
    total = torch.zeros((), dtype=torch.float32)
    for side in logits:
        goal = target if side.shape[-2:] == target.shape[-2:] else F.interpolate(
            target, size=side.shape[-2:], mode="bilinear", align_corners=False)
        total = total + F.binary_cross_entropy_with_logits(side.float(), goal)
    return total


def feature_sync_loss(features: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of the MSE between each ISNet decoder feature and the GT encoder feature of the same stage."""
    if len(features) != len(targets):
        raise ValueError(f"{len(features)} features but {len(targets)} targets")
    total = torch.zeros((), dtype=torch.float32)
    for mine, goal in zip(features, targets):
        if mine.shape != goal.shape:
            raise ValueError(f"feature shape {tuple(mine.shape)} differs from the GT encoder's {tuple(goal.shape)}")
        total = total + F.mse_loss(mine.float(), goal.float())
    return total


def isnet_loss(model: ISNet, image: torch.Tensor, mask: torch.Tensor, encoder: ISNetGTEncoder | None = None,
               feature_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """ISNet's training loss for one batch: the loss tensor and its parts as floats.

    Deep supervision (:func:`deep_supervision_loss` of the six side logits against ``mask``),
    plus ``feature_weight`` times :func:`feature_sync_loss` against the features ``encoder``
    computes from the same ``mask``. The encoder runs without autograd: gradients reach only
    ``model``. Run it under ``torch.autocast`` for mixed precision.
    """
    logits, features = model.side_logits(image)
    bce = deep_supervision_loss(logits, mask)
    parts = {"bce": float(bce.detach())}
    if encoder is None or feature_weight == 0:
        return bce, parts
    with torch.no_grad():
        _, targets = encoder.side_logits(mask)
    sync = feature_sync_loss(features, targets)
    parts["feature"] = float(sync.detach())
    return bce + feature_weight * sync, parts


def gt_encoder_loss(encoder: ISNetGTEncoder, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The GT encoder's self-supervised loss: deep supervision of its six sides against its input mask."""
    logits, _ = encoder.side_logits(mask)
    bce = deep_supervision_loss(logits, mask)
    return bce, {"bce": float(bce.detach())}


# --------------------------------------------------------------------------------------------
# Data


def _find_pairs(root: Path, what: str) -> list[tuple[str, Path, Path]]:
    """``(stem, image, mask)`` for every image of an ECSSD-layout folder, sorted by stem."""
    image_dir, mask_dir = root / "image", root / "mask"
    if not root.is_dir():
        raise IsnetError(f"{what} folder not found: {root}")
    if not image_dir.is_dir() or not mask_dir.is_dir():
        raise IsnetError(f"{what} folder {root} needs image/ and mask/ sub-folders (ECSSD layout)")
    images = list_images(image_dir, recursive=False)
    masks: dict[str, Path] = {}
    for path in list_images(mask_dir, recursive=False):
        # A PNG mask wins over another format with the same stem (PNG is lossless).
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


def _data_digest(pairs: Sequence[tuple[str, Path, Path]]) -> str:
    return hashlib.sha256("\n".join(stem for stem, _, _ in pairs).encode()).hexdigest()[:16]


def _preprocessor(size: tuple[int, int]) -> Preprocessor:
    """The deployment pre-processing with only its Resize size changed."""
    specs = [dict(spec, size=list(size)) if spec["type"] == "Resize" else dict(spec) for spec in DEFAULT_OPS]
    return Preprocessor.from_specs(specs)


def _resize_op(pre: Preprocessor) -> Resize:
    return next(op for op in pre.ops if isinstance(op, Resize))


def _resize_mask(resize: Resize, mask: np.ndarray) -> np.ndarray:
    """A mask through the same Resize op as its image (bilinear: soft targets along edges)."""
    resized, _ = resize.apply(mask, Geometry(mask.shape[:2], (0, 0, *mask.shape[:2])))
    return resized


def _random_crop(rng: np.random.Generator, height: int, width: int, scale_min: float) -> tuple[int, int, int, int]:
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


class _Failure:
    """A sample that could not be loaded, carried to the main process as a message."""

    def __init__(self, message: str):
        self.message = message


class _PairDataset(torch.utils.data.Dataset):
    """Augmented training samples; an index is ``(epoch, i)`` so workers need no random state."""

    def __init__(self, pairs, size: tuple[int, int], seed: int, scale_min: float, flip: bool, masks_only: bool):
        self.pairs = pairs
        self.pre = _preprocessor(size)
        self.resize = _resize_op(self.pre)
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
            return _Failure(str(exc))
        if image is not None and image.shape[:2] != mask.shape:
            return _Failure(f"{image_path.name} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                            f"{mask.shape[1]}x{mask.shape[0]}; an image and its mask must have the same size")
        rng = np.random.default_rng([self.seed, epoch, index])
        top, left, h, w = _random_crop(rng, *mask.shape, self.scale_min)
        flip = self.flip and rng.random() < 0.5
        mask = mask[top:top + h, left:left + w]
        if flip:
            mask = mask[:, ::-1]
        mask = _resize_mask(self.resize, np.ascontiguousarray(mask))
        sample = {"mask": torch.from_numpy(mask.astype(np.float32) / 255.0)[None]}
        if image is not None:
            image = image[top:top + h, left:left + w]
            if flip:
                image = image[:, ::-1]
            tensor, _ = self.pre.transform(np.ascontiguousarray(image))
            sample["image"] = torch.from_numpy(tensor)
        return sample


class _EpochSampler(torch.utils.data.Sampler):
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


def _collate(samples):
    for sample in samples:
        if isinstance(sample, _Failure):
            return sample
    return torch.utils.data.default_collate(samples)


def _worker_init(_worker_id: int) -> None:
    # One OpenCV thread per loader process: the cores belong to the training threads.
    cv2.setNumThreads(1)


# --------------------------------------------------------------------------------------------
# Models and checkpoints


def load_gt_encoder(path: str | Path, arch: str | None = None) -> ISNetGTEncoder:
    """Load a GT encoder written by :func:`train_gt_encoder` (``gt-encoder.pth`` or its ``last.pth``).

    ``arch``, when given, is the ISNet architecture it must match. Returns the encoder in eval mode.
    """
    path = Path(path)
    state, stored = read_checkpoint(path)
    if stored is None:
        raise IsnetError(f"{path}: not a GT encoder checkpoint (no architecture recorded); "
                         "train one with `isnet train-gt-encoder`")
    if arch is not None and stored.name != arch:
        raise IsnetError(f"{path}: GT encoder of '{stored.name}' cannot supervise ISNet '{arch}'; "
                         f"train one with `isnet train-gt-encoder --arch {arch}`")
    encoder = ISNetGTEncoder(stored)
    expected = encoder.state_dict()
    if set(state) - set(expected) or {k for k in expected if not k.endswith("num_batches_tracked")} - set(state):
        raise IsnetError(f"{path}: not a GT encoder checkpoint (its keys are those of another network); "
                         "train one with `isnet train-gt-encoder`")
    try:
        encoder.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                                strict=False)
    except RuntimeError as exc:
        raise IsnetError(f"{path}: GT encoder weights do not fit ({str(exc).splitlines()[0]})") from None
    return encoder.eval()


def _read_training_state(path: Path, task: Task) -> tuple[dict, dict]:
    """The state dict and ``train_state`` of a ``last.pth``."""
    if not path.is_file():
        raise IsnetError(f"checkpoint to resume not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a non-checkpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IsnetError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("train_state"), dict):
        raise IsnetError(f"{path}: not a resumable training checkpoint (resume from the {LAST_CHECKPOINT} "
                         "that isnet train writes in its --output-dir)")
    if obj.get("kind") != task.value:
        raise IsnetError(f"{path} holds a {obj.get('kind')} training run; it cannot resume {task.value} training")
    return obj["state_dict"], obj["train_state"]


def _check_resumable(config: TrainConfig, stored: dict, digest: str, stored_digest: str, path: Path) -> None:
    now = config.to_dict()
    differences = [f"{key.replace('_', '-')} {now[key]!r} (checkpoint: {stored.get(key)!r})"
                   for key in now if key not in _FREE_ON_RESUME and now[key] != stored.get(key)]
    if digest != stored_digest:
        differences.append("the training pictures (other file names)")
    if differences:
        raise IsnetError(f"cannot resume {path}: settings differ from the saved run: {'; '.join(differences)}; "
                         "resume with the original settings or start a new --output-dir")


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to the peak, then a cosine down to ``_MIN_LR_RATIO`` of it at the last step."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return _MIN_LR_RATIO + (1 - _MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def _validate(model: torch.nn.Module, pairs, size: tuple[int, int], task: Task) -> dict[str, float]:
    """MAE and max-F at deployment: fp32, deploy pre-processing at ``size``, maps back at full size."""
    pre = _preprocessor(size)
    resize = _resize_op(pre)
    was_training = model.training
    model.eval()
    preds, gts = [], []
    try:
        for start in range(0, len(pairs), _VAL_BATCH):
            chunk = pairs[start:start + _VAL_BATCH]
            inputs, geometries = [], []
            for _, image_path, mask_path in chunk:
                gt = decode_mask(mask_path)
                gts.append(gt)
                if task is Task.ISNET:
                    tensor, geometry = pre.load(image_path)
                    if geometry.original_hw != gt.shape:
                        raise IsnetError(f"{image_path} is {geometry.original_hw[1]}x{geometry.original_hw[0]} but "
                                         f"its mask {mask_path} is {gt.shape[1]}x{gt.shape[0]}; an image and its "
                                         "mask must have the same size")
                else:
                    tensor = (_resize_mask(resize, gt).astype(np.float32) / 255.0)[None]
                    geometry = Geometry(gt.shape[:2], (0, 0, *size))
                inputs.append(torch.from_numpy(tensor))
                geometries.append(geometry)
            batch = torch.stack(inputs).contiguous(memory_format=torch.channels_last)
            logits, _ = model.side_logits(batch, heads=1) if task is Task.ISNET else model.side_logits(batch)
            maps = torch.sigmoid(logits[0][:, 0]).numpy()
            preds.extend(Preprocessor.restore(m, g) for m, g in zip(maps, geometries))
    finally:
        model.train(was_training)
    return validation_scores(preds, gts)


# --------------------------------------------------------------------------------------------
# The loop


def train_isnet(config: TrainConfig, progress: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Train ISNet (deep supervision, plus feature synchronisation with ``config.gt_encoder``).

    Writes ``last.pth`` (resumable), ``history.json`` and, at the end, ``model.pth`` (weights with
    their architecture, loadable by ``export.weights.build_isnet`` and every ``isnet`` command)
    into ``config.output_dir``.
    """
    return _train(Task.ISNET, config, progress)


def train_gt_encoder(config: TrainConfig, progress: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Train the GT encoder to reproduce masks (BCE on its six sides); only ``mask/`` is read.

    Writes ``last.pth``, ``history.json`` and ``gt-encoder.pth`` (for ``train_isnet``'s
    ``gt_encoder``) into ``config.output_dir``.
    """
    if config.gt_encoder is not None or config.init_weights is not None:
        raise IsnetError("the GT encoder trains from scratch: gt_encoder and init_weights do not apply")
    return _train(Task.GT_ENCODER, config, progress)


def _resolve_arch(config: TrainConfig) -> str:
    if config.init_weights is not None:
        if not config.init_weights.is_file():
            raise IsnetError(f"initial weights not found: {config.init_weights} (pass an official or isnet .pth)")
        stored = read_checkpoint_arch(config.init_weights).name
        if config.arch is not None and config.arch != stored:
            raise IsnetError(f"--arch {config.arch} does not match {config.init_weights}, which holds "
                             f"'{stored}' weights")
        return stored
    return config.arch or "isnet"


def _prepare_output(config: TrainConfig) -> None:
    out = config.output_dir
    if out.exists() and not out.is_dir():
        raise IsnetError(f"output folder {out} is a file")
    if config.resume is None and (out / LAST_CHECKPOINT).exists():
        raise IsnetError(f"{out} already holds a training run ({LAST_CHECKPOINT}); pass --resume "
                         f"{out / LAST_CHECKPOINT} to continue it, or choose another --output-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IsnetError(f"cannot create output folder {out} ({exc.strerror or exc})") from None


def _train(task: Task, config: TrainConfig, progress: Callable[[TrainEvent], None] | None) -> TrainResult:
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _train_loop(task, config, progress)
    finally:
        torch.set_num_threads(threads)


def _train_loop(task: Task, config: TrainConfig, progress: Callable[[TrainEvent], None] | None) -> TrainResult:
    started = time.perf_counter()
    report = progress or (lambda event: None)
    pairs = _find_pairs(config.data_dir, "training")
    val_pairs = _find_pairs(config.val_dir, "validation") if config.val_dir is not None else []
    if len(pairs) < config.batch_size:
        raise IsnetError(f"{config.data_dir} has {len(pairs)} pairs, fewer than one batch of {config.batch_size}; "
                         "lower --batch-size or add pictures")
    digest = _data_digest(pairs)
    arch = _resolve_arch(config) if task is Task.ISNET else (config.arch or "isnet")
    encoder = load_gt_encoder(config.gt_encoder, arch) if config.gt_encoder is not None else None
    if encoder is not None:
        encoder.requires_grad_(False).to(memory_format=torch.channels_last)
    resumed = _read_training_state(config.resume, task) if config.resume is not None else None
    _prepare_output(config)

    torch.manual_seed(config.seed)
    model = ISNet(arch) if task is Task.ISNET else ISNetGTEncoder(arch)
    if config.init_weights is not None and resumed is None:
        state, _ = read_checkpoint(config.init_weights)
        load_isnet_weights(model, state, source=str(config.init_weights))
    model.to(memory_format=torch.channels_last).train()
    steps_per_epoch = len(pairs) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    warmup = min(config.warmup_steps, total_steps // 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total_steps, warmup))

    step, history, loss_sum, loss_count, train_seconds = 0, [], 0.0, 0, 0.0
    if resumed is not None:
        state, train_state = resumed
        _check_resumable(config, train_state["config"], digest, train_state["data_digest"], config.resume)
        model.load_state_dict(state)
        optimizer.load_state_dict(train_state["optimizer"])
        scheduler.load_state_dict(train_state["scheduler"])
        torch.set_rng_state(train_state["torch_rng"])
        step = int(train_state["step"])
        history = list(train_state["history"])
        loss_sum, loss_count = float(train_state["loss_sum"]), int(train_state["loss_count"])
        train_seconds = float(train_state["train_seconds"])

    def save_last(epoch_done: int) -> Path:
        train_state = {
            "config": config.to_dict(), "data_digest": digest, "step": step, "epoch": epoch_done,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(), "history": history, "loss_sum": loss_sum,
            "loss_count": loss_count, "train_seconds": train_seconds + time.perf_counter() - started,
        }
        return save_checkpoint(config.output_dir / LAST_CHECKPOINT, model, kind=task.value, train_state=train_state)

    dataset = _PairDataset(pairs, config.train_size, config.seed, config.scale_min, config.flip,
                           masks_only=task is Task.GT_ENCODER)
    sampler = _EpochSampler(len(pairs), config.batch_size, config.seed)
    loader_options = {}
    if config.workers:
        # Spawned, not forked: a forked worker inherits OpenCV's and OpenMP's thread pools in a
        # broken state (a worker calling cv2.setNumThreads deadlocked). Persistent, so the
        # start-up cost (importing torch) is paid once per run, not per epoch.
        loader_options = dict(multiprocessing_context="spawn", persistent_workers=True, prefetch_factor=4,
                              worker_init_fn=_worker_init)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                                         num_workers=config.workers, collate_fn=_collate, **loader_options)
    bf16 = config.precision is Precision.BF16
    report(TrainEvent("start", step, total_steps, step // steps_per_epoch + 1, config.epochs))
    for epoch in range(step // steps_per_epoch, config.epochs):
        sampler.set_epoch(epoch, skip_batches=step - epoch * steps_per_epoch)
        for batch in loader:
            if isinstance(batch, _Failure):
                raise IsnetError(batch.message)
            mask = batch["mask"].contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if task is Task.ISNET:
                    image = batch["image"].contiguous(memory_format=torch.channels_last)
                    loss, parts = isnet_loss(model, image, mask, encoder, config.feature_weight)
                else:
                    loss, parts = gt_encoder_loss(model, mask)
            if not torch.isfinite(loss):
                raise IsnetError(f"training diverged at step {step + 1} (loss {loss.item()}); "
                                 "start again with a lower learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            value = float(loss.detach())
            loss_sum, loss_count = loss_sum + value, loss_count + 1
            report(TrainEvent("step", step, total_steps, epoch + 1, config.epochs, loss=value,
                              lr=optimizer.param_groups[0]["lr"], parts=parts))
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step % steps_per_epoch:
                save_last(epoch)
        val_started = time.perf_counter()
        metrics = _validate(model, val_pairs, config.val_size, task) if val_pairs else None
        entry = {"epoch": epoch + 1, "step": step, "loss": loss_sum / max(1, loss_count),
                 "lr": optimizer.param_groups[0]["lr"],
                 "seconds": round(train_seconds + time.perf_counter() - started, 2)}
        if metrics is not None:
            entry["val"] = metrics
            entry["val_seconds"] = round(time.perf_counter() - val_started, 2)
        history.append(entry)
        loss_sum, loss_count = 0.0, 0
        save_last(epoch + 1)
        write_text_atomic(config.output_dir / HISTORY, json.dumps(
            {"task": task.value, "arch": arch, "config": config.to_dict(), "pairs": len(pairs),
             "val_pairs": len(val_pairs), "history": history}, indent=2) + "\n")
        report(TrainEvent("epoch", step, total_steps, epoch + 1, config.epochs, loss=entry["loss"],
                          lr=entry["lr"], metrics=metrics, seconds=entry["seconds"]))

    total_seconds = train_seconds + time.perf_counter() - started
    model_path = save_checkpoint(
        config.output_dir / MODEL_FILES[task.value], model, half=config.fp16_weights, kind=task.value,
        training={"config": config.to_dict(), "pairs": len(pairs), "steps": step,
                  "seconds": round(total_seconds, 1), "history": history})
    return TrainResult(task=task, arch=arch, model_path=model_path, last_path=config.output_dir / LAST_CHECKPOINT,
                       history=tuple(history), steps=step, seconds=time.perf_counter() - started,
                       train_seconds=total_seconds)
