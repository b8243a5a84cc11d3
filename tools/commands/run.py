"""``isnet run``."""

from __future__ import annotations

import argparse

from isnet.tools.args import (add_batch_arg, add_image_dir_arg, add_io_threads_arg, add_min_max_arg, add_model_args,
                              add_output_dir_arg, add_suffix_arg)


class RunCommand:
    """Write one 8-bit PNG mask per image of a folder, at the original image size.

    Decoding and saving run on worker threads beside inference with bounded queues; masks keep
    each image's relative path and stem (sub-folders mirrored) and are written atomically.
    Corrupt images are listed in <output-dir>/failures.txt and skipped; the exit code is then 1.
    """

    name = "run"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        add_model_args(parser)
        add_image_dir_arg(parser, "folder of images (searched recursively)")
        add_output_dir_arg(parser, "folder for the masks", old=("--save-dir",))
        add_batch_arg(parser)
        parser.add_argument("--resume", action="store_true", help="skip images whose mask is already complete")
        add_suffix_arg(parser)
        add_min_max_arg(parser)
        add_io_threads_arg(parser)

    def run(self, args: argparse.Namespace) -> int:
        from tqdm import tqdm

        from isnet.runtime import load_model, run_folder

        model = load_model(args.model, threads=args.threads, size=args.size, preprocess=args.preprocess)
        if model.apply_sigmoid:
            print(f"note: {model.name}'s output is a logit map (values outside [0, 1]); the sigmoid is applied")
        bars = []

        def progress(count: int, total: int) -> None:
            if not bars:  # created on the first report, once the number of images is known
                bars.append(tqdm(total=total, desc=f"isnet run {model.name}", unit="img", dynamic_ncols=True))
            bars[0].update(count)

        try:
            result = run_folder(model, args.image_dir, args.output_dir, batch=args.batch, resume=args.resume,
                                suffixes=args.suffix, min_max=args.min_max_normalize, io_threads=args.io_threads,
                                progress=progress)
        finally:
            for bar in bars:
                bar.close()
        print(f"done {result.done}, skipped {result.skipped}, failed {result.failed} of {result.total} images "
              f"in {result.seconds:.1f} s ({result.images_per_second:.2f} images/s); masks in {result.output_dir}")
        if result.failures_path is not None:
            print(f"failures listed in {result.failures_path}")
            return 1
        return 0
