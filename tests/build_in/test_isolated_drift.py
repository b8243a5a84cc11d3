"""Each quantization of an int8 model switched on alone: which tensors the output map is sensitive to."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from isnet.build_in import build_artifact, load_build_config
from isnet.build_in.isolated_drift import SWITCHES, isolated_drift, switchable_model


@pytest.fixture(scope="module")
def lifted_int8(tmp_path_factory, lifted_onnx, calib_images):
    """An int8 max build of the lite model with one near-constant lifted channel, outlier guard off: the
    lifted tensor's per-tensor range leaves the other channels a few levels."""
    import yaml

    source, lifted, _ = lifted_onnx
    folder = tmp_path_factory.mktemp("isolated")
    config = {"name": "lifted", "frontend": {"checkpoint": str(source), "shape": [1, 3, 64, 64]},
              "backend": {"dtype": "int8", "quantize": {"calibrate_mode": "max", "outlier_channel_ratio": None}},
              "dataset": {"path": str(calib_images), "sampler": {"get_data_num": 5}},
              "workspace": {"path": str(folder)}}
    (folder / "lifted.yaml").write_text(yaml.safe_dump(config))
    artifact = build_artifact(load_build_config(folder / "lifted.yaml")).artifact_dir
    return source, artifact / "model.onnx", lifted


def _inputs(calib_images, count=3):
    from isnet.build_in.ops import Preprocessor, default_process_ops

    preprocessor = Preprocessor.from_specs(default_process_ops((64, 64)))
    return [preprocessor.load(path)[0] for path in sorted(calib_images.iterdir())[5:5 + count]]


def test_switches_off_compute_fp32_and_all_on_the_int8_model(lifted_int8, calib_images):
    source, quantized, _ = lifted_int8
    model, switches = switchable_model(onnx.load(str(source)), onnx.load(str(quantized)))
    kinds = {s.kind for s in switches}
    assert kinds == {"activation", "weights"} and sum(s.kind == "weights" for s in switches) == 114
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    x = _inputs(calib_images, 1)[0][None]
    off = session.run(None, {"input": x, SWITCHES: np.zeros(len(switches), np.float32)})[0]
    on = session.run(None, {"input": x, SWITCHES: np.ones(len(switches), np.float32)})[0]
    np.testing.assert_allclose(off, fp32.run(None, {"input": x})[0], atol=1e-6)
    want = int8.run(None, {"input": x})[0]
    # The int8 model's fused integer kernels round differently in places: close, not equal.
    assert np.abs(on - want).mean() < 0.1 * np.abs(want - off).mean()


@pytest.mark.slow  # one run of U²-Netp per quantized tensor (about two minutes)
def test_on_the_real_u2netp_the_weights_reading_the_outlier_channel_carry_the_error(u2netp, ecssd, tmp_path):
    """Without the outlier guard, U²-Netp's int8 error sits in one place: the int8 weights of the
    convolution that reads the near-constant outlier channel (their rounding, times the channel's ~228,
    shifts its output), not in the activation the channel is in."""
    import yaml

    from isnet.build_in.ops import PRESETS, Preprocessor

    config = {"name": "u2netp", "frontend": {"checkpoint": str(u2netp)},
              "backend": {"dtype": "int8", "quantize": {"calibrate_mode": "max", "outlier_channel_ratio": None}},
              "dataset": {"path": str(ecssd / "image"), "process_ops": "u2net", "sampler": {"get_data_num": 8}},
              "workspace": {"path": str(tmp_path)}}
    (tmp_path / "u2netp.yaml").write_text(yaml.safe_dump(config))
    info = build_artifact(load_build_config(tmp_path / "u2netp.yaml")).info
    preprocessor = Preprocessor.from_specs(list(PRESETS["u2net"]))
    inputs = [preprocessor.load(ecssd / "image" / "0101.jpg")[0]]
    reference = onnx.load(str(u2netp))
    quantized = onnx.load(str(tmp_path / "u2netp" / "model.onnx"))
    results, summary = isolated_drift(reference, quantized, inputs)
    top = results[0]
    assert top.kind == "weights" and top.mean_abs > 0.5 * summary["isolated_sum"]
    # ... of the convolution reading a tensor calibration flags as holding an outlier channel (the
    # build records them with the guard off too).
    readers = {node.name: list(node.input) for node in reference.graph.node}
    flagged = {item["tensor"] for item in info["backend_details"]["plan"]["outlier_tensors"]}
    assert set(readers[top.node]) & flagged
    assert summary["accumulated_mean_abs"] > 0.02  # the all-int8 model drifts: this is the broken case
