"""``isnet drift``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from isnet.tools.args import add_image_dir_arg, positive_int


class DriftCommand:
    """Where an int8 build loses accuracy: the error of every quantized activation against fp32.

    Runs the int8 artifact (ONNX Runtime, QDQ) and its fp32 model on the same images and prints,
    most damaging first, the tensors whose own quantization adds the most error (SQNR of the whole
    tensor and of its median channel, relative MAE), then the same per model stage (encoder /
    decoder stages, side heads, fusion) where the names carry U²-Net / ISNet module paths. Writes
    drift.json and drift.png into --output-dir.
    """

    name = "drift"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", required=True, metavar="ARTIFACT", help="an ONNX Runtime int8 artifact folder")
        parser.add_argument("--reference", default=None, metavar="FP32",
                            help="an fp32 artifact folder or ONNX file (default: the source model in the "
                                 "artifact's build.json)")
        add_image_dir_arg(parser, "images to measure on (use images that are not calibration images)",
                          old=("--images",))
        parser.add_argument("--count", type=positive_int, default=8, help="images to use (default 8)")
        parser.add_argument("--top", type=positive_int, default=15, help="tensors to list (default 15)")
        parser.add_argument("--output-dir", default=None, metavar="DIR",
                            help="where drift.json and drift.png go (default <artifact name>-drift)")

    def run(self, args: argparse.Namespace) -> int:
        from isnet.build_in import list_images
        from isnet.build_in.layer_drift import artifact_layer_drift, group_drift, plot_layer_drift
        from isnet.core import IsnetError, write_text_atomic

        images = list_images(args.image_dir)[: args.count]
        if not images:
            raise IsnetError(f"--image-dir: no images in {args.image_dir}")
        drifts, reference = artifact_layer_drift(args.model, images, args.reference)
        output = Path(args.output_dir or f"{Path(args.model).resolve().name}-drift")
        groups = group_drift(drifts)
        ranked = sorted(drifts, key=lambda d: -d.added_noise)
        print(f"{len(drifts)} quantized activations of {args.model} vs {reference}, on {len(images)} images; "
              f"most damaging first (added: the error/signal ratio its own node adds)")
        header = f"{'tensor':<44} {'node':<28} {'stage':<18} {'SQNR dB':>8} {'chan dB':>8} {'rel MAE':>8} {'added':>8}"
        print(header)
        for d in ranked[: args.top]:
            print(f"{_cut(d.tensor, 44):<44} {_cut(d.nodes[0], 28):<28} {_cut(d.group, 18):<18} "
                  f"{_db(d.sqnr_db):>8} {_db(d.channel_sqnr_db):>8} {d.relative_mae:>8.4f} {d.added_noise:>8.4f}")
        print(f"\n{'stage':<28} {'tensors':>7} {'worst dB':>8} {'added':>8}")
        for g in groups[: args.top]:
            print(f"{_cut(g['group'], 28):<28} {g['tensors']:>7} {_db(g['worst_sqnr_db']):>8} {g['added_noise']:>8.4f}")
        output.mkdir(parents=True, exist_ok=True)
        payload = {"model": str(args.model), "reference": str(reference), "images": [str(p) for p in images],
                   "tensors": [d.to_dict() for d in ranked], "stages": groups}
        write_text_atomic(output / "drift.json", json.dumps(_finite(payload), indent=2) + "\n")
        plot_layer_drift(drifts, output / "drift.png", title=Path(args.model).name)
        print(f"\nwrote {output / 'drift.json'} and {output / 'drift.png'}")
        return 0


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _db(value: float) -> str:
    return "exact" if value == math.inf else f"{value:.1f}"


def _finite(value):
    """JSON without Infinity: an exact tensor's SQNR is written as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
