"""A model file fixed at one size runs at any size once its fixed Resize sizes follow the tensors they meet."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from isnet.build_in.input_size import resizes_follow_input
from isnet.core import IsnetError
from isnet.export.onnx_graph import constant_values


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _free_input(model) -> None:
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.Clear()
        dim.dim_param = "side"
    del model.graph.value_info[:]
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")


@pytest.fixture(scope="module")
def fixed_lite(tmp_path_factory):
    """isnet-lite exported at a fixed 64x64 and simplified, as tracing exporters leave it: every Resize
    size a constant; and the PyTorch model."""
    import onnxsim

    from isnet.export.weights import build_isnet

    model = build_isnet("random", seed=3, arch="isnet-lite", deploy=True)
    path = tmp_path_factory.mktemp("fixed") / "lite64.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["input"],
                          output_names=["output"], opset_version=17, dynamo=False)
    simplified, _ = onnxsim.simplify(onnx.load(str(path)))
    constants = constant_values(simplified.graph)
    assert all(n.input[3] in constants for n in simplified.graph.node if n.op_type == "Resize")
    return simplified, model


def test_fixed_sizes_follow_the_input_and_the_network_is_unchanged(fixed_lite):
    fixed, model = fixed_lite
    x64 = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 3, 64, 64)).astype(np.float32)
    before = _session(fixed).run(None, {"input": x64})[0]
    rewritten = onnx.ModelProto.FromString(fixed.SerializeToString())
    assert resizes_follow_input(rewritten) == 34
    _free_input(rewritten)
    session = _session(rewritten)
    np.testing.assert_allclose(session.run(None, {"input": x64})[0], before, atol=1e-6)
    # At other sizes (odd ones too: ceil-mode pooling) it computes what the PyTorch network computes.
    for height, width in ((96, 128), (77, 51)):
        x = np.random.default_rng(height).uniform(-0.5, 0.5, (1, 3, height, width)).astype(np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {"input": x})[0]
        assert got.shape == (1, 1, height, width)
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_a_fixed_size_no_tensor_has_is_refused():
    inits = [numpy_helper.from_array(np.array([1, 1, 7, 7], np.int64), "sizes")]
    nodes = [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")]
    graph = helper.make_graph(nodes, "odd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 7, 7])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(IsnetError, match="fixed 7x7 that no tensor beside it has"):
        resizes_follow_input(model)


def test_the_real_isnet_runs_at_a_smaller_size_as_the_pytorch_network(isnet_fp32, ecssd, tmp_path):
    """The real ISNet (its input fixed at 1024) prepared at 320: its map equals the project's own ISNet
    holding the same weights (loaded from the same file) on a real picture."""
    from isnet.build_in.ops import PRESETS, Preprocessor, with_input_size
    from isnet.build_in.source_model import prepare_source
    from isnet.export.weights import isnet_from_onnx

    size = (320, 320)
    preprocessor = Preprocessor.from_specs(list(with_input_size(PRESETS["isnet-1024"], size)))
    samples = [preprocessor.load(ecssd / "image" / name)[0] for name in ("0003.jpg", "0007.jpg")]
    prepared = prepare_source(isnet_fp32, tmp_path / "isnet320.onnx", size, samples)
    assert any("34 Resize ops" in note and "fixed at 1024x1024" in note for note in prepared.notes)
    session = ort.InferenceSession(str(prepared.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": np.stack(samples)})[0]
    model, _ = isnet_from_onnx(isnet_fp32)
    with torch.no_grad():
        want = model(torch.from_numpy(np.stack(samples))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    # A real map, not a blank one: the salient object covers part of the picture.
    assert 0.05 < float((got > 0.5).mean()) < 0.95
