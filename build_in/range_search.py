"""Clipping-range searches over histograms: the thresholds ``kl_divergence`` and ``mse`` calibration pick.

The histograms have fixed edges, so they add up over images (isnet.build_in.calibration builds them
image by image); these functions only read them.
"""

from __future__ import annotations

import numpy as np

# Histogram resolution. KL calibration searches clipping thresholds between QUANTIZED_BINS / 2
# and DEFAULT_BINS / 2 bins from zero. ONNX Runtime's quantize_static fixes both at 128 for
# entropy, which leaves a single candidate (the full range): its "entropy" equals min-max. With
# 2048 bins the search is real. QUANTIZED_BINS is the grid the candidates are judged on: ORT's 128
# models int8 (64 levels on the positive side), but activations here are asymmetric uint8 with
# 256 levels, and judging them on the coarser grid clips ReLU outputs to a quarter of their range.
# Measured on the demo checkpoint (24 calibration images, 8 held-out): mean |output diff| vs fp32
# 0.081 with 128, 0.0008 with 256.
DEFAULT_BINS = 2048
QUANTIZED_BINS = 256

# cv2.calcHist counts in float32, exact below 2**24 per bin; tensors are binned in blocks this size.
_HISTOGRAM_BLOCK = 1 << 23


def fixed_range_histogram(values: np.ndarray, bins: int, low, high) -> tuple[np.ndarray, np.ndarray]:
    """``np.histogram(values, bins, range=(low, high))``, several times faster (OpenCV's binning).

    Counts come from ``cv2.calcHist`` on the float32 values, in blocks, added up in int64, with
    NumPy's conventions restored where OpenCV's differ: ``high`` itself belongs to the last bin,
    and exact zeros (half of a ReLU tensor) go to the bin NumPy puts 0 in. Other values are binned
    alike unless they lie within float rounding of a bin edge (measured on a 6.5 M-value ReLU
    tensor: about 20 values one bin over). Edges are NumPy's. NaN values are not counted.
    """
    import cv2

    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(1, -1)
    edges = np.histogram_bin_edges(np.empty(0, dtype=values.dtype), bins, range=(low, high))
    limits = [float(low), float(high)]
    counts = np.zeros(bins, dtype=np.int64)
    if not limits[0] < limits[1]:
        counts += np.histogram(values, bins, range=(low, high))[0]  # a degenerate range: NumPy's rules
        return counts, edges
    zero_here = zero_there = None
    if limits[0] <= 0.0 <= limits[1]:
        zero_here = int(np.histogram(np.zeros(1, dtype=values.dtype), bins, range=(low, high))[0].argmax())
        zero_there = cv2.calcHist([np.zeros((1, 1), np.float32)], [0], None, [bins], limits)[:, 0].argmax()
    for start in range(0, flat.shape[1], _HISTOGRAM_BLOCK):
        block = flat[:, start:start + _HISTOGRAM_BLOCK]
        counts += cv2.calcHist([block], [0], None, [bins], limits)[:, 0].astype(np.int64)
        if block.max() >= limits[1]:  # OpenCV's upper edge is exclusive, NumPy's inclusive
            counts[-1] += int(np.count_nonzero(block == np.float32(high)))
        if zero_here != zero_there:
            zeros = block.size - cv2.countNonZero(block)
            counts[zero_there] -= zeros
            counts[zero_here] += zeros
    return counts, edges


def kl_threshold(hist: np.ndarray, edges: np.ndarray, low, high, num_quantized_bins: int = QUANTIZED_BINS):
    """The KL-divergence clipping range of a symmetric histogram, every candidate at once.

    Same candidates and the same reference / quantized distributions as ONNX Runtime's
    ``HistogramCollector.get_entropy_threshold`` (including its integer truncation of the
    expanded quantized bins and its smoothing), but vectorised over candidates and evaluated in
    float64: ORT's two Python loops per candidate take minutes per tensor at 2048 bins, this takes
    milliseconds. Where two candidates' divergences tie within float32 rounding, the more precise
    evaluation may pick the other one. Returns ``(lowest, highest)`` clipped to the observed
    min / max like ORT's.

    Per candidate c (window [start, end) of length L, groups of m = L // Q bins):
    KL = sum_j p~_j log p~_j - sum_g P~_g log q~_g, where q~ is constant on each group (and on the
    tail beyond Q*m, whose expanded bins ORT leaves at zero), so only the first sum needs bins.
    """
    eps = 1e-4  # ORT's smoothing constant
    hist = np.asarray(hist, dtype=np.float64)
    bins, groups = hist.size, num_quantized_bins
    zero = bins // 2
    reach = np.arange(groups // 2, zero + 1)
    starts = zero - reach
    ends = np.minimum(zero + reach + 1, bins)
    lengths = ends - starts
    merged = lengths // groups
    rows = np.arange(reach.size)
    prefix = np.concatenate([[0.0], np.cumsum(hist)])
    zeros_prefix = np.concatenate([[0], np.cumsum(hist == 0)])

    # Reference p: the window, with the outliers added to its first and last bin.
    left, right = prefix[starts], prefix[-1] - prefix[ends]
    first, last = hist[starts] + left, hist[ends - 1] + right
    # Zeros of p: zeros of the window, corrected at both ends.
    p_zeros = (zeros_prefix[ends] - zeros_prefix[starts] - (hist[starts] == 0) - (hist[ends - 1] == 0)
               + (first == 0) + (last == 0))

    # Group boundaries (Q groups of m bins, then the tail) as absolute bin indices.
    bounds = starts[:, None] + merged[:, None] * np.arange(groups + 1)[None, :]
    group_sum = prefix[bounds[:, 1:]] - prefix[bounds[:, :-1]]          # of the window, no outliers
    tail_sum = prefix[ends] - prefix[bounds[:, -1]]
    quantized = group_sum.copy()
    quantized[:, -1] += tail_sum
    group_zeros = zeros_prefix[bounds[:, 1:]] - zeros_prefix[bounds[:, :-1]]
    # p's end corrections inside the groups (the last bin may be in the tail instead).
    group_zeros[:, 0] += (first == 0).astype(int) - (hist[starts] == 0)
    last_in_groups = lengths == groups * merged
    group_zeros[rows[last_in_groups], -1] += ((last == 0).astype(int) - (hist[ends - 1] == 0))[last_in_groups]
    group_nonzero = merged[:, None] - group_zeros
    level = np.zeros_like(quantized)
    np.floor_divide(quantized, group_nonzero, out=level, where=group_nonzero > 0)  # ORT keeps q in int64
    tail = lengths - groups * merged

    # Smoothing (zeros -> eps, others -eps1) and normalisation, for p and for the expanded q.
    p_nonzero = lengths - p_zeros
    p_eps1 = eps * p_zeros / np.maximum(p_nonzero, 1)
    p_total = prefix[ends] - prefix[starts] + left + right + eps * p_zeros - p_eps1 * p_nonzero
    q_zero_groups = level == 0
    q_zeros = (q_zero_groups * merged[:, None]).sum(axis=1) + tail
    q_nonzero = lengths - q_zeros
    q_eps1 = eps * q_zeros / np.maximum(q_nonzero, 1)
    q_group = np.where(q_zero_groups, eps, level - q_eps1[:, None])
    q_total = (q_group * merged[:, None]).sum(axis=1) + eps * tail
    log_q_group = np.log(q_group / q_total[:, None])
    log_q_tail = np.log(eps / q_total)

    # sum_j p~ log p~ needs the bins: one (candidates x width) pass.
    width = int(lengths.max())
    column = np.arange(width)
    valid = column[None, :] < lengths[:, None]
    window = hist[np.minimum(starts[:, None] + column[None, :], bins - 1)]
    window[:, 0] = first
    window[rows, lengths - 1] = last
    smoothed = np.where(window == 0, eps, window - p_eps1[:, None])
    smoothed = np.where(valid, smoothed / p_total[:, None], 1.0)  # 1 * log 1 = 0 outside the window
    entropy_p = (smoothed * np.log(smoothed)).sum(axis=1)

    # P~ per group and on the tail.
    group_p = (group_sum + eps * group_zeros - p_eps1[:, None] * group_nonzero)
    group_p[:, 0] += left
    tail_nonzero = tail - (p_zeros - group_zeros.sum(axis=1))
    tail_p = tail_sum + eps * (tail - tail_nonzero) - p_eps1 * tail_nonzero
    tail_p += np.where(last_in_groups, 0.0, right)
    group_p[rows[last_in_groups], -1] += right[last_in_groups]
    cross = (group_p * log_q_group).sum(axis=1) + tail_p * log_q_tail
    divergence = entropy_p - cross / p_total
    divergence = np.where((p_nonzero > 0) & (q_nonzero > 0), divergence, np.inf)
    best = int(np.argmin(divergence))
    lowest, highest = edges[starts[best]], edges[ends[best]]
    return (low if lowest < low else lowest), (high if highest > high else highest)


MSE_MAX_BINS = 4096


def mse_range(hist: np.ndarray, edges: np.ndarray, low, high, levels: int = 256) -> tuple[float, float]:
    """The clipping range of least expected squared quantization error on a ``levels``-step grid.

    ``hist`` counts the tensor's values in bins ``edges`` (the symmetric fixed-range histogram of
    pass 2, so 0 is an edge); ``low`` / ``high`` are the observed extremes. A candidate range
    [lo, hi] runs from a bin edge at or below 0 to one at or above 0 (ONNX Runtime always keeps 0
    inside the range, where it is exactly representable). Its expected error, with each value at
    its bin's centre c:

    - clipping: sum over bins outside of count * (lo - c)^2 or (c - hi)^2;
    - rounding: for the values inside, count * step^2 / 12 with step = (hi - lo) / (levels - 1)
      (uniform rounding error), except the bin starting at 0: ReLU and sigmoid outputs pile up at
      exactly 0, which the grid represents exactly.

    Non-negative tensors therefore get [0, hi] (asymmetric, all 256 codes on the values) and the
    rest both ends searched; every pair of candidates is evaluated at once from prefix sums.
    Returns ``(lo, hi)`` clipped to the observed extremes.
    """
    counts = np.asarray(hist, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if counts.size > MSE_MAX_BINS:  # the search holds (bins / 2)^2 candidates at once
        raise ValueError(f"mse calibration searches at most {MSE_MAX_BINS} bins, got {counts.size}")
    centres = (edges[:-1] + edges[1:]) / 2
    zero = int(np.argmin(np.abs(edges)))
    first = int(np.searchsorted(edges, low, side="right")) - 1 if low < 0 else zero
    last = int(np.searchsorted(edges, high, side="left")) if high > 0 else zero
    first, last = max(min(first, zero), 0), min(max(last, zero), edges.size - 1)

    def prefix(values):
        return np.concatenate([[0.0], np.cumsum(values)])

    n, s1, s2 = prefix(counts), prefix(counts * centres), prefix(counts * centres ** 2)
    lo_index = np.arange(first, zero + 1)
    hi_index = np.arange(zero, last + 1)
    lo, hi = edges[lo_index], edges[hi_index]
    # Bins k < i lie below lo = edges[i]; bins k >= j above hi = edges[j].
    below = lo ** 2 * n[lo_index] - 2 * lo * s1[lo_index] + s2[lo_index]
    above = (s2[-1] - s2[hi_index]) - 2 * hi * (s1[-1] - s1[hi_index]) + hi ** 2 * (n[-1] - n[hi_index])
    inside = n[hi_index][None, :] - n[lo_index][:, None]
    if zero < counts.size:
        inside = inside - counts[zero] * (hi_index[None, :] > zero)
    step = (hi[None, :] - lo[:, None]) / (levels - 1)
    error = below[:, None] + above[None, :] + inside * step ** 2 / 12
    error[hi[None, :] - lo[:, None] <= 0] = np.inf  # an empty range represents nothing
    if not np.isfinite(error).any():
        return float(low), float(high)
    i, j = np.unravel_index(np.argmin(error), error.shape)
    return float(max(lo[i], low)), float(min(hi[j], high))
