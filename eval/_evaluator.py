"""All metrics over one image set in one pass per image, and the in-memory entry points."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from isnet.eval._metrics import MAE, EMeasure, FMeasure, SMeasure, WeightedFMeasure
from isnet.eval._statistics import PairStatistics
from isnet.core import IsnetError, did_you_mean

# The names PySODEvalToolkit's --metric-names accepts for these metrics, and the result keys each
# one reports (also the console and record columns, in this order).
RESULT_KEYS: dict[str, tuple[str, ...]] = {
    "mae": ("mae",),
    "fmeasure": ("maxfmeasure", "avgfmeasure", "adpfmeasure"),
    "precision": ("maxprecision", "avgprecision"),
    "recall": ("maxrecall", "avgrecall"),
    "em": ("maxem", "avgem", "adpem"),
    "sm": ("sm",),
    "wfm": ("wfm",),
}
METRIC_NAMES: tuple[str, ...] = tuple(RESULT_KEYS)


@dataclass(frozen=True)
class EvalResult:
    """Scores of one method on one image set.

    ``metrics`` maps result keys (``mae``, ``maxfmeasure``, ... see ``RESULT_KEYS``) to floats.
    ``curves`` holds the dataset-mean curves over 256 thresholds, index t meaning "foreground where
    the 8-bit normalised map is >= t": ``precision``, ``recall`` and ``fmeasure`` (the PR curve is
    recall vs precision) when any F-measure family metric was asked for, ``em`` with the E-measure.
    For files, ``missing`` lists the GT names skipped for want of a prediction (only with
    ``allow_missing``) and ``resized`` the names whose prediction was resized to its GT.
    ``picture_mae`` is each picture's MAE by name (files) or position (in-memory maps).
    """

    metrics: dict[str, float]
    curves: dict[str, np.ndarray]
    num_images: int
    missing: tuple[str, ...] = ()
    resized: tuple[str, ...] = ()
    picture_mae: dict[str, float] = field(default_factory=dict)


def check_metric_names(names: Iterable[str]) -> tuple[str, ...]:
    """Validate metric names and return them in canonical order."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise IsnetError(f"no metric names given; choose from {', '.join(METRIC_NAMES)}")
    for name in names:
        if name not in RESULT_KEYS:
            raise IsnetError(f"unknown metric '{name}'{did_you_mean(name, METRIC_NAMES)}; "
                             f"choose from {', '.join(METRIC_NAMES)}")
    return tuple(name for name in METRIC_NAMES if name in names)


class SaliencyEvaluator:
    """Every requested metric over a set of (prediction, GT) pairs, sharing one pass per image.

    ``step(pred, gt)`` takes uint8 2-D arrays of the same shape (0..255, the GT binarised at
    > 128 as in PySODEvalToolkit); ``results()`` returns an :class:`EvalResult`.
    """

    def __init__(self, metric_names: Iterable[str] = METRIC_NAMES):
        self.metric_names = check_metric_names(metric_names)
        wanted = set(self.metric_names)
        self._metrics = []
        if "mae" in wanted:
            self._metrics.append(MAE())
        if wanted & {"fmeasure", "precision", "recall"}:
            self._metrics.append(FMeasure())
        if "em" in wanted:
            self._metrics.append(EMeasure())
        if "sm" in wanted:
            self._metrics.append(SMeasure())
        if "wfm" in wanted:
            self._metrics.append(WeightedFMeasure())
        self._regions = any(metric.needs_regions for metric in self._metrics)

    def step(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Score one pair."""
        self._add(self._measure(pred, gt))

    def _measure(self, pred: np.ndarray, gt: np.ndarray) -> tuple:
        """Per-image records of every metric (pure; run in worker processes)."""
        stats = PairStatistics(pred, gt, regions=self._regions)
        return tuple(metric._measure(stats) for metric in self._metrics)

    def _add(self, records: tuple) -> None:
        for metric, record in zip(self._metrics, records, strict=True):
            metric._add(record)

    @property
    def num_images(self) -> int:
        """Pairs stepped so far."""
        return self._metrics[0].num_images

    def picture_mae(self) -> list[float]:
        """Each stepped picture's MAE, in order (empty when MAE was not asked for)."""
        return [float(score) for metric in self._metrics if isinstance(metric, MAE) for score in metric._scores]

    def results(self) -> EvalResult:
        """Dataset-level scores and curves; raises ``ValueError`` before the first step."""
        values: dict[str, float] = {}
        curves: dict[str, np.ndarray] = {}
        for metric in self._metrics:
            values.update(metric.results())
            if hasattr(metric, "curves"):
                curves.update(metric.curves())
        keys = [key for name in self.metric_names for key in RESULT_KEYS[name]]
        return EvalResult(metrics={key: values[key] for key in keys}, curves=curves,
                          num_images=self.num_images)


def _as_maps(arrays) -> list[np.ndarray]:
    """2-D uint8 maps from an array (H, W), (N, H, W) or (N, 1, H, W), or a list/tuple of those."""
    from isnet.build_in.ops import map_to_uint8

    if isinstance(arrays, (list, tuple)):
        return [m for item in arrays for m in _as_maps(item)]
    batch = np.asarray(arrays)
    if batch.ndim == 4 and batch.shape[1] == 1:
        batch = batch[:, 0]
    if batch.ndim == 2:
        batch = batch[None]
    if batch.ndim != 3:
        raise ValueError(f"expected maps shaped (H, W), (N, H, W) or (N, 1, H, W), got {batch.shape}")
    if batch.dtype == np.uint8:
        return [np.ascontiguousarray(m) for m in batch]
    if batch.dtype == bool:
        return [m.astype(np.uint8) * np.uint8(255) for m in batch]
    if np.issubdtype(batch.dtype, np.floating):
        return [map_to_uint8(m) for m in batch]
    raise ValueError(f"maps must be uint8, bool or float in [0, 1], got {batch.dtype}")


def _scored_pairs(preds, gts, smeasure: bool) -> tuple[SaliencyEvaluator, list[np.ndarray], list[np.ndarray]]:
    """The cheap validation evaluator (MAE, F-measure, S-measure with ``smeasure``) and the paired maps."""
    pred_maps, gt_maps = _as_maps(preds), _as_maps(gts)
    if len(pred_maps) != len(gt_maps):
        raise ValueError(f"{len(pred_maps)} predictions but {len(gt_maps)} GT maps")
    if not pred_maps:
        raise ValueError("no maps given")
    return SaliencyEvaluator(("mae", "fmeasure", "sm") if smeasure else ("mae", "fmeasure")), pred_maps, gt_maps


def validation_scores(preds, gts, smeasure: bool = False) -> dict[str, float]:
    """MAE and max F-measure of in-memory maps: the cheap validation scores for training; with
    ``smeasure`` the S-measure too.

    ``preds`` and ``gts`` are arrays shaped (H, W), (N, H, W) or (N, 1, H, W), or sequences of such
    (e.g. one batch per element); pairs are matched by position and must have the same size. Float
    maps are probabilities in [0, 1] and are rounded to 8 bits as ``isnet run`` saves them
    (``isnet.build_in.ops.map_to_uint8``), so the scores equal what ``isnet eval`` reports on the saved
    masks; uint8 maps are used as they are; bool GTs mean 0/255. Only the histogram pieces are
    computed (no S-measure or weighted F-measure work), a fraction of a millisecond per image.

    Returns ``{"mae": float, "maxfmeasure": float}`` (and ``"sm"``).
    """
    evaluator, pred_maps, gt_maps = _scored_pairs(preds, gts, smeasure)
    for pred, gt in zip(pred_maps, gt_maps):
        evaluator.step(pred, gt)
    metrics = evaluator.results().metrics
    return {key: metrics[key] for key in ("mae", "maxfmeasure", "sm") if key in metrics}


def selection_scores(preds, gts, selections: np.ndarray, smeasure: bool = False) -> dict[str, np.ndarray]:
    """The dataset scores (``mae``, ``maxfmeasure``, and ``sm`` with ``smeasure``) of selections of the
    pictures: ``selections`` is an integer array (S, n) of picture indices (repeats allowed, e.g.
    bootstrap resamples); each score comes back as an (S,) array, row i what :func:`validation_scores`
    gives for the pictures of ``selections[i]``. A budgeted int8 build scores its candidates so, to
    bound their drift on pictures it has not seen (:mod:`isnet.build_in.budget`). Inputs as for
    :func:`validation_scores`.
    """
    evaluator, pred_maps, gt_maps = _scored_pairs(preds, gts, smeasure)
    records = [evaluator._measure(pred, gt) for pred, gt in zip(pred_maps, gt_maps)]
    # Per picture: MAE, the F-measure at each of the 256 thresholds (max F is the maximum of their
    # mean over the pictures), S-measure.
    # A selection's mean is its picture counts over n times the per-picture values: (S, n) weights
    # instead of an (S, n, 256) gather (200 MB for 2000 resamples of 50 pictures).
    count = len(records)
    weights = np.stack([np.bincount(row, minlength=count) for row in np.atleast_2d(selections)]) / selections.shape[-1]
    mae = np.array([record[0] for record in records])
    fmeasure = np.stack([record[1][3] for record in records])
    scores = {"mae": weights @ mae, "maxfmeasure": (weights @ fmeasure).max(axis=-1)}
    if smeasure:
        scores["sm"] = weights @ np.array([record[2] for record in records])
    return scores
