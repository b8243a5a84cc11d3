"""The pretrained U^2-Netp (rembg's u2netp.onnx) as users hold it: every precision of both backends builds
from the file unchanged, loads and runs, and the fp32 build gives the file's own outputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from isnet.build_in import build_artifact, load_build_config
from isnet.runtime import load_model

pytestmark = pytest.mark.slow


def _build(tmp_path, u2netp, images, backend: str, precision: str):
    name = f"{backend}_{precision}"
    quantize = {"quantize": {"calibrate_mode": "max"}} if precision == "int8" else {}
    config = {"name": name, "frontend": {"checkpoint": str(u2netp)},
              "backend": {"type": backend, "dtype": precision, **quantize},
              "dataset": {"path": str(images), "process_ops": "u2net", "sampler": {"get_data_num": 2}},
              "verify": {"images": 2}, "workspace": {"path": str(tmp_path / "deploy")}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return build_artifact(load_build_config(path)), load_model(tmp_path / "deploy" / name)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from isnet.runtime import write_synthetic_photos

    folder = tmp_path_factory.mktemp("photos")
    write_synthetic_photos(folder, 4, size=(240, 320))
    return folder


def test_fp32_equals_the_file_and_keeps_its_input_name(tmp_path, u2netp, photos):
    result, model = _build(tmp_path, u2netp, photos, "onnxruntime", "fp32")
    info = result.info
    assert info["input"]["name"] == "input.1" and info["input"]["dynamic_batch"] is True
    assert info["source"]["opset"] == [11, 17] and info["output"]["activation"] == "probabilities"
    assert any("the other 6" in note for note in info["source"]["notes"])
    batch = np.stack([model.preprocessor.load(p)[0] for p in sorted(photos.iterdir())])
    session = ort.InferenceSession(str(u2netp), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"input.1": batch[i:i + 1]})[0] for i in range(len(batch))])
    got = model.predict(batch)  # one call, batch of 4: the batch is dynamic now
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("backend, precision", [("onnxruntime", "fp16"), ("onnxruntime", "int8"),
                                                ("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "bf16"),
                                                ("openvino", "int8")])
def test_every_precision_of_both_backends_builds_loads_and_runs(tmp_path, u2netp, photos, backend, precision):
    result, model = _build(tmp_path, u2netp, photos, backend, precision)
    assert result.info["fidelity"]["nonfinite_values"] == 0
    batch = np.stack([model.preprocessor.load(p)[0] for p in sorted(photos.iterdir())[:2]])
    out = model.predict(batch)
    assert out.shape == (2, 1, 320, 320) and np.isfinite(out).all() and 0 <= out.min() <= out.max() <= 1


def test_compare_takes_the_file_with_a_preset(tmp_path, u2netp, run_isnet):
    from isnet.tools.synth import generate_dataset

    generate_dataset(tmp_path / "eval", 3, seed=5)
    experiment = {"name": "u2netp", "model": str(u2netp), "process_ops": "u2net", "dataset": {"path": "eval"},
                  "builds": ["fp32"], "profile": {"seconds": 0.2}, "report": {"path": "report", "strip_images": 1}}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    proc = run_isnet("compare", tmp_path / "experiment.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "report" / "report.json").is_file()
