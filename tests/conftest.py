"""Shared fixtures: the real ``isnet`` command, ECSSD when present, a tiny ISNet ONNX, images, configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ECSSD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ECSSD"


def isnet_executable() -> str:
    """The ``isnet`` console script installed beside the running interpreter."""
    script = Path(sys.executable).parent / "isnet"
    if not script.exists():
        pytest.fail(f"the isnet command is not installed beside {sys.executable}; run `make setup`")
    return str(script)


@pytest.fixture
def run_isnet(tmp_path):
    """Run ``isnet ARGS...`` in a temporary working folder (``env``: variables to add); return the
    CompletedProcess."""

    def run(*args, cwd: Path | None = None, timeout: float = 600, env: dict | None = None
            ) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        return subprocess.run([isnet_executable(), *map(str, args)], cwd=cwd or tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def ecssd() -> Path:
    """The shared ECSSD folder; tests needing it skip when it is absent."""
    if not (ECSSD / "image").is_dir() or not (ECSSD / "mask").is_dir():
        pytest.skip(f"ECSSD not found at {ECSSD}")
    return ECSSD


PRETRAINED = Path(__file__).resolve().parents[1] / ".cache" / "pretrained"


def _pretrained(name: str, what: str) -> Path:
    """``PRETRAINED/name`` (``make pretrained``); missing, it fails the test in CI and skips it elsewhere."""
    path = PRETRAINED / name
    if not path.is_file():
        message = f"{what} is not at {path}; run `make pretrained`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def u2netp() -> Path:
    """rembg's pretrained U^2-Netp (320x320, seven outputs, opset 11)."""
    return _pretrained("u2netp.onnx", "the pretrained U^2-Netp")


@pytest.fixture(scope="session")
def isnet_fp16() -> Path:
    """The DIS authors' ISNet as IMG.LY ships it: fp16 weights computing in fp16, input fixed at 1024x1024,
    12 outputs (``output`` first), opset 15."""
    return _pretrained("isnet-fp16.onnx", "the real ISNet (fp16)")


@pytest.fixture(scope="session")
def isnet_fp32() -> Path:
    """:func:`isnet_fp16` upcast to fp32 by isnet (the size and interface of rembg's isnet-general-use.onnx)."""
    return _pretrained("isnet-fp32.onnx", "the real ISNet (fp32)")


@pytest.fixture(scope="session")
def isnet_8bit() -> Path:
    """IMG.LY's own 8-bit ISNet (DynamicQuantizeLinear + ConvInteger), input fixed at 1024x1024."""
    return _pretrained("isnet-8bit.onnx", "IMG.LY's 8-bit ISNet")


@pytest.fixture(scope="session")
def lite_onnx(tmp_path_factory) -> Path:
    """A randomly initialised ``isnet-lite`` exported once per session to a dynamic-shape ONNX.

    Written with PyTorch's TorchScript-based exporter directly (2 s), not ``isnet export`` (the
    torch.export path, 30 s or more), which the export tests cover; the graph is what an
    ``isnet export`` ONNX is to every later stage: input ``input``, output ``output``, dynamic
    batch, height and width, sigmoid(d1) only.
    """
    import warnings

    import torch

    from isnet.export.weights import build_isnet

    path = tmp_path_factory.mktemp("lite_onnx") / "isnet-lite-random.onnx"
    model = build_isnet("random", seed=0, arch="isnet-lite", deploy=True)
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's deprecation notice of this exporter
        torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": dynamic, "output": dynamic},
                          opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="session")
def lifted_onnx(lite_onnx, tmp_path_factory) -> tuple[Path, str, str]:
    """The lite model with one channel of an early Conv + Relu lifted to a near-constant 2000 ("high
    bias"): (its file, the lifted ReLU output, the Conv output before it)."""
    import onnx
    from onnx import numpy_helper

    path = tmp_path_factory.mktemp("lifted") / "lifted.onnx"

    model = onnx.load(str(lite_onnx))
    initializers = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        readers = [n for n in model.graph.node if node.output[0] in n.input]
        if node.op_type == "Conv" and len(node.input) > 2 and readers and all(r.op_type == "Relu" for r in readers):
            bias = numpy_helper.to_array(initializers[node.input[2]]).copy()
            bias[0] += 2000.0
            initializers[node.input[2]].CopyFrom(numpy_helper.from_array(bias, node.input[2]))
            onnx.save(model, str(path))
            return path, readers[0].output[0], node.output[0]
    raise AssertionError("no Conv followed by a Relu")


@pytest.fixture(scope="session")
def calib_images(tmp_path_factory) -> Path:
    """Eight synthetic photos (ECSSD layout); the image folder is returned."""
    from isnet.tools.synth import generate_dataset

    root = tmp_path_factory.mktemp("calib")
    generate_dataset(root, 8, seed=11)
    return root / "image"


@pytest.fixture
def write_config(tmp_path, lite_onnx, calib_images):
    """Write a build config (dict overrides merged into an int8 64x64 default) and return its path."""

    def write(overrides: dict | None = None, name: str = "build.yaml") -> Path:
        config = {
            "name": "tiny",
            "frontend": {"type": "onnx", "checkpoint": str(lite_onnx), "shape": {"input": [1, 3, 64, 64]}},
            "backend": {"type": "onnxruntime", "dtype": "int8",
                        "quantize": {"calibrate_mode": "kl_divergence", "quantize_per_channel": True}},
            "dataset": {"path": str(calib_images), "sampler": {"suffix": "jpg", "get_data_num": 5},
                        "process_ops": [{"type": "DecodeImage"}, {"type": "Resize", "size": [64, 64]},
                                        {"type": "Normalize", "mean": [0.5, 0.5, 0.5], "std": [1.0, 1.0, 1.0]},
                                        {"type": "ToTensor"}]},
            "workspace": {"path": "deploy"},
        }
        _merge(config, overrides or {})
        if config["backend"].get("dtype") != "int8" and "quantize" not in (overrides or {}).get("backend", {}):
            del config["backend"]["quantize"]  # the int8 default's settings: a float build refuses them
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


# -- the one import package ----------------------------------------------------------------------

# The stages install as isnet.<stage>. From the repository root a bare `import export` would still
# find the folder and load a second copy of the module (whose IsnetError the CLI would not catch).
BARE_STAGE_NAMES = frozenset({"export", "build_in", "runtime", "eval", "tools", "core"})


class _RefuseBareStageImports:
    """A meta-path finder that turns any bare import of a stage name into an ImportError naming the fix."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BARE_STAGE_NAMES:
            raise ImportError(f"bare import of '{fullname}': the stages are subpackages of isnet; "
                              f"import isnet.{fullname}")
        return None


sys.meta_path.insert(0, _RefuseBareStageImports())


@pytest.fixture(scope="session")
def bare_stage_names() -> frozenset[str]:
    """The stage names that must only be imported as isnet.<stage>."""
    return BARE_STAGE_NAMES


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if a bare stage module got into sys.modules by any route."""
    bare = sorted(name for name in sys.modules if name.split(".")[0] in BARE_STAGE_NAMES)
    if bare:
        print(f"\nbare stage modules were imported: {', '.join(bare)} (import isnet.<stage> instead)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
