"""``isnet compare``."""

from __future__ import annotations

import argparse
from pathlib import Path

from isnet.core import EXIT_CHECKS_FAILED
from isnet.tools.args import add_output_dir_arg, add_size_arg, positive_float, positive_int


class CompareCommand:
    """Build every precision of a model, run, evaluate and profile each: one accuracy/speed report.

    Give an experiment file (YAML/JSON, see tools/compare/experiment.py), or flags (--model, --dataset,
    --builds ...), or both (flags win). The report folder gets report.md, report.json, PR and
    F-measure curves and a strip of masks per build. Reruns reuse every stage whose inputs did
    not change. With max_delta tolerances, the exit code is 3 when a build drifts past them.
    """

    name = "compare"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("experiment", nargs="?", help="experiment file (YAML or JSON)")
        parser.add_argument("--model", help="source model: .pth checkpoint or .onnx")
        parser.add_argument("--dataset", help="evaluation set in ECSSD layout (image/, mask/)")
        parser.add_argument("--calibration-dir", metavar="DIR",
                            help="calibration image folder (default: the evaluation images)")
        parser.add_argument("--calibration-count", type=positive_int, help="calibration images (default 50)")
        parser.add_argument("--builds", help="comma-separated presets, e.g. fp32,fp16,int8_kl,int8_max,ov_int8_max")
        add_size_arg(parser)
        add_output_dir_arg(parser, "report folder (default: the experiment's report.path)", required=False)
        parser.add_argument("--max-delta", action="append", default=[], metavar="METRIC=TOL",
                            help="gate: fail when a build's metric moves more than TOL from the reference "
                                 "(repeatable, e.g. --max-delta mae=0.002)")
        parser.add_argument("--duration", type=positive_float, metavar="S",
                            help="seconds of speed measurement per build (default 3)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                            help="override an experiment key (repeatable)")
        parser.add_argument("--force", action="store_true", help="redo every stage, reusing nothing")
        parser.add_argument("--deploy", metavar="DIR",
                            help="copy the recommended build's artifact (the fastest within max_delta) into DIR/<name>")

    def run(self, args: argparse.Namespace) -> int:
        from isnet.core import IsnetError
        from isnet.core.memory import return_freed_memory
        from isnet.tools.compare import load_experiment, read_experiment, run_experiment, table_rows
        from isnet.tools.progress import StageBars

        overrides: list = list(args.overrides)
        flag_values = {"model": args.model, "builds": args.builds, "report.path": args.output_dir,
                       "calibration.path": args.calibration_dir, "calibration.count": args.calibration_count,
                       "profile.seconds": args.duration, "input_size": args.size,
                       "dataset": {"path": args.dataset} if args.dataset else None}
        overrides += [(key, value) for key, value in flag_values.items() if value is not None]
        for item in args.max_delta:
            if "=" not in item:
                raise IsnetError(f"--max-delta expects METRIC=TOL, got '{item}'")
            metric, tolerance = item.split("=", 1)
            overrides.append(f"max_delta.{metric}={tolerance}")
        if args.experiment:
            experiment = read_experiment(args.experiment, overrides)
        else:
            if not args.model or not args.dataset:
                raise IsnetError("give an experiment file, or at least --model and --dataset")
            if not args.builds:
                overrides.append(("builds", "fp32,fp16,int8_kl,int8_max"))
            experiment = load_experiment({}, "command line", Path.cwd(), overrides)
        if args.deploy and not experiment.max_delta:
            raise IsnetError("--deploy copies the fastest build within max_delta: give max_delta (--max-delta "
                             "METRIC=TOL, or in the experiment)")

        # Builds come first and are limited by their peak memory; evaluation keeps freed memory for
        # itself later (isnet.core.memory).
        return_freed_memory()
        with StageBars() as bars:
            result = run_experiment(experiment, force=args.force, progress=bars)
        header, rows = table_rows(result.reports, result.reference, result.failures)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        for row in rows:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        for report in result.reports:
            if report.reused:
                print(f"{report.name}: reused {', '.join(report.reused)}")
        for note in result.warnings:
            print(f"note: {note}")
        spent = [f"{stage} {seconds:.1f} s" for stage, seconds in result.stage_seconds.items() if seconds >= 0.05]
        print(f"time: {', '.join(spent) or 'every stage reused'}")
        print(f"report: {result.files['report.md']} (and report.json, curves, strip) in {result.output}")
        print(f"recommended: {result.recommendation}")
        deployed = _deploy(result.recommended, args.deploy) if args.deploy else None
        if deployed:
            print(f"deployed {result.recommended.name} to {deployed}")
        if result.violations:
            for violation in result.violations:
                print(f"FAIL {violation}")
            return EXIT_CHECKS_FAILED
        if experiment.max_delta:
            print(f"gate: every build within {', '.join(f'{k} {v}' for k, v in experiment.max_delta.items())} "
                  f"of {result.reference}")
        return 0 if deployed is not False else EXIT_CHECKS_FAILED


def _deploy(recommended, folder: str) -> Path | bool:
    """Copy the recommended build's artifact folder into ``folder`` (atomically); False when there is none."""
    import shutil

    from isnet.core import atomic_dir

    if recommended is None:
        print("nothing deployed: no build to recommend")
        return False
    target = Path(folder) / recommended.artifact.name
    with atomic_dir(target, replace=True) as staging:
        shutil.copytree(recommended.artifact, staging, dirs_exist_ok=True)
    return target
