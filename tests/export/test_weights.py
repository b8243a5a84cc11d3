"""Loading weights: every checkpoint layout users have, and clear errors for the rest."""

import json
from pathlib import Path

import pytest
import torch

from isnet.core import IsnetError
from isnet.export.model import ISNet
from isnet.export.weights import build_isnet, read_checkpoint_arch, save_checkpoint

MANIFEST = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "isnet_state_dict.json"


@pytest.fixture(scope="module")
def lite_state() -> dict:
    torch.manual_seed(1)
    model = ISNet("isnet-lite")
    # Non-default BN statistics, so a loader that silently keeps defaults is caught.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_loaded(model: ISNet, state: dict) -> None:
    loaded = model.state_dict()
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(loaded[key], value.float(), rtol=0, atol=0)


def _layouts(state: dict) -> dict:
    return {
        "raw": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state},
        "dataparallel": {f"module.{k}": v for k, v in state.items()},
        "no_num_batches_tracked": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
    }


@pytest.mark.parametrize("layout", ["raw", "state_dict", "model", "dataparallel", "no_num_batches_tracked"])
def test_checkpoint_layouts_load_and_arch_is_inferred(tmp_path, lite_state, layout):
    path = tmp_path / f"{layout}.pth"
    torch.save(_layouts(lite_state)[layout], path)
    model = build_isnet(path)
    assert model.arch.name == "isnet-lite"
    assert model.deploy and not model.training
    _assert_loaded(model, lite_state)


def test_official_layout_from_manifest_loads_without_renaming(tmp_path):
    if not MANIFEST.exists():
        pytest.skip("reference manifest absent")
    shapes = json.loads(MANIFEST.read_text())
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=generator) if s else torch.tensor(7)) for k, s in shapes.items()}
    path = tmp_path / "isnet-general-use.pth"
    torch.save(state, path)
    model = build_isnet(path)
    assert model.arch.name == "isnet"
    _assert_loaded(model, state)


def test_own_checkpoint_records_arch_and_fp16_weights_load(tmp_path, lite_state):
    model = ISNet("isnet-lite")
    model.load_state_dict(lite_state)
    path = save_checkpoint(tmp_path / "own.pth", model, half=True, note="demo")
    assert read_checkpoint_arch(path).name == "isnet-lite"
    loaded = build_isnet(path)
    half_rounded = {k: v.half().float() if v.is_floating_point() else v for k, v in lite_state.items()}
    _assert_loaded(loaded, half_rounded)


def test_random_weights_are_explicit_and_seeded():
    a = build_isnet("random", seed=3, arch="isnet-lite")
    b = build_isnet("random", seed=3, arch="isnet-lite")
    c = build_isnet("random", seed=4, arch="isnet-lite")
    torch.testing.assert_close(a.conv_in.weight, b.conv_in.weight, rtol=0, atol=0)
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)
    assert build_isnet("random").arch.name == "isnet"


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(IsnetError, match="not found"):
        build_isnet(tmp_path / "nope.pth")


def test_corrupt_file_names_the_file_and_says_why(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(IsnetError, match=r"corrupt.pth: .*neither a zip archive nor a pickle"):
        build_isnet(path)
    good = tmp_path / "good.pth"
    torch.save(ISNet("isnet-lite").state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:4096])
    with pytest.raises(IsnetError, match=r"truncated.pth: .*truncated or damaged zip archive"):
        build_isnet(truncated)


class _NotATensor:
    pass


def test_checkpoint_with_python_objects_is_refused_without_unsafe_loading(tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"model": _NotATensor()}, path)
    with pytest.raises(IsnetError, match=r"objects.pth: .*safe loading \(weights_only\) refuses"):
        build_isnet(path)


def test_non_state_dict_checkpoint_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(IsnetError, match="not an ISNet checkpoint"):
        build_isnet(path)


def test_wrong_keys_list_missing_unexpected_and_shapes(tmp_path, lite_state):
    state = dict(lite_state)
    del state["side1.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["conv_in.bias"] = torch.zeros(3)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(IsnetError) as info:
        build_isnet(path, arch="isnet-lite")
    message = str(info.value)
    assert "missing keys: side1.weight" in message
    assert "unexpected keys: extra.weight" in message
    assert "conv_in.bias: checkpoint (3,) vs model (64,)" in message
    with pytest.raises(IsnetError, match="do not fit ISNet"):
        build_isnet(path)


def test_unknown_arch_is_refused():
    with pytest.raises(IsnetError, match="unknown architecture 'tiny'"):
        build_isnet("random", arch="tiny")


def test_init_from_onnx_reproduces_the_exported_network(tmp_path):
    """Convolutions of an ONNX export (BatchNorm folded in) copied back into a fresh model give its outputs."""
    import warnings

    import numpy as np

    from isnet.export.weights import init_from_onnx

    torch.manual_seed(0)
    source = ISNet("isnet-lite", deploy=True).eval()
    for module in source.modules():  # non-trivial BatchNorm statistics, so folding matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    images = torch.rand(4, 3, 64, 64) - 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(source, (images[:1],), str(tmp_path / "source.onnx"), input_names=["input"],
                          output_names=["output"], dynamo=False, opset_version=17)
    torch.manual_seed(1)
    student = ISNet("isnet-lite")
    copied, total = init_from_onnx(student, tmp_path / "source.onnx", images)
    assert (copied, total) == (114, 119)  # a deploy export has no side heads 2-6
    student.eval()
    with torch.no_grad():
        expected = source(images)
        got = torch.sigmoid(student.side_logits(images, heads=1)[0][0])
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-4)
        student.train()  # batch statistics of the same images: the BN set from them is the identity too
        got_train = torch.sigmoid(student.side_logits(images, heads=1)[0][0])
    np.testing.assert_allclose(got_train.numpy(), expected.numpy(), atol=2e-3)


@pytest.fixture(scope="module")
def folded_export(tmp_path_factory):
    """isnet-lite with non-trivial BatchNorm statistics, exported in deploy mode by PyTorch's tracing exporter
    (which folds each BatchNorm into its convolution): (the file, the model)."""
    import warnings

    torch.manual_seed(0)
    source = ISNet("isnet-lite", deploy=True).eval()
    for module in source.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("folded") / "lite.onnx"
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(source, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": dynamic, "output": dynamic},
                          dynamo=False, opset_version=17)
    return path, source


def test_an_isnet_onnx_file_loads_exactly_with_batchnorm_folded(folded_export):
    import numpy as np
    import onnxruntime as ort

    from isnet.export.weights import isnet_from_onnx

    path, source = folded_export
    model, missing = isnet_from_onnx(path)
    assert model.arch.name == "isnet-lite" and model.deploy and not model.training
    assert missing == ["side2", "side3", "side4", "side5", "side6"]  # a deploy export computes side1 only
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # identities, not statistics estimated from pictures
            assert torch.all(module.running_mean == 0) and torch.all(module.weight == 1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((2, 3, 64, 64), (1, 3, 96, 80)):
        x = torch.rand(*shape) - 0.5
        with torch.no_grad():
            got = model(x).numpy()
            original = source(x).numpy()
        np.testing.assert_allclose(got, session.run(None, {"input": x.numpy()})[0], atol=1e-5)
        np.testing.assert_allclose(got, original, atol=1e-5)
    # build_isnet, and with it export, run and every command taking --weights, read ONNX files too.
    assert build_isnet(path).arch.name == "isnet-lite"


def test_another_networks_onnx_file_is_not_an_isnet(u2netp):
    from isnet.export.weights import isnet_from_onnx

    with pytest.raises(IsnetError, match="not an ISNet ONNX file"):
        isnet_from_onnx(u2netp)


@pytest.mark.slow
def test_the_real_isnet_files_load_into_the_pytorch_isnet(isnet_fp16, isnet_fp32, isnet_8bit, ecssd):
    """The DIS authors' weights in the project's own ISNet: the first proof that it is the real network.
    At 1024x1024 on real pictures its map equals the ONNX file's to 1e-4."""
    import numpy as np
    import onnxruntime as ort

    from isnet.build_in.ops import PRESETS, Preprocessor
    from isnet.export.weights import isnet_from_onnx, onnx_convolutions

    model, missing = isnet_from_onnx(isnet_fp16)
    assert model.arch.name == "isnet" and not missing
    full, _ = isnet_from_onnx(isnet_fp32)
    for (key, a), b in zip(model.state_dict().items(), full.state_dict().values()):
        assert torch.equal(a, b), key  # fp16 weights are float32 numbers: the two files hold one network
    # IMG.LY's 8-bit file: dynamically quantized weights (uint8 per tensor), dequantized within one step.
    exact_by_module = {c.name.rsplit("/", 1)[0]: c for c in onnx_convolutions(isnet_fp32)}
    quantized_by_module = {c.name.rsplit("/", 1)[0]: c for c in onnx_convolutions(isnet_8bit)}
    assert set(quantized_by_module) == set(exact_by_module) and len(exact_by_module) == 119
    for module, quantized in quantized_by_module.items():
        exact = exact_by_module[module]
        step = (max(exact.weight.max(), 0) - min(exact.weight.min(), 0)) / 255
        assert np.abs(quantized.weight - exact.weight).max() <= step, module
        # Its biases are float32 and the fp16 file's are those rounded to fp16 (rounding: < 2^-11 relative).
        np.testing.assert_allclose(quantized.bias, exact.bias, rtol=2 ** -11, atol=1e-7)
    preprocessor = Preprocessor.from_specs(list(PRESETS["isnet-1024"]))
    x = np.stack([preprocessor.load(ecssd / "image" / "0010.jpg")[0]])
    want = ort.InferenceSession(str(isnet_fp32), providers=["CPUExecutionProvider"]).run(["output"], {"input": x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4
    assert 0.05 < float((want > 0.5).mean()) < 0.95
