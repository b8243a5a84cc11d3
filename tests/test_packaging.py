"""One import package: every import names isnet.<stage>, and the built wheel holds only isnet/."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def test_no_source_file_imports_a_stage_by_its_bare_name(bare_stage_names):
    offenders = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                          if name.split(".")[0] in bare_stage_names]
    assert not offenders, "import isnet.<stage> instead of:\n" + "\n".join(offenders)
    assert len(_python_files()) > 50  # the scan saw the tree


def test_a_bare_stage_import_is_refused_during_the_suite():
    with pytest.raises(ImportError, match="import isnet.export"):
        __import__("export")


def test_every_stage_folder_is_a_listed_package():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    inits = [path.relative_to(ROOT) for path in _python_files() if path.name == "__init__.py"]
    on_disk = {".".join(("isnet", *init.parent.parts)) for init in inits if init.parts[0] not in ("tests", "bench")}
    assert on_disk - listed == set(), "folders with __init__.py missing from [tool.setuptools] packages"


@pytest.mark.slow
def test_wheel_holds_only_isnet_and_runs_beside_shadowing_files(tmp_path, lite_onnx, calib_images):
    """Build the wheel, install it (not editable) into a fresh venv and run the main commands from a
    folder holding its own eval.py, runtime.py, export.py and tools/ package."""
    # Build from a copy of the files git knows (setuptools writes build/ into the source folder).
    source = tmp_path / "source"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp_path / "dist", source],
                   check=True, capture_output=True, text=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("isnet-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"isnet", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    assert "isnet/export/weights/isnet-demo.pth" in names and "isnet/tools/experiments/demo.yaml" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    # The new venv gets its dependencies from this one's site-packages (a plain path: the .pth files
    # there, including this project's editable finder, are not processed), and isnet from the wheel.
    dependencies = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    (site / "dependencies.pth").write_text(f"{dependencies}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps",
                    "--quiet", wheel], check=True, capture_output=True, text=True, timeout=600)

    work = tmp_path / "work"
    (work / "tools").mkdir(parents=True)
    for shadow in ("eval.py", "runtime.py", "export.py", "tools/__init__.py"):
        (work / shadow).write_text("raise SystemExit('the user\\'s own module was imported')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def isnet(*args):
        proc = subprocess.run([venv / "bin" / "isnet", *map(str, args)], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    where = subprocess.run([venv / "bin" / "python", "-c", "import isnet.eval, sys; print(isnet.eval.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where
    assert "export" in isnet("--help")
    isnet("export", "--weights", "random", "--arch", "isnet-lite", "--size", 64, 64, "--formats", "onnx",
          "--output-dir", "models", "--name", "lite")
    (work / "build.yaml").write_text(textwrap.dedent(f"""\
        name: lite_fp32
        frontend: {{checkpoint: models/lite.onnx, shape: {{input: [1, 3, 64, 64]}}}}
        backend: {{dtype: fp32}}
        dataset: {{path: {calib_images}}}
        workspace: {{path: artifacts}}
        """))
    isnet("build", "build.yaml")
    isnet("run", "--model", "artifacts/lite_fp32", "--image-dir", calib_images, "--output-dir", "masks")
    assert len(list((work / "masks").glob("*.png"))) == len(list(calib_images.glob("*.jpg")))
    scores = isnet("eval", "--pred-dir", "masks", "--gt-dir", calib_images.parent / "mask")
    assert "mae" in scores and "masks" in scores
    # And `python -m isnet` from the same folder, where the current folder is on sys.path.
    proc = subprocess.run([venv / "bin" / "python", "-m", "isnet", "--help"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "compare" in proc.stdout, proc.stderr
