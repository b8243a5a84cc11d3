"""Flags shared by several ``isnet`` subcommands, defined once: one name and one meaning each.

- ``--image-dir DIR``: a folder of images to read; ``--dataset DIR``: a folder in ECSSD layout
  (``image/`` and ``mask/``); ``--output-dir DIR``: the folder a command writes into.
- ``--size H W``: the model's input size (height, width).
- ``--workers N``: worker *processes*; ``--io-threads N``: decode/save *threads* beside inference;
  ``--threads N``: intra-op threads of the inference library.
"""

from __future__ import annotations

import argparse
import math

from isnet.core.defaults import INPUT_SIZE

def _number(text: str, kind: type, minimum: float, inclusive: bool, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None
    if not (value > minimum or (inclusive and value == minimum)) or (kind is float and not math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    return _number(text, int, 0, False, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, 0, True, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    return _number(text, float, 0.0, False, "a number > 0")


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    return _number(text, float, 0.0, True, "a number >= 0")


def add_weights_args(parser: argparse.ArgumentParser) -> None:
    """``--weights PATH|random``, ``--seed`` and ``--arch``: which ISNet to build."""
    group = parser.add_argument_group("model")
    group.add_argument("--weights", required=True, metavar="PATH|random",
                       help="ISNet checkpoint (.pth: official, DataParallel or isnet's own), an ISNet "
                            "ONNX file (rembg's isnet-general-use.onnx, IMG.LY's fp16 or 8-bit file), "
                            "or 'random' for a randomly initialised model")
    group.add_argument("--seed", type=int, default=0, help="seed for --weights random (default 0)")
    group.add_argument("--arch", default=None,
                       help="architecture: 'isnet' (official) or 'isnet-lite'; read from the "
                            "checkpoint when omitted, 'isnet' for random weights")


def add_size_arg(parser, required: bool = False, help_text: str | None = None) -> argparse.Action:
    """``--size H W``: the model's input height and width."""
    return parser.add_argument("--size", nargs=2, type=positive_int, metavar=("H", "W"), required=required,
                               default=None, help=help_text or "model input height and width")


def add_image_dir_arg(parser, help_text: str, required: bool = True) -> argparse.Action:
    """``--image-dir DIR``: a folder of images to read."""
    return parser.add_argument("--image-dir", required=required, default=None, metavar="DIR", help=help_text)


def add_output_dir_arg(parser, help_text: str, required: bool = True, default: str | None = None) -> argparse.Action:
    """``--output-dir DIR``: the folder a command writes into."""
    return parser.add_argument("--output-dir", required=required, default=default, metavar="DIR",
                               help=f"{help_text}" + (f" (default {default})" if default else ""))


def add_model_args(parser: argparse.ArgumentParser, multiple: bool = False) -> None:
    """``--model`` (one, or several with ``multiple``), ``--threads`` and ``--size``: which model to run and how."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, nargs="+" if multiple else None, metavar="MODEL",
                       help="artifact folder from `isnet build` (with build.json), or a .onnx, "
                            ".torchscript.pt or .pth (official or isnet checkpoint)"
                            + ("; several to compare them" if multiple else ""))
    group.add_argument("--threads", type=positive_int, default=None,
                       help="intra-op threads per session (default: the library's choice, one per core)")
    add_size_arg(group, help_text="model input height and width for a model without build.json (default: a "
                                  "static ONNX input shape, else %d %d); refused for artifacts" % INPUT_SIZE)
    group.add_argument("--preprocess", default=None, metavar="PRESET|FILE.json",
                       help="pre-processing of a model without build.json: isnet-320, isnet-1024, u2net (ImageNet "
                            "mean/std, as rembg runs U2-Net), or a JSON op list (default: the isnet recipe at --size); "
                            "refused for artifacts")


def add_batch_arg(parser: argparse.ArgumentParser) -> None:
    """``--batch N``: images per inference call."""
    parser.add_argument("--batch", type=positive_int, default=1, help="images per inference call (default 1)")


def add_io_threads_arg(parser: argparse.ArgumentParser) -> None:
    """``--io-threads N``: decode/pre-process and post-process/save threads beside inference."""
    parser.add_argument("--io-threads", type=positive_int, default=None, metavar="N",
                        help="decode/pre-process and post-process/save threads each "
                             "(default: one per core, at most 4; with --engine ray one per "
                             "inference thread of an actor)")


def add_workers_arg(parser: argparse.ArgumentParser, help_text: str, default: int | None,
                    minimum: int = 1) -> None:
    """``--workers N``: worker processes."""
    kind = positive_int if minimum == 1 else non_negative_int
    parser.add_argument("--workers", type=kind, default=default, metavar="N", help=help_text)


def add_min_max_arg(parser: argparse.ArgumentParser) -> None:
    """``--min-max-normalize``: stretch each map to [0, 255] as the official script does."""
    parser.add_argument("--min-max-normalize", action="store_true",
                        help="stretch each map to the full 0-255 range before saving, as the official "
                             "inference script does (off: the model's probabilities are kept)")


def add_suffix_arg(parser: argparse.ArgumentParser) -> None:
    """``--suffix jpg,png,...``: which image files of a folder to take."""
    parser.add_argument("--suffix", default=None, metavar="jpg,png,...",
                        help="image suffixes to take, case-insensitive (default: jpg,jpeg,png,bmp,tif,tiff,webp)")
