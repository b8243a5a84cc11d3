"""``isnet image2npz``, ``isnet npz-run``, ``isnet npz2png`` and ``isnet npz-compare``: the npz path for bit-level checks."""

from __future__ import annotations

import argparse

from isnet.core import EXIT_CHECKS_FAILED
from isnet.tools.args import (add_batch_arg, add_image_dir_arg, add_io_threads_arg, add_min_max_arg, add_model_args,
                              add_output_dir_arg, add_suffix_arg, positive_int)


class Image2NpzCommand:
    """Convert images to npz model inputs (key input_0: uint8 3 x H x W RGB) plus a datalist.

    The datalist holds one absolute npz path per line; sub-folders are mirrored. Images are
    stored as decoded (EXIF applied) unless --resize resizes them (bilinear).
    """

    name = "image2npz"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        add_image_dir_arg(parser, "folder of images (searched recursively)")
        add_output_dir_arg(parser, "folder for the .npz files")
        parser.add_argument("--datalist", required=True, metavar="FILE", help="datalist file to write")
        parser.add_argument("--resize", nargs=2, type=positive_int, metavar=("H", "W"), default=None,
                            help="resize to H x W (default: keep each image's size)")
        add_suffix_arg(parser)

    def run(self, args: argparse.Namespace) -> int:
        from isnet.runtime import npz_from_images

        paths = npz_from_images(args.image_dir, args.output_dir, args.datalist, size=args.resize,
                                suffixes=args.suffix)
        print(f"wrote {len(paths)} npz files to {args.output_dir}; datalist {args.datalist}")
        return 0


class NpzRunCommand:
    """Run the npz inputs of a datalist through a model; write <name>.npz with output_0 (float32 1 x 1 x H x W).

    Each input goes through the model's own pre-processing, so the outputs equal `isnet run`'s
    maps bit for bit at the same batch size. Outputs are named after their inputs, and also
    hold content_box (where the image lies in the model input) for npz2png.
    """

    name = "npz-run"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        add_model_args(parser)
        parser.add_argument("--datalist", required=True, help="datalist from image2npz")
        add_output_dir_arg(parser, "folder for the output .npz files")
        add_batch_arg(parser)
        add_io_threads_arg(parser)

    def run(self, args: argparse.Namespace) -> int:
        from isnet.runtime import load_model, run_npz

        model = load_model(args.model, threads=args.threads, size=args.size, preprocess=args.preprocess)
        written = run_npz(model, args.datalist, args.output_dir, batch=args.batch, io_threads=args.io_threads)
        print(f"wrote {len(written)} output npz files to {args.output_dir} ({model.name})")
        return 0


class Npz2PngCommand:
    """Draw output npz files as 8-bit PNG masks, at the source image size when --image-dir is given."""

    name = "npz2png"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--datalist", required=True, help="datalist from image2npz (names the outputs)")
        parser.add_argument("--npz-dir", required=True, metavar="DIR", help="folder of output npz files from npz-run")
        add_output_dir_arg(parser, "folder for the PNG masks")
        add_image_dir_arg(parser, "folder of the source images: masks are resized to their sizes "
                                  "(default: the model's resolution)", required=False)
        add_min_max_arg(parser)

    def run(self, args: argparse.Namespace) -> int:
        from isnet.runtime import png_from_npz

        drawn = png_from_npz(args.datalist, args.npz_dir, args.output_dir, image_dir=args.image_dir,
                             min_max=args.min_max_normalize)
        print(f"wrote {len(drawn)} masks to {args.output_dir}")
        return 0


class NpzCompareCommand:
    """Compare two folders of output npz files by name: max |diff|, mean |diff| and cosine similarity.

    Per file and overall. The exit code is 3 when a file exists on one side only or a value is NaN
    or infinite.
    """

    name = "npz-compare"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("dir_a", metavar="DIR_A", help="first folder of .npz files (e.g. the fp32 reference)")
        parser.add_argument("dir_b", metavar="DIR_B", help="second folder of .npz files")
        parser.add_argument("--key", default="output_0", help="array to compare (default output_0)")

    def run(self, args: argparse.Namespace) -> int:
        from isnet.runtime import compare_npz

        report = compare_npz(args.dir_a, args.dir_b, key=args.key)
        width = max(len("file"), *(len(d.name) for d in (*report.files, report.overall)))
        broken = report.overall.nonfinite > 0
        print(f"{'file'.ljust(width)}  {'max |diff|':>12}  {'mean |diff|':>12}  {'cosine':>10}"
              + (f"  {'non-finite':>10}" if broken else ""))
        for diff in (*report.files, report.overall):
            print(f"{diff.name.ljust(width)}  {diff.max_abs:12.4e}  {diff.mean_abs:12.4e}  {diff.cosine:10.6f}"
                  + (f"  {diff.nonfinite:10d}" if broken else ""))
        if broken:
            print(f"{report.overall.nonfinite} values are NaN or infinite (left out of the other figures)")
        for side, names in (("DIR_A", report.only_a), ("DIR_B", report.only_b)):
            if names:
                shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
                print(f"only in {side}: {shown}")
        return EXIT_CHECKS_FAILED if report.only_a or report.only_b or broken else 0
