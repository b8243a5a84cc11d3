"""OpenVINO artifacts: every precision builds from a tiny ISNet, runs, and agrees with ONNX Runtime fp32."""

import sys
from functools import partial

import numpy as np
import pytest

from isnet.build_in import build_artifact, load_build_config, open_artifact
from isnet.core import IsnetError

pytest.importorskip("openvino", reason="the openvino extra is not installed")

# Agreement with the ONNX Runtime fp32 run, on sigmoid maps in [0, 1]:
# - fp32: same graph, different kernels: float rounding only (1e-5).
# - fp16: weights rounded to fp16 (~1e-3 relative), compute in fp32: maps move < 1e-2.
# - bf16: activations and weights in bf16 (8-bit mantissa, ~4e-3 relative) through ~100 layers: 3e-2.
# - int8: 8-bit activations of an untrained network; a few grey levels (0.1), as for ORT's int8.
TOLERANCE = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 3e-2, "int8": 0.1}


@pytest.fixture(scope="module")
def ort_reference(lite_onnx, calib_images):
    """The fp32 ONNX Runtime output of the tiny model on three held-out images."""
    from isnet.build_in.runners.onnxruntime import OnnxRuntimeRunner
    from isnet.build_in.ops import Preprocessor, default_process_ops

    pre = Preprocessor.from_specs(default_process_ops((64, 64)))
    batch = np.stack([pre.load(p)[0] for p in sorted(calib_images.iterdir())[5:8]])
    return batch, OnnxRuntimeRunner(lite_onnx).infer({"input": batch})["output"]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", pytest.param("int8", marks=pytest.mark.slow)])
def test_openvino_precisions_agree_with_onnxruntime_fp32(write_config, ort_reference, precision):
    quantize = {"quantize": {"calibrate_mode": "max"}} if precision == "int8" else {}
    overrides = {"name": f"ov_{precision}", "backend": {"type": "openvino", "dtype": precision, **quantize}}
    result = build_artifact(load_build_config(write_config(overrides)))
    info = result.info
    assert info["backend"] == "openvino" and info["model_file"] == "model.xml"
    assert (result.artifact_dir / "model.xml").is_file() and (result.artifact_dir / "model.bin").is_file()
    expected_hint = "bf16" if precision == "bf16" else "f32"
    assert info["runtime_options"]["inference_precision"] == expected_hint
    assert info["fidelity"]["max_abs_diff"] <= TOLERANCE[precision]

    artifact = open_artifact(result.artifact_dir)
    batch, reference = ort_reference
    out = artifact.runner.infer({"input": batch})["output"]
    assert out.shape == reference.shape
    assert np.abs(out - reference).max() <= TOLERANCE[precision]
    single = artifact.runner.infer({"input": batch[:1]})["output"]
    np.testing.assert_allclose(single, out[:1], atol=1e-6)


def test_kl_divergence_is_refused_for_openvino(write_config):
    config = load_build_config(write_config({"backend": {"type": "openvino", "dtype": "int8"}}))
    with pytest.raises(IsnetError, match="kl_divergence is calibrated by isnet"):
        build_artifact(config)
    assert not config.artifact_dir.exists()


@pytest.mark.slow
def test_exclude_nodes_map_to_ignored_scope(write_config):
    config = load_build_config(write_config({"backend": {"type": "openvino", "dtype": "int8", "quantize": {
        "calibrate_mode": "percentile", "exclude_nodes": ["side1"]}}}),
        ["backend.quantize.outlier_channel_ratio=null"])  # outlier ops of the random network would add others
    result = build_artifact(config)
    ignored = result.info["backend_details"]["ignored_ops"]
    assert len(ignored) >= 1 and all("conv" in name.lower() for name in ignored)


def test_missing_extra_names_it(monkeypatch, write_config):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    config = load_build_config(write_config({"backend": {"type": "openvino", "dtype": "fp32"}}))
    with pytest.raises(IsnetError, match=r"pip install 'isnet\[openvino\]'"):
        build_artifact(config)


@pytest.mark.slow
def test_openvino_int8_keeps_outlier_tensors_float_and_meets_a_budget(write_config, lifted_onnx, calib_images):
    from functools import partial

    from isnet.eval import selection_scores

    mask_scores = partial(selection_scores, smeasure=True)

    source, lifted, _ = lifted_onnx
    budget = {"max_drift": {"mae": 0.05, "mean_abs": 0.05}, "validation": {"path": str(calib_images.parent), "confidence": 0.5}}
    config = load_build_config(write_config({"frontend": {"checkpoint": str(source)}, "backend": {
        "type": "openvino", "dtype": "int8", "quantize": {"calibrate_mode": "max", **budget}}}))
    result = build_artifact(config, scorer=mask_scores)
    details = result.info["backend_details"]
    plan = details["plan"]
    assert any(item["tensor"] == lifted for item in plan["outlier_tensors"])
    # The ops OpenVINO made of the lifted Conv, its ReLU and its readers carry their ONNX node names.
    assert any(name.startswith("/stage1/rebnconvin/conv_s1/Conv") for name in plan["outlier_nodes_in_float"])
    assert set(plan["outlier_nodes_in_float"]) <= set(details["ignored_ops"])
    record = plan["budget"]
    assert any(trial["within"] for trial in record["trials"]) and record["search_seconds"] > 0
    assert record["drift"]["mae"] <= 0.05 and record["drift"]["mean_abs"] <= 0.05
    assert record["validation"]["images"] == 3


@pytest.mark.slow
def test_openvino_budget_keeps_layers_float_until_it_holds(write_config, calib_images, monkeypatch):
    """Ranges clipped at the 90th percentile make int8 drift; the search computes convolutions in
    float (float weights back, no FakeQuantize on their input) in the IR NNCF made until the budget
    holds. On the random lite model that error is spread over most layers (a quarter of them in
    float takes little off), so the test lifts the search's limit."""
    import openvino as ov
    from isnet.build_in.backends import openvino as backend
    from isnet.eval import selection_scores

    monkeypatch.setattr(backend, "MAX_FLOAT_SHARE", 1.0)

    def build(budget: dict, name: str):
        config = load_build_config(write_config({"name": name, "backend": {
            "type": "openvino", "dtype": "int8", "quantize": {
                "calibrate_mode": "percentile", "percentile": 90, "max_drift": budget,
                "validation": {"path": str(calib_images.parent), "confidence": 0.5}}}}, name=f"{name}.yaml"))
        return build_artifact(config, scorer=partial(selection_scores, smeasure=True))

    loose = build({"mean_abs": 1.0}, "loose")
    drift = loose.info["backend_details"]["plan"]["budget"]["drift"]["mean_abs"]
    result = build({"mean_abs": drift * 0.5}, "tight")
    record = result.info["backend_details"]["plan"]["budget"]
    assert record["float_nodes"] and record["drift"]["mean_abs"] <= drift * 0.5
    assert not record["trials"][0]["within"] and any(trial["within"] for trial in record["trials"])

    # What the record says stayed float did: in the saved IR those convolutions read float
    # weights and an input no FakeQuantize rounds, not even before a Concat or pooling on the way;
    # every other one keeps int8 weights.
    def float_layers(artifact) -> set[str]:
        model = ov.Core().read_model(artifact.artifact_dir / "model.xml")
        return {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "Convolution"
                and op.input_value(1).get_node().get_type_name() == "Constant"
                and op.input_value(1).get_element_type() == ov.Type.f32
                and not backend._input_fakequantizes(op)}

    assert float_layers(loose) == set()
    kept = set(record["float_nodes"])
    bypassed = {name for name in kept if "/fq_output_" in name}  # FakeQuantize ops of the modules kept
    assert float_layers(result) == kept - bypassed
    saved = {op.get_friendly_name() for op in ov.Core().read_model(result.artifact_dir / "model.xml").get_ops()}
    assert bypassed and not bypassed & saved
    # The lite model's layers are named by module (/stage1/...): the search kept whole modules.
    from isnet.build_in.sixteen_bit import module_of
    assert all(len({module_of(name) for name in group}) == 1 for group in record["candidates"])
    assert any(len(group) > 1 for group in record["candidates"])


def test_float_layers_of_an_int8_build_can_compute_in_bf16(write_config):
    from isnet.build_in.backends import openvino as backend

    quantize = {"calibrate_mode": "max", "float_precision": "bf16"}
    config = load_build_config(write_config({"backend": {"type": "openvino", "dtype": "int8", "quantize": quantize}}))
    assert backend.runtime_options(config)["inference_precision"] == "bf16"
    fp32_layers = load_build_config(write_config({"backend": {"type": "openvino", "dtype": "int8"}}))
    assert backend.runtime_options(fp32_layers)["inference_precision"] == "f32"
    with pytest.raises(IsnetError, match="float_precision: bf16 layers in an int8 build are an OpenVINO feature"):
        load_build_config(write_config({"backend": {"quantize": quantize}}))
    with pytest.raises(IsnetError, match="float_precision: fp32 or bf16, not fp16"):
        load_build_config(write_config({"backend": {"type": "openvino", "quantize": {"float_precision": "fp16"}}}))


def test_bias_correction_turns_on_nncfs_fast_bias_correction(write_config, calib_images):
    """Off by default (NNCF's own default is on): ``bias_correction: true`` asks NNCF for it, and it
    changes the biases the IR holds."""
    config = write_config({"backend": {"type": "openvino", "dtype": "int8", "quantize": {"calibrate_mode": "max"}}})
    plain = build_artifact(load_build_config(config, ["name=plain"]))
    corrected = build_artifact(load_build_config(config, ["name=corrected", "backend.quantize.bias_correction=true"]))
    assert plain.info["backend_details"]["nncf_fast_bias_correction"] is False
    assert corrected.info["backend_details"]["nncf_fast_bias_correction"] is True
    assert (plain.artifact_dir / "model.bin").read_bytes() != (corrected.artifact_dir / "model.bin").read_bytes()
    # With a budget it is refused: layers the search keeps float would keep NNCF's corrected biases.
    budget = ["backend.quantize.max_drift.mean_abs=1", f"backend.quantize.validation.path={calib_images.parent}",
              "backend.quantize.validation.confidence=0.5"]
    with pytest.raises(IsnetError, match="cannot be undone"):
        build_artifact(load_build_config(config, ["name=budgeted", "backend.quantize.bias_correction=true", *budget]))
