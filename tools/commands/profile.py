"""``isnet profile``."""

from __future__ import annotations

import argparse
import json

from isnet.tools.args import add_image_dir_arg, add_model_args, positive_float, positive_int

DEFAULT_ITERATIONS = 20


class ProfileCommand:
    """Measure throughput (images/s) and latency p50/p90/p99/max of models on real pre-processed images.

    One table, models side by side per batch size, headed by the host, CPU and library versions.
    'infer' is the runner call alone; with --with-preprocess 'e2e' adds decoding, pre-processing,
    restoring and PNG encoding. --instances runs N sessions concurrently on the same cores.
    Images: the first 32 of --image-dir, or deterministic synthetic photos.
    """

    name = "profile"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        add_model_args(parser, multiple=True)
        parser.add_argument("--batch", type=positive_int, nargs="+", default=[1], metavar="N",
                            help="images per inference call; several to compare them, e.g. --batch 1 2 4 (default 1)")
        parser.add_argument("--instances", type=positive_int, default=1,
                            help="concurrent sessions sharing the cores (default 1; threads then default "
                                 "to cores / instances)")
        parser.add_argument("--warmup", type=int, default=3, help="warm-up calls per session (default 3)")
        length = parser.add_mutually_exclusive_group()
        length.add_argument("--iterations", type=positive_int, default=None,
                            help=f"measured calls per session (default {DEFAULT_ITERATIONS})")
        length.add_argument("--duration", type=positive_float, default=None, metavar="S",
                            help="measure for S seconds instead of a number of calls")
        parser.add_argument("--with-preprocess", action="store_true",
                            help="also measure end to end: decode + pre-process + infer + restore + encode")
        add_image_dir_arg(parser, "folder of images to measure on (default: synthetic photos)", required=False)
        # backend.performance_hint's values (isnet.build_in.config.PerformanceHint), without importing
        # the build stage for --help.
        parser.add_argument("--hint", choices=("latency", "throughput"), default=None,
                            help="OpenVINO performance hint (default: the artifact's, THROUGHPUT with "
                                 "--instances > 1, which become OpenVINO streams with one infer request each)")
        parser.add_argument("--record-json", default=None, metavar="FILE", help="also write the records as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from isnet.core import write_text_atomic
        from isnet.runtime import format_table, host_info, profile_models

        iterations = None if args.duration is not None else (args.iterations or DEFAULT_ITERATIONS)
        records = profile_models(args.model, batches=args.batch, instances=args.instances, threads=args.threads,
                                 warmup=args.warmup, iterations=iterations, duration=args.duration,
                                 with_preprocess=args.with_preprocess, image_dir=args.image_dir, size=args.size,
                                 preprocess=args.preprocess,
                                 hint=args.hint)
        host = host_info()
        print(format_table(records, host))
        if args.record_json:
            payload = [record.to_json(host) for record in records]
            write_text_atomic(args.record_json, json.dumps(payload, indent=2) + "\n")
            print(f"wrote {args.record_json}")
        return 0
