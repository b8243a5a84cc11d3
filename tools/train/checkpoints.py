"""Resumable training state: reading a ``last.pth`` and checking that a resumed run is the same run."""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path

from isnet.core import IsnetError
from isnet.export.weights import load_checkpoint_file
from isnet.tools.train.config import FREE_ON_RESUME, LAST_CHECKPOINT, Task, TrainConfig


def read_training_state(path: Path, task: Task) -> tuple[dict, dict]:
    """The state dict and ``train_state`` of a ``last.pth``."""
    obj = load_checkpoint_file(path, what="checkpoint to resume")
    if not isinstance(obj, dict) or not isinstance(obj.get("train_state"), dict):
        raise IsnetError(f"{path}: not a resumable training checkpoint (resume from the {LAST_CHECKPOINT} "
                         "that isnet train writes in its --output-dir)")
    if obj.get("kind") != task.value:
        raise IsnetError(f"{path} holds a {obj.get('kind')} training run; it cannot resume {task.value} training")
    return obj["state_dict"], obj["train_state"]


def check_resumable(config: TrainConfig, stored: dict, digest: str, stored_digest: str, path: Path) -> None:
    now = config.to_dict()
    # Settings added after a checkpoint was written are compared with their defaults.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    before = {key: stored.get(key, defaults.get(key)) for key in now}
    before = {key: value.value if isinstance(value, Enum) else value for key, value in before.items()}
    differences = [f"{key.replace('_', '-')} {now[key]!r} (checkpoint: {before[key]!r})"
                   for key in now if key not in FREE_ON_RESUME and now[key] != before[key]]
    if (now["teacher_maps"] is None) != (before["teacher_maps"] is None):
        differences.append("distillation (--teacher-maps) on one side only")
    if digest != stored_digest:
        differences.append("the training pictures (other file names)")
    if differences:
        raise IsnetError(f"cannot resume {path}: settings differ from the saved run: {'; '.join(differences)}; "
                         "resume with the original settings or start a new --output-dir")
