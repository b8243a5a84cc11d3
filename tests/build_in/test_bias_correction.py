"""Empirical bias correction: each quantized Conv's weight-rounding shift folded into its bias."""

import numpy as np
import onnx

from isnet.build_in import build_artifact, load_build_config, open_artifact
from isnet.build_in.bias_correction import correct_biases


def _mean_shift(artifact_dir, reference, images) -> float:
    """Mean over images of the mean (int8 - fp32) output map."""
    artifact, fp32 = open_artifact(artifact_dir), open_artifact(reference)
    shifts = []
    for path in images:
        tensor, _ = artifact.preprocessor.load(path)
        got = artifact.runner.infer({"input": tensor[None]})["output"]
        expected = fp32.runner.infer({"input": tensor[None]})["output"]
        shifts.append(float((got.astype(np.float64) - expected).mean()))
    return float(np.mean(shifts))


def _skewed_net(path):
    """Conv-ReLU-Conv-ReLU-Conv-Sigmoid whose first two weight tensors each hold one channel 50x the
    others: quantized per tensor, the small channels round coarsely and shift their outputs."""
    rng = np.random.default_rng(3)
    inits, nodes, source = [], [], "input"
    for index, (cin, cout) in enumerate([(3, 8), (8, 8), (8, 1)]):
        weight = rng.normal(0, 0.3, (cout, cin, 3, 3)).astype(np.float32)
        if cout > 1:
            weight[0] *= 50.0
        inits += [onnx.numpy_helper.from_array(weight, f"w{index}"),
                  onnx.numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"b{index}")]
        nodes.append(onnx.helper.make_node("Conv", [source, f"w{index}", f"b{index}"], [f"c{index}"],
                                           name=f"conv{index}", pads=[1, 1, 1, 1]))
        source = f"c{index}"
        if cout > 1:
            nodes.append(onnx.helper.make_node("Relu", [source], [f"r{index}"], name=f"relu{index}"))
            source = f"r{index}"
    nodes.append(onnx.helper.make_node("Sigmoid", [source], ["output"], name="sigmoid"))
    dims = ["batch", 3, "height", "width"]
    graph = onnx.helper.make_graph(nodes, "skewed", [onnx.helper.make_tensor_value_info("input", 1, dims)],
                                   [onnx.helper.make_tensor_value_info("output", 1, ["batch", 1, "height", "width"])],
                                   inits)
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    return path


def test_bias_correction_reduces_the_mean_output_shift(write_config, calib_images, tmp_path):
    source = _skewed_net(tmp_path / "skewed.onnx")
    settings = {"frontend": {"checkpoint": str(source)},
                "backend": {"quantize": {"calibrate_mode": "max", "quantize_per_channel": False}}}
    # The wide channels would keep the first layers float (outlier channels): quantize them anyway.
    unguarded = "backend.quantize.outlier_channel_ratio=null"
    plain = build_artifact(load_build_config(write_config({"name": "plain", **settings}), [unguarded]))
    corrected = build_artifact(load_build_config(write_config({"name": "corrected", **settings}),
                                                 [unguarded, "backend.quantize.bias_correction=true"]))
    fp32 = build_artifact(load_build_config(write_config({"name": "fp32", **settings, "backend": {"dtype": "fp32"}})))
    record = corrected.info["backend_details"]["plan"]["bias_correction"]
    assert record["images"] == 5 and record["convs"] == 3 and record["mean_abs_shift"] > 0
    held_out = sorted(calib_images.iterdir())[5:]
    before = _mean_shift(plain.artifact_dir, fp32.artifact_dir, held_out)
    after = _mean_shift(corrected.artifact_dir, fp32.artifact_dir, held_out)
    assert abs(after) < abs(before) / 2


def test_correct_biases_subtracts_per_channel_and_adds_missing_biases():
    weight = onnx.numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    bias = onnx.numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "b")
    with_bias = onnx.helper.make_node("Conv", ["x", "w", "b"], ["y"], name="with_bias")
    without = onnx.helper.make_node("Conv", ["y", "w2"], ["z"], name="without")
    graph = onnx.helper.make_graph(
        [with_bias, without], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 2, 2])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 2, 2, 2])],
        [weight, bias, onnx.numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w2")])
    model = onnx.helper.make_model(graph)
    changed = correct_biases(model, {"with_bias": np.array([0.5, -0.5]), "without": np.array([0.25, 0.0])})
    assert changed == 2
    values = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_allclose(values["b"], [0.5, 2.5])
    assert list(model.graph.node[1].input)[2] == "without_corrected_bias"
    np.testing.assert_allclose(values["without_corrected_bias"], [-0.25, 0.0])
    onnx.checker.check_model(model)
