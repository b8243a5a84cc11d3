"""The int8 plan: one set of decisions for both backends, recorded in build.json."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from isnet.build_in import build_artifact, load_build_config
from isnet.build_in.config import QuantizeConfig
from isnet.build_in.int8_plan import Int8Plan, matching_nodes, plan_outlier_channels
from isnet.core import IsnetError


def _conv_relu_conv(path: Path) -> Path:
    """input -> /stage1/conv/Conv -> /stage1/relu/Relu -> /head/Conv -> output (4 channels)."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "stage1.conv.weight"),
               numpy_helper.from_array(rng.normal(size=(1, 4, 1, 1)).astype(np.float32), "head.weight")]
    nodes = [helper.make_node("Conv", ["input", "stage1.conv.weight"], ["a"], name="/stage1/conv/Conv"),
             helper.make_node("Relu", ["a"], ["b"], name="/stage1/relu/Relu"),
             helper.make_node("Conv", ["b", "head.weight"], ["output"], name="/head/Conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 8, 8])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_matching_nodes_takes_globs_module_paths_and_weight_names():
    nodes = [("/stage1d/rebnconv1/conv_s1/Conv", ["stage1d.rebnconv1.conv_s1.weight"]), ("/Concat_7", []),
             ("Conv_787", ["side1.weight"])]
    assert matching_nodes(nodes, ["stage1d"], "key", "x") == ["/stage1d/rebnconv1/conv_s1/Conv"]
    assert matching_nodes(nodes, ["side1", "/Concat_?"], "key", "x") == ["Conv_787", "/Concat_7"]
    with pytest.raises(IsnetError, match=r"^backend.quantize.exclude_nodes: 'stage9' matches no node; .*'Conv_1'"):
        matching_nodes(nodes, ["stage9"], "backend.quantize.exclude_nodes", "Conv_1")


@pytest.mark.parametrize("integer_only", [False, True])
def test_outlier_tensors_stay_float_or_get_16_bits(tmp_path, integer_only):
    source = _conv_relu_conv(tmp_path / "model.onnx")
    quant = QuantizeConfig(integer_only=integer_only)
    # Channel 2 of the ReLU output reaches 50x the median channel; the Conv output stays plain.
    ranges = {"b": (np.zeros(4), np.array([1.0, 1.2, 50.0, 0.8])), "a": (-np.ones(4), np.ones(4))}
    measured = []

    def measure(path: Path, equalised: bool):
        measured.append((path, equalised))
        return ranges

    plan = Int8Plan.for_config(quant, 5)
    assert plan_outlier_channels(plan, source, quant, tmp_path, measure) == source
    assert measured == [(source, False)]  # measured once, nothing equalised
    assert [item["tensor"] for item in plan.outliers] == ["b"] and plan.outliers[0]["channel"] == 2
    if integer_only:
        assert plan.sixteen_bit == ["b"] and plan.float_nodes == [] and plan.sixteen_bit_weights == ["head.weight"]
    else:
        # The ReLU computing it, and the Conv before it sharing its range (the ReLU is removed), and its reader.
        assert plan.sixteen_bit == [] and set(plan.float_nodes) == {"/stage1/conv/Conv", "/stage1/relu/Relu", "/head/Conv"} and plan.sixteen_bit_weights == []
    record = plan.record()
    assert record["form"] == ("integer-only" if integer_only else "cpu") and record["outlier_count"] == 1
    assert record["calibration"] == {"mode": "kl_divergence", "images": 5}

    ignored = Int8Plan.for_config(QuantizeConfig(outlier_channel_ratio=None), 5)
    plan_outlier_channels(ignored, source, QuantizeConfig(outlier_channel_ratio=None), tmp_path, measure)
    assert ignored.outliers and ignored.float_nodes == [] and ignored.sixteen_bit == []  # listed, quantized anyway


@pytest.mark.slow
def test_both_backends_take_the_same_decisions(write_config, lifted_onnx):
    """One planner: on the lifted model both backends find the same outlier tensors and keep the same
    ONNX nodes float around them, and build.json records the plan in the same form."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    source, lifted, _ = lifted_onnx
    plans = {}
    for backend in ("onnxruntime", "openvino"):
        config = load_build_config(write_config({"name": backend, "frontend": {"checkpoint": str(source)},
                                                 "backend": {"type": backend, "dtype": "int8",
                                                             "quantize": {"calibrate_mode": "max"}}}))
        plans[backend] = build_artifact(config).info["backend_details"]["plan"]
    ort, ov = plans["onnxruntime"], plans["openvino"]
    assert ort.keys() == ov.keys()
    assert [item["tensor"] for item in ort["outlier_tensors"]] == [item["tensor"] for item in ov["outlier_tensors"]]
    assert lifted in {item["tensor"] for item in ort["outlier_tensors"]}
    assert ort["outlier_nodes_in_float"] == ov["outlier_nodes_in_float"] != []
    assert ort["form"] == ov["form"] == "cpu" and ort["calibration"]["mode"] == ov["calibration"]["mode"] == "max"
