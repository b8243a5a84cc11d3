"""Building artifacts: each precision loads and runs, build.json is complete, failures leave nothing."""

import json

import numpy as np
import onnx
import pytest
import torch

from isnet.build_in import build_artifact, load_build_config, open_artifact
from isnet.core import IsnetError, sha256_file
from isnet.export.model import ISNet
from isnet.export.weights import save_checkpoint

# Tolerances of artifact vs fp32 output maps (sigmoid values in [0, 1]) on real-looking images:
# fp16 weights round to ~3 significant digits, so maps move by < 1e-2; int8 QDQ of a random
# (untrained) tiny network moves them by at most a few grey levels.
MAX_DIFF = {"fp32": 1e-5, "fp16": 1e-2, "int8": 0.1}


@pytest.mark.parametrize("precision", ["fp32", "fp16", pytest.param("int8", marks=pytest.mark.slow)])
def test_each_precision_builds_loads_and_runs(write_config, tmp_path, precision, calib_images):
    config = load_build_config(write_config({"name": f"tiny_{precision}", "backend": {"dtype": precision}}))
    result = build_artifact(config)
    folder = tmp_path / "deploy" / f"tiny_{precision}"
    assert result.artifact_dir == folder
    info = json.loads((folder / "build.json").read_text())
    assert info == result.info
    assert info["precision"] == precision and info["backend"] == "onnxruntime"
    assert info["artifact_sha256"]["model.onnx"] == sha256_file(folder / "model.onnx")
    assert info["source"]["sha256"] == sha256_file(config.frontend.checkpoint)
    fidelity = info["fidelity"]
    # 8 images: int8 calibrates on 5 and checks the other 3; other precisions check verify.images = 4.
    assert fidelity["source"] == "held-out images"
    assert len(fidelity["images"]) == (3 if precision == "int8" else 4)
    assert 0 <= fidelity["mean_abs_diff"] <= fidelity["max_abs_diff"] <= MAX_DIFF[precision]
    assert fidelity["nonfinite_values"] == 0
    if precision == "int8":
        calibration = info["calibration"]
        assert calibration["mode"] == "kl_divergence" and len(calibration["images"]) == 5
        assert {c["path"].rsplit("/", 1)[1] for c in calibration["images"]}.isdisjoint(fidelity["images"])
        ops = {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    else:
        assert info["calibration"] is None

    artifact = open_artifact(folder)
    tensor, _ = artifact.preprocessor.load(sorted(calib_images.iterdir())[0])
    out = artifact.runner.infer({"input": np.stack([tensor, tensor])})["output"]
    assert out.shape == (2, 1, 64, 64) and out.dtype == np.float32
    assert np.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


def test_fp16_keeps_fp32_io_and_converts_weights(write_config):
    result = build_artifact(load_build_config(write_config({"backend": {"dtype": "fp16"}})))
    model = onnx.load(str(result.artifact_dir / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    float_inits = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert float_inits and all(i.data_type == onnx.TensorProto.FLOAT16 for i in float_inits if i.dims)


def test_exclude_nodes_keeps_side_head_in_float(write_config):
    # Outlier-channel tensors of this random network would add float nodes of their own.
    config = load_build_config(write_config({"backend": {"quantize": {"calibrate_mode": "max",
                                                                      "exclude_nodes": ["side1"]}}}),
                               ["backend.quantize.outlier_channel_ratio=null"])
    result = build_artifact(config)
    model = onnx.load(str(result.artifact_dir / "model.onnx"))
    side_conv = next(n for n in model.graph.node if n.op_type == "Conv" and any("side1" in i for i in n.input))
    assert "side1.weight" in side_conv.input  # float weight, not a DequantizeLinear output
    assert result.info["backend_details"]["plan"]["excluded_nodes"] == [side_conv.name]
    with pytest.raises(IsnetError, match="'nothing_here' matches no node"):
        build_artifact(load_build_config(write_config({"name": "x", "backend": {"quantize": {
            "exclude_nodes": ["nothing_here"]}}})))


@pytest.mark.slow
def test_pytorch_frontend_exports_first_and_records_arch(write_config, tmp_path):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "lite.pth", ISNet("isnet-lite"))
    config = load_build_config(write_config({"frontend": {"type": "pytorch", "checkpoint": str(checkpoint)},
                                             "backend": {"dtype": "fp32"}}))
    result = build_artifact(config)
    assert result.info["arch"] == "isnet-lite"
    assert result.info["fidelity"]["max_abs_diff"] <= MAX_DIFF["fp32"]


def test_existing_artifact_needs_force_and_failed_rebuild_keeps_it(write_config, monkeypatch, tmp_path):
    config = load_build_config(write_config({"backend": {"dtype": "fp32"}}))
    first = build_artifact(config)
    before = sha256_file(first.artifact_dir / "build.json")
    with pytest.raises(IsnetError, match="--force"):
        build_artifact(config)

    import isnet.build_in.backends.onnxruntime as backend

    def interrupted(source, config, out, work, progress=None):
        (out / "model.onnx").write_bytes(b"half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(backend, "compile_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_artifact(config, force=True)
    assert sha256_file(first.artifact_dir / "build.json") == before
    assert sorted(p.name for p in (tmp_path / "deploy").iterdir()) == ["tiny"]


def test_interrupted_first_build_leaves_no_artifact(write_config, monkeypatch, tmp_path):
    import isnet.build_in.backends.onnxruntime as backend

    def crash(source, config, out, work, progress=None):
        (out / "model.onnx").write_bytes(b"half written")
        raise RuntimeError("power cut")

    monkeypatch.setattr(backend, "compile_model", crash)
    # A failure inside the backend is not the user's: it goes up as it is, and nothing is left behind.
    with pytest.raises(RuntimeError, match="power cut"):
        build_artifact(load_build_config(write_config()))
    assert list((tmp_path / "deploy").iterdir()) == []


def test_model_input_name_must_match_config(write_config):
    # The recipe's {name: shape} form must name the model's input; the name is read from the file.
    with pytest.raises(IsnetError, match="input is named 'input', not 'image'"):
        load_build_config(write_config(), ["frontend.shape={image: [1, 3, 64, 64]}"])
    assert load_build_config(write_config(), ["frontend.shape=[1, 3, 64, 64]"]).input_name == "input"


def test_drift_past_the_default_bound_is_a_warning_in_build_json(write_config, monkeypatch):
    from isnet.build_in import builder
    from isnet.build_in.config import Precision

    within = build_artifact(load_build_config(write_config({"name": "fp16_ok", "backend": {"dtype": "fp16"}})))
    fidelity = within.info["fidelity"]
    assert fidelity["within_bound"] and fidelity["drift_bound"] == builder.DEFAULT_DRIFT_BOUNDS[Precision.FP16]
    assert "warning" not in fidelity
    # A bound below any real drift: the build succeeds and says so, naming the figure and the next steps.
    monkeypatch.setitem(builder.DEFAULT_DRIFT_BOUNDS, Precision.FP16, 1e-12)
    drifting = build_artifact(load_build_config(write_config({"name": "fp16_warned", "backend": {"dtype": "fp16"}})))
    fidelity = drifting.info["fidelity"]
    assert not fidelity["within_bound"] and fidelity["drift_bound_source"] == "default"
    assert fidelity["warning"].startswith(f"mean |diff| from fp32 {fidelity['mean_abs_diff']:.4f} on 4 held-out images")
    assert "isnet compare" in fidelity["warning"] and "max_drift" in fidelity["warning"]
    assert drifting.artifact_dir.is_dir()


@pytest.mark.slow
def test_max_drift_makes_a_drifting_int8_build_fail_without_an_artifact(run_isnet, write_config, tmp_path):
    config = write_config({"name": "strict", "backend": {"dtype": "int8", "quantize": {"calibrate_mode": "max"}}})
    proc = run_isnet("build", config, "--set", "backend.quantize.max_drift.mean_abs=0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]  # no progress bars either: stderr is not a terminal
    assert line.startswith("isnet build: error: ")
    assert "strict: mean |diff| from fp32" in line and "past backend.quantize.max_drift.mean_abs 0" in line
    assert "no artifact written" in line
    assert not (tmp_path / "deploy" / "strict").exists()
    proc = run_isnet("build", config, "--set", "backend.quantize.max_drift.mean_abs=1")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "deploy" / "strict" / "build.json").read_text())
    assert info["fidelity"]["within_bound"] and info["fidelity"]["drift_bound"] == 1
    assert info["fidelity"]["drift_bound_source"] == "backend.quantize.max_drift.mean_abs"


def test_a_tensor_with_an_outlier_channel_stays_float_and_the_build_drifts_less(write_config, lifted_onnx):
    from isnet.build_in.int8_plan import outlier_channels

    path, lifted, pre_activation = lifted_onnx
    config = write_config({"frontend": {"checkpoint": str(path)},
                           "backend": {"quantize": {"calibrate_mode": "max"}}})
    guarded = build_artifact(load_build_config(config, ["name=guarded"]))
    plain = build_artifact(load_build_config(config, ["name=plain", "backend.quantize.outlier_channel_ratio=null"]))
    details = guarded.info["backend_details"]["plan"]
    lifted_entry = next(item for item in details["outlier_tensors"] if item["tensor"] == lifted)
    assert lifted_entry["channel"] == 0 and lifted_entry["ratio"] >= 10 and lifted_entry["near_constant"] == 1
    # The lifted tensor and the Conv output before its ReLU (same channel) are no longer quantized.
    model = onnx.load(str(guarded.artifact_dir / "model.onnx"))
    for tensor in (lifted, pre_activation):
        assert not any(n.op_type == "QuantizeLinear" and tensor in n.input for n in model.graph.node), tensor
    plain_model = onnx.load(str(plain.artifact_dir / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" and lifted in n.input for n in plain_model.graph.node)
    assert plain.info["backend_details"]["plan"]["outlier_nodes_in_float"] == []
    assert guarded.info["fidelity"]["mean_abs_diff"] < plain.info["fidelity"]["mean_abs_diff"]
    # Equalisation rescales the wide channels it can reach exactly (on this random model, many
    # concatenations of branches of very different reach), but not the lifted one: that ReLU
    # output is also the RSU block's residual, read by an Add. The fallback still keeps it float.
    equalized = build_artifact(load_build_config(config, ["name=equalized", "backend.quantize.equalize=true"]))
    after = equalized.info["backend_details"]["plan"]
    assert after["equalized_channels"] and lifted not in {item["tensor"] for item in after["equalized_channels"]}
    assert lifted in {item["tensor"] for item in after["outlier_tensors"]}
    assert set(details["outlier_nodes_in_float"]) & set(after["outlier_nodes_in_float"])
    # The detector itself: one channel 20x the median reach, near-constant.
    low, high = np.zeros(8, np.float32), np.full(8, 2.0, np.float32)
    low[3], high[3] = 39.5, 40.0
    (found,) = outlier_channels({"t": (low, high)})
    assert found["channel"] == 3 and found["ratio"] == pytest.approx(20.0) and found["near_constant"] == 1
    assert outlier_channels({"t": (np.zeros(8), np.full(8, 2.0))}) == []
