"""Fixtures for the evaluator tests: an ECSSD subset and the PySODMetrics reference (test-only)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from isnet.build_in.imageio import decode_mask, encode_png

# Every metric must match the reference within this per dataset (the contract); in
# practice the two agree to ~1e-15, the differences being float summation order.
PARITY_TOLERANCE = 1e-6

KEYS = ("mae", "maxfmeasure", "avgfmeasure", "adpfmeasure", "maxprecision", "avgprecision",
        "maxrecall", "avgrecall", "maxem", "avgem", "adpem", "sm", "wfm")


@pytest.fixture(scope="session")
def ecssd_masks(ecssd) -> list[tuple[str, np.ndarray]]:
    """30 ECSSD GT masks spread over the dataset, as (name, uint8 array)."""
    files = sorted((ecssd / "mask").glob("*.png"))[::17][:30]
    assert len(files) == 30
    return [(f.stem, decode_mask(f)) for f in files]


def reference_scores(preds, gts) -> dict:
    """The 13 scores and 4 curves of PySODMetrics 1.6.2 (its five classes stepped per image)."""
    metrics = pytest.importorskip("py_sod_metrics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice; NaN warnings are asserted on
        mae, fm, em, sm, wfm = (metrics.MAE(), metrics.Fmeasure(), metrics.Emeasure(), metrics.Smeasure(),
                                metrics.WeightedFmeasure())
        for pred, gt in zip(preds, gts, strict=True):
            for metric in (mae, fm, em, sm, wfm):
                metric.step(pred, gt)
        f, e = fm.get_results(), em.get_results()["em"]
    # The reference's curves run from threshold 255 down to 0; ours (like PySODEvalToolkit's saved
    # curves) from 0 up.
    precision, recall, fcurve, ecurve = (np.flip(c) for c in (f["pr"]["p"], f["pr"]["r"], f["fm"]["curve"], e["curve"]))
    return {
        "metrics": {
            "mae": mae.get_results()["mae"], "maxfmeasure": fcurve.max(), "avgfmeasure": fcurve.mean(),
            "adpfmeasure": f["fm"]["adp"], "maxprecision": precision.max(), "avgprecision": precision.mean(),
            "maxrecall": recall.max(), "avgrecall": recall.mean(), "maxem": ecurve.max(), "avgem": ecurve.mean(),
            "adpem": e["adp"], "sm": sm.get_results()["sm"], "wfm": wfm.get_results()["wfm"]},
        "curves": {"precision": precision, "recall": recall, "fmeasure": fcurve, "em": ecurve},
    }


def assert_matches_reference(result, reference) -> None:
    """Every metric and curve point within PARITY_TOLERANCE of the reference."""
    assert set(result.metrics) == set(KEYS)
    for key in KEYS:
        ours, theirs = result.metrics[key], float(reference["metrics"][key])
        assert np.isfinite(theirs), f"reference {key} is not finite"
        assert abs(ours - theirs) <= PARITY_TOLERANCE, f"{key}: ours {ours!r} vs reference {theirs!r}"
    for name, curve in reference["curves"].items():
        np.testing.assert_allclose(result.curves[name], curve, rtol=0, atol=PARITY_TOLERANCE, err_msg=name)


def write_masks(folder: Path, maps: dict[str, np.ndarray], suffix: str = ".png", prefix: str = "") -> Path:
    """Save maps losslessly as ``folder/<prefix><name><suffix>``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in maps.items():
        encode_png(folder / f"{prefix}{name}{suffix}", array)
    return folder


@pytest.fixture
def reference():
    """``reference(preds, gts)``: PySODMetrics' scores and curves (skips when it is not installed)."""
    pytest.importorskip("py_sod_metrics")
    return reference_scores


@pytest.fixture
def assert_parity():
    """``assert_parity(result, reference)``: every metric and curve within 1e-6 of the reference."""
    return assert_matches_reference


@pytest.fixture
def masks_folder():
    """``masks_folder(folder, {name: array}, suffix=".png", prefix="")``: write maps losslessly."""
    return write_masks
