import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from isnet.build_in.float_borders import pool_before_quantizing


def _qdq_model(second_scale: float) -> onnx.ModelProto:
    """x -> Relu (a float layer) -> Q -> DQ -> MaxPool -> Q -> DQ -> pooled; the same Relu's quantized
    tensor also goes through a quantized layer (DQ -> Conv -> Q -> DQ -> MaxPool -> Q -> DQ -> conv_pooled)
    whose MaxPool must stay as it is."""
    scale, zero = np.float32(0.05), np.uint8(10)
    constants = [numpy_helper.from_array(np.array(scale), "s"), numpy_helper.from_array(np.array(zero), "z"),
                 numpy_helper.from_array(np.array(np.float32(second_scale)), "s2"),
                 numpy_helper.from_array(np.full((2, 2, 1, 1), 0.5, np.float32), "w")]
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"], name="q_r"),
             helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"], name="dq_r"),
             helper.make_node("MaxPool", ["rd"], ["p"], name="pool", **pool),
             helper.make_node("QuantizeLinear", ["p", "s2", "z"], ["pq"], name="q_p"),
             helper.make_node("DequantizeLinear", ["pq", "s2", "z"], ["pooled"], name="dq_p"),
             helper.make_node("Conv", ["rd", "w"], ["c"], name="conv"),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="q_c"),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"], name="dq_c"),
             helper.make_node("MaxPool", ["cd"], ["cp"], name="conv_pool", **pool),
             helper.make_node("QuantizeLinear", ["cp", "s", "z"], ["cpq"], name="q_cp"),
             helper.make_node("DequantizeLinear", ["cpq", "s", "z"], ["conv_pooled"], name="dq_cp")]
    shape = [1, 2, 8, 8]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                               for name in ("pooled", "conv_pooled")], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_a_maxpool_after_a_float_layer_pools_before_quantizing_with_the_same_integers():
    model = _qdq_model(second_scale=0.05)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert pool_before_quantizing(rewritten) == ["pool"]  # the MaxPool after the quantized Conv is left alone
    pool = next(node for node in rewritten.graph.node if node.name == "pool")
    assert pool.input[0] == "r"
    # The Q/DQ pair still feeds the Conv, so it stays.
    assert {node.name for node in rewritten.graph.node} == {node.name for node in model.graph.node}
    # Values below, inside and above the quantized range (ties and saturation included): same outputs.
    x = np.random.default_rng(0).uniform(-3, 15, size=(64, 1, 2, 8, 8)).astype(np.float32)
    x[0, 0, 0, :2, :2] = 0.05 * np.array([[3.5, 3.5], [2.5, 1.5]])  # rounding ties
    for sample in x:
        for before, after in zip(_run(model, sample), _run(rewritten, sample)):
            np.testing.assert_array_equal(before, after)


def test_a_maxpool_quantized_with_another_scale_is_left_alone():
    model = _qdq_model(second_scale=0.07)
    assert pool_before_quantizing(model) == []
    assert next(node for node in model.graph.node if node.name == "pool").input[0] == "rd"


def test_a_pair_read_by_nothing_else_is_removed():
    model = _qdq_model(second_scale=0.05)
    graph = model.graph
    kept = [node for node in graph.node if node.name not in {"conv", "q_c", "dq_c", "conv_pool", "q_cp", "dq_cp"}]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.output[1]
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    assert pool_before_quantizing(model) == ["pool"]
    assert [node.name for node in model.graph.node] == ["relu", "pool", "q_p", "dq_p"]
    x = np.random.default_rng(1).uniform(-1, 14, size=(1, 2, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, x)[0], _run(reference, x)[0])
