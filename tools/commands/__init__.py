"""Registry of ``isnet`` subcommands, in the order ``isnet --help`` lists them."""

from tools.commands.build import BuildCommand
from tools.commands.compare import CompareCommand
from tools.commands.eval import EvalCommand
from tools.commands.export import ExportCommand
from tools.commands.npz import Image2NpzCommand, Npz2PngCommand, NpzCompareCommand, NpzRunCommand
from tools.commands.profile import ProfileCommand
from tools.commands.run import RunCommand
from tools.commands.synth import SynthCommand
from tools.commands.train import TrainCommand, TrainGtEncoderCommand

COMMANDS = [ExportCommand, BuildCommand, RunCommand, Image2NpzCommand, NpzRunCommand, Npz2PngCommand,
            NpzCompareCommand, ProfileCommand, EvalCommand, CompareCommand, SynthCommand, TrainGtEncoderCommand,
            TrainCommand]

__all__ = ["COMMANDS"]
