"""Evaluation: PySODEvalToolkit-compatible salient-object metrics, exact and fast.

MAE, F-measure (beta^2 = 0.3; max / avg / adaptive), precision and recall (max / avg) with the PR
curve, E-measure (max / avg / adaptive), S-measure (alpha = 0.5) and weighted F-measure, numerically
identical to PySODMetrics 1.6.2 (within 1e-6 per dataset, in practice to the last bits).

Entry points:

- :func:`evaluate_folders` -- a prediction folder against a GT folder (what ``isnet compare`` uses);
  returns an :class:`EvalResult` (``metrics`` dict, ``curves``).
- :func:`validation_scores` -- MAE and max F-measure (and S-measure if asked) of in-memory maps;
  (training validation); :func:`selection_scores` -- the same for selections of the pictures
  (bootstrap resamples: with ``smeasure=True``, the scorer of a budgeted int8 build).
- :func:`evaluate_json` / :func:`plan_from_json` + :func:`evaluate_tasks` -- PySODEvalToolkit's
  dataset and method JSON files (what ``isnet eval`` uses).
- :func:`ecssd_folders` / :func:`ecssd_pairs` -- the one reading of a dataset in ECSSD layout
  (``image/`` and ``mask/``, paired by file stem), or of a dataset JSON's image and mask folders.
- :class:`SaliencyEvaluator` and the single metrics (:class:`MAE`, :class:`FMeasure`, ...), each
  with ``step(pred, gt)`` and ``results()``, for in-memory uint8 maps.
"""

from isnet.eval._evaluator import (METRIC_NAMES, RESULT_KEYS, EvalResult, SaliencyEvaluator, selection_scores,
                                   validation_scores)
from isnet.eval._inputs import EvalTask, ecssd_folders, ecssd_pairs, plan_from_folders, plan_from_json
from isnet.eval._metrics import MAE, EMeasure, FMeasure, SMeasure, WeightedFMeasure
from isnet.eval._reports import format_table, plot_curves, save_curves, write_csv, write_json, write_txt
from isnet.eval._runner import evaluate_folders, evaluate_json, evaluate_tasks

__all__ = [
    "METRIC_NAMES", "RESULT_KEYS", "EvalResult", "EvalTask", "SaliencyEvaluator",
    "MAE", "FMeasure", "EMeasure", "SMeasure", "WeightedFMeasure",
    "ecssd_folders", "ecssd_pairs", "evaluate_folders", "evaluate_json", "evaluate_tasks", "plan_from_folders",
    "plan_from_json",
    "validation_scores", "selection_scores", "format_table", "plot_curves", "save_curves", "write_csv", "write_json", "write_txt",
]
