"""The ops registry: the fused Normalize + ToTensor path equals the ops applied one by one."""

import numpy as np
import pytest

from isnet.build_in.ops import Geometry, Preprocessor


def _one_by_one(preprocessor: Preprocessor, rgb: np.ndarray) -> np.ndarray:
    image, geometry = rgb, Geometry(rgb.shape[:2], (0, 0, *rgb.shape[:2]))
    for op in preprocessor.ops:
        image, geometry = op.apply(image, geometry)
    return image


@pytest.mark.parametrize("normalize", [
    {"mean": [0.5, 0.5, 0.5], "std": [1.0, 1.0, 1.0]},                        # the reference recipe's
    {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},            # ImageNet statistics
    {"mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4], "scale": 1.0},  # pixel-valued
])
@pytest.mark.parametrize("color", ["RGB", "BGR"])
def test_fused_normalize_is_bit_identical_to_the_ops(normalize, color):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    rgb[0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]  # both ends of the range
    preprocessor = Preprocessor.from_specs([
        {"type": "DecodeImage", "color": color}, {"type": "Resize", "size": [24, 40]},
        {"type": "Normalize", **normalize}, {"type": "ToTensor"}])
    fused, _ = preprocessor.transform(rgb)
    expected = _one_by_one(preprocessor, rgb)
    assert fused.dtype == np.float32 and fused.shape == (3, 24, 40) and fused.flags.c_contiguous
    np.testing.assert_array_equal(fused, expected)


def test_float_input_to_normalize_takes_the_general_path():
    # A second Normalize sees float32 values, which a 256-entry table cannot hold.
    preprocessor = Preprocessor.from_specs([
        {"type": "DecodeImage"}, {"type": "Normalize", "mean": [0, 0, 0], "std": [1, 1, 1]},
        {"type": "Normalize", "mean": [0.5, 0.5, 0.5], "std": [2, 2, 2], "scale": 1.0}, {"type": "ToTensor"}])
    rgb = np.random.default_rng(4).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    fused, _ = preprocessor.transform(rgb)
    np.testing.assert_array_equal(fused, _one_by_one(preprocessor, rgb))
