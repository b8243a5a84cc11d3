"""Foreign ONNX models build as they are: odd input names, opset 11, several outputs, logits, a fixed batch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from isnet.build_in import build_artifact, load_build_config, open_artifact
from isnet.build_in.source_model import read_onnx_signature
from isnet.core import IsnetError
from isnet.runtime import load_model, run_folder

SIZE = 32


def _foreign_onnx(path, baked_batch: bool = False, static: bool = True):
    """A small U^2-Net-like file: input 'input.1', opset 11, output 0 a logit map, output 1 a sigmoid side map.

    An opset-11 Resize with empty roi/scales brings the map back to the input size; with
    ``baked_batch`` its target sizes are a constant [1, 1, H, W], so the graph only runs batch 1.
    """
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (1, 4, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([0.5], np.float32), "b2"),
             numpy_helper.from_array(rng.normal(0, 0.5, (1, 4, 1, 1)).astype(np.float32), "w3"),
             numpy_helper.from_array(np.zeros(0, np.float32), "empty"),
             numpy_helper.from_array(np.array([1, 1, SIZE, SIZE], np.int64), "baked_sizes")]
    nodes = [helper.make_node("Conv", ["input.1", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1])]
    if baked_batch:
        sizes = "baked_sizes"
    else:
        nodes += [helper.make_node("Shape", ["input.1"], ["in_shape"]),
                  helper.make_node("Shape", ["c2"], ["c2_shape"]),
                  helper.make_node("Slice", ["c2_shape", "start0", "end2"], ["nc"]),
                  helper.make_node("Slice", ["in_shape", "start2", "end4"], ["hw"]),
                  helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0)]
        inits += [numpy_helper.from_array(np.array([v], np.int64), name)
                  for name, v in (("start0", 0), ("end2", 2), ("start2", 2), ("end4", 4))]
        sizes = "sizes"
    nodes += [helper.make_node("Resize", ["c2", "empty", "empty", sizes], ["d0"], mode="linear",
                               coordinate_transformation_mode="pytorch_half_pixel"),
              helper.make_node("Conv", ["r1", "w3"], ["c3"]),
              helper.make_node("Sigmoid", ["c3"], ["d1"])]
    dims = [1, 3, SIZE, SIZE] if static else ["n", 3, "h", "w"]
    graph = helper.make_graph(nodes, "foreign", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("d0", TensorProto.FLOAT, ["n", 1, "h", "w"]),
                               helper.make_tensor_value_info("d1", TensorProto.FLOAT, ["n", 1, "h2", "w2"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    return _foreign_onnx(tmp_path_factory.mktemp("foreign") / "foreign.onnx")


def _config(tmp_path, model, calib_images, **frontend):
    name, backend = frontend.pop("name", "foreign"), frontend.pop("backend", {"dtype": "fp32"})
    data = {"name": name, "frontend": {"checkpoint": str(model), **frontend}, "backend": backend,
            "dataset": {"path": str(calib_images), "sampler": {"get_data_num": 4}},
            "workspace": {"path": str(tmp_path / "deploy")}}
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _source_output(model, batch: np.ndarray, index: int = 0) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"input.1": batch})[index]


def test_the_signature_is_read_from_the_file(foreign):
    signature = read_onnx_signature(foreign)
    assert (signature.input_name, signature.input_dims, signature.outputs, signature.opset) == \
        ("input.1", (1, 3, SIZE, SIZE), ("d0", "d1"), 11)
    assert signature.output_name(1) == "d1" and signature.output_name("d0") == "d0"
    with pytest.raises(IsnetError, match="outputs are 0: 'd0', 1: 'd1'"):
        signature.output_name("d2")


def test_a_foreign_file_builds_unchanged_and_fp32_equals_its_source(foreign, tmp_path, calib_images):
    # No shape, no input name: both come from the file.
    config = load_build_config(_config(tmp_path, foreign, calib_images))
    assert (config.input_name, config.input_shape) == ("input.1", (1, 3, SIZE, SIZE))
    info = build_artifact(config).info
    notes = " | ".join(info["source"]["notes"])
    assert "kept output 'd0' (0 of 2)" in notes and "converted opset 11 to 17" in notes
    assert info["source"]["opset"] == [11, 17] and info["input"]["dynamic_batch"] is True
    assert info["output"]["activation"] == "sigmoid added" and "logit map" in info["output"]["activation_reason"]
    model = onnx.load(str(tmp_path / "deploy" / "foreign" / "model.onnx"))
    assert len(model.graph.output) == 1
    assert not any(n.op_type == "Conv" and "w3" in n.input for n in model.graph.node)  # the side branch is gone

    artifact = open_artifact(tmp_path / "deploy" / "foreign")
    batch = np.stack([artifact.preprocessor.load(p)[0] for p in sorted(calib_images.iterdir())[:3]])
    got = artifact.runner.infer({artifact.runner.input_name: batch})[artifact.runner.output_name]
    expected = np.concatenate([_source_output(foreign, batch[i:i + 1]) for i in range(3)])
    # fp32 artifact == sigmoid of the file's own output, to float32 rounding.
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-expected)), atol=1e-5)


def test_output_by_name_and_activation_by_setting(foreign, tmp_path, calib_images):
    info = build_artifact(load_build_config(_config(tmp_path, foreign, calib_images, name="side", output="d1"))).info
    assert info["output"]["activation"] == "probabilities"
    assert info["output"]["activation_reason"] == "the output is computed by a Sigmoid"
    info = build_artifact(load_build_config(_config(tmp_path, foreign, calib_images, name="raw",
                                                    output_activation="none"))).info
    assert info["output"]["activation"] == "probabilities"
    with pytest.raises(IsnetError, match="frontend.output: .*no output 'd9'"):
        load_build_config(_config(tmp_path, foreign, calib_images, name="bad", output="d9"))
    with pytest.raises(IsnetError, match="output_activation: 'tanh' is not valid"):
        load_build_config(_config(tmp_path, foreign, calib_images, name="bad2", output_activation="tanh"))


def test_a_baked_in_batch_is_found_and_batches_still_run(tmp_path, calib_images):
    baked = _foreign_onnx(tmp_path / "baked.onnx", baked_batch=True)
    info = build_artifact(load_build_config(_config(tmp_path, baked, calib_images, name="baked"))).info
    assert info["input"]["dynamic_batch"] is False
    assert any("batch is fixed at 1" in note for note in info["source"]["notes"])
    model = load_model(tmp_path / "deploy" / "baked")
    assert model.fixed_batch == 1
    one = run_folder(model, calib_images, tmp_path / "one", batch=1)
    four = run_folder(model, calib_images, tmp_path / "four", batch=4)
    assert one.done == four.done == len(list(calib_images.iterdir()))
    for mask in (tmp_path / "one").glob("*.png"):
        assert mask.read_bytes() == (tmp_path / "four" / mask.name).read_bytes()


def test_a_dynamic_input_needs_a_size(tmp_path, calib_images):
    dynamic = _foreign_onnx(tmp_path / "dynamic.onnx", static=False)
    with pytest.raises(IsnetError, match="input size is not fixed in the file; give frontend.shape"):
        load_build_config(_config(tmp_path, dynamic, calib_images, name="d"))
    config = load_build_config(_config(tmp_path, dynamic, calib_images, name="d", shape=[1, 3, SIZE, SIZE]))
    assert config.input_shape == (1, 3, SIZE, SIZE)
    # The recipe's form {name: shape} must name the model's input.
    with pytest.raises(IsnetError, match="the model's input is named 'input.1', not 'input'"):
        load_build_config(_config(tmp_path, dynamic, calib_images, name="d", shape={"input": [1, 3, SIZE, SIZE]}))


@pytest.mark.parametrize("backend, precision", [("onnxruntime", "fp16"), ("onnxruntime", "int8"),
                                                ("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "bf16"),
                                                ("openvino", "int8")])
def test_every_precision_of_both_backends_builds_and_runs(foreign, tmp_path, calib_images, backend, precision):
    quantize = {"quantize": {"calibrate_mode": "max"}} if precision == "int8" else {}
    config = _config(tmp_path, foreign, calib_images, name=f"{backend}_{precision}",
                     backend={"type": backend, "dtype": precision, **quantize})
    info = build_artifact(load_build_config(config)).info
    assert info["fidelity"]["nonfinite_values"] == 0
    model = load_model(tmp_path / "deploy" / f"{backend}_{precision}")
    out = model.predict(np.stack([model.preprocessor.load(p)[0] for p in sorted(calib_images.iterdir())[:2]]))
    assert out.shape == (2, 1, SIZE, SIZE) and np.isfinite(out).all() and 0 <= out.min() <= out.max() <= 1


def test_a_preset_names_the_pre_processing(foreign, tmp_path, calib_images):
    path = _config(tmp_path, foreign, calib_images, name="preset")
    data = yaml.safe_load(path.read_text())
    data["dataset"]["process_ops"] = "u2net"
    # The preset's Resize sets the size, also over the file's fixed 32x32 (the build makes the file follow it) ...
    path.write_text(yaml.safe_dump(data))
    assert load_build_config(path).input_shape == (1, 3, 320, 320)
    # ... and a shape that contradicts the Resize is one line.
    data["frontend"]["shape"] = [1, 3, 64, 64]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(IsnetError, match=r"Resize.size \[320, 320\] does not match the model's input"):
        load_build_config(path)
    data["frontend"].pop("shape")
    data["dataset"]["process_ops"] = "u2nett"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(IsnetError, match="unknown preset 'u2nett' \\(did you mean 'u2net'\\?\\)"):
        load_build_config(path)


def test_bare_onnx_runs_with_a_preset_and_its_own_input_name(foreign, tmp_path, calib_images, run_isnet):
    proc = run_isnet("run", "--model", foreign, "--preprocess", "u2net", "--size", SIZE, SIZE,
                     "--image-dir", calib_images, "--output-dir", tmp_path / "masks")
    assert proc.returncode == 0, proc.stderr
    model = load_model(foreign, preprocess="u2net", size=(SIZE, SIZE))
    assert model.preprocessor.to_specs()[2]["mean"] == [0.485, 0.456, 0.406]
    # Without --size the preset takes the file's fixed input size; a size it cannot take is one line.
    fitted = load_model(foreign, preprocess="u2net")
    assert fitted.input_size == (SIZE, SIZE)
    bad = run_isnet("run", "--model", foreign, "--size", 48, 48, "--image-dir", calib_images,
                    "--output-dir", tmp_path / "x")
    assert bad.returncode == 2 and "fixed at 32x32" in bad.stderr and "Traceback" not in bad.stderr


def test_a_bare_logit_model_runs_as_probabilities(foreign):
    model = load_model(foreign)
    assert model.apply_sigmoid is True
    out = model.predict(np.zeros((1, 3, SIZE, SIZE), np.float32))
    assert 0 <= out.min() <= out.max() <= 1


def _graph(tmp_path, name, nodes, inits, outputs, input_type=TensorProto.FLOAT, batch=1, ir=7, weights_as_inputs=False):
    inputs = [helper.make_tensor_value_info("x", input_type, [batch, 3, 8, 8])]
    if weights_as_inputs:
        inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
    graph = helper.make_graph(nodes, name, inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _weights(rng, *names_shapes):
    return [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name) for name, shape in names_shapes]


SAMPLES = [np.random.default_rng(i).normal(0, 1, (3, 8, 8)).astype(np.float32) for i in range(2)]


def test_odd_graphs_prepare_or_fail_in_one_line(tmp_path):
    from isnet.build_in.source_model import prepare_source

    rng = np.random.default_rng(0)
    conv = helper.make_node("Conv", ["x", "w"], ["map"], pads=[1, 1, 1, 1])
    # Weights listed as graph inputs too (IR < 4): pruning the side output must drop its weight input.
    side = helper.make_node("Conv", ["x", "w_side"], ["side"], pads=[1, 1, 1, 1])
    old = _graph(tmp_path, "old", [conv, side], _weights(rng, ("w", (1, 3, 3, 3)), ("w_side", (1, 3, 3, 3))),
                 ["map", "side"], ir=3, weights_as_inputs=True)
    prepared = prepare_source(old, tmp_path / "old_prepared.onnx", (8, 8), SAMPLES)
    assert [i.name for i in onnx.load(str(prepared.path)).graph.input] == ["x"]
    # An N x H x W output gets its channel back; an existing '<output>_sigmoid' name is not reused.
    squeeze = helper.make_node("Squeeze", ["map", "axis"], ["map_sq"])
    clash = helper.make_node("Identity", ["map_sq"], ["map_sq_sigmoid"])
    flat = _graph(tmp_path, "flat", [conv, squeeze, clash],
                  _weights(rng, ("w", (1, 3, 3, 3))) + [numpy_helper.from_array(np.array([1], np.int64), "axis")],
                  ["map_sq", "map_sq_sigmoid"])
    prepared = prepare_source(flat, tmp_path / "flat_prepared.onnx", (8, 8), SAMPLES)
    assert prepared.activation.value == "sigmoid added"
    session = ort.InferenceSession(str(prepared.path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.stack(SAMPLES)})[0]
    assert out.shape == (2, 1, 8, 8) and 0 <= out.min() <= out.max() <= 1
    # An fp16 input (and weights) is upcast: the prepared graph takes float32.
    half = _graph(tmp_path, "fp16", [conv], [numpy_helper.from_array(
        rng.normal(0, 0.5, (1, 3, 3, 3)).astype(np.float16), "w")], ["map"], input_type=TensorProto.FLOAT16)
    prepared = prepare_source(half, tmp_path / "fp16_prepared.onnx", (8, 8), SAMPLES)
    assert onnx.load(str(prepared.path)).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert prepared.upcast.weights == 1 and any("upcast from fp16" in note for note in prepared.notes)
    # Inputs isnet cannot feed are refused with one line.
    for name, kwargs, message in (("int8", {"input_type": TensorProto.INT8}, "is int8"),
                                  ("batch2", {"batch": 2}, "batch is fixed at 2")):
        path = _graph(tmp_path, name, [conv], _weights(rng, ("w", (1, 3, 3, 3))), ["map"], **kwargs)
        with pytest.raises(IsnetError, match=message):
            prepare_source(path, tmp_path / f"{name}_prepared.onnx", (8, 8), SAMPLES)


def test_values_read_inside_nested_subgraphs_survive_pruning(tmp_path):
    from isnet.build_in.source_model import prepare_source

    rng = np.random.default_rng(1)
    deep = helper.make_graph([helper.make_node("Mul", ["y", "scale"], ["z"])], "deep", [],
                             [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    plain = helper.make_graph([helper.make_node("Identity", ["y"], ["z2"])], "plain", [],
                              [helper.make_tensor_value_info("z2", TensorProto.FLOAT, None)])
    inner = helper.make_graph([helper.make_node("If", ["cond"], ["i"], then_branch=deep, else_branch=plain)], "inner",
                              [], [helper.make_tensor_value_info("i", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("If", ["cond"], ["out"], then_branch=inner, else_branch=plain),
             helper.make_node("Sigmoid", ["out"], ["prob"])]
    inits = _weights(rng, ("w", (1, 3, 3, 3))) + [numpy_helper.from_array(np.array(True), "cond"),
                                                  numpy_helper.from_array(np.array(2.0, np.float32), "scale")]
    path = _graph(tmp_path, "nested", nodes, inits, ["prob", "y"])
    prepared = prepare_source(path, tmp_path / "nested_prepared.onnx", (8, 8), SAMPLES, output="prob")
    session = ort.InferenceSession(str(prepared.path), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": SAMPLES[0][None]})[0],
                               reference.run(["prob"], {"x": SAMPLES[0][None]})[0], atol=1e-6)
