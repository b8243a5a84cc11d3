"""The library surface: metric objects, the evaluator, the training and compare entry points."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from isnet import eval as evaluation
from isnet.build_in.ops import map_to_uint8
from isnet.eval import (MAE, METRIC_NAMES, RESULT_KEYS, EMeasure, FMeasure, SaliencyEvaluator, SMeasure,
                        WeightedFMeasure, evaluate_folders, validation_scores)
from isnet.core import IsnetError


def _pairs(n: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        gt = np.zeros((48, 64), np.uint8)
        cv2.ellipse(gt, (int(rng.integers(20, 44)), int(rng.integers(15, 33))), (12, 8), 0, 0, 360, 255, -1)
        pred = np.clip(cv2.GaussianBlur(gt, (0, 0), 3) + rng.normal(0, 12, gt.shape), 0, 255).astype(np.uint8)
        pairs.append((pred, gt))
    return pairs


def test_public_surface_is_small_and_explicit():
    """Everything public is listed in __all__ (internals live in _private modules), and it stays small."""
    public = {name for name in vars(evaluation) if not name.startswith("_")}
    assert public == set(evaluation.__all__)
    assert len(public) < 26
    assert {"evaluate_folders", "validation_scores", "EvalResult"} <= public


def test_each_metric_steps_and_reports_its_keys():
    pairs = _pairs()
    expected = {MAE: {"mae"}, SMeasure: {"sm"}, WeightedFMeasure: {"wfm"}, EMeasure: set(RESULT_KEYS["em"]),
                FMeasure: set(RESULT_KEYS["fmeasure"] + RESULT_KEYS["precision"] + RESULT_KEYS["recall"])}
    for cls, keys in expected.items():
        metric = cls()
        for pred, gt in pairs:
            metric.step(pred, gt)
        results = metric.results()
        assert set(results) == keys
        assert all(0.0 <= value <= 1.0 for value in results.values()), results
        assert metric.num_images == len(pairs)


def test_evaluator_equals_the_single_metrics():
    """One shared pass per image gives exactly what each metric computes on its own."""
    pairs = _pairs()
    evaluator = SaliencyEvaluator()
    singles = [MAE(), FMeasure(), EMeasure(), SMeasure(), WeightedFMeasure()]
    for pred, gt in pairs:
        evaluator.step(pred, gt)
        for metric in singles:
            metric.step(pred, gt)
    combined = evaluator.results()
    separate = {key: value for metric in singles for key, value in metric.results().items()}
    assert combined.metrics == separate
    assert list(combined.metrics) == [key for name in METRIC_NAMES for key in RESULT_KEYS[name]]
    assert combined.num_images == len(pairs)
    assert set(combined.curves) == {"precision", "recall", "fmeasure", "em"}
    assert all(curve.shape == (256,) for curve in combined.curves.values())


def test_evaluator_computes_only_the_requested_metrics():
    evaluator = SaliencyEvaluator(["wfm", "mae"])
    for pred, gt in _pairs(2):
        evaluator.step(pred, gt)
    result = evaluator.results()
    assert list(result.metrics) == ["mae", "wfm"]  # canonical order, not the order asked
    assert result.curves == {}


def test_unknown_metric_name_is_a_user_error_with_a_suggestion():
    with pytest.raises(IsnetError, match="unknown metric 'fmeasur'.*did you mean 'fmeasure'"):
        SaliencyEvaluator(["fmeasur"])


def test_results_before_any_step_and_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="before any step"):
        MAE().results()
    pred, gt = _pairs(1)[0]
    with pytest.raises(ValueError, match="uint8"):
        MAE().step(pred.astype(np.float32), gt)
    with pytest.raises(ValueError, match="differ in shape"):
        MAE().step(pred[:-1], gt)


def test_validation_scores_on_float_batches_equal_the_saved_masks_scores():
    """Training's probabilities give the numbers `isnet eval` reports on the masks `isnet run` saves."""
    rng = np.random.default_rng(1)
    gts = np.zeros((3, 1, 40, 50), np.float32)
    gts[:, :, 10:30, 12:40] = 1.0
    probabilities = np.clip(gts + rng.normal(0, 0.2, gts.shape), 0, 1).astype(np.float32)
    scores = validation_scores([probabilities[:2], probabilities[2:]], gts)  # batches, then one array
    assert set(scores) == {"mae", "maxfmeasure"}

    evaluator = SaliencyEvaluator(["mae", "fmeasure"])
    for probability, gt in zip(probabilities[:, 0], gts[:, 0]):
        evaluator.step(map_to_uint8(probability), map_to_uint8(gt))
    expected = evaluator.results().metrics
    assert scores == {"mae": expected["mae"], "maxfmeasure": expected["maxfmeasure"]}
    assert 0.0 < scores["mae"] < 0.5 and 0.5 < scores["maxfmeasure"] <= 1.0


def test_validation_scores_refuses_unpaired_inputs():
    pred = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="2 predictions but 1 GT"):
        validation_scores(pred, pred[:1])
    with pytest.raises(ValueError, match="shaped"):
        validation_scores(np.zeros((2, 3, 8, 8), np.float32), np.zeros((2, 3, 8, 8), np.float32))


def test_folder_results_do_not_depend_on_the_number_of_workers(tmp_path, masks_folder):
    pairs = _pairs(12, seed=3)
    preds = masks_folder(tmp_path / "pred", {f"{i:02d}": pred for i, (pred, _) in enumerate(pairs)})
    gts = masks_folder(tmp_path / "gt", {f"{i:02d}": gt for i, (_, gt) in enumerate(pairs)})
    one = evaluate_folders(preds, gts)
    two = evaluate_folders(preds, gts, num_workers=2)
    assert one.metrics == two.metrics  # exactly, not approximately
    for name in one.curves:
        np.testing.assert_array_equal(one.curves[name], two.curves[name])

    evaluator = SaliencyEvaluator()
    for pred, gt in pairs:
        evaluator.step(pred, gt)
    assert evaluator.results().metrics == one.metrics
    # Each picture's own MAE, by name, whatever the workers: they average to the dataset's.
    assert one.picture_mae == two.picture_mae and list(one.picture_mae) == [f"{i:02d}" for i in range(12)]
    for i, (pred, gt) in enumerate(pairs):
        single = MAE()
        single.step(pred, gt)
        assert one.picture_mae[f"{i:02d}"] == single.results()["mae"]
    assert np.mean(list(one.picture_mae.values())) == pytest.approx(one.metrics["mae"], rel=1e-12)


def test_folder_evaluation_restricted_to_names(tmp_path, masks_folder):
    pairs = dict(zip("abcd", _pairs(4)))
    preds = masks_folder(tmp_path / "pred", {name: pred for name, (pred, _) in pairs.items()})
    gts = masks_folder(tmp_path / "gt", {name: gt for name, (_, gt) in pairs.items()})
    result = evaluate_folders(preds, gts, names=["c", "a"], metric_names=["mae"])
    assert result.num_images == 2
    expected = MAE()
    for name in "ac":
        expected.step(*pairs[name])
    assert result.metrics == expected.results()
    with pytest.raises(IsnetError, match="no GT mask .* for 1 requested names \\(z\\)"):
        evaluate_folders(preds, gts, names=["a", "z"])


def test_ecssd_layout_reading(tmp_path):
    from isnet.core import IsnetError
    from isnet.eval import ecssd_folders

    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\xff\xfe")
    with pytest.raises(IsnetError, match="folder not found"):
        ecssd_folders(tmp_path / "model.onnx", "training")
    (tmp_path / "d.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(IsnetError, match="not a text file"):
        ecssd_folders(tmp_path / "d.json")
    (tmp_path / "d.json").write_text('{"X": {"image": {"path": "i"}, "mask": {"path": "m"}, "imgae": {}}}')
    with pytest.raises(IsnetError, match="unknown key 'imgae'"):
        ecssd_folders(tmp_path / "d.json")
    (tmp_path / "d.json").write_text('{"X": {"image": {"path": "i"}, "mask": {"path": "m", "suffix": "_gt.png"}}}')
    with pytest.raises(IsnetError, match="suffix other than a file extension"):
        ecssd_folders(tmp_path / "d.json")
    (tmp_path / "d.json").write_text('{"X": {"image": {"path": "i"}, "mask": {"path": "m", "suffix": ".png"}}}')
    assert ecssd_folders(tmp_path / "d.json") == (tmp_path / "i", tmp_path / "m")
