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
