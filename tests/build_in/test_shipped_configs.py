"""The example configs and the reference pre-processing JSON that ship in build_in/."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from isnet.build_in.config import Precision, load_build_config
from isnet.build_in.ops import DEFAULT_OPS, Preprocessor
from isnet.export.model import ISNet
from isnet.export.weights import save_checkpoint

BUILD_IN = Path(__file__).resolve().parents[2] / "build_in"
CONFIGS = sorted((BUILD_IN / "configs").glob("*.yaml"))


def test_all_required_examples_ship():
    names = {p.stem for p in CONFIGS}
    assert {"isnet_fp32_320", "isnet_fp16_320", "isnet_int8_kl_320", "isnet_int8_max_320",
            "isnet_general_use_int8_1024"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_example_config_validates_with_user_paths(path, tmp_path, calib_images, monkeypatch):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "weights.pth", ISNet("isnet-lite"))
    (tmp_path / "data").symlink_to(calib_images)
    monkeypatch.chdir(tmp_path)  # --set paths are relative to the current folder
    config = load_build_config(path, ["frontend.checkpoint=weights.pth", "dataset.path=data",
                                      "dataset.sampler.get_data_num=4"])
    assert config.frontend.checkpoint == tmp_path / "weights.pth"
    assert config.dataset.path == tmp_path / "data"
    assert config.workspace.path.resolve() == (BUILD_IN.parent / "deploy_weights").resolve()
    assert config.preprocessor().input_size == config.input_shape[2:]
    assert (config.backend.dtype is Precision.INT8) == ("int8" in path.stem)


def test_reference_json_is_the_default_pipeline():
    spec = json.loads((BUILD_IN / "vdsp_params" / "isnet-rgb-320.json").read_text())
    ours = Preprocessor.from_specs(spec["process_ops"])
    assert ours.to_specs() == Preprocessor.from_specs(DEFAULT_OPS).to_specs()
    # The device-unit description (mean 127.5, std 255 on raw pixels) gives the same tensor.
    units = spec["device_units"]
    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    tensor, _ = ours.transform(rgb)
    resized = cv2.resize(rgb, (units["width"], units["height"]), interpolation=cv2.INTER_LINEAR)
    device = (resized.astype(np.float32) - np.float32(units["mean"])) / np.float32(units["std"])
    np.testing.assert_allclose(tensor, device.transpose(2, 0, 1), atol=1e-6)
