"""The ``isnet`` command: a registry of subcommands, each a small class (after Polygraphy).

A subcommand has a ``name``, a docstring whose first line is its ``--help`` summary,
``add_args(parser)`` and ``run(args) -> int``. Command modules import heavy libraries inside
``run`` so that ``isnet --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from isnet.core import IsnetError
from isnet.core.errors import EXIT_BUG, EXIT_USER_ERROR
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
    try:
        return int(args._command.run(args) or 0)
    except IsnetError as exc:  # the user's to fix: one line
        print(f"isnet {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"isnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 -- ours (or a library's we did not expect): the traceback, said so
        traceback.print_exc()
        print(f"isnet {args.command}: internal error: the traceback above is a bug in isnet or a library it "
              "uses; please report it with the command that ran", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
