"""``isnet train`` and ``isnet train-gt-encoder``."""

from __future__ import annotations

import argparse
from pathlib import Path

from isnet.core.defaults import INPUT_SIZE
from isnet.tools.args import (add_output_dir_arg, add_workers_arg, non_negative_int,
                              positive_float, positive_int)

# Kept here (not imported from isnet.tools.train) so that `isnet --help` does not import torch.
_ARCHS = ("isnet", "isnet-lite")
_PRECISIONS = ("fp32", "bf16")


def _add_training_args(parser: argparse.ArgumentParser, arch_help: str) -> None:
    """Flags shared by both training commands: data, schedule, augmentation, speed, output."""
    data = parser.add_argument_group("data (ECSSD layout: DIR/image and DIR/mask, paired by file stem)")
    data.add_argument("--dataset", required=True, metavar="DIR", help="training folder")
    data.add_argument("--val-dataset", metavar="DIR",
                      help="validation folder, scored (MAE, max F-measure) after every epoch")
    data.add_argument("--train-size", nargs=2, type=positive_int, default=[224, 224], metavar=("H", "W"),
                      help="training input size (default 224 224)")
    data.add_argument("--val-size", nargs=2, type=positive_int, default=list(INPUT_SIZE), metavar=("H", "W"),
                      help="validation input size: the deploy size (default %d %d)" % INPUT_SIZE)
    data.add_argument("--scale-min", type=float, default=0.5, metavar="F",
                      help="smallest area fraction of a random crop; 1 disables cropping (default 0.5)")
    data.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    data.add_argument("--augment", choices=("basic", "heavy"), default="basic",
                      help="basic: random crop and flip; heavy: also rotation, colour, blur, noise (default basic)")

    model = parser.add_argument_group("model and schedule")
    model.add_argument("--arch", choices=_ARCHS, default=None, help=arch_help)
    model.add_argument("--epochs", type=positive_int, default=10, help="epochs (default 10)")
    model.add_argument("--batch", type=positive_int, default=8, help="pictures per step (default 8)")
    model.add_argument("--lr", type=positive_float, default=1e-3,
                       help="peak AdamW learning rate, reached after the warm-up and decayed by a cosine "
                            "to 1%% of it (default 1e-3)")
    model.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    model.add_argument("--warmup-steps", type=non_negative_int, default=100,
                       help="linear warm-up steps, at most a tenth of the run (default 100)")
    model.add_argument("--seed", type=non_negative_int, default=0,
                       help="seed of the initial weights, the data order and the augmentation (default 0)")

    speed = parser.add_argument_group("speed")
    speed.add_argument("--precision", choices=_PRECISIONS, default=None,
                       help="arithmetic of the training passes (default: bf16 where the CPU has native "
                            "bf16, else fp32); validation and saved weights are always fp32")
    add_workers_arg(speed, "data-loading processes (default 0: load in the training process)", default=0,
                    minimum=0)
    speed.add_argument("--threads", type=positive_int, default=None,
                       help="intra-op threads (default: one per core); on a busy machine 1 can be "
                            "several times faster than 2. Results are reproducible per thread count")

    output = parser.add_argument_group("output")
    add_output_dir_arg(output, "where last.pth (resumable), history.json and the final model go")
    output.add_argument("--checkpoint-every", type=non_negative_int, default=0, metavar="STEPS",
                        help="also write last.pth every STEPS steps (default 0: after each epoch only)")
    output.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                        help="continue the run saved in --output-dir (its last.pth), or in the last.pth given "
                             "(same settings required)")


def _config_kwargs(args: argparse.Namespace) -> dict:
    from isnet.tools.train.config import LAST_CHECKPOINT

    kwargs = dict(data_dir=args.dataset, output_dir=args.output_dir, val_dir=args.val_dataset, arch=args.arch,
                  epochs=args.epochs, batch_size=args.batch, lr=args.lr, weight_decay=args.weight_decay,
                  warmup_steps=args.warmup_steps, train_size=tuple(args.train_size),
                  val_size=tuple(args.val_size), scale_min=args.scale_min, flip=not args.no_flip,
                  seed=args.seed, workers=args.workers, threads=args.threads, checkpoint_every=args.checkpoint_every,
                  resume=Path(args.output_dir) / LAST_CHECKPOINT if args.resume is True else args.resume,
                  augment=args.augment)
    if args.precision is not None:
        kwargs["precision"] = args.precision
    return kwargs


class _Reporter:
    """Draws the library's progress events: one tqdm bar with the loss, one line per epoch."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.kind == "start":
            if event.note:
                print(f"note: {event.note}")
            self.bar = tqdm(total=event.total_steps, initial=event.step, desc=self.label, unit="step",
                            dynamic_ncols=True)
        elif event.kind == "step":
            self.bar.update(event.step - self.bar.n)
            parts = {k: f"{v:.4f}" for k, v in (event.parts or {}).items() if len(event.parts) > 1}
            self.bar.set_postfix(epoch=f"{event.epoch}/{event.epochs}", loss=f"{event.loss:.4f}", **parts,
                                 lr=f"{event.lr:.2e}", refresh=False)
        elif event.kind == "epoch":
            line = f"epoch {event.epoch}/{event.epochs}: loss {event.loss:.4f}"
            if event.metrics is not None:
                line += f", val mae {event.metrics['mae']:.4f} maxF {event.metrics['maxfmeasure']:.4f}"
            self.bar.write(f"{line} ({event.seconds / 60:.1f} min)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _summary(result) -> str:
    line = (f"wrote {result.model_path} ({result.arch}, {result.steps} steps, "
            f"{result.train_seconds / 60:.1f} min of training)")
    if result.metrics is not None:
        line += f"; validation mae {result.metrics['mae']:.4f}, maxF {result.metrics['maxfmeasure']:.4f}"
    return line


class TrainCommand:
    """Train ISNet on an ECSSD-layout folder: deep supervision, optional feature synchronisation.

    BCE on all six side outputs against the mask; with --gt-encoder (from `isnet
    train-gt-encoder`) also the MSE between ISNet's six decoder features and the frozen GT
    encoder's features for the same mask (ISNet's intermediate supervision). Pictures are
    flipped and randomly cropped, then pre-processed exactly as at deployment (RGB, bilinear
    resize, (x/255 - 0.5) / 1.0) at --train-size. AdamW with warm-up and cosine decay; MAE and
    max F-measure on --val-dataset at the deploy size after every epoch. Writes OUT/last.pth after
    each epoch (resume with --resume), OUT/history.json and finally OUT/model.pth, which every
    isnet command loads (export, run, build configs). Deterministic for a --seed and thread count.
    """

    name = "train"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        _add_training_args(parser, "architecture (default: that of --init-weights, else isnet); "
                                   "isnet-lite is the U2-Net-small channel plan, ~1.2 M parameters")
        extra = parser.add_argument_group("ISNet")
        extra.add_argument("--init-weights", metavar="PTH|ONNX",
                           help="start from these weights (official or isnet checkpoint) to fine-tune, or copy "
                                "every convolution of the same shape from an ONNX model (e.g. a U2-Net teacher)")
        extra.add_argument("--init-preprocess", metavar="PRESET",
                           help="the pre-processing the --init-weights ONNX model was trained with (e.g. u2net); "
                                "its first convolution absorbs the difference from isnet's")
        extra.add_argument("--teacher-maps", metavar="DIR",
                           help="distil: a teacher model's maps of the training pictures (<stem>.png, e.g. from "
                                "`isnet run --model TEACHER`), learnt beside the GT masks")
        extra.add_argument("--teacher-weight", type=float, default=1.0,
                           help="weight of the teacher maps' loss against the GT's (default 1)")
        extra.add_argument("--gt-encoder", metavar="PTH",
                           help="frozen GT encoder for the feature-synchronisation loss")
        extra.add_argument("--feature-weight", type=float, default=1.0,
                           help="weight of the feature-synchronisation loss (default 1)")
        extra.add_argument("--fp16-weights", action="store_true",
                           help="store model.pth's weights as fp16 (half the size; loaded as fp32)")

    def run(self, args: argparse.Namespace) -> int:
        from isnet.tools.train import TrainConfig, train_isnet

        config = TrainConfig(**_config_kwargs(args), init_weights=args.init_weights, gt_encoder=args.gt_encoder,
                             feature_weight=args.feature_weight, fp16_weights=args.fp16_weights,
                             teacher_maps=args.teacher_maps, teacher_weight=args.teacher_weight,
                             init_preprocess=args.init_preprocess)
        reporter = _Reporter("isnet train")
        try:
            result = train_isnet(config, progress=reporter)
        finally:
            reporter.close()
        print(_summary(result))
        return 0


class TrainGtEncoderCommand:
    """Train the GT encoder (mask -> mask, BCE on six sides) for `isnet train --gt-encoder`.

    Self-supervised: only DIR/mask is read. Its six stage features match ISNet's decoder
    features in shape, so --arch must be the architecture of the ISNet it will supervise.
    Validation reports how well it reproduces the --val-dataset masks. Writes OUT/last.pth,
    OUT/history.json and OUT/gt-encoder.pth.
    """

    name = "train-gt-encoder"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        _add_training_args(parser, "architecture of the ISNet to supervise (default isnet)")

    def run(self, args: argparse.Namespace) -> int:
        from isnet.tools.train import TrainConfig, train_gt_encoder

        reporter = _Reporter("isnet train-gt-encoder")
        try:
            result = train_gt_encoder(TrainConfig(**_config_kwargs(args)), progress=reporter)
        finally:
            reporter.close()
        print(_summary(result))
        return 0
