"""Our metrics against PySODMetrics 1.6.2 on ECSSD masks and on synthetic edge cases.

Every dataset-level metric and curve point must be within 1e-6 of the reference (the issue's
contract); predictions cover blurred, noisy, inverted, constant and binarised maps, all-zero and
all-one GTs, tiny objects and predictions of another size than their GT.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from isnet.eval import SaliencyEvaluator, SMeasure, evaluate_folders
from isnet.eval._metrics import _nearest_foreground
from isnet.eval._statistics import PairStatistics


def _ours(preds, gts):
    evaluator = SaliencyEvaluator()
    for pred, gt in zip(preds, gts, strict=True):
        evaluator.step(pred, gt)
    return evaluator.results()


def _noisy(gt: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(gt * 0.7 + rng.normal(40, 40, gt.shape), 0, 255).astype(np.uint8)


PREDICTIONS = {
    "blurred": lambda gt, i: cv2.GaussianBlur(gt, (0, 0), 4),
    "noisy": _noisy,
    "inverted": lambda gt, i: 255 - cv2.GaussianBlur(gt, (0, 0), 2),
    "constant": lambda gt, i: np.full_like(gt, 37 + 5 * i),
    "binarised": lambda gt, i: np.where(cv2.GaussianBlur(gt, (0, 0), 6) > 90, 255, 0).astype(np.uint8),
    "few-levels": lambda gt, i: cv2.GaussianBlur(gt, (0, 0), 6) // 64 * 64,
}


@pytest.mark.parametrize("kind", list(PREDICTIONS))
def test_ecssd_predictions_match_reference(ecssd_masks, reference, assert_parity, kind):
    gts = [gt for _, gt in ecssd_masks]
    preds = [PREDICTIONS[kind](gt, i) for i, gt in enumerate(gts)]
    assert_parity(_ours(preds, gts), reference(preds, gts))


@pytest.mark.parametrize("fill", [0, 255], ids=["all-zero-gt", "all-one-gt"])
def test_uniform_gts_match_reference(ecssd_masks, reference, assert_parity, fill):
    preds = [cv2.GaussianBlur(gt, (0, 0), 3) for _, gt in ecssd_masks[:12]]
    preds[0] = np.zeros_like(preds[0])  # a constant prediction on a uniform GT as well
    gts = [np.full_like(pred, fill) for pred in preds]
    assert_parity(_ours(preds, gts), reference(preds, gts))


def _tiny_objects(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 90x120 GT with a few blobs of radius 0-3 away from the last row and column, and a prediction."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((90, 120), np.uint8)
    for _ in range(rng.integers(1, 4)):
        centre = (int(rng.integers(4, 110)), int(rng.integers(4, 80)))
        cv2.circle(gt, centre, int(rng.integers(0, 4)), 255, -1)
    pred = np.clip(cv2.GaussianBlur(gt, (0, 0), 1.5).astype(float) * 3 + rng.normal(0, 10, gt.shape), 0, 255)
    return pred.astype(np.uint8), gt


def test_tiny_objects_match_reference(reference, assert_parity):
    pairs = [_tiny_objects(seed) for seed in range(25)]
    single = np.zeros((40, 50), np.uint8)
    single[17, 23] = 255  # one foreground pixel: 1-pixel blocks and a one-pixel object term
    pairs.append((cv2.GaussianBlur(single, (0, 0), 1), single))
    preds, gts = zip(*pairs)
    assert_parity(_ours(preds, gts), reference(preds, gts))


def test_blocks_of_one_grey_level_match_reference(reference, assert_parity):
    """Flat maps: an S-measure block of a single grey level scores 1 or 0 depending on whether the
    reference's rounding leaves its variance exactly 0, which histogram sums would not reproduce."""
    rng = np.random.default_rng(0)
    preds, gts = [], []
    while len(preds) < 40:
        h, w = (int(v) for v in rng.integers(6, 60, 2))
        gt = np.zeros((h, w), np.uint8)
        top, left = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
        gt[top:top + int(rng.integers(1, 4)), left:left + int(rng.integers(1, 4))] = 255
        pred = np.full_like(gt, int(rng.integers(1, 255)))
        if len(preds) % 2:  # not constant, but the blocks away from the object and the corner still are
            pred[gt > 0] = 255
            pred[0, 0] = 0
        preds.append(pred)
        gts.append(gt)
    assert_parity(_ours(preds, gts), reference(preds, gts))


def test_resized_predictions_match_reference(tmp_path, ecssd_masks, reference, assert_parity, masks_folder):
    """Predictions saved at another size are resized to the GT as PySODEvalToolkit does, then scored."""
    masks = dict(ecssd_masks[:10])
    small = {name: cv2.resize(cv2.GaussianBlur(gt, (0, 0), 3), (gt.shape[1] // 2 + 3, gt.shape[0] // 3 + 1),
                              interpolation=cv2.INTER_AREA) for name, gt in masks.items()}
    result = evaluate_folders(masks_folder(tmp_path / "pred", small), masks_folder(tmp_path / "gt", masks))
    assert result.resized == tuple(masks)
    # PySODEvalToolkit's get_gt_pre_with_name: cv2.resize(pre, dsize=gt.shape[::-1], INTER_LINEAR).
    preds = [cv2.resize(small[name], gt.shape[::-1], interpolation=cv2.INTER_LINEAR) for name, gt in masks.items()]
    assert_parity(result, reference(preds, list(masks.values())))


# (grey level, its pixel count, pixels at 255, pixels at 0, permutation seed): 2 * mean equals the
# level's normalised value, and np.mean of these arrangements rounds just above it.
TIES = [(51, 100, 80, 820, 0), (51, 250, 50, 700, 9), (153, 1250, 750, 3000, 13)]


def test_adaptive_threshold_tie_matches_reference(reference, assert_parity):
    """A grey level exactly at 2 * mean: '>=' must fall the way the reference's rounding makes it."""
    preds, gts = [], []
    for level, n_level, n_one, n_zero, seed in TIES:
        rng = np.random.default_rng(seed)
        values = np.repeat(np.array([level, 255, 0], np.uint8), [n_level, n_one, n_zero])
        pred = rng.permutation(values).reshape(40, -1)
        # The premise: the mean from the histogram and the reference's pixel-wise np.mean put the
        # level on different sides of the threshold.
        stats = PairStatistics(pred, pred)
        assert (2 * stats.map_mean <= stats.table[level]) != (2 * (pred / 255).mean() <= stats.table[level])
        preds.append(pred)
        gts.append(np.where(rng.random(pred.shape) < 0.3, 255, 0).astype(np.uint8))
    assert_parity(_ours(preds, gts), reference(preds, gts))


def test_large_image_with_small_objects_matches_reference(reference, assert_parity):
    """Far from the objects, distances reach hundreds of pixels (the weighted F-measure's importance)."""
    rng = np.random.default_rng(3)
    gt = np.zeros((900, 1400), np.uint8)
    for centre in [(200, 150), (1250, 800), (700, 420)]:
        cv2.circle(gt, centre, int(rng.integers(3, 40)), 255, -1)
    pred = np.clip(cv2.GaussianBlur(gt, (0, 0), 5).astype(float) + rng.normal(8, 6, gt.shape), 0, 255).astype(np.uint8)
    assert_parity(_ours([pred], [gt]), reference([pred], [gt]))


def test_s_measure_block_emptied_by_the_centroid_is_defined(reference):
    """GT centroid on the last row: the reference's bottom blocks are empty and its S-measure NaN.

    Ours gives the empty blocks their weight, 0, and scores the other two blocks.
    """
    py_sod_metrics = pytest.importorskip("py_sod_metrics")
    gt = np.zeros((60, 80), np.uint8)
    gt[-1, 30:40] = 255
    pred = cv2.GaussianBlur(gt, (0, 0), 2)
    pred[10:20, 10:20] = 90

    ref = py_sod_metrics.Smeasure()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty slice
        ref.step(pred, gt)
    assert np.isnan(ref.get_results()["sm"])

    # The expected value from the reference's own pieces, without the two empty blocks.
    p, g = pred / 255, gt > 128
    p = (p - p.min()) / (p.max() - p.min())
    cy, cx = 60, int(np.argwhere(g)[:, 1].mean().round()) + 1
    region = (ref.ssim(p[:cy, :cx], g[:cy, :cx]) * cx * cy / g.size
              + ref.ssim(p[:cy, cx:], g[:cy, cx:]) * cy * (80 - cx) / g.size)
    expected = max(0.0, 0.5 * ref.object(p, g) + 0.5 * region)

    ours = SMeasure()
    ours.step(pred, gt)
    assert np.isfinite(ours.results()["sm"])
    assert ours.results()["sm"] == pytest.approx(expected, abs=1e-12)


def test_distance_transform_matches_scipy(ecssd_masks):
    """Squared distances from OpenCV's precise transform equal SciPy's (the reference's bwdist)."""
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(0)
    big = np.zeros((1200, 2000), np.uint8)
    for _ in range(4):
        cv2.circle(big, (int(rng.integers(0, 2000)), int(rng.integers(0, 1200))), int(rng.integers(1, 50)), 255, -1)
    for gt in [gt for _, gt in ecssd_masks[:10]] + [big]:
        stats = PairStatistics(gt, gt, regions=False)
        distance = distance_transform_edt(~stats.fg)
        expected = np.minimum(np.rint(distance ** 2), PairStatistics.max_squared)
        np.testing.assert_array_equal(stats.squared_distance, expected)


def test_nearest_foreground_breaks_ties_like_scipy(ecssd_masks):
    """For every background pixel within 3 px of the object, the same nearest pixel as bwdist's indices."""
    from scipy.ndimage import distance_transform_edt

    checked = 0
    for _, gt in ecssd_masks[:10]:
        stats = PairStatistics(gt, gt, regions=False)
        fg = stats.fg
        _, (ref_rows, ref_cols) = distance_transform_edt(~fg, return_indices=True)
        band = cv2.dilate(fg.view(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~fg
        rows, cols = np.nonzero(band)
        near_rows, near_cols = _nearest_foreground(fg, stats.squared_distance, rows, cols)
        np.testing.assert_array_equal(near_rows, ref_rows[rows, cols])
        np.testing.assert_array_equal(near_cols, ref_cols[rows, cols])
        checked += rows.size
    assert checked > 10_000


def test_fmeasure_family_matches_fmeasurev2_handlers(ecssd_masks):
    """PySODEvalToolkit now scores fmeasure/precision/recall with FmeasureV2 handlers: same numbers."""
    py_sod_metrics = pytest.importorskip("py_sod_metrics")
    gts = [gt for _, gt in ecssd_masks[:12]] + [np.zeros((30, 30), np.uint8), np.full((30, 30), 255, np.uint8)]
    preds = [_noisy(gt, i) for i, gt in enumerate(gts)]
    kwargs = dict(with_dynamic=True, with_adaptive=True, with_binary=False, sample_based=True)
    v2 = py_sod_metrics.FmeasureV2()
    v2.add_handler("fmeasure", py_sod_metrics.FmeasureHandler(**kwargs, beta=0.3))
    v2.add_handler("precision", py_sod_metrics.PrecisionHandler(**kwargs))
    v2.add_handler("recall", py_sod_metrics.RecallHandler(**kwargs))
    ours = SaliencyEvaluator(["fmeasure", "precision", "recall"])
    for pred, gt in zip(preds, gts):
        v2.step(pred, gt)
        ours.step(pred, gt)
    reference, result = v2.get_results(), ours.results()
    for name in ("fmeasure", "precision", "recall"):
        dynamic = reference[name]["dynamic"]
        assert result.metrics[f"max{name}"] == pytest.approx(dynamic.max(), abs=1e-6)
        assert result.metrics[f"avg{name}"] == pytest.approx(dynamic.mean(), abs=1e-6)
        np.testing.assert_allclose(result.curves[name], np.flip(dynamic), rtol=0, atol=1e-6)
    assert result.metrics["adpfmeasure"] == pytest.approx(reference["fmeasure"]["adaptive"], abs=1e-6)
