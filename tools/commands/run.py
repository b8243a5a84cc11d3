"""``isnet run``."""

from __future__ import annotations

import argparse
from pathlib import Path

from isnet.core import EXIT_CHECKS_FAILED
from isnet.core import IsnetError
from isnet.tools.args import (add_batch_arg, add_image_dir_arg, add_io_threads_arg, add_min_max_arg, add_model_args,
                              add_output_dir_arg, add_suffix_arg, positive_int)


class RunCommand:
    """Write one 8-bit PNG mask per image of a folder, at the original image size.

    Decoding and saving run on worker threads beside inference with bounded queues; masks keep
    each image's relative path and stem (sub-folders mirrored) and are written atomically.
    Corrupt images are listed in <output-dir>/failures.txt and skipped; the exit code is then 1.
    --engine ray runs the same job on a Ray cluster (RAY_ADDRESS or --address; a local instance
    otherwise): one model per actor, the same masks, names and failures.txt.
    """

    name = "run"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        add_model_args(parser)
        add_image_dir_arg(parser, "folder of images (searched recursively)")
        add_output_dir_arg(parser, "folder for the masks")
        add_batch_arg(parser)
        parser.add_argument("--resume", action="store_true", help="skip images whose mask is already complete")
        add_suffix_arg(parser)
        add_min_max_arg(parser)
        add_io_threads_arg(parser)
        engine = parser.add_argument_group("engine")
        engine.add_argument("--engine", choices=("local", "ray"), default="local",
                            help="local: this process's pipeline (default); ray: a Ray cluster (needs isnet[ray])")
        engine.add_argument("--address", default=None,
                            help="Ray cluster to join, HOST:PORT of its head (default $RAY_ADDRESS, else a local Ray "
                                 "instance; ray:// is refused: Ray Data does not run over Ray Client)")
        engine.add_argument("--actors", type=positive_int, default=None,
                            help="Ray actors, each holding the model once (default: cluster CPUs / threads)")
        engine.add_argument("--threads-per-actor", type=positive_int, default=None,
                            help="inference threads (and CPUs reserved) per Ray actor (default 2)")

    def run(self, args: argparse.Namespace) -> int:
        from tqdm import tqdm

        from isnet.runtime import load_model, run_folder

        ray_only = [flag for flag, value in (("--address", args.address), ("--actors", args.actors),
                                             ("--threads-per-actor", args.threads_per_actor)) if value]
        if args.engine == "local" and ray_only:
            raise IsnetError(f"{', '.join(ray_only)} apply to --engine ray only")
        bars = []
        name = [Path(args.model).name]

        def progress(count: int, total: int) -> None:
            if not bars:  # created on the first report, once the number of images is known
                bars.append(tqdm(total=total, desc=f"isnet run {name[0]}", unit="img", dynamic_ncols=True))
            bars[0].update(count)

        def sigmoid_note(model_name: str) -> str:
            return f"note: {model_name}'s output is a logit map (values outside [0, 1]); the sigmoid is applied"

        def on_model(model_name: str, applies_sigmoid: bool) -> None:  # the Ray engine's actors loaded it
            name[0] = model_name
            if bars:
                bars[0].set_description(f"isnet run {model_name}")
            if applies_sigmoid:
                (bars[0].write if bars else print)(sigmoid_note(model_name))

        try:
            if args.engine == "ray":
                from isnet.runtime.ray_engine import run_folder_on_ray

                if args.threads:
                    raise IsnetError("--threads: with --engine ray use --threads-per-actor")
                result = run_folder_on_ray(args.model, args.image_dir, args.output_dir, batch=args.batch,
                                           resume=args.resume, suffixes=args.suffix, min_max=args.min_max_normalize,
                                           address=args.address, actors=args.actors,
                                           threads_per_actor=args.threads_per_actor, io_threads=args.io_threads,
                                           load_options={"size": args.size, "preprocess": args.preprocess},
                                           progress=progress, on_model=on_model)
            else:
                model = load_model(args.model, threads=args.threads, size=args.size, preprocess=args.preprocess)
                name[0] = model.name
                if model.apply_sigmoid:
                    print(sigmoid_note(model.name))
                result = run_folder(model, args.image_dir, args.output_dir, batch=args.batch, resume=args.resume,
                                    suffixes=args.suffix, min_max=args.min_max_normalize, io_threads=args.io_threads,
                                    progress=progress)
        finally:
            for bar in bars:
                bar.close()
        print(f"done {result.done}, skipped {result.skipped}, failed {result.failed} of {result.total} images "
              f"in {result.seconds:.1f} s ({result.images_per_second:.2f} images/s"
              f"{f' on {result.nodes} nodes' if result.nodes > 1 else ''}); masks in {result.output_dir}")
        if result.failures_path is not None:
            print(f"failures listed in {result.failures_path}")
            return EXIT_CHECKS_FAILED
        return 0
