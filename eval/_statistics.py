"""The per-image pieces every saliency metric is computed from, each computed once.

Pre-processing follows PySODMetrics / PySODEvalToolkit (and the MATLAB code they port): the GT
is binarised at ``> 128``; the prediction is divided by 255 and min-max normalised when it is not
constant. Because both steps act on grey levels, a 256-entry table (``table[v]`` = normalised value
of grey level ``v``) describes the whole normalised map, and a joint histogram of grey level x GT
class replaces most per-pixel work: MAE, the F-measure / precision / recall / E-measure curves,
the adaptive scores and the S-measure's object and region terms all come from histograms. Only the
weighted F-measure needs the map itself (a distance transform and a 7x7 blur).
"""

from __future__ import annotations

from functools import cached_property

import cv2
import numpy as np

# MATLAB's eps, which the reference implementations add to denominators.
EPS = float(np.spacing(1))

# cv2.calcHist counts in float32, exact only below 2**24 per bin.
_CALCHIST_MAX_PIXELS = 1 << 24


def joint_histogram(pred: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Pixel counts per (GT class, grey level): row 0 GT background, row 1 GT foreground.

    ``pred`` is uint8 and ``fg`` a uint8 0/1 view of the GT of the same (possibly strided) block.
    """
    if pred.size == 0:
        return np.zeros((2, 256), np.int64)
    if pred.size < _CALCHIST_MAX_PIXELS:
        hist = cv2.calcHist([pred, fg], [0, 1], None, [256, 2], [0, 256, 0, 2])
        return hist.T.astype(np.int64)
    key = pred.astype(np.intp) | (fg.astype(np.intp) << 8)
    return np.bincount(key.ravel(), minlength=512).reshape(2, 256)


def check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    """Refuse arrays the metrics are not defined on (a programming error, not a user one)."""
    for name, array in (("pred", pred), ("gt", gt)):
        if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 2:
            raise ValueError(f"{name} must be a 2-D uint8 array, got "
                             f"{getattr(array, 'dtype', type(array).__name__)} {getattr(array, 'shape', '')}")
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape; resize the prediction first")
    if pred.size == 0:
        raise ValueError("empty arrays")


class PairStatistics:
    """Shared statistics of one (prediction, GT) pair; expensive pieces are computed on first use.

    ``regions`` also splits the histograms into the four S-measure blocks around the GT centroid,
    which costs nothing extra when asked for up front (the whole-image histogram is their sum).
    """

    def __init__(self, pred: np.ndarray, gt: np.ndarray, *, regions: bool = True):
        check_pair(pred, gt)
        self.pred = np.ascontiguousarray(pred)
        self.fg = gt > 128
        self.height, self.width = pred.shape
        self.size = pred.size
        fg_u8 = self.fg.view(np.uint8)
        self.fg_count = int(np.count_nonzero(self.fg))
        self.split: tuple[int, int] | None = None
        self.block_counts: np.ndarray | None = None  # (4, 2, 256): TL, TR, BL, BR blocks
        if regions and 0 < self.fg_count < self.size:
            self.split = self._centroid_split()
            self.block_counts = np.stack([joint_histogram(self.pred[block], fg_u8[block])
                                          for block in self.blocks()])
            self.counts = self.block_counts.sum(axis=0)
        else:
            self.counts = joint_histogram(self.pred, fg_u8)
        present = np.flatnonzero(self.counts.sum(axis=0))
        self.present_levels = present
        table = np.arange(256) / 255
        low, high = present[0], present[-1]
        if high != low:
            # The same float operations the reference applies to every pixel, applied per level,
            # so each normalised value is bit-identical to the reference's.
            table = (table - table[low]) / (table[high] - table[low])
        self.table = table

    # -- geometry ------------------------------------------------------------------------------

    def _centroid_split(self) -> tuple[int, int]:
        """1-based rounded GT centroid (row, col), as the S-measure's MATLAB code divides the map."""
        rows, cols = self.row_counts, self.col_counts
        # Integer sums are exact; one correctly rounded division and a round-half-to-even give the
        # same centroid as the reference's np.argwhere(gt).mean(axis=0).round().
        cy = round(int(rows @ np.arange(self.height)) / self.fg_count)
        cx = round(int(cols @ np.arange(self.width)) / self.fg_count)
        return cy + 1, cx + 1

    @cached_property
    def row_counts(self) -> np.ndarray:
        """GT foreground pixels per row."""
        return np.count_nonzero(self.fg, axis=1)

    @cached_property
    def col_counts(self) -> np.ndarray:
        """GT foreground pixels per column."""
        return np.count_nonzero(self.fg, axis=0)

    def blocks(self) -> tuple[tuple[slice, slice], ...]:
        """The four S-measure blocks (top-left, top-right, bottom-left, bottom-right) as slices."""
        cy, cx = self.split
        top, bottom = slice(0, cy), slice(cy, self.height)
        left, right = slice(0, cx), slice(cx, self.width)
        return (top, left), (top, right), (bottom, left), (bottom, right)

    # -- normalised map ------------------------------------------------------------------------

    @cached_property
    def normalised_map(self) -> np.ndarray:
        """The normalised prediction as float64 (H, W), identical to the reference's array."""
        return cv2.LUT(self.pred, self.table)

    @cached_property
    def map_mean(self) -> float:
        """Mean of the normalised map."""
        return float(self.counts.sum(axis=0) @ self.table) / self.size

    # -- thresholding --------------------------------------------------------------------------

    @cached_property
    def counts_at_least(self) -> np.ndarray:
        """(2, 256) int64: pixels per GT class whose 8-bit normalised value is >= threshold t.

        The reference quantises the normalised map with ``(map * 255).astype(uint8)`` and sweeps
        t = 0..255; column t holds (GT background, GT foreground) counts at threshold t.
        """
        quantised = (self.table * 255).astype(np.uint8)
        per_level = np.stack([np.bincount(quantised, weights=self.counts[c], minlength=256)
                              for c in (0, 1)]).astype(np.int64)
        return np.cumsum(per_level[:, ::-1], axis=1)[:, ::-1]

    @cached_property
    def adaptive_threshold(self) -> float:
        """``min(2 * mean, 1)`` of the normalised map (Achanta et al.'s adaptive threshold)."""
        doubled = 2 * self.map_mean
        if doubled > 1.0 + 1e-9:
            return 1.0  # clamped: the last bits of the mean cannot change it
        threshold = min(doubled, 1.0)
        if np.any(np.abs(self.table[self.present_levels] - threshold) < 1e-9):
            # A grey level sits within rounding of the threshold: the histogram mean and the
            # reference's np.mean may differ in the last bit and flip ">=", so take the mean
            # exactly as the reference does. Rare, and only then is the map materialised.
            threshold = min(2 * float(self.normalised_map.mean()), 1.0)
        return threshold

    @cached_property
    def counts_at_adaptive(self) -> tuple[int, int]:
        """(GT background, GT foreground) pixels whose normalised value is >= the adaptive threshold."""
        above = self.table >= self.adaptive_threshold
        return int(self.counts[0][above].sum()), int(self.counts[1][above].sum())

    # -- distances -----------------------------------------------------------------------------

    @cached_property
    def squared_distance(self) -> np.ndarray:
        """intp (H, W): squared Euclidean distance of each pixel to the nearest GT foreground pixel.

        Exact: OpenCV's precise transform returns float32 square roots of the integer squared
        distances, and squaring and rounding recovers them (checked against SciPy's
        ``distance_transform_edt``, the reference's ``bwdist``, in the tests). Values above
        ``max_squared`` are clipped to it; callers only need distances up to there.
        """
        background = np.logical_not(self.fg).view(np.uint8)
        distance = cv2.distanceTransform(background, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        squared = np.multiply(distance, distance, out=distance)
        np.rint(squared, out=squared)
        np.minimum(squared, self.max_squared, out=squared)
        return squared.astype(np.intp)  # intp: it is used as an index

    # Distances beyond 300 px only ever enter through 2 - exp(log(0.5)/5 * d), which is exactly 2.0
    # in float64 from d ~ 266 on, so clipping there loses nothing.
    max_squared = 300 * 300
