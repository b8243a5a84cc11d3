"""Streaming calibration gives the ranges of ONNX Runtime's stock (all-in-memory) calibrator, and the same
quantized model."""

import numpy as np
import onnx
import onnxsim
import pytest
from onnx.tools.update_model_dims import update_inputs_outputs_dims
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.calibrate import HistogramCollector, create_calibrator
from onnxruntime.quantization.shape_inference import quant_pre_process

from isnet.build_in.calibration import CalibrationSource, compute_tensor_ranges, ranges_taken_over
from isnet.build_in.range_search import kl_threshold
from isnet.build_in.config import CalibrationMode
from isnet.build_in.ops import Preprocessor, default_process_ops


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
    return CalibrationSource(sorted(calib_images.iterdir())[:4], Preprocessor.from_specs(default_process_ops((64, 64))))


class _Reader(CalibrationDataReader):
    def __init__(self, source):
        self.items = iter(list(source))

    def get_next(self):
        return next(self.items, None)


@pytest.mark.parametrize("mode, method, symmetric", [
    (CalibrationMode.MAX, CalibrationMethod.MinMax, False),
    (CalibrationMode.MAX, CalibrationMethod.MinMax, True),
    (CalibrationMode.PERCENTILE, CalibrationMethod.Percentile, True),
    (CalibrationMode.PERCENTILE, CalibrationMethod.Percentile, False),
])
def test_ranges_identical_to_stock_calibrator(prepared, source, tmp_path, mode, method, symmetric):
    # Same histogram size on both sides (ours defaults to DEFAULT_BINS).
    stock = create_calibrator(prepared, [], augmented_model_path=str(tmp_path / "stock.onnx"),
                              calibrate_method=method, extra_options={"symmetric": symmetric, "num_bins": 2048})
    stock.collect_data(_Reader(source))
    expected = stock.compute_data()
    steps = []
    ours = compute_tensor_ranges(prepared, source, mode, tmp_path, symmetric=symmetric, progress=steps.append)
    assert ours.calibration_method == expected.calibration_method
    assert set(ours.keys()) == set(expected.keys()) and len(expected.keys()) > 100
    # Tensors whose range the quantizer takes from another (a ReLU's input gets its output's, a
    # MaxPool's or Resize's output its input's) are not measured (the quantized model is the same:
    # checked below).
    taken_over = ranges_taken_over(onnx.load(str(prepared)), list(expected.keys()), symmetric)
    relu_inputs = {node.input[0] for node in onnx.load(str(prepared)).graph.node if node.op_type == "Relu"}
    assert taken_over and bool(relu_inputs & set(taken_over)) is not symmetric
    # Histogram modes run the graph as the stock path does (bit-identical activations); max runs it
    # with ORT's layout optimisations, whose convolution kernels round differently (a few float32
    # ulps: 1e-7 relative measured).
    tolerance = 1e-5 if mode is CalibrationMode.MAX else 0.0
    for name in expected.keys():
        low, high = expected[taken_over.get(name, name)].range_value
        got_low, got_high = ours[name].range_value
        np.testing.assert_allclose(got_low, low, rtol=tolerance, atol=tolerance * np.abs(low).max(), err_msg=name)
        np.testing.assert_allclose(got_high, high, rtol=tolerance, atol=tolerance * np.abs(high).max(), err_msg=name)
    # One progress step per image and pass: histogram methods read the images twice.
    assert len(steps) == (4 if mode is CalibrationMode.MAX else 8)


@pytest.mark.slow
def test_kl_histograms_match_the_stock_collection(prepared, source, tmp_path):
    # The stock entropy search takes minutes per tensor at 2048 bins, so compare what feeds it:
    # the collected histograms (and their min / max). OpenCV bins a value on an edge to the other
    # side at times, so a handful of values may sit one bin over; nothing else may differ.
    stock = create_calibrator(prepared, [], augmented_model_path=str(tmp_path / "stock.onnx"),
                              calibrate_method=CalibrationMethod.Entropy,
                              extra_options={"symmetric": False, "num_bins": 2048})
    stock.collect_data(_Reader(source))
    ours = compute_tensor_ranges(prepared, source, CalibrationMode.KL_DIVERGENCE, tmp_path)
    assert set(ours.keys()) == set(stock.collector.histogram_dict)
    taken_over = ranges_taken_over(onnx.load(str(prepared)), list(ours.keys()), False)
    moved = total = 0
    for name, (hist, edges, low, high, _) in stock.collector.histogram_dict.items():
        if name in taken_over:
            continue
        assert ours[name].hist.sum() == hist.sum(), name
        moved += int(np.abs(ours[name].hist.astype(np.int64) - hist).sum()) // 2
        total += int(hist.sum())
        np.testing.assert_array_equal(ours[name].bins, edges, err_msg=name)
        got_low, got_high = ours[name].range_value
        assert low <= got_low <= got_high <= high
    assert moved <= 1e-4 * total, (moved, total)


# The case with excluded nodes stays in the fast suite: it guards ranges_taken_over's dry run.
@pytest.mark.parametrize("symmetric, excluded_ops", [pytest.param(False, (), marks=pytest.mark.slow),
                                                     pytest.param(True, (), marks=pytest.mark.slow),
                                                     (False, ("MaxPool", "Resize", "Relu"))])
def test_the_quantized_model_equals_the_one_stock_ranges_give(prepared, source, tmp_path, symmetric, excluded_ops):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    # Nodes left in float keep their own ranges: every other MaxPool / Resize / Relu here.
    nodes = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in excluded_ops]
    excluded = nodes[::2]
    assert bool(excluded) is bool(excluded_ops)

    stock = create_calibrator(prepared, [], augmented_model_path=str(tmp_path / "stock.onnx"),
                              calibrate_method=CalibrationMethod.MinMax, extra_options={"symmetric": symmetric})
    stock.collect_data(_Reader(source))
    models = []
    for name, ranges in (("stock", stock.compute_data()),
                         ("ours", compute_tensor_ranges(prepared, source, CalibrationMode.MAX, tmp_path,
                                                        excluded_nodes=excluded, symmetric=symmetric))):
        save_tensors_data(ranges, tmp_path / f"{name}.json")
        quantize_static(str(prepared), str(tmp_path / f"{name}.onnx"), calibration_data_reader=None,
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibration_cache_path=str(tmp_path / f"{name}.json"),
                        nodes_to_exclude=excluded, extra_options={"ActivationSymmetric": symmetric})
        models.append(onnx.load(str(tmp_path / f"{name}.onnx")))
    stock_model, our_model = models
    assert [n.op_type for n in our_model.graph.node] == [n.op_type for n in stock_model.graph.node]
    assert ("Relu" in {n.op_type for n in our_model.graph.node}) is (symmetric or "Relu" in excluded_ops)
    # Every initializer (weights, scales, zero points) agrees: floats within the float rounding of
    # max calibration's optimised graph (see test_ranges_identical_to_stock_calibrator), integers
    # within one step.
    for mine, theirs in zip(our_model.graph.initializer, stock_model.graph.initializer):
        assert mine.name == theirs.name
        got, expected = onnx.numpy_helper.to_array(mine), onnx.numpy_helper.to_array(theirs)
        if got.dtype.kind == "f":
            np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=mine.name)
        else:
            assert np.abs(got.astype(np.int64) - expected.astype(np.int64)).max(initial=0) <= 1, mine.name


def test_ranges_for_a_search_hold_with_more_nodes_in_float(prepared, source, tmp_path):
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    # A budget search calibrates once, then leaves nodes in float: every other MaxPool / Resize / Relu here.
    graph = onnx.load(str(prepared)).graph
    excluded = [n.name for n in graph.node if n.op_type in ("MaxPool", "Resize", "Relu")][::2]
    relu_inputs = {n.input[0] for n in graph.node if n.name in excluded and n.op_type == "Relu"}
    stock = create_calibrator(prepared, [], augmented_model_path=str(tmp_path / "stock.onnx"),
                              calibrate_method=CalibrationMethod.MinMax, extra_options={"symmetric": False})
    stock.collect_data(_Reader(source))
    exact = stock.compute_data()
    ours = compute_tensor_ranges(prepared, source, CalibrationMode.MAX, tmp_path, more_excluded_later=True)
    # The input of a ReLU left in float gets the ReLU's range, not its own (which reaches below 0).
    assert relu_inputs and all(ours[t].range_value[0] >= 0 > exact[t].range_value[0] for t in relu_inputs)
    outputs = []
    for name, ranges in (("exact", exact), ("ours", ours)):
        save_tensors_data(ranges, tmp_path / f"{name}.json")
        quantize_static(str(prepared), str(tmp_path / f"{name}.onnx"), calibration_data_reader=None,
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibration_cache_path=str(tmp_path / f"{name}.json"),
                        nodes_to_exclude=excluded)
        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        outputs.append(np.concatenate([session.run(None, feed)[0] for feed in source]))
    model = onnx.load(str(tmp_path / "ours.onnx"))
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in onnx.load(str(tmp_path / "exact.onnx")).graph.node]
    # Same model up to those ranges: the maps agree within about an 8-bit step (this random model's
    # maps vary by 1e-3 around their mean; measured 7e-5 mean and 2e-3 max difference).
    exact_out, our_out = outputs
    assert np.abs(our_out - exact_out).mean() < 2e-4 and np.abs(our_out - exact_out).max() < 5e-3


def _reference_kl_curve(hist: np.ndarray, quantized: int = 128) -> np.ndarray:
    """ONNX Runtime's entropy search, candidate by candidate as it is written, but in float64."""
    bins = hist.size
    zero = bins // 2
    values = []
    for reach in range(quantized // 2, zero + 1):
        start, end = zero - reach, min(zero + reach + 1, bins)
        window = hist[start:end].astype(np.int64)
        p = window.copy()
        p[0] += hist[:start].sum()
        p[-1] += hist[end:].sum()
        nonzero = p != 0
        merged = window.size // quantized
        q = np.zeros(p.size, dtype=np.int64)
        for g in range(quantized):
            total = window[g * merged:(g + 1) * merged].sum() + (window[quantized * merged:].sum()
                                                                   if g == quantized - 1 else 0)
            count = nonzero[g * merged:(g + 1) * merged].sum()
            if count:
                q[g * merged:(g + 1) * merged] = total // count
        smoothed = []
        for dist in (p.astype(np.float64), q.astype(np.float64)):
            zeros = dist == 0
            if zeros.all():
                smoothed = None
                break
            dist = dist + np.where(zeros, 1e-4, -1e-4 * zeros.sum() / (~zeros).sum())
            smoothed.append(dist / dist.sum())
        values.append(np.inf if smoothed is None else float(np.sum(smoothed[0] * np.log(smoothed[0] / smoothed[1]))))
    return np.array(values)


def test_kl_threshold_is_the_minimum_of_ort_entropy_search():
    rng = np.random.default_rng(0)
    agree_with_ort = 0
    collector = HistogramCollector("entropy", False, 512, 128, 99.9, "same")
    for case in range(16):
        data = np.concatenate([rng.normal(0, rng.uniform(0.1, 3), 5000),
                               rng.exponential(rng.uniform(0.1, 5), rng.integers(0, 2000))]).astype(np.float32)
        if case % 3 == 0:
            data = np.maximum(data, 0)  # post-ReLU activations: one-sided
        bound = np.array(np.abs(data).max(), np.float32)
        hist, edges = np.histogram(data, 256 if case % 2 else 512, range=(-bound, bound))
        low, high = kl_threshold(hist, edges, data.min(), data.max(), 128)  # ORT's grid, to compare with it
        curve = _reference_kl_curve(hist)
        best = int(np.argmin(curve))
        zero = hist.size // 2
        expected_low = max(edges[zero - 64 - best], data.min())
        expected_high = min(edges[min(zero + 64 + best + 1, hist.size)], data.max())
        assert (low, high) == (expected_low, expected_high)
        agree_with_ort += collector.get_entropy_threshold((hist, edges, data.min(), data.max(), bound), 128) == (low, high)
    # ORT evaluates in float32; it may pick another candidate where two tie within its rounding.
    assert agree_with_ort >= 12


@pytest.mark.slow
def test_kl_clips_ranges_that_max_keeps(prepared, source, tmp_path):
    kl = compute_tensor_ranges(prepared, source, CalibrationMode.KL_DIVERGENCE, tmp_path)
    full = compute_tensor_ranges(prepared, source, CalibrationMode.MAX, tmp_path)
    widths = [(float(kl[n].range_value[1] - kl[n].range_value[0]),
               float(full[n].range_value[1][0] - full[n].range_value[0][0])) for n in full.keys()]
    assert all(k <= f * (1 + 1e-6) for k, f in widths)
    # KL must actually clip: with 2048 bins it finds thresholds inside the min/max range.
    assert sum(k < 0.9 * f for k, f in widths) >= len(widths) // 10


def _brute_force_mse_range(hist, edges, low, high, levels=256):
    """Every candidate (lo, hi) pair, the error summed bin by bin as the docstring states it."""
    centres = (edges[:-1] + edges[1:]) / 2
    zero = int(np.argmin(np.abs(edges)))
    best, best_error = None, np.inf
    for i in range(zero + 1):
        for j in range(zero, edges.size):
            lo, hi = edges[i], edges[j]
            if (low >= 0 and i != zero) or (high <= 0 and j != zero) or hi <= lo:
                continue
            if lo < low and i < zero and edges[i + 1] <= low or hi > high and j > zero and edges[j - 1] >= high:
                continue  # a candidate beyond the first edge past the observed extreme
            step = (hi - lo) / (levels - 1)
            error = 0.0
            for k, (count, centre) in enumerate(zip(hist, centres)):
                if k < i:
                    error += count * (lo - centre) ** 2
                elif k >= j:
                    error += count * (centre - hi) ** 2
                elif k != zero:
                    error += count * step ** 2 / 12
            if error < best_error:
                best, best_error = (max(lo, low), min(hi, high)), error
    return best


@pytest.mark.parametrize("seed", range(6))
def test_mse_range_is_the_brute_force_minimum(seed):
    from isnet.build_in.range_search import mse_range

    rng = np.random.default_rng(seed)
    bound = 4.0
    edges = np.linspace(-bound, bound, 33)
    if seed % 2:  # a post-ReLU tensor: a spike at 0 and a long tail of rare large values
        values = np.concatenate([np.zeros(400), rng.exponential(0.4, 600), rng.uniform(2.5, 3.9, 3)])
    else:  # signed, with outliers on both sides
        values = np.concatenate([rng.normal(0, 0.5, 1000), [-3.7, 3.2]])
    hist, _ = np.histogram(values, bins=edges)
    # A coarse grid (8 levels) makes clipping and rounding trade off within this small histogram.
    got = mse_range(hist, edges, values.min(), values.max(), levels=8)
    assert got == pytest.approx(_brute_force_mse_range(hist, edges, values.min(), values.max(), levels=8))
    if seed % 2:
        assert got[0] == 0.0 and got[1] < values.max()  # asymmetric, the rare tail clipped


def test_mse_ranges_sit_inside_the_observed_ones(prepared, source, tmp_path):
    mse = compute_tensor_ranges(prepared, source, CalibrationMode.MSE, tmp_path)
    full = compute_tensor_ranges(prepared, source, CalibrationMode.MAX, tmp_path)
    assert set(mse.keys()) == set(full.keys())
    clipped = 0
    for name in full.keys():
        low, high = (float(np.asarray(v).ravel()[0]) for v in full[name].range_value)
        got_low, got_high = (float(np.asarray(v).ravel()[0]) for v in mse[name].range_value)
        # (max and mse run the graph with different optimisations: 1e-6 relative of float rounding)
        slack = 1e-6 * max(abs(low), abs(high))
        assert low - slack <= got_low <= 0 <= got_high <= high + slack or low >= 0 and abs(got_low - low) <= slack, name
        clipped += got_high < high
    assert clipped > 0


def test_asymmetric_percentile_keeps_non_negative_tensors_at_zero(prepared, source, tmp_path):
    # ONNX Runtime's percentile calibrator is symmetric by default: a ReLU output would get
    # [-x, x] and waste half of the 256 codes. Ours is asymmetric unless asked: [>= 0, x].
    ranges = compute_tensor_ranges(prepared, source, CalibrationMode.PERCENTILE, tmp_path)
    full = compute_tensor_ranges(prepared, source, CalibrationMode.MAX, tmp_path)
    non_negative = [name for name in full.keys() if float(np.asarray(full[name].range_value[0]).ravel()[0]) >= 0]
    assert len(non_negative) > 10
    for name in non_negative:
        low, high = (float(np.asarray(v).ravel()[0]) for v in ranges[name].range_value)
        assert low >= 0 and high > 0, name
