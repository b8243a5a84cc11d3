"""Streaming calibration gives exactly the ranges of ONNX Runtime's stock (all-in-memory) calibrator."""

import numpy as np
import onnx
import onnxsim
import pytest
from onnx.tools.update_model_dims import update_inputs_outputs_dims
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.calibrate import create_calibrator
from onnxruntime.quantization.shape_inference import quant_pre_process

from build_in.calibration import CalibrationSource, compute_tensor_ranges
from build_in.config import CalibrationMode
from build_in.ops import DEFAULT_OPS, Preprocessor


@pytest.fixture(scope="module")
def prepared(lite_onnx, tmp_path_factory):
    work = tmp_path_factory.mktemp("prepared")
    model = update_inputs_outputs_dims(onnx.load(str(lite_onnx)), {"input": ["batch", 3, 64, 64]},
                                       {"output": ["batch", 1, 64, 64]})
    model, _ = onnxsim.simplify(model)
    onnx.save(model, str(work / "fixed.onnx"))
    quant_pre_process(str(work / "fixed.onnx"), str(work / "prepared.onnx"))
    return work / "prepared.onnx"


@pytest.fixture(scope="module")
def source(calib_images):
    specs = [dict(op) for op in DEFAULT_OPS]
    specs[1]["size"] = [64, 64]
    return CalibrationSource(sorted(calib_images.iterdir())[:4], Preprocessor.from_specs(specs))


class _Reader(CalibrationDataReader):
    def __init__(self, source):
        self.items = iter(list(source))

    def get_next(self):
        return next(self.items, None)


@pytest.mark.parametrize("mode, method, symmetric", [
    (CalibrationMode.KL_DIVERGENCE, CalibrationMethod.Entropy, False),
    (CalibrationMode.MAX, CalibrationMethod.MinMax, False),
    (CalibrationMode.MAX, CalibrationMethod.MinMax, True),
    (CalibrationMode.PERCENTILE, CalibrationMethod.Percentile, True),
    (CalibrationMode.PERCENTILE, CalibrationMethod.Percentile, False),
])
def test_ranges_identical_to_stock_calibrator(prepared, source, tmp_path, mode, method, symmetric):
    stock = create_calibrator(prepared, [], augmented_model_path=str(tmp_path / "stock.onnx"),
                              calibrate_method=method, extra_options={"symmetric": symmetric})
    stock.collect_data(_Reader(source))
    expected = stock.compute_data()
    steps = []
    ours = compute_tensor_ranges(prepared, source, mode, tmp_path, symmetric=symmetric, progress=steps.append)
    assert ours.calibration_method == expected.calibration_method
    assert set(ours.keys()) == set(expected.keys()) and len(expected.keys()) > 100
    for name in expected.keys():
        low, high = expected[name].range_value
        got_low, got_high = ours[name].range_value
        np.testing.assert_array_equal(got_low, low, err_msg=name)
        np.testing.assert_array_equal(got_high, high, err_msg=name)
    # One progress step per image and pass: histogram methods read the images twice.
    assert len(steps) == (4 if mode is CalibrationMode.MAX else 8)
