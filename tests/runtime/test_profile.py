"""The profiler: figures for every (model, batch), measured on real pre-processed images, as a table and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isnet.core import IsnetError
from isnet.runtime import load_model, profile_model, synthetic_photo
from isnet.runtime.profiler import LatencyStats, _measure


def test_profile_command_writes_a_record_per_model_and_batch(run_isnet, lite_artifact, lite_onnx, tmp_path):
    out = tmp_path / "profile.json"
    # --size sets the plain ONNX's pre-processing; the artifact keeps its own.
    result = run_isnet("profile", "--model", lite_artifact, lite_onnx, "--size", "48", "48", "--batch", "1", "2",
                       "--instances", "2", "--warmup", "1", "--iterations", "3", "--with-preprocess", "--record-json", out)
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert [(r["model"], r["batch"], r["input_size"]) for r in records] == [
        ("lite-test", 1, [64, 64]), ("lite-test", 2, [64, 64]),
        ("isnet-lite-random.onnx", 1, [48, 48]), ("isnet-lite-random.onnx", 2, [48, 48])]
    for record in records:
        assert record["instances"] == 2
        assert record["throughput_ips"] > 0
        latency = record["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        assert record["calls"] == 2 * 3 and record["images"] == 2 * 3 * record["batch"]
        assert record["end_to_end"]["throughput_ips"] > 0
        assert set(record["end_to_end"]["latency_ms"]) >= {"p50", "p90", "p99", "max"}
        assert record["host"]["cpu"] and "onnxruntime" in record["host"]["versions"]
    assert "host:" in result.stdout and "onnxruntime" in result.stdout and "e2e img/s" in result.stdout


def test_size_for_artifacts_only_is_refused(run_isnet, lite_artifact):
    result = run_isnet("profile", "--model", lite_artifact, "--size", "48", "48")
    assert result.returncode == 2 and "artifacts carry their own pre-processing (drop them)" in result.stderr


def test_models_share_one_table(run_isnet, lite_onnx, tmp_path):
    copy = tmp_path / "second.onnx"
    copy.write_bytes(lite_onnx.read_bytes())
    result = run_isnet("profile", "--model", lite_onnx, copy, "--size", "64", "64", "--warmup", "0",
                       "--duration", "0.2")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("isnet-lite-random.onnx", "second.onnx"))]
    assert len(rows) == 2
    assert "e2e" not in result.stdout


def test_duration_mode_runs_for_about_the_duration(lite_artifact):
    [record] = profile_model(lite_artifact, batches=[1], warmup=1, iterations=None, duration=0.3)
    assert record.inference.seconds >= 0.3
    assert record.inference.calls >= 1


def test_measure_counts_every_instance_and_raises_their_errors():
    calls = []

    def call(instance):
        calls.append(instance)
        return 2

    measurement = _measure(call, instances=3, warmup=2, iterations=4, duration=None)
    assert measurement.calls == 12 and measurement.images == 24
    assert sorted(set(calls)) == [0, 1, 2] and len(calls) == 3 * (2 + 4)

    def broken(instance):
        if instance == 1:
            raise RuntimeError("session lost")
        return 1

    with pytest.raises(RuntimeError, match="session lost"):
        _measure(broken, instances=2, warmup=1, iterations=2, duration=None)


def test_latency_percentiles():
    stats = LatencyStats.from_seconds([i / 1000 for i in range(1, 101)])
    assert stats.p50 == pytest.approx(50.5) and stats.p90 == pytest.approx(90.1) and stats.max == pytest.approx(100)


def test_iterations_and_duration_are_exclusive(lite_artifact):
    with pytest.raises(IsnetError, match="either a number of iterations or a duration"):
        profile_model(lite_artifact, iterations=5, duration=1.0)


def test_synthetic_photos_are_deterministic_and_varied():
    a, b = synthetic_photo(3, (48, 64), seed=1), synthetic_photo(3, (48, 64), seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, synthetic_photo(4, (48, 64), seed=1))
    assert a.std() > 10  # not a flat image


def test_profiled_inputs_are_pre_processed_photos(lite_artifact):
    # The profiler feeds the model's own pre-processing of real-looking photos, not zeros.
    model = load_model(lite_artifact)
    tensor, _ = model.preprocessor.transform(synthetic_photo(0))
    assert tensor.shape == (3, 64, 64) and -0.5 <= tensor.min() < tensor.max() <= 0.5 and tensor.std() > 0.05
