"""The one output-difference routine: per pair and overall, non-finite values counted and left out."""

import numpy as np
import pytest

from isnet.build_in.difference import DifferenceAccumulator


def test_per_pair_and_overall_figures():
    acc = DifferenceAccumulator()
    a = np.array([[0.0, 1.0], [0.5, 0.5]], np.float32)
    first = acc.add(a, a + np.float32(0.25), "one")
    assert (first.name, first.max_abs, first.mean_abs, first.count) == ("one", 0.25, 0.25, 4)
    second = acc.add(np.ones(4), np.ones(4))
    assert second.max_abs == 0 and second.cosine == pytest.approx(1.0)
    total = acc.total()
    assert total.count == 8 and total.mean_abs == pytest.approx(0.125) and total.max_abs == 0.25
    expected_cosine = (a.ravel() @ (a.ravel() + 0.25) + 4) / np.sqrt((a.ravel() @ a.ravel() + 4)
                                                                    * ((a.ravel() + 0.25) @ (a.ravel() + 0.25) + 4))
    assert total.cosine == pytest.approx(expected_cosine)


def test_nonfinite_values_are_counted_not_averaged():
    acc = DifferenceAccumulator()
    result = acc.add(np.zeros(4), np.array([0.0, np.nan, np.inf, 0.5]))
    assert result.nonfinite == 2 and result.count == 2 and result.mean_abs == 0.25 and result.max_abs == 0.5


def test_zero_maps_and_shape_mismatch():
    assert DifferenceAccumulator().add(np.zeros(3), np.zeros(3)).cosine == 1.0
    assert DifferenceAccumulator().add(np.zeros(3), np.ones(3)).cosine == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        DifferenceAccumulator().add(np.zeros(3), np.zeros(4))
