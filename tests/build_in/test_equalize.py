"""Equalising outlier channels keeps the float model's answers and narrows the tensor's range."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from isnet.build_in.int8_plan import outlier_channels
from isnet.build_in.equalize import equalize_outlier_channels
from onnx import TensorProto, helper, numpy_helper


def _model(rng, residual: bool = False, exposed: bool = False) -> onnx.ModelProto:
    """x -> Conv a (3x3, padded) -> Relu -> MaxPool -> Resize x2 -> Concat with Conv b -> Relu -> Conv c.

    Channel 1 of Conv a gets a bias of 50 beside channels near 1: a near-constant outlier channel
    in the Concat that Conv c reads. ``residual`` also adds Conv a's ReLU output to a branch, so
    the channel reaches an Add, where a scale cannot be undone; ``exposed`` makes that ReLU output a
    graph output, which a scale would change.
    """
    def weights(name, *shape, bias=None):
        w = numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name + "_w")
        b = numpy_helper.from_array((np.zeros(shape[0]) if bias is None else bias).astype(np.float32), name + "_b")
        return [w, b]

    bias_a = np.zeros(4)
    bias_a[1] = 50.0
    inits = weights("a", 4, 3, 3, 3, bias=bias_a) + weights("b", 2, 3, 3, 3) + weights("c", 2, 6, 3, 3) + \
        weights("d", 4, 4, 1, 1)
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales"))
    nodes = [
        helper.make_node("Conv", ["x", "a_w", "a_b"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["a_relu"], name="relu_a"),
        helper.make_node("MaxPool", ["a_relu"], ["a_pool"], name="pool_a", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["a_pool", "", "scales"], ["a_up"], name="up_a", mode="linear"),
        helper.make_node("Shape", ["a_relu"], ["a_shape"], name="shape_a"),  # reads no values: no obstacle
        helper.make_node("Conv", ["x", "b_w", "b_b"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["b", "a_up"], ["cat"], name="cat", axis=1),
        helper.make_node("Relu", ["cat"], ["cat_relu"], name="relu_cat"),
        helper.make_node("Conv", ["cat_relu", "c_w", "c_b"], ["y"], name="conv_c", pads=[1, 1, 1, 1]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 16, 16])]
    if residual:
        nodes += [helper.make_node("Conv", ["a_relu", "d_w", "d_b"], ["d"], name="conv_d"),
                  helper.make_node("Add", ["d", "a_relu"], ["z"], name="add")]
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 16, 16]))
    if exposed:
        outputs.append(helper.make_tensor_value_info("a_relu", TensorProto.FLOAT, [1, 4, 16, 16]))
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray, names=("y",)) -> dict[str, np.ndarray]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {out.name for out in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in known)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(list(names), {"x": x})))


def _channel_ranges(model, images, tensor="cat_relu"):
    values = np.concatenate([_run(model, x, (tensor,))[tensor] for x in images])
    return {tensor: (values.min(axis=(0, 2, 3)), values.max(axis=(0, 2, 3)))}


def test_equalised_model_gives_the_same_output_with_a_narrow_channel():
    rng = np.random.default_rng(0)
    model = _model(rng)
    images = [rng.uniform(0, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(4)]
    before = _channel_ranges(model, images)
    outliers = outlier_channels(before)
    assert outliers and outliers[0]["channel"] == 2 + 1  # Conv a's channel 1, after Conv b's 2 channels
    scaled = equalize_outlier_channels(model, before, outliers)
    assert [(s.conv, s.conv_channel, s.readers) for s in scaled] == [("conv_a", 1, ("conv_c",))]
    for x in images:  # float32 rounding only: scales are applied in float64, then stored in float32
        np.testing.assert_allclose(_run(model, x)["y"], _run(_model(np.random.default_rng(0)), x)["y"],
                                   rtol=1e-5, atol=1e-4)
    after = _channel_ranges(model, images)
    reach = np.maximum(np.abs(after["cat_relu"][0]), after["cat_relu"][1])
    assert reach.max() <= 2.0 * outliers[0]["median_reach"] * 1.001  # brought to twice the median
    assert not outlier_channels(after)


@pytest.mark.parametrize("reaches", ["residual", "exposed"])
def test_a_channel_that_reaches_an_add_or_a_graph_output_is_left_alone(reaches):
    rng = np.random.default_rng(0)
    model = _model(rng, **{reaches: True})
    images = [rng.uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)]
    ranges = _channel_ranges(model, images)
    weights = {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    assert equalize_outlier_channels(model, ranges, outlier_channels(ranges)) == []
    for init in model.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(init), weights[init.name])


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_strength_splits_the_scale_between_activation_and_weights(strength):
    rng = np.random.default_rng(0)
    model = _model(rng)
    images = [rng.uniform(0, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(2)]
    ranges = _channel_ranges(model, images)
    outliers = outlier_channels(ranges)
    (scaled,) = equalize_outlier_channels(model, ranges, outliers, strength=strength)
    full = outliers[0]["reach"] / (2.0 * outliers[0]["median_reach"])
    assert scaled.scale == pytest.approx(full ** strength, rel=1e-3)
