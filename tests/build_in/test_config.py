"""Config validation: every mistake is caught before work starts, naming the key and the file."""

import pytest

from isnet.build_in.config import CalibrationMode, Precision, load_build_config
from isnet.core import IsnetError


def test_valid_config_loads_typed_and_resolves_relative_paths(tmp_path, write_config, calib_images):
    (tmp_path / "imgs").symlink_to(calib_images)
    config = load_build_config(write_config({"dataset": {"path": "imgs"}}))
    assert config.backend.dtype is Precision.INT8
    assert config.backend.quantize.calibrate_mode is CalibrationMode.KL_DIVERGENCE
    assert config.dataset.path == tmp_path / "imgs"
    assert config.workspace.path == tmp_path / "deploy"
    assert config.input_shape == (1, 3, 64, 64)
    assert len(config.calibration_images()) == 5
    held_out, disjoint = config.held_out_images()
    assert disjoint and len(held_out) == 3
    assert not set(held_out) & set(config.calibration_images())


def test_set_overrides_any_key(write_config):
    config = load_build_config(write_config(), ["backend.dtype=fp16", "name=other"])
    assert config.backend.dtype is Precision.FP16 and config.name == "other"
    config = load_build_config(write_config(), ["backend.dtype=int8", "backend.quantize.percentile=99.9"])
    assert config.backend.quantize.percentile == 99.9


@pytest.mark.parametrize("overrides, sets, fragments", [
    ({"backend": {"dtyp": "int8"}}, [], ["backend.dtyp", "did you mean 'dtype'"]),
    # Keys the backend or precision would not read are refused, not dropped.
    ({"backend": {"dtype": "fp16", "quantize": {"percentile": 99.9}}}, [],
     ["backend.quantize.percentile", "apply to int8 builds; this one is fp16"]),
    ({"backend": {"performance_hint": "throughput"}}, [], ["backend.performance_hint", "an OpenVINO setting"]),
    ({"backend": {"performance_hint": "LATENCY"}}, [], ["backend.performance_hint", "choose from latency, throughput"]),
    ({"backend": {"dtype": "int8", "keep_io_types": False}}, [], ["backend.keep_io_types", "ONNX Runtime fp16"]),
    ({"frontend": {"opset": 13}}, [], ["frontend.opset", "an ONNX source keeps its own"]),
    ({"frontend": {"dtype": "fp16"}}, [], ["frontend.dtype", "only fp32 source models"]),
    ({"backend": {"dtype": "int4"}}, [], ["backend.dtype", "'int4' is not valid", "int8"]),
    ({"backend": {"quantize": {"calibrate_mode": "kl"}}}, [], ["backend.quantize.calibrate_mode"]),
    ({"backend": {"quantize": {"quantize_per_channel": "yes"}}}, [], ["quantize_per_channel", "true or false"]),
    ({}, ["dataset.sampler.get_data_num=500"], ["dataset.sampler.get_data_num", "only 8"]),
    ({"frontend": {"checkpoint": "missing.onnx"}}, [], ["frontend.checkpoint", "file not found"]),
    ({"dataset": {"path": "nowhere"}}, [], ["dataset.path", "folder not found"]),
    ({"dataset": {"sampler": {"suffix": "bmp"}}}, [], ["dataset.path", "no images"]),
    ({"frontend": {"shape": {"input": [1, 3, 64]}}}, [], ["frontend.shape.input", "[N, 3, H, W]"]),
    ({"frontend": {"shape": {"input": [1, 3, 96, 96]}}}, [], ["dataset.process_ops", "does not match"]),
    ({"dataset": {"process_ops": [{"type": "DecodeImage"}, {"type": "Resise", "size": [64, 64]}]}}, [],
     ["process_ops[1].type", "did you mean 'Resize'"]),
    ({"dataset": {"process_ops": [{"type": "DecodeImage"}, {"type": "Resize", "sizes": [64, 64]}]}}, [],
     ["no parameter 'sizes'", "did you mean 'size'"]),
    ({"dataset": None}, [], ["dataset", "int8 builds need a calibration dataset"]),
    ({"frontend": None}, [], ["frontend", "required key is missing"]),
    ({"wrkspace": {"path": "x"}}, [], ["wrkspace", "did you mean 'workspace'"]),
])
def test_bad_configs_name_key_and_file(write_config, overrides, sets, fragments):
    path = write_config(overrides)
    with pytest.raises(IsnetError) as info:
        load_build_config(path, sets)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_empty_calibration_folder(write_config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IsnetError, match="no images"):
        load_build_config(write_config({"dataset": {"path": str(empty)}}))


def test_not_yaml_and_missing_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(IsnetError, match="not valid YAML"):
        load_build_config(bad)
    with pytest.raises(IsnetError, match="not found"):
        load_build_config(tmp_path / "none.yaml")


def test_fp32_without_dataset_uses_reference_preprocessing(write_config):
    config = load_build_config(write_config({"dataset": None, "backend": {"dtype": "fp32"}}))
    specs = config.preprocessor().to_specs()
    assert specs[1] == {"type": "Resize", "size": [64, 64], "interpolation": "bilinear", "keep_ratio": False,
                        "pad_value": 0.0}
    assert config.calibration_images() == []
