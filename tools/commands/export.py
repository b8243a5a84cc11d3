"""``isnet export``."""

from __future__ import annotations

import argparse
from pathlib import Path

from isnet.core.defaults import OPSET
from isnet.tools.args import add_output_dir_arg, add_size_arg, add_weights_args


class ExportCommand:
    """Export ISNet (sigmoid(d1) only) to ONNX / TorchScript / ExportedProgram and verify it.

    Each file is checked against the PyTorch model on a random input at the export size (max
    |diff| over 1e-4 is an error). ONNX has input 'input', output 'output' and dynamic batch,
    height and width unless --static.
    """

    name = "export"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        add_weights_args(parser)
        add_size_arg(parser, required=True, help_text="model input height and width to export (and verify) at")
        parser.add_argument("--formats", nargs="+", default=["onnx", "torchscript"],
                            choices=["onnx", "torchscript", "exported-program"],
                            help="files to write (default: onnx torchscript)")
        parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
        parser.add_argument("--static", action="store_true", help="fix batch 1 and the export size in the graph")
        parser.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
        add_output_dir_arg(parser, "where to write the files", required=False, default=".")
        parser.add_argument("--name", default=None, help="file stem (default: the weights file's stem, or isnet-random, then _<H>x<W>)")

    def run(self, args: argparse.Namespace) -> int:
        from isnet.export.exporter import ExportRequest, export_model

        h, w = args.size
        name = args.name or f"{Path(str(args.weights)).stem if args.weights != 'random' else 'isnet-random'}_{h}x{w}"
        result = export_model(ExportRequest(
            weights=args.weights, size=(h, w), output_dir=Path(args.output_dir), name=name,
            formats=tuple(args.formats), seed=args.seed, arch=args.arch, opset=args.opset,
            static=args.static, simplify=not args.no_simplify))
        print(f"model: ISNet '{result.arch}', {result.params_m:.2f} M parameters, "
              f"{result.gmacs:.2f} GMACs at {h}x{w}")
        for note in result.notes:
            print(f"note: {note}")
        for fmt, path in result.files.items():
            extra = ""
            if fmt == "onnx":
                extra = f", exporter: {result.onnx_exporter}, simplified: {'yes' if result.onnx_simplified else 'no'}"
            size_mb = path.stat().st_size / 1e6
            print(f"wrote {path} ({size_mb:.1f} MB{extra}); max |diff| vs PyTorch: "
                  f"{result.max_abs_diff[fmt]:.2e}")
        return 0
