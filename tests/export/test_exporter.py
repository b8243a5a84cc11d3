"""Exported files agree with PyTorch, really have dynamic axes, and failures leave nothing behind."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from isnet.core import IsnetError
from isnet.export.exporter import MAX_ABS_DIFF, ExportRequest, export_model
from isnet.export.weights import build_isnet

# fp32 graphs of the same network: only kernel order differs, so 1e-4 (the exporter's own gate)
# is the bar; it is 40x below one 8-bit grey level.
TOL = MAX_ABS_DIFF


def _inputs(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) - 0.5


@pytest.fixture(scope="module")
def official_export(tmp_path_factory):
    """The full official-size ISNet (random weights), exported once with dynamic axes."""
    out = tmp_path_factory.mktemp("official")
    result = export_model(ExportRequest(weights="random", seed=5, size=(320, 320), output_dir=out,
                                        name="isnet", formats=("onnx", "torchscript")))
    model = build_isnet("random", seed=5, deploy=True)
    return result, model


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 3, 320, 320), (1, 3, 1024, 1024), (2, 3, 101, 77)])
def test_official_onnx_and_torchscript_match_pytorch(official_export, shape):
    result, model = official_export
    x = _inputs(*shape, seed=sum(shape))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(result.files["onnx"]), providers=["CPUExecutionProvider"])
    got_onnx = session.run(["output"], {"input": x.numpy()})[0]
    with torch.no_grad():
        got_ts = torch.jit.load(str(result.files["torchscript"]))(x).numpy()
    assert got_onnx.shape == expected.shape == (shape[0], 1, *shape[2:])
    assert np.abs(got_onnx - expected).max() <= TOL
    assert np.abs(got_ts - expected).max() <= TOL


@pytest.mark.slow
def test_onnx_graph_has_named_dynamic_io_and_no_side_heads(official_export):
    result, _ = official_export
    proto = onnx.load(str(result.files["onnx"]))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 3
    assert all(d.dim_param and not d.dim_value for i, d in enumerate(dims) if i != 1)
    # Deploy mode: only side1's weights are in the graph (the other heads never ran).
    names = {init.name for init in proto.graph.initializer}
    assert any("side1" in n for n in names)
    assert not any(f"side{i}" in n for n in names for i in range(2, 7))
    assert result.max_abs_diff["onnx"] <= TOL and result.onnx_simplified is True
    assert result.onnx_exporter == "torch.export (dynamo)"
    # The requested default opset is what was written (the exporter's own is newer), without a note.
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert not any("opset" in note for note in result.notes)
    assert result.params_m == pytest.approx(44.05, abs=0.01)


@pytest.mark.slow
def test_static_export_fixes_the_shape(tmp_path):
    result = export_model(ExportRequest(weights="random", arch="isnet-lite", size=(96, 64), output_dir=tmp_path,
                                        name="static", formats=("onnx",), static=True))
    session = ort.InferenceSession(str(result.files["onnx"]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 96, 64]
    assert session.get_outputs()[0].shape == [1, 1, 96, 64]


@pytest.mark.slow
def test_exported_program_accepts_other_sizes(tmp_path):
    result = export_model(ExportRequest(weights="random", arch="isnet-lite", size=(128, 96), output_dir=tmp_path,
                                        name="ep", formats=("exported-program",), seed=2))
    assert "exported-program accepts any batch and sides of at least 65 px" in result.notes
    program = torch.export.load(str(result.files["exported-program"])).module()
    model = build_isnet("random", seed=2, arch="isnet-lite")
    x = _inputs(3, 3, 97, 65)
    with torch.no_grad():
        assert np.abs(program(x).numpy() - model(x).numpy()).max() <= TOL
        with pytest.raises(AssertionError, match="Guard failed"):
            program(_inputs(1, 3, 97, 64))


def test_exported_program_too_small_for_dynamic_is_refused(tmp_path):
    with pytest.raises(IsnetError, match="at least 65 px"):
        export_model(ExportRequest(weights="random", arch="isnet-lite", size=(64, 128), output_dir=tmp_path,
                                   name="ep", formats=("exported-program",)))


def test_legacy_fallback_is_used_and_reported(tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def broken_dynamo(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("simulated exporter failure")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", broken_dynamo)
    result = export_model(ExportRequest(weights="random", arch="isnet-lite", size=(48, 40), output_dir=tmp_path,
                                        name="legacy", formats=("onnx",)))
    assert result.onnx_exporter.startswith("legacy")
    assert any("simulated exporter failure" in note for note in result.notes)
    assert result.max_abs_diff["onnx"] <= TOL
    session = ort.InferenceSession(str(result.files["onnx"]), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": _inputs(2, 3, 33, 57).numpy()})[0].shape == (2, 1, 33, 57)


@pytest.mark.slow
def test_simplifier_failure_keeps_unsimplified_model(tmp_path, monkeypatch):
    import onnxsim

    def failing(*args, **kwargs):
        raise RuntimeError("simulated onnxsim crash")

    monkeypatch.setattr(onnxsim, "simplify", failing)
    result = export_model(ExportRequest(weights="random", arch="isnet-lite", size=(40, 40), output_dir=tmp_path,
                                        name="nosim", formats=("onnx",)))
    assert result.onnx_simplified is False
    assert any("onnxsim failed" in note for note in result.notes)
    assert result.max_abs_diff["onnx"] <= TOL


@pytest.mark.slow
def test_verification_failure_writes_nothing(tmp_path, monkeypatch):
    import isnet.export.exporter as exporter

    monkeypatch.setattr(exporter, "_max_diff", lambda a, b, fmt: 0.5)
    with pytest.raises(IsnetError, match="differs from PyTorch"):
        export_model(ExportRequest(weights="random", arch="isnet-lite", size=(32, 32), output_dir=tmp_path,
                                   name="bad", formats=("torchscript",)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", [(0, 320), (320, -2)])
def test_non_positive_size_is_refused(tmp_path, size):
    with pytest.raises(IsnetError, match="positive"):
        export_model(ExportRequest(weights="random", size=size, output_dir=tmp_path, name="x"))


@pytest.mark.slow
def test_torchscript_deprecations_are_passed_on_as_notes(tmp_path, monkeypatch):
    # Python hides DeprecationWarnings raised in libraries; the exporter must not, whatever
    # PyTorch version says what (this one deprecates torch.jit itself).
    import warnings

    real_trace = torch.jit.trace

    def old_trace(*args, **kwargs):
        warnings.warn("simulated: trace is deprecated", DeprecationWarning)
        warnings.warn("simulated: trace is deprecated", DeprecationWarning)
        return real_trace(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "trace", old_trace)
    result = export_model(ExportRequest(weights="random", arch="isnet-lite", size=(40, 40), output_dir=tmp_path,
                                        name="ts", formats=("torchscript",)))
    assert result.notes.count("PyTorch: simulated: trace is deprecated") == 1
    assert result.max_abs_diff["torchscript"] <= TOL
