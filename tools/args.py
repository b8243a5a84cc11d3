"""Flag groups shared by several ``isnet`` subcommands, defined once."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


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
