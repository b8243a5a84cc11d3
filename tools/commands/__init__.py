"""Registry of ``isnet`` subcommands, in the order ``isnet --help`` lists them."""

from isnet.tools.commands.build import BuildCommand
from isnet.tools.commands.compare import CompareCommand
from isnet.tools.commands.drift import DriftCommand
from isnet.tools.commands.eval import EvalCommand
from isnet.tools.commands.export import ExportCommand
from isnet.tools.commands.npz import Image2NpzCommand, Npz2PngCommand, NpzCompareCommand, NpzRunCommand
from isnet.tools.commands.profile import ProfileCommand
from isnet.tools.commands.run import RunCommand
from isnet.tools.commands.serve import ServeCommand
from isnet.tools.commands.synth import SynthCommand
from isnet.tools.commands.train import TrainCommand, TrainGtEncoderCommand

COMMANDS = [ExportCommand, BuildCommand, DriftCommand, RunCommand, Image2NpzCommand, NpzRunCommand, Npz2PngCommand,
            NpzCompareCommand, ProfileCommand, ServeCommand, EvalCommand, CompareCommand, SynthCommand, TrainGtEncoderCommand,
            TrainCommand]

__all__ = ["COMMANDS"]
