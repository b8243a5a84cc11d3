"""The budgeted int8 build and the layer-wise drift it ranks layers by."""

import json
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest
from isnet.build_in import build_artifact, load_build_config
from isnet.build_in.budget import Probe, order_by_gain_per_cost
from isnet.build_in.layer_drift import (
    float_candidates,
    measure_layer_drift,
    quantized_activations,
    stage_of,
)
from isnet.core import IsnetError
from isnet.eval import selection_scores

mask_scores = partial(selection_scores, smeasure=True)

NO_GUARD = "backend.quantize.outlier_channel_ratio=null"  # the outlier guard would fix the lifted channel first


@pytest.fixture
def lifted_config(write_config, lifted_onnx, calib_images):
    """Build configs of the lite model with a near-constant outlier channel, quantized without the
    outlier guard: its int8 build drifts, and one tensor is to blame. Validation: the 3 images
    calibration leaves."""
    source, lifted, _ = lifted_onnx

    def config(budget: dict, name: str = "budgeted"):
        path = write_config({"name": name, "frontend": {"checkpoint": str(source)},
                             "backend": {"quantize": {"calibrate_mode": "max", "max_drift": budget,
                                                      "validation": {"path": str(calib_images.parent), "confidence": 0.5}}}},
                            name=f"{name}.yaml")
        return load_build_config(path, [NO_GUARD])
    return config, lifted


def test_layer_drift_blames_the_outlier_tensor(write_config, lifted_onnx, calib_images):
    source, lifted, _ = lifted_onnx
    config = load_build_config(write_config({"frontend": {"checkpoint": str(source)},
                                             "backend": {"quantize": {"calibrate_mode": "max"}}}), [NO_GUARD])
    result = build_artifact(config)
    quantized = result.artifact_dir / "model.onnx"
    preprocessor = config.preprocessor()
    inputs = [preprocessor.load(p)[0] for p in sorted(calib_images.iterdir())[5:]]
    drifts = measure_layer_drift(source, quantized, inputs)
    assert {d.tensor for d in drifts} <= set(quantized_activations(onnx.load(str(quantized))))
    assert len(drifts) > 20
    assert all(np.isfinite(d.sqnr_db) and d.relative_mae >= 0 for d in drifts)
    assert [d.sqnr_db for d in drifts] == sorted(d.sqnr_db for d in drifts)  # most damaging first
    # The lifted channel leaves the other channels of its tensor a few levels: that tensor's own
    # quantization adds the most error of all.
    assert float_candidates(drifts, 1) == [lifted]
    # The exported lite model keeps module paths in its node names: tensors get stage groups.
    assert {"encoder stage 1", "side heads"} <= {d.group for d in drifts}


def test_stage_names_follow_the_module_paths():
    assert stage_of("stage3.rebnconv1.conv_s1.weight") == "encoder stage 3"
    assert stage_of("stage2d.rebnconvin.conv_s1.weight") == "decoder stage 2"
    assert stage_of("side4.weight") == "side heads"
    assert stage_of("outconv.bias") == "fusion"
    assert stage_of("/stage1/rebnconvin/conv_s1/Conv") == "encoder stage 1"
    assert stage_of("1967") is None and stage_of("Conv_787") is None


@pytest.mark.slow
def test_budgeted_build_keeps_the_blamed_tensor_float_until_the_budget_holds(lifted_config, capsys):
    config_path, lifted = lifted_config
    plain = build_artifact(config_path({"mean_abs": 1.0}, "loose"), scorer=mask_scores)
    loose = plain.info["backend_details"]["plan"]["budget"]
    assert loose["float_nodes"] == [] and len(loose["trials"]) == 1  # met as it was
    assert loose["validation"]["images"] == 3
    drift = loose["drift"]["mean_abs"]
    # Keeping the lifted tensor in float takes its drift down by a fifth; a budget 10% under the
    # all-int8 drift needs that or layers of the same effect that cost less speed.
    budget = {"mean_abs": drift * 0.9, "mae": 1.0}
    result = build_artifact(config_path(budget), scorer=mask_scores)
    record = result.info["backend_details"]["plan"]["budget"]
    assert record["float_nodes"] and record["drift_upper_bound"]["mean_abs"] <= drift * 0.9
    # (the last trial may be a failing step of the bisection: the passing model is written again)
    assert len(record["trials"]) >= 2 and not record["trials"][0]["within"] and any(t["within"] for t in record["trials"])
    assert record["bounds"] == budget and set(record["fp32_scores"]) == {"mae", "sm", "maxfmeasure"}
    lifted_relu = next(n.name for n in onnx.load(str(plain.artifact_dir / "model.onnx")).graph.node
                       if lifted in n.output)
    assert any(lifted_relu in group for group in record["candidates"])  # the lifted tensor was a candidate
    # What the record says stayed float did: those nodes exist, and fewer activations are quantized.
    model, all_int8 = (onnx.load(str(r.artifact_dir / "model.onnx")) for r in (result, plain))
    assert all(name in {n.name for n in model.graph.node} for name in record["float_nodes"])
    assert len(quantized_activations(model)) < len(quantized_activations(all_int8))


@pytest.mark.slow
def test_an_impossible_budget_fails_cleanly_and_writes_nothing(lifted_config, run_isnet, tmp_path):
    config_path, _ = lifted_config
    run = run_isnet("build", config_path({"mean_abs": 0.0}).config_path, "--set", NO_GUARD)
    assert run.returncode == 2, run.stderr
    assert "max_drift cannot be met" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "deploy" / "budgeted").exists()
    met = run_isnet("build", config_path({"mean_abs": 1.0}, "loose").config_path, "--set", NO_GUARD)
    assert met.returncode == 0, met.stderr
    assert "budget met on 3 validation images: mean_abs" in met.stdout and "no layer needed" in met.stdout


class _Runner:
    """A stand-in model: the map of each picture (in the judge's order) is the fp32 one plus ``shift(i)``."""

    input_name, output_name = "input", "output"

    def __init__(self, shift):
        self.shift, self.calls = shift, 0

    def infer(self, inputs):
        image = inputs["input"]
        fp32 = 1 / (1 + np.exp(-4 * (image.mean(axis=1, keepdims=True) - 0.1)))
        self.calls += 1
        return {"output": np.clip(fp32 + self.shift(self.calls - 1), 0, 1).astype(np.float32)}


def test_the_budget_holds_an_upper_bound_of_the_drift_not_the_drift_alone(write_config, tmp_path):
    from isnet.build_in.budget import DriftJudge
    from isnet.tools.synth import generate_dataset

    generate_dataset(tmp_path / "validation", 24, seed=5)
    config = load_build_config(write_config({"backend": {"quantize": {"calibrate_mode": "max", "max_drift": {
        "mean_abs": 0.012, "mae": 0.05}, "validation": {"path": str(tmp_path / "validation")}}}}))
    shifts = {"fp32": lambda i: 0.0, "spread": lambda i: 0.01, "one": lambda i: 0.24 if i == 7 else 0.0}
    judge = DriftJudge(config, Path("fp32"), mask_scores, lambda path: _Runner(shifts[str(path)]))
    assert judge.confidence == 0.95 and len(judge.pairs) == 24
    spread, one = judge(Path("spread")), judge(Path("one"))
    # Both move the maps by 0.01 on average over the 24 pictures ...
    assert spread.drift["mean_abs"] == pytest.approx(0.01, rel=0.05) and one.drift["mean_abs"] == pytest.approx(0.01, rel=0.1)
    # ... but a drift that sits on one picture may be anywhere from 0 to 0.24 on the next pictures: its
    # bound is far above the 0.012 budget; the same drift on every picture is bounded by itself.
    assert spread.bound["mean_abs"] == pytest.approx(spread.drift["mean_abs"], rel=1e-6) and spread.within
    assert one.bound["mean_abs"] > 1.5 * one.drift["mean_abs"] and not one.within
    assert "mean_abs" in judge.misses(one) and "at 95% confidence" in judge.misses(one)
    record = judge.record(spread)
    assert record["validation"]["confidence"] == 0.95 and record["drift_upper_bound"]["mean_abs"] > 0
    # Where the bound comes from: each picture's own change. The ranking probes then start with the
    # picture that misses (the 8th), and compare each output with that picture's fp32 map.
    assert np.argmax(one.picture_change["mean_abs"]) == 7 and one.picture_change["mean_abs"][7] > 0.2
    # The bound comes from the resamples alone (not from the rows that score one picture each): the maps
    # have one size, so a resample's mean |difference| is the mean of its pictures' own.
    from isnet.build_in.budget import BOOTSTRAP_RESAMPLES

    assert judge.selections.shape == (1 + BOOTSTRAP_RESAMPLES + 24, 24)
    resampled = one.picture_change["mean_abs"][judge.selections[1:1 + BOOTSTRAP_RESAMPLES]].mean(axis=1)
    assert one.bound["mean_abs"] == pytest.approx(np.quantile(resampled, 0.95), rel=1e-9)
    # The failure names that picture, and build.json records the pictures that move the metrics most.
    seventh = judge.pairs[7][0]
    assert f"moved most by {seventh} (mean_abs +0.2" in judge.misses(one)
    assert judge.record(one)["worst_pictures"][0]["picture"] == seventh
    worst = judge.record(spread)["worst_pictures"]
    assert len(worst) == 3 and set(worst[0]) == {"picture", "mae", "mean_abs"}
    assert worst[0]["mean_abs"] == pytest.approx(0.01, rel=0.2)
    assert judge.focus(spread) == list(range(24))  # within budget: nothing to focus on
    assert judge.focus(one)[0] == 7 and sorted(judge.probe_pictures) == list(range(24))
    probe = judge.probe(Path("fp32"), 2)
    assert probe.drift == pytest.approx(0.0, abs=1e-6) and len(judge.inputs(2)) == 2
    # 24 pictures cannot bound a drift at 99% (that needs 100): one line saying how many it needs.
    strict = load_build_config(write_config({"backend": {"quantize": {"calibrate_mode": "max", "max_drift": {
        "mean_abs": 0.01}, "validation": {"path": str(tmp_path / "validation"), "confidence": 0.99}}}}, name="strict.yaml"))
    with pytest.raises(IsnetError, match="24 validation pictures cannot bound the drift at 99% confidence; give at least 100"):
        DriftJudge(strict, Path("fp32"), mask_scores, lambda path: _Runner(shifts[str(path)]))
    # A mask of another size than its picture is the user's to fix: one line naming it.
    import cv2

    mask = sorted((tmp_path / "validation" / "mask").iterdir())[3]
    cv2.imwrite(str(mask), cv2.resize(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE), (17, 13)))
    with pytest.raises(IsnetError, match=f"{mask.name} is 17x13, its picture .* a mask must have its picture's size"):
        DriftJudge(config, Path("fp32"), mask_scores, lambda path: _Runner(shifts[str(path)]))


def test_budget_config_errors_are_one_line(write_config, calib_images):
    with pytest.raises(IsnetError, match="validation.path"):
        load_build_config(write_config({"backend": {"quantize": {"max_drift": {"mae": 0.001}}}}))
    with pytest.raises(IsnetError, match="set backend.quantize.max_drift"):
        load_build_config(write_config({"backend": {"quantize": {"validation": {"path": str(calib_images)}}}}))
    with pytest.raises(IsnetError, match="scored with isnet.eval"):
        build_artifact(load_build_config(write_config({"backend": {"quantize": {
            "max_drift": {"sm": 0.001}, "validation": {"path": str(calib_images)}}}})))


def test_build_json_records_the_budget(lifted_config):
    config_path, _ = lifted_config
    info = build_artifact(config_path({"maxfmeasure": 1.0, "sm": 1.0}), scorer=mask_scores).info
    budget = info["backend_details"]["plan"]["budget"]
    assert set(budget["drift"]) == {"maxfmeasure", "sm", "mean_abs"}
    assert budget["images_per_second"]["final"] > 0 and budget["images_per_second"]["fp32"] > 0
    json.dumps(info)  # all plain data


def test_the_budget_line_says_when_an_int8_build_is_no_faster_than_fp32():
    from isnet.build_in.budget import describe_budget

    record = {"bounds": {"mae": 0.0005}, "drift": {"mae": 0.0002}, "drift_upper_bound": {"mae": 0.0004},
              "validation": {"images": 50, "confidence": 0.95}, "float_nodes": ["Conv_810"] * 92,
              "estimated_speed_cost": 0.5, "trials": [{}] * 14,
              "images_per_second": {"fp32": 4.4, "all_int8": 8.2, "final": 4.1}}
    slow = describe_budget(record, "onnxruntime")
    assert "4.10 images/s on them, 0.93x fp32's 4.40" in slow and "cost what int8 saves" in slow
    assert "OpenVINO's int8 keeps float layers at less cost" in slow
    assert "OpenVINO" not in describe_budget(record, "openvino")
    fast = describe_budget({**record, "images_per_second": {"fp32": 4.4, "all_int8": 11.5, "final": 10.1}}, "onnxruntime")
    assert "2.30x fp32's" in fast and "cost what int8 saves" not in fast
    # An integer-only build's CPU speed is emulation; a build that kept nothing float has no float layers to blame.
    npu = describe_budget({**record, "float_nodes": [], "sixteen_bit_tensors": ["t"] * 10}, "onnxruntime")
    assert "emulated on this CPU" in npu and "cost what int8 saves" not in npu
    plain = describe_budget({**record, "float_nodes": []}, "onnxruntime")
    assert "no faster than fp32" in plain and "layers kept float" not in plain
    # Artifacts built before the judge timed fp32 say nothing about it.
    assert "fp32's" not in describe_budget({**record, "images_per_second": {"all_int8": 8.2, "final": 4.1}})


def test_ranking_puts_drift_removed_per_speed_lost_first():
    base = Probe(drift=0.010, seconds=1.0)
    probes = [Probe(0.004, 1.40),   # takes off the most, but 40% slower: 0.006 / 8 steps
              Probe(0.007, 1.01),   # 0.003 for next to nothing: 0.003 / 1 step
              Probe(0.012, 1.00),   # makes it worse
              Probe(0.009, 0.98),   # a little, and faster within noise: 0.001 / 1 step
              Probe(0.010, 1.00)]   # nothing
    assert order_by_gain_per_cost(base, probes) == [1, 3, 0, 4, 2]
    # Slowdowns within one step count as equal: timer noise does not reorder equal effects.
    noisy = [Probe(0.005, 1.04), Probe(0.005, 1.00), Probe(0.002, 1.03)]
    assert order_by_gain_per_cost(base, noisy) == [2, 0, 1]


@pytest.mark.slow
def test_layers_kept_float_keep_their_source_bias_under_bias_correction(lifted_config, lifted_onnx):
    """Bias correction shifts each quantized Conv's bias by its weight rounding's mean error; a Conv the
    budget keeps in float has no such error, so it must run with the bias it came with."""
    config_path, _ = lifted_config
    # With bias correction the max-calibrated build drifts ~1e-5, where which layers help is timer
    # noise; ranges clipped at the 90th percentile drift ~0.13 and the first float group takes a
    # quarter off, so a budget 10% under the all-int8 drift needs float layers on any machine.
    correction = ["backend.quantize.bias_correction=true", "backend.quantize.calibrate_mode=percentile",
                  "backend.quantize.percentile=90"]
    source = onnx.load(str(lifted_onnx[0]))
    source_bias = {node.name: onnx.numpy_helper.to_array(next(i for i in source.graph.initializer
                                                               if i.name == node.input[2]))
                   for node in source.graph.node if node.op_type == "Conv" and len(node.input) > 2}
    loose = build_artifact(load_build_config(config_path({"mean_abs": 1.0}, "loose").config_path, [NO_GUARD, *correction]),
                           scorer=mask_scores)
    drift = loose.info["backend_details"]["plan"]["budget"]["drift"]["mean_abs"]
    assert drift > 0.01
    result = build_artifact(load_build_config(config_path({"mean_abs": drift * 0.9}).config_path, [NO_GUARD, *correction]),
                            scorer=mask_scores)
    details = result.info["backend_details"]["plan"]
    assert details["bias_correction"]["convs"] > 0
    model = onnx.load(str(result.artifact_dir / "model.onnx"))
    initializers = {i.name: i for i in model.graph.initializer}
    float_convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name in details["budget"]["float_nodes"]]
    assert float_convs, details["budget"]["float_nodes"]
    for node in float_convs:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(initializers[node.input[2]]), source_bias[node.name])


class _LinearJudge:
    """A stand-in for DriftJudge whose MAE drift falls by ``per_layer`` for each candidate kept in float."""

    def __init__(self, start: float, per_layer: float, bound: float):
        self.bounds, self.pairs = {"mae": bound}, [None] * 50
        self.start, self.per_layer, self.floated, self.trials = start, per_layer, 0, []

    def quantize(self, nodes: list[str]):
        self.floated = len(nodes)
        return "model.onnx"

    def probe(self, _model_file, _images):
        from isnet.build_in.budget import Probe

        return Probe(max(self.start - self.per_layer * self.floated, 0.0), 1.0)

    def __call__(self, _model_file):
        from isnet.build_in.budget import BudgetCheck

        drift = max(self.start - self.per_layer * self.floated, 0.0)
        self.trials.append(self.floated)
        return BudgetCheck(drift <= self.bounds["mae"], {"mae": drift}, {"mae": drift}, 1.0)

    def misses(self, check) -> str:
        return f"mae {check.drift['mae']:.4g} > {self.bounds['mae']:g}"

    def focus(self, _check):
        return []


class _CostJudge:
    """Drift = the damage of the groups left int8; seconds = 1 + the float cost of the groups kept. The
    ranking probes (a few images, the maps' mean |difference|) see ``probe_damage`` where it is given:
    what a layer does to the maps of eight pictures is not what it does to the budgeted metrics."""

    def __init__(self, damage: dict[str, float], cost: dict[str, float], bound: float, probe_damage: dict):
        self.damage, self.cost, self.bounds, self.pairs = damage, cost, {"mae": bound}, [None] * 50
        self.probe_damage = {**damage, **probe_damage}
        self.kept: list[str] = []
        self.focused, self.probes_focused = [], []  # the checks focus() got; per probe, whether it came after

    def quantize(self, nodes: list[str]):
        self.kept = list(nodes)
        return "model.onnx"

    def probe(self, _model_file, _images):
        self.probes_focused.append(bool(self.focused))
        drift = sum(d for name, d in self.probe_damage.items() if name not in self.kept)
        return Probe(drift, 1.0 + sum(self.cost[name] for name in self.kept))

    def __call__(self, _model_file):
        from isnet.build_in.budget import BudgetCheck

        drift = sum(d for name, d in self.damage.items() if name not in self.kept)
        return BudgetCheck(drift <= self.bounds["mae"], {"mae": drift}, {"mae": drift}, 1.0)

    def focus(self, check):
        self.focused.append(check)
        return []


def test_the_search_puts_costly_layers_it_kept_back_in_int8_when_the_budget_holds_without_them():
    from isnet.build_in.budget import search_float_nodes

    # "wide" costs 60% of the speed in float, but on the probes it takes so much off that it ranks
    # first anyway, and the budget is met with the first two candidates: wide and a.
    cost = {"a": 0.0, "b": 0.0, "c": 0.0, "wide": 0.6}
    candidates = [("a",), ("b",), ("c",), ("wide",)]
    # On the budgeted metric it does nothing: put back in int8, the budget still holds.
    judge = _CostJudge({"a": 0.004, "b": 0.003, "c": 0.002, "wide": 0.0}, cost, 0.0055, {"wide": 0.05})
    result = search_float_nodes(judge.quantize, judge, lambda: candidates)
    assert result.ranked[0] == ("wide",) and result.float_nodes == ["a"] and result.check.within
    # The ranking probes ran on the pictures that miss: focus() had the first (failing) check.
    assert judge.focused == [result.first] and not result.first.within and judge.probes_focused and all(judge.probes_focused)
    assert judge.kept == ["a"]  # the file on disk is the model kept
    assert [trial.get("back_in_int8") for trial in result.trials][-1] == ["wide"] and result.trials[-1]["within"]
    # Where the budget needs it, it stays float: the trial without it misses.
    judge = _CostJudge({"a": 0.004, "b": 0.003, "c": 0.002, "wide": 0.002}, cost, 0.0055, {"wide": 0.05})
    result = search_float_nodes(judge.quantize, judge, lambda: candidates)
    assert result.float_nodes == ["wide", "a"] and result.check.within and judge.kept == ["wide", "a"]
    assert result.trials[-1]["back_in_int8"] == ["wide"] and not result.trials[-1]["within"]


def test_the_search_puts_the_plans_float_nodes_back_in_int8_when_the_budget_holds_without_them():
    from isnet.build_in.budget import search_float_nodes

    cost = {"a": 0.0, "b": 0.0, "outlier": 0.2}
    # Another remedy made the plan's float nodes unneeded: the model as it is passes, and passes without them.
    judge = _CostJudge({"a": 0.001, "b": 0.001, "outlier": 0.0}, cost, 0.005, {})
    result = search_float_nodes(judge.quantize, judge, lambda: [("a",), ("b",)], plan_groups=[("outlier",)])
    assert result.plan_released == [("outlier",)] and result.plan_kept == [] and result.float_nodes == []
    # The first trial has every layer int8, the plan's too; it passes, and nothing else is tried.
    assert judge.kept == [] and [t.get("back_in_int8") for t in result.trials] == [["outlier"]]
    # Needed: kept, and the model on disk is the passing one with it.
    judge = _CostJudge({"a": 0.001, "b": 0.001, "outlier": 0.01}, cost, 0.005, {})
    result = search_float_nodes(judge.quantize, judge, lambda: [("a",), ("b",)], plan_groups=[("outlier",)])
    assert result.plan_kept == [("outlier",)] and result.plan_released == [] and judge.kept == ["outlier"]
    # The ranking probes and every trial keep the plan's group float until it is released.
    judge = _CostJudge({"a": 0.004, "b": 0.0001, "outlier": 0.0}, cost, 0.001, {})
    seen = []
    quantize = judge.quantize
    judge.quantize = lambda nodes: (seen.append(list(nodes)), quantize(nodes))[1]
    result = search_float_nodes(judge.quantize, judge, lambda: [("a",), ("b",)], plan_groups=[("outlier",)])
    assert seen[0] == [] and all("outlier" in nodes for nodes in seen[1:-1]) and seen[-1] == ["a"]
    assert result.float_nodes == ["a"]
    assert result.plan_released == [("outlier",)] and judge.kept == ["a"]


def test_the_model_left_on_disk_is_the_passing_one_even_when_a_ranking_probe_wrote_last():
    from isnet.build_in.budget import SIXTEEN_BIT, rank_by_isolated_damage, search_float_nodes

    # One candidate: the trial with it kept passes, then the ranking probes write other models and no
    # trial follows; the file must still be rewritten to the passing one.
    judge = _CostJudge({"t1": 0.01}, {"t1": 0.0}, 0.005, {})
    result = search_float_nodes(judge.quantize, judge, lambda: [("t1",)], rank=rank_by_isolated_damage,
                                remedy=SIXTEEN_BIT)
    assert result.float_nodes == ["t1"] and judge.kept == ["t1"]


def test_a_search_that_cannot_succeed_says_so_after_one_trial_with_every_candidate_in_float():
    from isnet.build_in.budget import search_float_nodes

    candidates = [(f"conv{i}",) for i in range(100)]
    # Each layer in float takes 0.0001 off a drift of 0.1: all 100 leave 0.09, far past 0.001.
    slow = _LinearJudge(0.1, 0.0001, 0.001)
    with pytest.raises(IsnetError, match=r"with the 100 most damaging layers in float .* mae 0\.09 > 0\.001"):
        search_float_nodes(slow.quantize, slow, lambda: candidates)
    assert slow.trials == [0, 100]  # the model as it is, then every candidate in float: no doubling up to 100
    # Where every candidate in float meets it, the search finds the fewest.
    fast = _LinearJudge(0.1, 0.01, 0.001)
    result = search_float_nodes(fast.quantize, fast, lambda: candidates)
    assert len(result.float_nodes) == 10 and result.check.within and fast.floated == 10
