"""The training losses: deep supervision of the side outputs and feature synchronisation (ISNet, ECCV 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from isnet.export.model import ISNet, ISNetGTEncoder


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
               feature_weight: float = 1.0, teacher: torch.Tensor | None = None,
               teacher_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """ISNet's training loss for one batch: the loss tensor and its parts as floats.

    Deep supervision (:func:`deep_supervision_loss` of the six side logits against ``mask``),
    plus ``feature_weight`` times :func:`feature_sync_loss` against the features ``encoder``
    computes from the same ``mask``. The encoder runs without autograd: gradients reach only
    ``model``. With ``teacher`` (a teacher model's maps of the same pictures, in [0, 1]), plus
    ``teacher_weight`` times the same deep supervision against them: distillation, soft targets
    beside the GT (Hinton et al., "Distilling the knowledge in a neural network", 2015). Run it
    under ``torch.autocast`` for mixed precision.
    """
    logits, features = model.side_logits(image)
    bce = deep_supervision_loss(logits, mask)
    parts = {"bce": float(bce.detach())}
    if teacher is not None and teacher_weight:
        soft = deep_supervision_loss(logits, teacher)
        parts["teacher"] = float(soft.detach())
        bce = bce + teacher_weight * soft
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
