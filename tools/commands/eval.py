"""``isnet eval``."""

from __future__ import annotations

import argparse

from isnet.core import IsnetError
from isnet.tools.args import add_workers_arg, non_negative_int

# Kept here (not imported from eval) so that `isnet --help` does not import OpenCV.
_METRIC_NAMES = ("mae", "fmeasure", "precision", "recall", "em", "sm", "wfm")


class EvalCommand:
    """Score saliency maps against GT masks: MAE, F-measure, E-measure, S-measure, weighted F.

    Numbers match PySODEvalToolkit / PySODMetrics 1.6.2, which read the same JSON files:
    --dataset-json maps dataset names to {"mask": {"path", "prefix", "suffix"}} and each
    --method-json maps method names to {dataset: {"path", "prefix", "suffix"}}; files are paired
    by name (<prefix><name><suffix>) and relative paths start at the JSON file's folder. Or score
    one folder with --pred-dir/--gt-dir (paired by file stem).

    Missing predictions are an error unless --allow-missing; predictions of another size are
    resized to their GT bilinearly, as PySODEvalToolkit does. --num-bits rounds the console
    table and --record-txt; --record-json and --record-csv keep full precision.
    """

    name = "eval"

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        source = parser.add_argument_group("what to score (JSON files, or two folders)")
        source.add_argument("--dataset-json", metavar="F", help="PySODEvalToolkit dataset JSON")
        source.add_argument("--method-json", nargs="+", metavar="F", help="PySODEvalToolkit method JSON(s)")
        source.add_argument("--pred-dir", metavar="DIR", help="folder of predicted maps (instead of JSON files)")
        source.add_argument("--gt-dir", metavar="DIR", help="folder of GT masks, paired with --pred-dir by file stem")
        source.add_argument("--name", metavar="METHOD", help="method name for --pred-dir (default: its folder name)")
        source.add_argument("--include-datasets", nargs="+", metavar="NAME", help="score only these datasets")
        source.add_argument("--include-methods", nargs="+", metavar="NAME", help="score only these methods")
        source.add_argument("--allow-missing", action="store_true",
                            help="score the GT masks that have a prediction instead of failing on missing ones")
        scoring = parser.add_argument_group("scoring")
        scoring.add_argument("--metric-names", nargs="+", choices=_METRIC_NAMES, default=list(_METRIC_NAMES),
                             metavar="NAME", help=f"metrics to compute: {' '.join(_METRIC_NAMES)} (default: all)")
        add_workers_arg(scoring, "processes scoring images (default 1; results are identical for any number)",
                        default=1)
        scoring.add_argument("--num-bits", type=non_negative_int, default=3, metavar="N",
                             help="decimals shown in the console table and --record-txt (default 3)")
        output = parser.add_argument_group("output")
        output.add_argument("--record-txt", metavar="F", help="write the results table as text")
        output.add_argument("--record-json", metavar="F", help="write {dataset: {method: {metric: value}}}")
        output.add_argument("--record-csv", metavar="F", help="write one CSV row per dataset and method")
        output.add_argument("--curves-npy", metavar="F",
                            help="write the precision/recall/F-measure/E-measure curves (np.save of a dict)")
        output.add_argument("--plot-dir", metavar="DIR",
                            help="write one PNG per dataset with PR and F-measure-vs-threshold curves")

    @staticmethod
    def _check(args: argparse.Namespace) -> None:
        json_mode = args.dataset_json is not None or args.method_json is not None
        folder_mode = args.pred_dir is not None or args.gt_dir is not None
        if json_mode and folder_mode:
            raise IsnetError("give either --dataset-json/--method-json or --pred-dir/--gt-dir, not both")
        if json_mode and (args.dataset_json is None or args.method_json is None):
            raise IsnetError("--dataset-json and --method-json go together")
        if folder_mode and (args.pred_dir is None or args.gt_dir is None):
            raise IsnetError("--pred-dir and --gt-dir go together")
        if not json_mode and not folder_mode:
            raise IsnetError("nothing to score: give --dataset-json and --method-json, or --pred-dir and --gt-dir")
        if folder_mode and (args.include_datasets or args.include_methods):
            raise IsnetError("--include-datasets/--include-methods select entries of the JSON files; "
                             "they do not apply to --pred-dir/--gt-dir")
        if json_mode and args.name is not None:
            raise IsnetError("--name names the --pred-dir method; JSON methods are named by their keys")
        curve_metrics = {"fmeasure", "precision", "recall"}
        if args.plot_dir and not curve_metrics & set(args.metric_names):
            raise IsnetError("--plot-dir draws the F-measure and PR curves; add fmeasure to --metric-names")
        if args.curves_npy and not (curve_metrics | {"em"}) & set(args.metric_names):
            raise IsnetError("--curves-npy needs a curve metric; add fmeasure or em to --metric-names")

    def run(self, args: argparse.Namespace) -> int:
        self._check(args)
        from isnet import eval as evaluation

        if args.dataset_json is not None:
            tasks = evaluation.plan_from_json(args.dataset_json, args.method_json,
                                              include_datasets=args.include_datasets,
                                              include_methods=args.include_methods,
                                              allow_missing=args.allow_missing)
        else:
            tasks = [evaluation.plan_from_folders(args.pred_dir, args.gt_dir, method=args.name,
                                                  allow_missing=args.allow_missing)]
        from isnet.core.memory import retain_freed_memory
        from isnet.tools.progress import StageBars

        retain_freed_memory()  # every image allocates the same large arrays; see isnet.core.memory
        with StageBars() as bars:
            results = evaluation.evaluate_tasks(tasks, metric_names=args.metric_names, num_workers=args.workers,
                                                progress=bars)
        for dataset, methods in results.items():
            for method, result in methods.items():
                if result.missing:
                    print(f"note: '{method}' on '{dataset}': {len(result.missing)} GT masks have no prediction "
                          f"and were skipped ({', '.join(result.missing[:5])}"
                          f"{', ...' if len(result.missing) > 5 else ''})")
                if result.resized:
                    print(f"note: '{method}' on '{dataset}': {len(result.resized)} of {result.num_images} "
                          f"predictions differ in size from their GT (e.g. '{result.resized[0]}') and were "
                          f"resized to it bilinearly, as PySODEvalToolkit does")
        print(evaluation.format_table(results, args.num_bits))
        written = []
        if args.record_txt:
            written.append(evaluation.write_txt(args.record_txt, results, args.num_bits))
        if args.record_json:
            written.append(evaluation.write_json(args.record_json, results))
        if args.record_csv:
            written.append(evaluation.write_csv(args.record_csv, results))
        if args.curves_npy:
            written.append(evaluation.save_curves(args.curves_npy, results))
        if args.plot_dir:
            written += evaluation.plot_curves(args.plot_dir, results)
        for path in written:
            print(f"wrote {path}")
        return 0
