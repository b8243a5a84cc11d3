"""Fixtures for the runtime tests: a hand-written artifact around the tiny ISNet-lite ONNX, and messy image folders.

Images are tiny (a few dozen pixels) and the model runs at 64x64 so the whole folder stays fast.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from isnet.build_in.ops import Preprocessor, default_process_ops
from isnet.runtime.synthetic import synthetic_photo

SIZE = 64
EXIF_ORIENTATION = 0x0112


def artifact_folder(folder: Path, onnx: Path, size: int = SIZE, batch="N") -> Path:
    """A build artifact by hand (model.onnx + build.json), as `isnet build` will write one."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx, folder / "model.onnx")
    ops = Preprocessor.from_specs(default_process_ops((size, size))).to_specs()
    info = {"format": 1, "name": "lite-test", "backend": "onnxruntime", "precision": "fp32",
            "model_file": "model.onnx", "input": {"name": "input", "shape": [batch, 3, size, size]},
            "output": {"name": "output"}, "preprocess": ops}
    (folder / "build.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def lite_artifact(lite_onnx, tmp_path_factory) -> Path:
    return artifact_folder(tmp_path_factory.mktemp("artifact") / "lite-test", lite_onnx)


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def encode(suffix: str, array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(suffix, array)
    assert ok
    return data.tobytes()


def photo(index: int, hw=(24, 40)) -> np.ndarray:
    return synthetic_photo(index, hw)


def make_messy_folder(root: Path) -> dict[str, tuple[int, int]]:
    """Write images of every awkward kind; return {relative path: (height, width) after EXIF}."""
    expected = {}

    def add(relative: str, data: bytes, hw: tuple[int, int]) -> None:
        write_bytes(root / relative, data)
        expected[relative] = hw

    rgb = photo(0)
    add("plain.jpg", encode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)), (24, 40))
    add("gray.png", encode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)), (24, 40))
    rgba = np.dstack([cv2.cvtColor(photo(1, (30, 20)), cv2.COLOR_RGB2BGR), np.full((30, 20), 128, np.uint8)])
    add("rgba.png", encode(".png", rgba), (30, 20))
    add("deep16.png", encode(".png", photo(2, (17, 33)).astype(np.uint16) * 257), (17, 33))
    add("UPPER.JPG", encode(".jpg", cv2.cvtColor(photo(3), cv2.COLOR_RGB2BGR)), (24, 40))
    add("fleur_été_花.png", encode(".png", photo(4, (21, 22))), (21, 22))
    add("sub/deeper/nested.jpeg", encode(".jpeg", photo(5, (26, 18))), (26, 18))

    cmyk = root / "cmyk.jpg"
    Image.fromarray(photo(6, (20, 36))).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    expected["cmyk.jpg"] = (20, 36)

    # Stored 40 wide x 24 high with orientation 6 (rotate 90 degrees clockwise to display).
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(photo(7, (24, 40))).save(root / "exif_rotated.jpg", format="JPEG", quality=95, exif=exif)
    expected["exif_rotated.jpg"] = (40, 24)
    return expected


def add_broken_images(root: Path) -> set[str]:
    """A truncated JPEG and a file that is no image at all; return their relative paths."""
    whole = encode(".jpg", photo(8))
    write_bytes(root / "truncated.jpg", whole[: len(whole) // 2])
    write_bytes(root / "sub" / "not_an_image.png", b"this is not a PNG file")
    return {"truncated.jpg", "sub/not_an_image.png"}


@pytest.fixture
def messy_folder(tmp_path) -> tuple[Path, dict[str, tuple[int, int]], set[str]]:
    """(folder, {good image: (height, width)}, {broken image}) of awkward real-world files."""
    root = tmp_path / "images"
    expected = make_messy_folder(root)
    broken = add_broken_images(root)
    return root, expected, broken


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    """Six small synthetic photos, two of them in a sub-folder."""
    root = tmp_path / "photos"
    for index in range(6):
        relative = f"p{index}.jpg" if index < 4 else f"sub/q{index}.png"
        suffix = ".jpg" if index < 4 else ".png"
        write_bytes(root / relative, encode(suffix, cv2.cvtColor(photo(index, (24 + index, 40 - index)),
                                                                 cv2.COLOR_RGB2BGR)))
    return root


@pytest.fixture(scope="session")
def make_artifact():
    """``make_artifact(folder, onnx, size=64, batch="N")`` writes an artifact folder by hand."""
    return artifact_folder
