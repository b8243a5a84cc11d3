"""fp16 model files become the fp32 graph they were made from: exactly, with no half-precision tensor left."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from isnet.build_in.upcast import computes_in_half, fp32_from_half


def _run(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = x.astype(np.float16) if session.get_inputs()[0].type == "tensor(float16)" else x
    return session.run(None, {session.get_inputs()[0].name: feed})[0].astype(np.float32)


def _with_weights_rounded_to_fp16(model):
    """The fp32 model with every weight rounded to fp16 and back: what an exact upcast must compute."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for index, init in enumerate(model.graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, init.name))
    return model


@pytest.mark.parametrize("keep_io_types", [False, True])
def test_an_fp16_model_upcasts_to_its_fp32_graph(lite_onnx, keep_io_types):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp32 = onnx.load(str(lite_onnx))
    half = convert_float_to_float16(onnx.load(str(lite_onnx)), keep_io_types=keep_io_types)
    assert computes_in_half(half) and not computes_in_half(fp32)
    report = fp32_from_half(half)
    assert not computes_in_half(half)
    assert report.weights == sum(1 for i in fp32.graph.initializer if i.data_type == TensorProto.FLOAT)
    # The casts the fp16 converter put in (at the I/O when keep_io_types) are float -> float now: gone
    # (the graph's own casts of shapes to int64 stay).
    assert not [n for n in half.graph.node if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT]
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 3, 64, 64)).astype(np.float32)
    # Weights exact (fp16 values are float32 values): the upcast computes what fp32 arithmetic gives on them.
    np.testing.assert_allclose(_run(half, x), _run(_with_weights_rounded_to_fp16(fp32), x), atol=1e-6)
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [TensorProto.FLOAT]


def test_a_float_model_is_left_as_it_is(lite_onnx):
    model = onnx.load(str(lite_onnx))
    before = model.SerializeToString()
    report = fp32_from_half(model)
    assert not report.changed and model.SerializeToString() == before


def test_the_real_isnet_upcast_keeps_every_weight_and_the_maps(isnet_fp16, isnet_fp32):
    """The fixture's fp32 ISNet is isnet's own upcast of IMG.LY's fp16 file: the same weights bit for bit,
    no half tensor, and maps within fp16's rounding of the fp16 file's."""
    half, full = onnx.load(str(isnet_fp16)), onnx.load(str(isnet_fp32))
    assert computes_in_half(half) and not computes_in_half(full)
    assert not [n for n in full.graph.node if n.op_type == "Cast"]
    weights = {i.name: numpy_helper.to_array(i) for i in full.graph.initializer}
    for init in half.graph.initializer:
        assert np.array_equal(numpy_helper.to_array(init).astype(np.float32), weights[init.name])
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (1, 3, 1024, 1024)).astype(np.float32)
    got, want = _run(full, x), _run(half, x)
    # fp16 arithmetic (where ONNX Runtime has fp16 kernels) against fp32: a small fraction of a grey level.
    assert np.abs(got - want).max() < 2e-3
