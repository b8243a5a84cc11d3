"""Flag groups shared by several ``isnet`` subcommands, defined once."""

from __future__ import annotations

import argparse


def _number(text: str, kind: type, minimum: float, inclusive: bool, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None
    if not (value > minimum or (inclusive and value == minimum)):  # also refuses nan
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


def positive_int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers, e.g. ``1,2,4``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got '{text}'")
    return values


def add_weights_args(parser: argparse.ArgumentParser) -> None:
    """``--weights PATH|random``, ``--seed`` and ``--arch``: which ISNet to build."""
    group = parser.add_argument_group("model")
    group.add_argument("--weights", required=True, metavar="PATH|random",
                       help="ISNet checkpoint (.pth: official, DataParallel or isnet's own), "
                            "or 'random' for a randomly initialised model")
    group.add_argument("--seed", type=int, default=0, help="seed for --weights random (default 0)")
    group.add_argument("--arch", default=None,
                       help="architecture: 'isnet' (official) or 'isnet-lite'; read from the "
                            "checkpoint when omitted, 'isnet' for random weights")


def add_size_args(parser: argparse.ArgumentParser, required: bool = True, default=None) -> None:
    """``--size H W``: model input height and width."""
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), required=required, default=default,
                        help="input height and width")


def add_output_dir_arg(parser: argparse.ArgumentParser, default: str, help_text: str) -> None:
    """``--output-dir DIR``."""
    parser.add_argument("--output-dir", default=default, help=f"{help_text} (default {default})")


def add_model_args(parser: argparse.ArgumentParser, multiple: bool = False) -> None:
    """``--model`` (one, or several with ``multiple``), ``--threads`` and ``--size``: which model to run and how."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, nargs="+" if multiple else None, metavar="MODEL",
                       help="artifact folder from `isnet build` (with build.json), or a .onnx, "
                            ".torchscript.pt or .pth (official or isnet checkpoint)"
                            + ("; several to compare them" if multiple else ""))
    group.add_argument("--threads", type=positive_int, default=None,
                       help="intra-op threads per session (default: the library's choice, one per core)")
    group.add_argument("--size", nargs=2, type=positive_int, metavar=("H", "W"), default=None,
                       help="pre-processing size for a model without build.json (default: a static ONNX "
                            "input shape, else 320 320); refused for artifacts")


def add_batch_arg(parser: argparse.ArgumentParser) -> None:
    """``--batch N``: images per inference call."""
    parser.add_argument("--batch", type=positive_int, default=1, help="images per inference call (default 1)")


def add_workers_arg(parser: argparse.ArgumentParser) -> None:
    """``--workers N``: pre/post-processing threads beside inference."""
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="decode/pre-process and post-process/save threads each "
                             "(default: one per core, at most 4)")


def add_min_max_arg(parser: argparse.ArgumentParser) -> None:
    """``--min-max-normalize``: stretch each map to [0, 255] as the official script does."""
    parser.add_argument("--min-max-normalize", action="store_true",
                        help="stretch each map to the full 0-255 range before saving, as the official "
                             "inference script does (off: the model's probabilities are kept)")


def add_suffix_arg(parser: argparse.ArgumentParser) -> None:
    """``--suffix jpg,png,...``: which image files of a folder to take."""
    parser.add_argument("--suffix", default=None, metavar="jpg,png,...",
                        help="image suffixes to take, case-insensitive (default: jpg,jpeg,png,bmp,tif,tiff,webp)")
