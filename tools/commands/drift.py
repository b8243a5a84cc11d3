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
    decoder stages, side heads, fusion) where the names carry U²-Net / ISNet module paths. With
    --isolated, also each quantization (every activation, every convolution's weights) switched on
    alone in the fp32 model, ranked by what it does to the output map, and whether the int8
    model's error is held in a few tensors or spread. Writes drift.json and drift.png into --output-dir.
    """

    name = "drift"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", required=True, metavar="ARTIFACT", help="an ONNX Runtime int8 artifact folder")
        parser.add_argument("--reference", default=None, metavar="FP32",
                            help="an fp32 artifact folder or ONNX file (default: the source model in the "
                                 "artifact's build.json)")
        add_image_dir_arg(parser, "images to measure on (use images that are not calibration images)")
        parser.add_argument("--count", type=positive_int, default=8, help="images to use (default 8)")
        parser.add_argument("--top", type=positive_int, default=15, help="tensors to list (default 15)")
        parser.add_argument("--output-dir", default=None, metavar="DIR",
                            help="where drift.json and drift.png go (default <artifact name>-drift)")
        parser.add_argument("--isolated", action="store_true",
                            help="also switch each quantization on alone (one run per quantized tensor and image)")

    def run(self, args: argparse.Namespace) -> int:
        import tempfile

        from isnet.build_in import list_images, read_build_info
        from isnet.build_in.layer_drift import artifact_reference, group_drift, measure_layer_drift, plot_layer_drift
        from isnet.core import IsnetError, write_text_atomic

        images = list_images(args.image_dir)[: args.count]
        if not images:
            raise IsnetError(f"--image-dir: no images in {args.image_dir}")
        reference = args.reference or read_build_info(args.model)["source"]["path"]
        isolated = None
        with tempfile.TemporaryDirectory(prefix="isnet-drift-") as work:
            fp32, int8, inputs = artifact_reference(args.model, images, Path(work), args.reference)
            try:
                drifts = measure_layer_drift(fp32, int8, inputs)
            except ValueError as exc:
                raise IsnetError(str(exc)) from None
            if args.isolated:
                isolated = _isolated(fp32, int8, inputs)
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
        if isolated is not None:
            results, summary = isolated
            print(f"\neach quantization alone in the fp32 model ({summary['activations']} activations, "
                  f"{summary['weights']} convolutions' weights): mean |output map - fp32's|, largest first")
            print(f"{'tensor':<52} {'kind':<10} {'stage':<18} {'mean':>9} {'max':>7}")
            for r in results[: args.top]:
                print(f"{_cut(r.name, 52):<52} {r.kind:<10} {_cut(r.group, 18):<18} {r.mean_abs:>9.2e} "
                      f"{r.max_abs:>7.3f}")
            print(f"all of them at once: {summary['accumulated_mean_abs']:.2e} (max {summary['accumulated_max_abs']:.3f}); "
                  f"sum of the isolated: {summary['isolated_sum']:.2e} (activations {summary['activations_sum']:.2e}, "
                  f"weights {summary['weights_sum']:.2e}); the largest {summary['tensors_for_half']} hold half of "
                  f"it, {summary['tensors_for_90_percent']} hold 90%")
        output.mkdir(parents=True, exist_ok=True)
        payload = {"model": str(args.model), "reference": str(reference), "images": [str(p) for p in images],
                   "tensors": [d.to_dict() for d in ranked], "stages": groups}
        if isolated is not None:
            payload["isolated"] = {"summary": isolated[1], "tensors": [r.to_dict() for r in isolated[0]]}
        write_text_atomic(output / "drift.json", json.dumps(_finite(payload), indent=2) + "\n")
        plot_layer_drift(drifts, output / "drift.png", title=Path(args.model).name)
        print(f"\nwrote {output / 'drift.json'} and {output / 'drift.png'}")
        return 0


def _isolated(fp32, int8, inputs):
    from isnet.build_in.isolated_drift import isolated_drift
    from isnet.tools.progress import StageBars

    import onnx

    with StageBars() as bars:
        return isolated_drift(onnx.load(str(fp32)), onnx.load(str(int8)), inputs,
                              progress=lambda done, total: bars("isolated", done, total))


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
