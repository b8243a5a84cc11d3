"""The npz path: images -> npz -> model -> npz -> PNG equals the direct run bit for bit, matched by name."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from isnet.build_in.imageio import decode_image, decode_mask
from isnet.core import IsnetError
from isnet.runtime import compare_npz, load_model, npz_from_images, png_from_npz, run_folder, run_npz
from isnet.runtime.npz import read_npz_array


@pytest.mark.slow
def test_round_trip_equals_the_direct_run_bit_for_bit(run_isnet, lite_artifact, photo_folder, tmp_path):
    datalist = tmp_path / "datalist.txt"
    steps = [
        ("image2npz", "--image-dir", photo_folder, "--output-dir", tmp_path / "in", "--datalist", datalist),
        ("npz-run", "--model", lite_artifact, "--datalist", datalist, "--output-dir", tmp_path / "out"),
        ("npz2png", "--datalist", datalist, "--npz-dir", tmp_path / "out", "--output-dir", tmp_path / "draw",
         "--image-dir", photo_folder),
        ("run", "--model", lite_artifact, "--image-dir", photo_folder, "--output-dir", tmp_path / "direct"),
    ]
    for step in steps:
        result = run_isnet(*step)
        assert result.returncode == 0, (step[0], result.stderr)

    entries = datalist.read_text(encoding="utf-8").splitlines()
    assert len(entries) == 6 and all(entry.startswith("/") for entry in entries)
    inputs = read_npz_array(tmp_path / "in" / "sub" / "q4.npz", "input_0")
    np.testing.assert_array_equal(inputs, decode_image(photo_folder / "sub" / "q4.png").transpose(2, 0, 1))

    model = load_model(lite_artifact)
    for image in sorted(photo_folder.rglob("*.*")):
        name = image.relative_to(photo_folder).with_suffix("").as_posix()
        output = read_npz_array(tmp_path / "out" / f"{name}.npz", "output_0")
        assert output.dtype == np.float32 and output.shape == (1, 1, 64, 64)
        tensor, _ = model.preprocessor.load(image)
        np.testing.assert_array_equal(output, model.predict(tensor[None]))
        drawn, direct = decode_mask(tmp_path / "draw" / f"{name}.png"), decode_mask(tmp_path / "direct" / f"{name}.png")
        assert drawn.shape == decode_image(image).shape[:2]
        np.testing.assert_array_equal(drawn, direct)

    compared = run_isnet("npz-compare", tmp_path / "out", tmp_path / "out")
    assert compared.returncode == 0, compared.stderr
    assert "overall" in compared.stdout and "1.000000" in compared.stdout


def test_outputs_are_matched_by_name_not_position(lite_artifact, photo_folder, tmp_path):
    inputs = npz_from_images(photo_folder, tmp_path / "in", tmp_path / "list.txt")
    shuffled = tmp_path / "shuffled.txt"
    shuffled.write_text("".join(f"{p}\n" for p in reversed(inputs)), encoding="utf-8")
    model = load_model(lite_artifact)
    written = run_npz(model, shuffled, tmp_path / "out", batch=4)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == \
        ["sub/q5.npz", "sub/q4.npz", "p3.npz", "p2.npz", "p1.npz", "p0.npz"]
    tensor, _ = model.preprocessor.load(photo_folder / "p2.jpg")
    np.testing.assert_allclose(read_npz_array(tmp_path / "out" / "p2.npz", "output_0"), model.predict(tensor[None]),
                               atol=1e-6, rtol=0)  # batch 4 vs 1: kernel order only

    drawn = png_from_npz(shuffled, tmp_path / "out", tmp_path / "draw")
    assert drawn[0] == tmp_path / "draw" / "sub" / "q5.png"
    assert decode_mask(drawn[0]).shape == (64, 64)  # no --image-dir: the model's resolution


def test_image2npz_resizes_only_on_request(photo_folder, tmp_path):
    paths = npz_from_images(photo_folder, tmp_path / "in", tmp_path / "list.txt", size=(32, 48))
    for path in paths:
        array = read_npz_array(path, "input_0")
        assert array.dtype == np.uint8 and array.shape == (3, 32, 48)


def test_compare_reports_differences_and_one_sided_files(run_isnet, lite_artifact, photo_folder, tmp_path):
    npz_from_images(photo_folder, tmp_path / "in", tmp_path / "list.txt")
    run_npz(load_model(lite_artifact), tmp_path / "list.txt", tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    changed = tmp_path / "b" / "p1.npz"
    with np.load(changed) as data:
        arrays = dict(data)
    arrays["output_0"] = arrays["output_0"] + np.float32(0.25)
    np.savez(changed, **arrays)
    (tmp_path / "b" / "p0.npz").unlink()

    report = compare_npz(tmp_path / "a", tmp_path / "b")
    by_name = {d.name: d for d in report.files}
    assert set(by_name) == {"p1", "p2", "p3", "sub/q4", "sub/q5"}
    assert by_name["p1"].max_abs == pytest.approx(0.25, abs=1e-6)
    assert by_name["p1"].cosine < 1.0
    assert by_name["p2"].max_abs == 0.0 and by_name["p2"].cosine == pytest.approx(1.0)
    assert report.overall.max_abs == pytest.approx(0.25, abs=1e-6)
    assert report.only_a == ("p0",) and report.only_b == ()

    result = run_isnet("npz-compare", tmp_path / "a", tmp_path / "b")
    assert result.returncode == 3
    assert "only in DIR_A: p0" in result.stdout


@pytest.mark.parametrize("arrays, message", [
    ({"image": np.zeros((3, 8, 8), np.uint8)}, "no key 'input_0' (keys: image)"),
    ({"input_0": np.zeros((3, 8, 8), np.float32)}, "'input_0' is float32, expected uint8"),
    ({"input_0": np.zeros((8, 8, 3), np.uint8)}, "expected [3, H, W]"),
    ({"input_0": np.zeros((1, 3, 8, 8), np.uint8)}, "expected 3 dimensions"),
])
def test_bad_input_npz_is_a_user_error_naming_the_file(lite_artifact, tmp_path, arrays, message):
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    (tmp_path / "list.txt").write_text(f"{bad}\n", encoding="utf-8")
    with pytest.raises(IsnetError) as info:
        run_npz(load_model(lite_artifact), tmp_path / "list.txt", tmp_path / "out")
    assert str(bad) in str(info.value) and message in str(info.value)


def test_bad_npz_fails_the_command_with_one_line(run_isnet, lite_artifact, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, input_0=np.zeros((3, 8, 8), np.int16))
    (tmp_path / "list.txt").write_text(f"{bad}\n", encoding="utf-8")
    result = run_isnet("npz-run", "--model", lite_artifact, "--datalist", tmp_path / "list.txt",
                       "--output-dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"isnet npz-run: error: {bad}: 'input_0' is int16, expected uint8"]


@pytest.mark.parametrize("output, message", [
    (np.zeros((1, 1, 8, 8), np.float64), "'output_0' is float64, expected float32"),
    (np.zeros((1, 2, 8, 8), np.float32), "expected [1, 1, H, W]"),
])
def test_bad_output_npz_is_a_user_error_naming_the_file(tmp_path, output, message):
    (tmp_path / "in").mkdir()
    np.savez(tmp_path / "in" / "x.npz", input_0=np.zeros((3, 8, 8), np.uint8))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'in' / 'x.npz'}\n", encoding="utf-8")
    (tmp_path / "out").mkdir()
    np.savez(tmp_path / "out" / "x.npz", output_0=output)
    with pytest.raises(IsnetError) as info:
        png_from_npz(tmp_path / "list.txt", tmp_path / "out", tmp_path / "draw")
    assert str(tmp_path / "out" / "x.npz") in str(info.value) and message in str(info.value)


def test_compare_refuses_shape_mismatch_naming_both_files(tmp_path):
    for side, shape in (("a", (1, 1, 8, 8)), ("b", (1, 1, 4, 4))):
        (tmp_path / side).mkdir()
        np.savez(tmp_path / side / "x.npz", output_0=np.zeros(shape, np.float32))
    with pytest.raises(IsnetError, match="shapes differ") as info:
        compare_npz(tmp_path / "a", tmp_path / "b")
    assert str(tmp_path / "a" / "x.npz") in str(info.value) and str(tmp_path / "b" / "x.npz") in str(info.value)


def test_npz_run_matches_run_folder_with_keep_ratio_padding(lite_onnx, make_artifact, photo_folder, tmp_path):
    folder = make_artifact(tmp_path / "keep", lite_onnx)
    info = json.loads((folder / "build.json").read_text())
    for op in info["preprocess"]:
        if op["type"] == "Resize":
            op["keep_ratio"] = True
    (folder / "build.json").write_text(json.dumps(info))
    model = load_model(folder)
    npz_from_images(photo_folder, tmp_path / "in", tmp_path / "list.txt")
    run_npz(model, tmp_path / "list.txt", tmp_path / "out")
    png_from_npz(tmp_path / "list.txt", tmp_path / "out", tmp_path / "draw", image_dir=photo_folder)
    run_folder(model, photo_folder, tmp_path / "direct")
    for mask in sorted((tmp_path / "direct").rglob("*.png")):
        relative = mask.relative_to(tmp_path / "direct")
        np.testing.assert_array_equal(decode_mask(tmp_path / "draw" / relative), decode_mask(mask))


def test_compare_flags_non_finite_files(run_isnet, tmp_path):
    for side, value in (("a", 0.5), ("b", np.nan)):
        (tmp_path / side).mkdir()
        np.savez(tmp_path / side / "x.npz", output_0=np.full((1, 1, 4, 4), value, np.float32))
    proc = run_isnet("npz-compare", tmp_path / "a", tmp_path / "b")
    assert proc.returncode == 3
    row = next(line for line in proc.stdout.splitlines() if line.startswith("x "))
    assert row.split()[1:] == ["nan", "nan", "nan", "16"]
    assert "16 values are NaN or infinite" in proc.stdout
