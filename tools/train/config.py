"""What defines a training run (:class:`TrainConfig`), what it reports and what it returns."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import torch

from isnet.core import IsnetError, did_you_mean
from isnet.core.defaults import INPUT_SIZE
from isnet.export.model import ARCHS

LAST_CHECKPOINT = "last.pth"
HISTORY = "history.json"
MODEL_FILES = {"isnet": "model.pth", "gt-encoder": "gt-encoder.pth"}
MIN_SIZE = 32
MIN_LR_RATIO = 0.01  # the cosine schedule ends at 1 % of the peak learning rate
VAL_BATCH = 8


class Task(str, Enum):
    """What is trained: ISNet itself, or the GT encoder used for its intermediate supervision."""

    ISNET = "isnet"
    GT_ENCODER = "gt-encoder"


class Augment(str, Enum):
    """How much the training pictures are varied (see :mod:`isnet.tools.train.data`)."""

    BASIC = "basic"  # random crop and horizontal flip
    HEAVY = "heavy"  # also rotation, colour, blur, noise and grayscale


class TrainingPrecision(str, Enum):
    """Arithmetic of the training forward/backward pass (validation and saved weights are fp32)."""

    FP32 = "fp32"
    BF16 = "bf16"

    @classmethod
    def default(cls) -> "TrainingPrecision":
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
    ``resume`` continues the run saved in that ``last.pth``. ``teacher_maps`` is a folder of a
    teacher model's maps (``<stem>.png``, e.g. from ``isnet run``), learnt beside the GT with
    weight ``teacher_weight`` (distillation); ``augment`` picks :class:`Augment`. ``init_preprocess``
    names the pre-processing of an ONNX ``init_weights`` (a preset, e.g. ``u2net``), so its first
    convolution can absorb the difference from the deployment pre-processing.
    """

    data_dir: Path
    output_dir: Path
    val_dir: Path | None = None
    arch: str | None = None
    init_weights: Path | None = None
    gt_encoder: Path | None = None
    feature_weight: float = 1.0
    teacher_maps: Path | None = None
    teacher_weight: float = 1.0
    init_preprocess: str | None = None
    augment: Augment = Augment.BASIC
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    train_size: tuple[int, int] = (224, 224)
    val_size: tuple[int, int] = INPUT_SIZE
    scale_min: float = 0.5
    flip: bool = True
    seed: int = 0
    precision: TrainingPrecision = field(default_factory=TrainingPrecision.default)
    workers: int = 0
    threads: int | None = None
    checkpoint_every: int = 0
    fp16_weights: bool = False
    resume: Path | None = None

    def __post_init__(self):
        for name in ("data_dir", "output_dir", "val_dir", "init_weights", "gt_encoder", "resume", "teacher_maps"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        for name in ("train_size", "val_size"):
            size = tuple(getattr(self, name))
            if len(size) != 2 or any(not isinstance(s, int) or s < MIN_SIZE for s in size):
                raise IsnetError(f"{name.replace('_', ' ')} must be two integers >= {MIN_SIZE} (height width), "
                                 f"got {list(size)}")
            object.__setattr__(self, name, size)
        try:
            object.__setattr__(self, "augment", Augment(self.augment))
        except ValueError:
            raise IsnetError(f"augment must be one of {', '.join(a.value for a in Augment)}, "
                             f"got '{self.augment}'") from None
        try:
            object.__setattr__(self, "precision", TrainingPrecision(self.precision))
        except ValueError:
            raise IsnetError(f"precision must be one of {', '.join(p.value for p in TrainingPrecision)}, "
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
            (self.teacher_weight >= 0, f"teacher weight must be >= 0, got {self.teacher_weight}"),
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
FREE_ON_RESUME = {"output_dir", "val_dir", "workers", "threads", "checkpoint_every", "fp16_weights", "resume",
                   "data_dir", "init_weights", "teacher_maps"}


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
    note: str | None = None


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
