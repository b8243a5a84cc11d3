"""``isnet synth``."""

from __future__ import annotations

import argparse
import os

from isnet.tools.args import add_output_dir_arg, add_workers_arg


class SynthCommand:
    """Generate a synthetic saliency dataset: procedural images with exact masks, ECSSD layout.

    Writes DIR/image/NNNN.jpg and DIR/mask/NNNN.png (0/255). Salient objects are the only
    strongly coloured things in a picture (chroma >= 0.40; background, distractors, occluders
    and shadows <= 0.12); see tools/synth.py for the design. Picture i depends only on
    (seed, i): a rerun skips complete pairs and a larger --count extends the set.
    """

    name = "synth"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        add_output_dir_arg(parser, "dataset folder to write (created if needed)")
        parser.add_argument("--count", type=int, required=True, metavar="N", help="number of image/mask pairs")
        parser.add_argument("--seed", type=int, default=0, metavar="S", help="dataset seed (default 0)")
        default_workers = os.cpu_count() or 1
        add_workers_arg(parser, f"processes rendering in parallel (default: the CPU count, {default_workers})",
                        default=default_workers)

    def run(self, args: argparse.Namespace) -> int:
        from tqdm import tqdm

        from isnet.tools.synth import generate_dataset

        bar = None

        def progress(done: int, total: int) -> None:
            # The bar starts with the first report, after the library has validated the request,
            # so a bad --count or --output-dir prints only the one-line error.
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, initial=done, unit="img", desc="synth", dynamic_ncols=True)
            bar.update(done - bar.n)

        try:
            summary = generate_dataset(args.output_dir, args.count, seed=args.seed, workers=args.workers, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        rate = f", {summary.written / summary.seconds:.0f} images/s" if summary.written else ""
        print(f"wrote {summary.written} image/mask pairs to {summary.out_dir} "
              f"({summary.skipped} already complete) in {summary.seconds:.1f} s{rate}")
        return 0
