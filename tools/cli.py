"""The ``isnet`` command: a registry of subcommands, each a small class (after Polygraphy).

A subcommand has a ``name``, a docstring whose first line is its ``--help`` summary,
``add_args(parser)`` and ``run(args) -> int``. Command modules import heavy libraries inside
``run`` so that ``isnet --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from isnet.core import IsnetError
from isnet.tools.args import RENAMED_NOTES, missing_required
from isnet.tools.commands import COMMANDS


def _summary(command) -> str:
    return (command.__doc__ or "").strip().splitlines()[0]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered command."""
    parser = argparse.ArgumentParser(
        prog="isnet",
        description="ISNet from a PyTorch checkpoint to a verified deployment: "
                    "export -> build -> run -> eval.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command_cls in COMMANDS:
        command = command_cls()
        sub = subparsers.add_parser(command.name, help=_summary(command),
                                    description=(command.__doc__ or "").strip(),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_args(sub)
        sub.set_defaults(_command=command, _parser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``isnet`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = missing_required(args)
    if missing:
        args._parser.error(f"the following arguments are required: {', '.join(missing)}")
    for note in getattr(args, RENAMED_NOTES, None) or ():
        print(f"isnet {args.command}: note: {note}", file=sys.stderr)
    try:
        return int(args._command.run(args) or 0)
    except IsnetError as exc:
        print(f"isnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"isnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
