"""`isnet export` from the command line: the files, the report, and one-line errors."""

import os

import pytest
import torch

from isnet.export.model import ISNet


@pytest.mark.slow
def test_export_writes_files_and_reports(run_isnet, tmp_path):
    proc = run_isnet("export", "--weights", "random", "--arch", "isnet-lite", "--size", "64", "48",
                     "--output-dir", tmp_path / "out", "--name", "lite")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lite.onnx", "lite.torchscript.pt"]
    assert "1.17 M parameters" in proc.stdout and "GMACs at 64x48" in proc.stdout
    assert "exporter: torch.export (dynamo)" in proc.stdout
    assert proc.stdout.count("max |diff| vs PyTorch") == 2


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in error_lines[0]


def test_missing_weights(run_isnet, tmp_path):
    _assert_one_line_error(run_isnet("export", "--weights", tmp_path / "none.pth", "--size", "64", "64"),
                           "not found", "none.pth")


def test_corrupt_weights(run_isnet, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(os.urandom(2048))
    _assert_one_line_error(run_isnet("export", "--weights", bad, "--size", "64", "64"), "bad.pth")


def test_wrong_keys(run_isnet, tmp_path):
    state = ISNet("isnet-lite").state_dict()
    state.pop("side1.weight")
    torch.save(state, tmp_path / "partial.pth")
    _assert_one_line_error(run_isnet("export", "--weights", tmp_path / "partial.pth", "--size", "64", "64"),
                           "missing keys")


def test_bad_size(run_isnet):
    _assert_one_line_error(run_isnet("export", "--weights", "random", "--size", "0", "64"), "--size")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_dir(run_isnet, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _assert_one_line_error(run_isnet("export", "--weights", "random", "--size", "64", "64",
                                     "--output-dir", locked), "not writable")


def test_output_dir_that_is_a_file(run_isnet, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _assert_one_line_error(run_isnet("export", "--weights", "random", "--size", "64", "64",
                                     "--output-dir", blocker / "sub"), "not writable")


def test_export_from_an_isnet_onnx_file(run_isnet, lite_onnx, u2netp, tmp_path):
    """--weights takes an ISNet ONNX file (BatchNorm folded): loaded exactly, re-exported to TorchScript."""
    proc = run_isnet("export", "--weights", lite_onnx, "--size", "64", "64", "--formats", "torchscript",
                     "--output-dir", tmp_path / "out", "--name", "again")
    assert proc.returncode == 0, proc.stderr
    assert "ISNet 'isnet-lite'" in proc.stdout and "loaded exactly" in proc.stdout
    assert (tmp_path / "out" / "again.torchscript.pt").is_file()
    _assert_one_line_error(run_isnet("export", "--weights", u2netp, "--size", "64", "64"), "not an ISNet ONNX file")
