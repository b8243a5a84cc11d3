"""The shared per-image pieces: histograms, normalisation table, clipping of distances."""

from __future__ import annotations

import numpy as np

import isnet.eval._statistics as statistics
from isnet.eval import WeightedFMeasure
from isnet.eval._statistics import PairStatistics


def _pair(seed: int = 0):
    rng = np.random.default_rng(seed)
    gt = np.where(rng.random((30, 40)) < 0.35, 255, 0).astype(np.uint8)
    pred = rng.integers(20, 230, (30, 40)).astype(np.uint8)
    return pred, gt


def test_joint_histogram_counts_levels_per_gt_class():
    pred, gt = _pair()
    stats = PairStatistics(pred, gt, regions=True)
    fg = gt > 128
    np.testing.assert_array_equal(stats.counts[1], np.bincount(pred[fg], minlength=256))
    np.testing.assert_array_equal(stats.counts[0], np.bincount(pred[~fg], minlength=256))
    assert stats.block_counts.sum() == pred.size  # the four blocks partition the image


def test_large_images_count_without_float32_histograms(monkeypatch):
    """Above 2**24 pixels OpenCV's float32 counts are inexact; an integer bincount is used instead."""
    pred, gt = _pair(1)
    expected = PairStatistics(pred, gt).counts
    monkeypatch.setattr(statistics, "_CALCHIST_MAX_PIXELS", 0)
    np.testing.assert_array_equal(PairStatistics(pred, gt).counts, expected)


def test_normalisation_table_matches_min_max_of_the_map():
    pred, gt = _pair(2)
    stats = PairStatistics(pred, gt)
    values = pred / 255
    expected = (values - values.min()) / (values.max() - values.min())
    np.testing.assert_array_equal(stats.normalised_map, expected)  # bit for bit
    constant = PairStatistics(np.full_like(pred, 77), gt)
    np.testing.assert_array_equal(constant.normalised_map, np.full(pred.shape, 77 / 255))


def test_distances_are_clipped_where_the_importance_weight_is_exactly_two():
    """Clipping far distances loses nothing: 2 - 0.5**(d/5) is exactly 2.0 in float64 there."""
    weights = WeightedFMeasure._importance
    limit = PairStatistics.max_squared
    assert weights.shape == (limit + 1,)
    assert weights[limit] == 2.0
    assert weights[int(limit * 0.8)] == 2.0  # already before the clip (d = 268)
    far = 2 - np.exp(np.log(0.5) / 5 * np.sqrt(np.array([limit + 1, 10 * limit, 1e8])))
    assert (far == 2.0).all()
    gt = np.zeros((10, 700), np.uint8)
    gt[5, 0] = 255
    squared = PairStatistics(gt, gt, regions=False).squared_distance
    assert squared[5, 299] == 299 ** 2 and squared[5, 699] == limit
