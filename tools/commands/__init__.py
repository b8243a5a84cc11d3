"""Registry of ``isnet`` subcommands, in the order ``isnet --help`` lists them."""

from tools.commands.export import ExportCommand

COMMANDS = [ExportCommand]

__all__ = ["COMMANDS"]
