"""16-bit activations (A16W8) and the integer-only int8 build."""

from functools import partial

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from isnet.build_in import build_artifact, load_build_config
from isnet.build_in.budget import Probe, rank_by_isolated_damage
from isnet.build_in.sixteen_bit import (TRUNK, convs_reading_float, in_module, module_groups, module_of,
                                        quantized_activations, sixteen_bit_activations)
from isnet.core import IsnetError
from isnet.eval import selection_scores
from onnx import TensorProto, helper

NO_GUARD = "backend.quantize.outlier_channel_ratio=null"
SIXTEEN_BIT_TYPES = {TensorProto.UINT16, TensorProto.INT16}


def sixteen_bit_tensors(model) -> set[str]:
    """Tensors a QDQ model quantizes to 16 bits (their QuantizeLinear's zero point is 16-bit)."""
    weights = {i.name: i for i in model.graph.initializer}
    found = {node.input[0].removesuffix("_QuantizeLinear_Input") for node in model.graph.node
             if node.op_type == "QuantizeLinear" and len(node.input) > 2
             and weights[node.input[2]].data_type in SIXTEEN_BIT_TYPES}
    assert found == set(sixteen_bit_activations(model))
    return found


def mean_drift(artifact, reference, images, preprocessor) -> float:
    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (artifact, reference)]
    drifts = []
    for image in images:
        feed = preprocessor.load(image)[0][None]
        outputs = [s.run(None, {s.get_inputs()[0].name: feed})[0] for s in sessions]
        drifts.append(np.abs(outputs[0] - outputs[1]).mean())
    return float(np.mean(drifts))


@pytest.fixture
def lifted_build(write_config, lifted_onnx):
    """Build the lite model with a near-constant outlier channel (max calibration) with extra
    quantize settings and overrides; returns (result, config)."""
    source, _, _ = lifted_onnx

    def build(quantize: dict, name: str, overrides=(), scorer=None):
        path = write_config({"name": name, "frontend": {"checkpoint": str(source)},
                             "backend": {"quantize": {"calibrate_mode": "max", **quantize}}}, name=f"{name}.yaml")
        config = load_build_config(path, list(overrides))
        return build_artifact(config, scorer=scorer), config
    return build


def test_integer_only_gives_the_outlier_tensor_16_bits_and_no_conv_reads_float(lifted_build, lifted_onnx, calib_images):
    source, lifted, _ = lifted_onnx
    integer, config = lifted_build({"integer_only": True}, "npu")
    plain, _ = lifted_build({}, "cpu")
    broken, _ = lifted_build({}, "all_int8", [NO_GUARD])
    details = integer.info["backend_details"]
    model = onnx.load(str(integer.artifact_dir / "model.onnx"))
    # The outlier guard gave its tensor 16 bits instead of leaving nodes float, and said so.
    plan = details["plan"]
    assert plan["form"] == "integer-only" and plan["outlier_nodes_in_float"] == [] and plan["excluded_nodes"] == []
    assert lifted in details["sixteen_bit_tensors"] and lifted in sixteen_bit_tensors(model)
    # ... and the Convs reading it 16-bit weights (the channel multiplies their rounding error).
    assert plan["sixteen_bit_weights"] and set(details["sixteen_bit_weights"]) == set(plan["sixteen_bit_weights"])
    readers = {n.input[1] for n in onnx.load(str(source)).graph.node if n.op_type == "Conv" and lifted in n.input}
    assert readers and readers <= set(details["sixteen_bit_weights"])
    assert convs_reading_float(model) == [] and details["convs_checked"] == sum(n.op_type == "Conv" for n in model.graph.node)
    # The CPU form keeps nodes float around the same tensor: its Convs there read float.
    assert plain.info["backend_details"]["plan"]["outlier_nodes_in_float"]
    assert convs_reading_float(onnx.load(str(plain.artifact_dir / "model.onnx")))
    # 16 bits take off part of what int8 costs on the lifted tensor (the untrained model's maps
    # saturate, so every drift here is small: measured 9e-6 against 1.5e-5 to 1.9e-5).
    images = sorted(calib_images.iterdir())[5:]
    drift = {name: mean_drift(result.artifact_dir / "model.onnx", source, images, config.preprocessor())
             for name, result in (("integer", integer), ("all_int8", broken))}
    assert drift["integer"] < 0.8 * drift["all_int8"], drift


def test_activations_16bit_takes_module_paths(lifted_build):
    result, _ = lifted_build({"activations_16bit": ["side1"]}, "side1_16", [NO_GUARD])
    model = onnx.load(str(result.artifact_dir / "model.onnx"))
    listed = result.info["backend_details"]["sixteen_bit_tensors"]
    # side1's Conv output, and the Resize that keeps its quantization: what the artifact holds is listed.
    assert "/side1/Conv_output_0" in listed and set(listed) == sixteen_bit_tensors(model)
    assert convs_reading_float(model) == []  # nothing left float: 16 bits are integers too


def test_16_bit_settings_are_refused_where_they_cannot_be_built(write_config, run_isnet):
    with pytest.raises(IsnetError, match="backend.quantize.integer_only: 16-bit activations are built with "
                                         "backend.type: onnxruntime"):
        load_build_config(write_config({"backend": {"type": "openvino", "quantize": {"integer_only": True}}}))
    with pytest.raises(IsnetError, match="exclude_nodes: an integer_only build leaves no node in float"):
        load_build_config(write_config({"backend": {"quantize": {"integer_only": True, "exclude_nodes": ["side1"]}}}))
    path = write_config({"backend": {"quantize": {"activations_16bit": ["no_such_module"]}}})
    run = run_isnet("build", path)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "'no_such_module' matches no node" in run.stderr


def test_module_groups_follow_module_paths_and_split_the_trunk():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="/stage1/rebnconv1/relu_s1/Relu"),
             helper.make_node("MaxPool", ["a"], ["b"], name="/stage1/pool1/MaxPool", kernel_shape=[2, 2]),
             helper.make_node("Resize", ["b"], ["c"], name="/Resize_1"),
             helper.make_node("Concat", ["c", "a"], ["d"], name="/Concat_1", axis=1),
             helper.make_node("Relu", ["d"], ["e"], name="/stage1d/rebnconv1/relu_s1/Relu"),
             helper.make_node("Relu", ["e"], ["f"], name="Relu_9")]
    graph = helper.make_graph(nodes, "g", [], [])
    assert module_of("/stage1d/rebnconv1/conv_s1/Conv") == "stage1d" and module_of("/Concat_7") == TRUNK
    assert module_of("Relu_9") == TRUNK
    # Module paths as exclude_nodes / activations_16bit take them, against exporter node names.
    assert in_module("/stage1d/rebnconv1/conv_s1/Conv", "stage1d")
    assert in_module("/stage1d/rebnconv1/conv_s1/Conv", "stage1d.rebnconv1")
    assert in_module("/stage2d/rebnconv1/conv_s1/Conv", "stage*d")
    assert not in_module("/stage1/rebnconv1/conv_s1/Conv", "stage1d") and not in_module("/stage1d", "stage1d")
    assert module_groups(graph, ["a", "b", "c", "d", "e", "f"]) == [("a", "b"), ("c",), ("d",), ("e",), ("f",)]


def test_convs_reading_float_finds_every_float_conv(lite_onnx):
    model = onnx.load(str(lite_onnx))
    assert len(convs_reading_float(model)) == sum(n.op_type == "Conv" for n in model.graph.node) > 0
    assert quantized_activations(model) == []


class _GroupJudge:
    """Drift = sum of the damages of the groups left int8; seconds = 1 - 0.1 per group left int8."""

    def __init__(self, damage: dict[str, float]):
        self.damage, self.kept = damage, []

    def quantize(self, kept: list[str]):
        self.kept = kept
        return "model.onnx"

    def probe(self, _model, _images):
        int8 = [g for g in self.damage if g not in self.kept]
        return Probe(sum(self.damage[g] for g in int8), 1.0 - 0.1 * len(int8))


def test_isolated_damage_ranks_the_groups_that_break_the_model_first():
    judge = _GroupJudge({"encoder": 0.0002, "trunk": 0.08, "decoder": 0.007, "side": 0.02})
    groups = [("encoder",), ("trunk",), ("decoder",), ("side",)]
    ranked = rank_by_isolated_damage(groups, judge.quantize, judge, 8)
    assert ranked.order == [("trunk",), ("side",), ("decoder",), ("encoder",)]
    # Each one's cost: quantizing it alone makes the kept model 1 / 0.9 times as fast.
    assert ranked.cost[("trunk",)] == pytest.approx(1 / 0.9 - 1)


@pytest.mark.slow
def test_integer_only_budget_gives_16_bits_until_the_budget_holds(lifted_build, calib_images):
    scorer = partial(selection_scores, smeasure=True)
    validation = {"path": str(calib_images.parent), "confidence": 0.5}
    loose, _ = lifted_build({"integer_only": True, "max_drift": {"mean_abs": 1.0}, "validation": validation},
                            "loose", [NO_GUARD], scorer)
    record = loose.info["backend_details"]["plan"]["budget"]
    assert record["sixteen_bit_tensors"] == [] and len(record["trials"]) == 1
    drift = record["drift"]["mean_abs"]
    result, _ = lifted_build({"integer_only": True, "max_drift": {"mean_abs": drift * 0.5}, "validation": validation},
                             "budgeted", [NO_GUARD], scorer)
    details = result.info["backend_details"]
    record = details["plan"]["budget"]
    assert record["drift"]["mean_abs"] <= drift * 0.5 and record["sixteen_bit_tensors"]
    model = onnx.load(str(result.artifact_dir / "model.onnx"))
    assert set(record["sixteen_bit_tensors"]) & set(quantized_activations(model)) <= sixteen_bit_tensors(model)
    assert set(details["sixteen_bit_tensors"]) == sixteen_bit_tensors(model)
    assert convs_reading_float(model) == []
    assert "float_nodes" not in record


def test_isnet_build_says_what_is_in_16_bits(write_config, lifted_onnx, run_isnet):
    path = write_config({"frontend": {"checkpoint": str(lifted_onnx[0])},
                         "backend": {"quantize": {"calibrate_mode": "max", "integer_only": True}}})
    run = run_isnet("build", path)
    assert run.returncode == 0, run.stderr
    line = next(line for line in run.stdout.splitlines() if "in 16 bits" in line)
    assert line.startswith("integer-only: every Conv reads int8/int16; ") and "kept" not in run.stdout
    assert int(line.split("; ")[1].split()[0]) >= 1
