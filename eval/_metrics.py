"""Salient-object metrics, each a small object with ``step(pred, gt)`` and ``results()``.

Every metric follows the definitions of PySODMetrics 1.6.2 (the package behind PySODEvalToolkit,
itself a port of the authors' MATLAB code) so scores match published tables: per-image values are
averaged over the dataset, curves point-wise. The implementations are independent and work from
the shared :class:`~isnet.eval._statistics.PairStatistics` of each image, so an evaluator running all of
them computes the normalised map, the histograms and the distance transform once.

``step`` takes the 8-bit prediction and GT (same shape). Internally each metric splits a step into
``_measure(stats) -> record`` (pure, run in worker processes) and ``_add(record)`` (in order, in the
parent), which is what makes multi-process results identical to single-process ones.
"""

from __future__ import annotations

import cv2
import numpy as np

from isnet.eval._statistics import EPS, PairStatistics

_THRESHOLDS = 256


class _Metric:
    """Shared plumbing: per-image scores kept in a list, averaged on ``results()``."""

    needs_regions = False

    def __init__(self):
        self._scores: list[float] = []

    def step(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Score one uint8 prediction against its uint8 GT (same shape, values 0..255)."""
        self._add(self._measure(PairStatistics(pred, gt, regions=self.needs_regions)))

    def _measure(self, stats: PairStatistics):
        raise NotImplementedError

    def _add(self, record) -> None:
        self._scores.append(record)

    @property
    def num_images(self) -> int:
        """Images stepped so far."""
        return len(self._scores)

    def _mean_score(self) -> float:
        if not self._scores:
            raise ValueError(f"{type(self).__name__}.results() before any step()")
        return float(np.mean(np.array(self._scores, dtype=np.float64)))


class _CurveMetric(_Metric):
    """A metric with curves over thresholds: an adaptive score per image plus running curve sums.

    Adding the curves image by image gives bit for bit the reference's ``np.mean(..., axis=0)``
    over the stacked curves (NumPy reduces that axis row by row), without keeping them all.
    """

    def __init__(self, names: tuple[str, ...]):
        super().__init__()
        self._curve_names = names
        self._sums = np.zeros((len(names), _THRESHOLDS))

    def _add(self, record) -> None:
        adaptive, *curves = record
        self._scores.append(adaptive)
        for total, curve in zip(self._sums, curves):
            total += curve

    def curves(self) -> dict[str, np.ndarray]:
        """Dataset-mean curves; index t is the threshold ``>= t`` on the 8-bit normalised map."""
        if not self._scores:
            raise ValueError(f"{type(self).__name__}.curves() before any step()")
        return {name: total / len(self._scores) for name, total in zip(self._curve_names, self._sums)}


class MAE(_Metric):
    """Mean absolute error between the normalised map and the binary GT.

    Perazzi, Kraehenbuehl, Pritch, Hornung, "Saliency Filters: Contrast Based Filtering for
    Salient Region Detection", CVPR 2012.
    """

    def _measure(self, stats: PairStatistics) -> float:
        background, foreground = stats.counts
        return float(background @ stats.table + foreground @ (1 - stats.table)) / stats.size

    def results(self) -> dict[str, float]:
        """``{"mae": mean over images}``."""
        return {"mae": self._mean_score()}


class FMeasure(_CurveMetric):
    """F-measure, precision and recall at 256 thresholds, and the adaptive F-measure.

    Achanta, Hemami, Estrada, Suesstrunk, "Frequency-tuned Salient Region Detection", CVPR 2009
    (F-beta with beta^2 = 0.3 and the adaptive threshold ``min(2 * mean, 1)``). The map is
    quantised to 8 bits and binarised with ``>= t`` for t = 0..255; precision with no predicted
    pixel and recall with an empty GT count as 0, and so does F when precision + recall is 0.
    """

    def __init__(self, beta2: float = 0.3):
        super().__init__(("precision", "recall", "fmeasure"))
        self.beta2 = beta2

    def _measure(self, stats: PairStatistics) -> tuple:
        fp, tp = stats.counts_at_least
        predicted = tp + fp
        precision = np.divide(tp, predicted, out=np.zeros(_THRESHOLDS), where=predicted != 0)
        recall = tp / stats.fg_count if stats.fg_count else np.zeros(_THRESHOLDS)
        numerator = (1 + self.beta2) * precision * recall
        denominator = self.beta2 * precision + recall
        fmeasure = np.divide(numerator, denominator, out=np.zeros(_THRESHOLDS), where=denominator != 0)

        fp_adp, tp_adp = stats.counts_at_adaptive
        adaptive = 0.0
        if tp_adp:
            p, r = tp_adp / (tp_adp + fp_adp), tp_adp / stats.fg_count
            adaptive = (1 + self.beta2) * p * r / (self.beta2 * p + r)
        return adaptive, precision, recall, fmeasure

    def results(self) -> dict[str, float]:
        """max/avg/adaptive F-measure and max/avg precision and recall over the mean curves."""
        curves = self.curves()
        precision, recall, fmeasure = curves["precision"], curves["recall"], curves["fmeasure"]
        return {"maxfmeasure": float(fmeasure.max()), "avgfmeasure": float(fmeasure.mean()),
                "adpfmeasure": self._mean_score(),
                "maxprecision": float(precision.max()), "avgprecision": float(precision.mean()),
                "maxrecall": float(recall.max()), "avgrecall": float(recall.mean())}


def _enhanced_alignment(pred_term, gt_term):
    """Enhanced alignment value of one (demeaned prediction, demeaned GT) value pair."""
    alignment = 2 * (pred_term * gt_term) / (pred_term ** 2 + gt_term ** 2 + EPS)
    return (alignment + 1) ** 2 / 4


def _emeasure(tp, fp, fg_count: int, size: int):
    """E-measure of a binarised map from its confusion counts (scalars or arrays over thresholds).

    Each of the four (prediction, GT) value combinations has one enhanced-alignment value, so the
    sum over pixels is a weighted sum of four terms.
    """
    predicted = tp + fp
    not_predicted = size - predicted
    if fg_count == 0:
        total = not_predicted
    elif fg_count == size:
        total = predicted
    else:
        fn = fg_count - tp
        tn = not_predicted - fn
        pred_mean = predicted / size
        gt_mean = fg_count / size
        pred_on, pred_off = 1 - pred_mean, 0 - pred_mean
        gt_on, gt_off = 1 - gt_mean, 0 - gt_mean
        total = (_enhanced_alignment(pred_on, gt_on) * tp + _enhanced_alignment(pred_on, gt_off) * fp
                 + _enhanced_alignment(pred_off, gt_on) * fn + _enhanced_alignment(pred_off, gt_off) * tn)
    return total / (size - 1 + EPS)


class EMeasure(_CurveMetric):
    """Enhanced-alignment measure at 256 thresholds and at the adaptive threshold.

    Fan, Gong, Cao, Ren, Cheng, Borji, "Enhanced-alignment Measure for Binary Foreground Map
    Evaluation", IJCAI 2018. An empty GT scores the fraction of unpredicted pixels, a full GT the
    fraction of predicted ones, as in the authors' code.
    """

    def __init__(self):
        super().__init__(("em",))

    def _measure(self, stats: PairStatistics) -> tuple:
        fp, tp = stats.counts_at_least
        curve = np.asarray(_emeasure(tp, fp, stats.fg_count, stats.size), dtype=np.float64)
        fp_adp, tp_adp = stats.counts_at_adaptive
        adaptive = float(_emeasure(tp_adp, fp_adp, stats.fg_count, stats.size))
        return adaptive, curve

    def results(self) -> dict[str, float]:
        """max/avg E-measure over the mean curve, and the mean adaptive E-measure."""
        curve = self.curves()["em"]
        return {"maxem": float(curve.max()), "avgem": float(curve.mean()), "adpem": self._mean_score()}


def _object_similarity(counts: np.ndarray, values: np.ndarray) -> float:
    """S-measure object term of one region: 2*mean / (mean^2 + 1 + std + eps), std with ddof=1."""
    n = int(counts.sum())
    mean = float(counts @ values) / n
    std = float(np.sqrt(counts @ (values - mean) ** 2 / (n - 1))) if n > 1 else 0.0
    return 2 * mean / (mean ** 2 + 1 + std + EPS)


def _ssim_terms(x, y, sigma_x, sigma_y, sigma_xy) -> float:
    alpha = 4 * x * y * sigma_xy
    beta = (x ** 2 + y ** 2) * (sigma_x + sigma_y)
    if alpha != 0:
        return float(alpha / (beta + EPS))
    return 1.0 if beta == 0 else 0.0


def _block_ssim_from_counts(counts: np.ndarray, table: np.ndarray) -> float:
    """SSIM-like score of one S-measure block from its (GT class, grey level) histogram."""
    background, foreground = counts
    both = background + foreground
    n = int(both.sum())
    fg = int(foreground.sum())
    x = float(both @ table) / n
    y = fg / n
    deviation = table - x
    denominator = n - 1 + EPS
    sigma_x = float(both @ deviation ** 2) / denominator
    sigma_y = (fg * (1 - y) ** 2 + (n - fg) * y ** 2) / denominator
    sigma_xy = ((1 - y) * float(foreground @ deviation) - y * float(background @ deviation)) / denominator
    return _ssim_terms(x, y, sigma_x, sigma_y, sigma_xy)


def _block_ssim_from_pixels(pred: np.ndarray, gt: np.ndarray) -> float:
    """The same score from the block's pixels, for blocks of one grey level.

    There the score hinges on whether rounding leaves a variance of exactly 0 (score 1) or of
    1e-33 (score 0); computing it pixel-wise reproduces the reference's rounding exactly.
    """
    n = pred.size
    x, y = pred.mean(), gt.mean()
    dx, dy = pred - x, gt - y
    denominator = n - 1 + EPS
    return _ssim_terms(x, y, np.sum(dx ** 2) / denominator, np.sum(dy ** 2) / denominator,
                       np.sum(dx * dy) / denominator)


def _block_ssim_one_level(stats: PairStatistics, block, counts: np.ndarray) -> float:
    """The score of a block of one grey level, as :func:`_block_ssim_from_pixels` computes it.

    When the block's mean equals its value exactly (always for 0 and 1, which sums of equal
    values reproduce exactly; otherwise checked on the pixels), every deviation is exactly 0, so
    the covariance is 0 and the score is 1 if the GT block is uniform (its variance is then 0
    too) and 0 if not. Only a mean that rounding moved needs the pixel-wise computation.
    """
    value = stats.table[np.flatnonzero(counts.sum(axis=0))[0]]
    if value not in (0.0, 1.0) and stats.normalised_map[block].mean() != value:
        return _block_ssim_from_pixels(stats.normalised_map[block], stats.fg[block])
    background, foreground = counts.sum(axis=1)
    return 1.0 if background == 0 or foreground == 0 else 0.0


class SMeasure(_Metric):
    """Structure measure: alpha * object similarity + (1 - alpha) * region similarity.

    Fan, Cheng, Liu, Li, Borji, "Structure-measure: A New Way to Evaluate Foreground Maps",
    ICCV 2017, with alpha = 0.5. An empty GT scores 1 - mean(map), a full GT mean(map).

    Defined value where the reference yields NaN: when the GT centroid rounds onto the last row
    or column, one or two of the four blocks are empty; PySODMetrics then takes the mean of an
    empty block and the image's S-measure (and the dataset's mean) becomes NaN. An empty block
    has weight 0, so here it contributes 0 and the score is that of the other blocks.
    """

    needs_regions = True

    def __init__(self, alpha: float = 0.5):
        super().__init__()
        self.alpha = alpha

    def _measure(self, stats: PairStatistics) -> float:
        if stats.fg_count == 0:
            return 1 - stats.map_mean
        if stats.fg_count == stats.size:
            return stats.map_mean
        if stats.block_counts is None:
            raise ValueError("SMeasure needs PairStatistics(..., regions=True)")
        score = self._object(stats) * self.alpha + self._region(stats) * (1 - self.alpha)
        return max(0.0, score)

    @staticmethod
    def _object(stats: PairStatistics) -> float:
        gt_mean = stats.fg_count / stats.size
        background, foreground = stats.counts
        return (_object_similarity(foreground, stats.table) * gt_mean
                + _object_similarity(background, 1 - stats.table) * (1 - gt_mean))

    @staticmethod
    def _region(stats: PairStatistics) -> float:
        cy, cx = stats.split
        h, w = stats.height, stats.width
        area = h * w
        w_tl = cx * cy / area
        w_tr = cy * (w - cx) / area
        w_bl = (h - cy) * cx / area
        weights = (w_tl, w_tr, w_bl, 1 - w_tl - w_tr - w_bl)
        score = 0.0
        for block, counts, weight in zip(stats.blocks(), stats.block_counts, weights):
            levels = np.count_nonzero(counts.sum(axis=0))
            if levels == 0:
                continue  # empty block: weight 0, see the class docstring
            if levels == 1:
                ssim = _block_ssim_one_level(stats, block, counts)
            else:
                ssim = _block_ssim_from_counts(counts, stats.table)
            score += ssim * weight
        return score

    def results(self) -> dict[str, float]:
        """``{"sm": mean over images}``."""
        return {"sm": self._mean_score()}


def _gaussian_kernel_1d(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """1-D factor of MATLAB's ``fspecial('gaussian', size, sigma)``, normalised to sum 1.

    The 2-D kernel is separable; fspecial's clipping of values below eps * max never applies at
    size 7, sigma 5 (the smallest value is 0.70 of the largest).
    """
    x = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(x * x) / (2 * sigma * sigma))
    return kernel / kernel.sum()


_GAUSSIAN = _gaussian_kernel_1d()
_RADIUS = 3  # half the 7x7 window
_WINDOW = np.ones((2 * _RADIUS + 1, 2 * _RADIUS + 1), np.uint8)
# A background pixel in the 7x7 window of a foreground pixel (Chebyshev distance <= 3) has a
# squared distance <= 18 to its nearest foreground pixel.
_BAND_SQUARED = 2 * _RADIUS * _RADIUS


def _offsets_by_squared_distance(limit: int) -> np.ndarray:
    """(drow, dcol) offsets of each squared length 0..limit, ordered as SciPy breaks ties.

    Returns an int array (limit + 1, slots, 2); row k lists the offsets of squared length k, padded
    with (0, 0), which points at the (background) pixel itself and so is never a hit.
    ``scipy.ndimage.distance_transform_edt`` (the reference's ``bwdist``) returns, among equally
    near foreground pixels, the one with the smallest column, then the smallest row: its first
    pass keeps the upper of two equal candidates in a column, its second the leftmost. Checked on
    every band pixel of ECSSD masks in the tests.
    """
    reach = int(np.sqrt(limit))
    by_length: list[list[tuple[int, int]]] = [[] for _ in range(limit + 1)]
    for dr in range(-reach, reach + 1):
        for dc in range(-reach, reach + 1):
            if 0 < dr * dr + dc * dc <= limit:
                by_length[dr * dr + dc * dc].append((dr, dc))
    slots = max(len(offsets) for offsets in by_length)
    table = np.zeros((limit + 1, slots, 2), np.intp)
    for k, offsets in enumerate(by_length):
        offsets.sort(key=lambda o: (o[1], o[0]))
        if offsets:
            table[k, :len(offsets)] = offsets
    return table


_BAND_OFFSETS = _offsets_by_squared_distance(_BAND_SQUARED)
_PAD = int(np.sqrt(_BAND_SQUARED))


def _nearest_foreground(fg: np.ndarray, squared: np.ndarray, rows: np.ndarray, cols: np.ndarray):
    """Row and column of the foreground pixel SciPy's ``bwdist`` assigns to each given pixel.

    ``squared`` is the exact squared distance of every pixel (at most 18 at the given ones), so
    only offsets of that length need checking, in SciPy's tie-break order; the first foreground
    hit is the answer.
    """
    padded = np.zeros((fg.shape[0] + 2 * _PAD, fg.shape[1] + 2 * _PAD), bool)
    padded[_PAD:-_PAD, _PAD:-_PAD] = fg
    stride = padded.shape[1]
    steps = _BAND_OFFSETS[..., 0] * stride + _BAND_OFFSETS[..., 1]  # (lengths, slots) flat steps
    flat = (rows + _PAD) * stride + (cols + _PAD)
    candidates = flat[:, None] + steps[squared[rows, cols]]
    hits = padded.ravel()[candidates]
    first = hits.argmax(axis=1)
    index = np.arange(rows.size)
    if not hits[index, first].all():
        raise RuntimeError("distance transform and foreground disagree; please report this image")
    nearest = candidates[index, first]
    return nearest // stride - _PAD, nearest % stride - _PAD


def _importance_table(max_squared: int) -> np.ndarray:
    """Background weight 2 - exp(log(0.5) / 5 * d) per squared distance d^2; 0 at d = 0 (foreground)."""
    distance = np.sqrt(np.arange(max_squared + 1, dtype=np.float64))
    weight = 2 - np.exp(np.log(0.5) / 5 * distance)
    weight[0] = 0.0
    return weight


class WeightedFMeasure(_Metric):
    """Weighted F-measure (pixel dependency and pixel importance), beta^2 = 1.

    Margolin, Zelnik-Manor, Tal, "How to Evaluate Foreground Maps?", CVPR 2014. An empty GT
    scores 0, as in PySODMetrics.

    The error of each background pixel is replaced by that of its nearest foreground pixel and
    blurred with a 7x7 Gaussian (sigma 5); only the blur at foreground pixels is used, so only
    background pixels within 3 px of the object (the band) need their nearest foreground pixel,
    found with SciPy's tie-break so the numbers match. Background errors are weighted by
    2 - 0.5^(d/5), d the distance to the object.
    """

    _importance = _importance_table(PairStatistics.max_squared)

    def __init__(self, beta2: float = 1.0):
        super().__init__()
        self.beta2 = beta2

    def _measure(self, stats: PairStatistics) -> float:
        fg_count = stats.fg_count
        if fg_count == 0:
            return 0.0
        fg = stats.fg
        # Everything the blur at foreground pixels can see lies within 3 px of the GT's bounding box.
        rows = np.flatnonzero(stats.row_counts)
        cols = np.flatnonzero(stats.col_counts)
        crop = (slice(max(rows[0] - _RADIUS, 0), rows[-1] + _RADIUS + 1),
                slice(max(cols[0] - _RADIUS, 0), cols[-1] + _RADIUS + 1))
        fg_crop = fg[crop]
        fg_error = cv2.LUT(stats.pred[crop], 1 - stats.table)  # the error of each pixel were it foreground
        errors = fg_error * fg_crop
        background_error = 0.0
        if fg_count < stats.size:
            # The band: background pixels inside the 7x7 window of some foreground pixel.
            fg_u8 = fg_crop.view(np.uint8)
            band = cv2.dilate(fg_u8, _WINDOW)
            band -= fg_u8
            points = cv2.findNonZero(band)
            if points is not None:
                band_rows, band_cols = points[:, 0, 1], points[:, 0, 0]
                near_rows, near_cols = _nearest_foreground(fg_crop, stats.squared_distance[crop],
                                                           band_rows, band_cols)
                errors[band_rows, band_cols] = fg_error[near_rows, near_cols]
            # A background pixel's error is its value; the importance table is 0 on foreground pixels.
            background_error = float(np.einsum("ij,ij->", stats.normalised_map,
                                                 self._importance[stats.squared_distance]))
        blurred = cv2.sepFilter2D(errors, cv2.CV_64F, _GAUSSIAN, _GAUSSIAN, borderType=cv2.BORDER_CONSTANT)
        # The smaller of blur and error at each foreground pixel, summed in row-major order.
        foreground_error = float(np.minimum(blurred, fg_error, out=blurred)[fg_crop].sum())

        recall = 1 - foreground_error / fg_count
        tp = fg_count - foreground_error
        precision = tp / (tp + background_error + EPS)
        return (1 + self.beta2) * recall * precision / (recall + self.beta2 * precision + EPS)

    def results(self) -> dict[str, float]:
        """``{"wfm": mean over images}``."""
        return {"wfm": self._mean_score()}
