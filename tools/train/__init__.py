"""Training ISNet on an ECSSD-layout folder pair, with the paper's intermediate supervision.

Two entry points, both returning a :class:`TrainResult` and reporting progress through a callback:

- :func:`train_gt_encoder` -- the GT encoder learns to reproduce masks (mask in, six side maps
  out, BCE on every side). It is self-supervised: only the ``mask/`` folder is read.
- :func:`train_isnet` -- ISNet with deep supervision (BCE on all six side outputs against the
  GT; the side outputs are already at the input size) plus, given a trained GT encoder, the
  feature-synchronisation loss: MSE between ISNet's six decoder features
  ``[stage1d ... stage5d, stage6]`` and the frozen encoder's six stage features for the same
  mask (Qin et al., "Highly Accurate Dichotomous Image Segmentation", ECCV 2022).

What the network sees
    Pictures are decoded with the project's decoder (RGB uint8), augmented geometrically (random
    crop of 50-100 % of the area with a little aspect jitter, horizontal flip) and then turned
    into tensors by the *deployment* pre-processing (``isnet.build_in.ops.default_process_ops``) at
    the training size. The mask goes through the same Resize op. So a
    network trained here is fed exactly what ``isnet run`` feeds it, apart from the size.
    Validation runs every epoch at the deploy size (320x320 by default) in fp32, maps each
    prediction back to the original image size as ``isnet run`` does, and scores it with
    ``isnet.eval.validation_scores`` (the numbers ``isnet eval`` would report on the saved masks).

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

from isnet.export.weights import load_gt_encoder
from isnet.tools.train.config import TrainingPrecision, Task, TrainConfig, TrainEvent, TrainResult
from isnet.tools.train.losses import deep_supervision_loss, feature_sync_loss, gt_encoder_loss, isnet_loss
from isnet.tools.train.loop import train_gt_encoder, train_isnet

__all__ = ["TrainingPrecision", "TrainConfig", "TrainEvent", "TrainResult", "Task", "deep_supervision_loss",
           "feature_sync_loss", "gt_encoder_loss", "isnet_loss", "load_gt_encoder", "train_gt_encoder",
           "train_isnet"]
