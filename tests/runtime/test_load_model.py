"""Model resolution: artifacts, plain ONNX (static and dynamic), TorchScript and .pth all run the same network."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from isnet.export import build_isnet, save_checkpoint
from isnet.core import IsnetError
from isnet.runtime import ModelKind, load_model, synthetic_photo

# The ONNX, TorchScript and eager graphs of one fp32 network differ only by kernel order; 1e-4
# on a [0, 1] map is far below one grey level (3.9e-3) yet catches a wrong op or pre-processing.
FP32_TOLERANCE = 1e-4


def _input(model, index: int = 0) -> np.ndarray:
    tensor, _ = model.preprocessor.transform(synthetic_photo(index, (40, 56)))
    return tensor[None]


@pytest.fixture(scope="module")
def lite_model():
    # The same random weights as the session's lite_onnx (export uses build_isnet("random", seed=0)).
    return build_isnet("random", seed=0, arch="isnet-lite")


def test_artifact_takes_preprocessing_and_name_from_build_json(lite_artifact):
    model = load_model(lite_artifact)
    assert model.kind is ModelKind.ARTIFACT
    assert model.name == "lite-test"
    assert model.input_size == (64, 64)
    assert model.fixed_batch is None
    assert model.predict(_input(model)).shape == (1, 1, 64, 64)


def test_artifact_refuses_size(lite_artifact):
    with pytest.raises(IsnetError, match="drop --size"):
        load_model(lite_artifact, size=(32, 32))


def test_dynamic_onnx_uses_size_option_else_320(lite_onnx):
    assert load_model(lite_onnx).input_size == (320, 320)
    model = load_model(lite_onnx, size=(48, 64))
    assert model.input_size == (48, 64)
    assert model.kind is ModelKind.ONNX


@pytest.fixture(scope="module")
def static_onnx(lite_onnx, tmp_path_factory):
    """The lite ONNX with its input fixed at 1 x 3 x 64 x 64."""
    proto = onnx.load(str(lite_onnx))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, 3, 64, 64)):
        dim.ClearField("dim_param")
        dim.dim_value = value
    path = tmp_path_factory.mktemp("static") / "static.onnx"
    onnx.save(proto, str(path))
    return path


def test_static_onnx_takes_size_from_its_shape_and_pads_short_batches(static_onnx, lite_onnx):
    model = load_model(static_onnx)
    assert model.input_size == (64, 64)
    assert model.fixed_batch == 1
    batch = np.concatenate([_input(model, i) for i in range(3)])
    outputs = model.predict(batch)
    assert outputs.shape == (3, 1, 64, 64)
    reference = load_model(lite_onnx, size=(64, 64))
    for i in range(3):
        np.testing.assert_allclose(outputs[i], reference.predict(batch[i:i + 1])[0], atol=FP32_TOLERANCE, rtol=0)


def test_static_onnx_refuses_other_size(static_onnx):
    with pytest.raises(IsnetError, match="fixed at 64x64"):
        load_model(static_onnx, size=(32, 32))


@pytest.fixture
def torch_threads():
    """Restore PyTorch's process-wide thread count, which the torch runners set."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit's own deprecation notices
def test_checkpoint_and_torchscript_match_onnx(lite_onnx, lite_model, tmp_path, torch_threads):
    checkpoint = save_checkpoint(tmp_path / "lite.pth", lite_model)
    with torch.no_grad():
        traced = torch.jit.trace(lite_model, torch.rand(1, 3, 64, 64))
    traced.save(str(tmp_path / "lite.torchscript.pt"))

    reference = load_model(lite_onnx, size=(64, 64))
    batch = _input(reference)
    expected = reference.predict(batch)
    for path, kind in ((checkpoint, ModelKind.CHECKPOINT), (tmp_path / "lite.torchscript.pt", ModelKind.TORCHSCRIPT)):
        model = load_model(path, threads=1, size=(64, 64))
        assert model.kind is kind
        assert model.preprocessor.to_specs() == reference.preprocessor.to_specs()
        np.testing.assert_allclose(model.predict(batch), expected, atol=FP32_TOLERANCE, rtol=0)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.onnx", "model not found"),
    (lambda d: d, "not a build artifact"),
    (lambda d: (d / "weights.bin").write_bytes(b"x") and d / "weights.bin", "unknown model type"),
    (lambda d: (d / "broken.onnx").write_bytes(b"not onnx") and d / "broken.onnx", "cannot load"),
])
def test_bad_models_are_user_errors_naming_the_path(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(IsnetError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_artifact_batch_follows_the_graph_not_the_recorded_shape(lite_onnx, static_onnx, make_artifact, tmp_path):
    # `isnet build` records the build shape [1, 3, H, W] with "dynamic_batch": true.
    dynamic = load_model(make_artifact(tmp_path / "dynamic", lite_onnx, batch=1))
    assert dynamic.fixed_batch is None
    fixed = load_model(make_artifact(tmp_path / "fixed", static_onnx, batch=1))
    assert fixed.fixed_batch == 1
    assert fixed.predict(np.zeros((2, 3, 64, 64), np.float32)).shape == (2, 1, 64, 64)
