"""``isnet drift``: the layer-wise drift of an int8 artifact, as a table, JSON and a plot."""

import json

import pytest

from isnet.build_in import build_artifact, load_build_config


@pytest.mark.slow  # three builds and two command runs
def test_drift_command_ranks_the_lifted_tensor_first_and_writes_json_and_plot(write_config, lifted_onnx,
                                                                              calib_images, run_isnet, tmp_path):
    source, lifted, _ = lifted_onnx
    config = load_build_config(write_config({"frontend": {"checkpoint": str(source)},
                                             "backend": {"quantize": {"calibrate_mode": "max"}}}),
                               ["backend.quantize.outlier_channel_ratio=null"])
    artifact = build_artifact(config).artifact_dir
    run = run_isnet("drift", "--model", artifact, "--image-dir", calib_images, "--count", "3",
                    "--output-dir", tmp_path / "drift")
    assert run.returncode == 0, run.stderr
    assert f"vs {source}" in run.stdout  # the source model from build.json is the default reference
    report = json.loads((tmp_path / "drift" / "drift.json").read_text())
    assert report["tensors"][0]["tensor"] == lifted and len(report["images"]) == 3
    assert report["stages"] and all(s["tensors"] >= 1 for s in report["stages"])
    assert (tmp_path / "drift" / "drift.png").read_bytes()[:4] == b"\x89PNG"
    assert lifted[-30:] in run.stdout.splitlines()[2]  # the first row of the table

    fp32 = build_artifact(load_build_config(write_config({"name": "f", "backend": {"dtype": "fp32"}}))).artifact_dir
    refused = run_isnet("drift", "--model", fp32, "--image-dir", calib_images)
    assert refused.returncode == 2 and "int8" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
