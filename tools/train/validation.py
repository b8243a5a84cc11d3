"""Validation at deployment: fp32, the deploy pre-processing, maps scored at the original size."""

from __future__ import annotations

import numpy as np
import torch

from isnet.build_in.imageio import decode_mask
from isnet.build_in.ops import Geometry, mask_from_output
from isnet.core import IsnetError
from isnet.eval import validation_scores
from isnet.tools.train.config import VAL_BATCH, Task
from isnet.tools.train.data import deploy_preprocessor, resize_mask, resize_op


@torch.no_grad()
def validate(model: torch.nn.Module, pairs, size: tuple[int, int], task: Task) -> dict[str, float]:
    """MAE and max-F at deployment: fp32, deploy pre-processing at ``size``, maps back at full size."""
    pre = deploy_preprocessor(size)
    resize = resize_op(pre)
    was_training = model.training
    model.eval()
    preds, gts = [], []
    try:
        for start in range(0, len(pairs), VAL_BATCH):
            chunk = pairs[start:start + VAL_BATCH]
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
                    tensor = (resize_mask(resize, gt).astype(np.float32) / 255.0)[None]
                    geometry = Geometry(gt.shape[:2], (0, 0, *size))
                inputs.append(torch.from_numpy(tensor))
                geometries.append(geometry)
            batch = torch.stack(inputs).contiguous(memory_format=torch.channels_last)
            logits, _ = model.side_logits(batch, heads=1) if task is Task.ISNET else model.side_logits(batch)
            maps = torch.sigmoid(logits[0][:, 0]).numpy()
            preds.extend(mask_from_output(m, g) for m, g in zip(maps, geometries))
    finally:
        model.train(was_training)
    return validation_scores(preds, gts)
