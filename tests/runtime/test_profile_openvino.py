"""The profiler on OpenVINO artifacts: instances become streams with one infer request each."""

import pytest

from isnet.build_in import build_artifact, load_build_config
from isnet.core import IsnetError
from isnet.runtime import profile_model, profile_models

pytest.importorskip("openvino", reason="the openvino extra is not installed")


@pytest.fixture(scope="module")
def ov_artifact(tmp_path_factory, lite_onnx, calib_images):
    import yaml

    folder = tmp_path_factory.mktemp("ov")
    config = {"name": "ov_fp32", "frontend": {"checkpoint": str(lite_onnx), "shape": {"input": [1, 3, 64, 64]}},
              "backend": {"type": "openvino", "dtype": "fp32"}, "workspace": {"path": str(folder)}}
    (folder / "c.yaml").write_text(yaml.safe_dump(config))
    return build_artifact(load_build_config(folder / "c.yaml")).artifact_dir


def test_instances_map_to_streams_and_requests(ov_artifact, monkeypatch):
    from isnet.build_in.backends import openvino as backend

    opened = []
    real_init = backend.OpenVinoRunner.__init__

    def spy(self, *args, **kwargs):
        opened.append(kwargs)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(backend.OpenVinoRunner, "__init__", spy)
    record, = profile_model(ov_artifact, instances=2, iterations=3, warmup=1)
    assert len(opened) == 1  # one compiled model shared by both instances
    assert opened[0]["streams"] == 2 and opened[0]["performance_hint"] == "THROUGHPUT"
    assert record.instances == 2 and record.inference.calls == 6 and record.throughput_ips > 0


def test_hint_is_selectable_and_refused_for_other_backends(ov_artifact, lite_onnx):
    record, = profile_model(ov_artifact, iterations=2, warmup=0, hint="latency")
    assert record.backend == "openvino"
    records = profile_models([ov_artifact, lite_onnx], iterations=2, warmup=0, hint="throughput")
    assert [r.backend for r in records] == ["openvino", "onnxruntime"]
    with pytest.raises(IsnetError, match="none of the models is an OpenVINO artifact"):
        profile_models([lite_onnx], iterations=2, warmup=0, hint="throughput")
