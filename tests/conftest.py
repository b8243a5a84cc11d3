"""Shared fixtures: running the real ``isnet`` command and locating the optional ECSSD data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ECSSD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ECSSD"


def isnet_executable() -> str:
    """The ``isnet`` console script installed beside the running interpreter."""
    script = Path(sys.executable).parent / "isnet"
    if not script.exists():
        pytest.fail(f"the isnet command is not installed beside {sys.executable}; run `make setup`")
    return str(script)


@pytest.fixture
def run_isnet(tmp_path):
    """Run ``isnet ARGS...`` in a temporary working folder; return the CompletedProcess."""

    def run(*args, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return subprocess.run([isnet_executable(), *map(str, args)], cwd=cwd or tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def ecssd() -> Path:
    """The shared ECSSD folder; tests needing it skip when it is absent."""
    if not (ECSSD / "image").is_dir() or not (ECSSD / "mask").is_dir():
        pytest.skip(f"ECSSD not found at {ECSSD}")
    return ECSSD


@pytest.fixture(scope="session")
def lite_onnx(tmp_path_factory) -> Path:
    """A randomly initialised ``isnet-lite`` exported once per session to a dynamic-shape ONNX."""
    from export.exporter import ExportRequest, export_model

    out = tmp_path_factory.mktemp("lite_onnx")
    result = export_model(ExportRequest(weights="random", arch="isnet-lite", size=(64, 64), output_dir=out,
                                        name="isnet-lite-random", formats=("onnx",), seed=0))
    return result.files["onnx"]
