"""The stream runner: real-world folders in, one mask per image out, whatever the concurrency or failures."""

from __future__ import annotations

import os
import threading

import cv2
import numpy as np
import pytest

from isnet.build_in.imageio import decode_image, decode_mask
from isnet.core import IsnetError
from isnet.runtime import FAILURES_FILE, load_model, run_folder, write_synthetic_photos


def _masks(folder) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_UNCHANGED)
            for p in sorted(folder.rglob("*.png"))}


def _expected_mask(relative: str) -> str:
    return relative.rsplit(".", 1)[0] + ".png"


def test_run_command_on_a_messy_folder(run_isnet, lite_artifact, messy_folder, tmp_path):
    root, expected, broken = messy_folder
    save = tmp_path / "masks"
    result = run_isnet("run", "--model", lite_artifact, "--image-dir", root, "--output-dir", save, "--batch", "3")
    assert result.returncode == 3, result.stderr
    assert f"done {len(expected)}, skipped 0, failed {len(broken)}" in result.stdout
    assert "images/s" in result.stdout and "img/s" in result.stderr  # summary and progress bar

    masks = _masks(save)
    assert set(masks) == {_expected_mask(r) for r in expected}
    for relative, hw in expected.items():
        mask = masks[_expected_mask(relative)]
        assert mask.dtype == np.uint8 and mask.shape == hw, relative  # 8-bit, 1 channel, original size
    # The EXIF photo is stored 40 wide x 24 high; it must be decoded (and masked) upright.
    stored = cv2.imdecode(np.fromfile(root / "exif_rotated.jpg", np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert stored.shape[:2] == (24, 40)
    upright = decode_image(root / "exif_rotated.jpg")
    np.testing.assert_array_equal(upright, np.rot90(stored[..., ::-1], k=-1))

    lines = (save / FAILURES_FILE).read_text(encoding="utf-8").splitlines()
    reasons = dict(line.split("\t", 1) for line in lines)
    assert set(reasons) == broken
    assert "truncated" in reasons["truncated.jpg"]
    assert not list(save.rglob(".*.tmp*")), "temporary files left behind"


def test_resume_skips_complete_masks_and_redoes_missing_or_torn_ones(run_isnet, lite_artifact, photo_folder, tmp_path):
    save = tmp_path / "masks"
    first = run_isnet("run", "--model", lite_artifact, "--image-dir", photo_folder, "--output-dir", save)
    assert first.returncode == 0, first.stderr
    assert not (save / FAILURES_FILE).exists()
    before = _masks(save)
    assert len(before) == 6
    (save / "p0.png").unlink()
    torn = save / "sub" / "q4.png"
    torn.write_bytes(torn.read_bytes()[:40])
    kept = save / "p1.png"
    stamp = kept.stat().st_mtime_ns

    second = run_isnet("run", "--model", lite_artifact, "--image-dir", photo_folder, "--output-dir", save, "--resume")
    assert second.returncode == 0, second.stderr
    assert "done 2, skipped 4, failed 0 of 6" in second.stdout
    assert kept.stat().st_mtime_ns == stamp
    after = _masks(save)
    assert set(after) == set(before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def test_output_does_not_depend_on_threads_and_batch(lite_artifact, photo_folder, tmp_path):
    model = load_model(lite_artifact)
    one = run_folder(model, photo_folder, tmp_path / "one", batch=1, io_threads=1)
    many = run_folder(model, photo_folder, tmp_path / "many", batch=1, io_threads=4)
    batched = run_folder(model, photo_folder, tmp_path / "batched", batch=4, io_threads=3)
    assert one.done == many.done == batched.done == 6
    reference, parallel, in_batches = _masks(tmp_path / "one"), _masks(tmp_path / "many"), _masks(tmp_path / "batched")
    assert set(reference) == set(parallel) == set(in_batches)
    for name, mask in reference.items():
        np.testing.assert_array_equal(parallel[name], mask)
        # Batching may change kernel order in ONNX Runtime: allow one grey level of rounding.
        assert np.abs(in_batches[name].astype(int) - mask.astype(int)).max() <= 1
        assert mask.shape == decode_image(photo_folder / name.replace(".png", ".jpg" if name.startswith("p")
                                                                      else ".png")).shape[:2]


def test_min_max_normalize_stretches_each_mask(lite_artifact, photo_folder, tmp_path):
    model = load_model(lite_artifact)
    run_folder(model, photo_folder, tmp_path / "plain")
    run_folder(model, photo_folder, tmp_path / "stretched", min_max=True)
    for name, mask in _masks(tmp_path / "stretched").items():
        assert mask.min() == 0 and mask.max() == 255
        assert not np.array_equal(mask, _masks(tmp_path / "plain")[name])


def test_clashing_mask_names_keep_the_first_and_report_the_second(lite_artifact, photo_folder, tmp_path):
    (photo_folder / "p0.png").write_bytes((photo_folder / "sub" / "q4.png").read_bytes())
    result = run_folder(load_model(lite_artifact), photo_folder, tmp_path / "masks")
    assert result.done == 6
    assert [relative for relative, _ in result.failures] == ["p0.png"]
    assert "p0.jpg" in result.failures[0][1]
    assert decode_mask(tmp_path / "masks" / "p0.png").shape == decode_image(photo_folder / "p0.jpg").shape[:2]


class _FailingRunner:
    """Wraps a runner and raises on the n-th call, as a crashed backend would."""

    def __init__(self, runner, fail_on: int):
        self.runner, self.fail_on, self.calls = runner, fail_on, 0
        self.input_name, self.output_name = runner.input_name, runner.output_name

    def infer(self, inputs):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("backend crashed")
        return self.runner.infer(inputs)


def _live_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("isnet-")}


def test_an_inference_error_stops_the_run_and_reaches_the_caller(lite_artifact, photo_folder, tmp_path):
    model = load_model(lite_artifact)
    model.runner = _FailingRunner(model.runner, fail_on=2)
    with pytest.raises(RuntimeError, match="backend crashed"):
        run_folder(model, photo_folder, tmp_path / "masks", io_threads=2)
    assert model.runner.calls == 2
    assert not _live_threads()


def test_a_save_worker_error_reaches_the_caller(lite_artifact, photo_folder, tmp_path):
    save = tmp_path / "masks"
    (save / "p2.png").mkdir(parents=True)  # a folder where the mask should go: os.replace fails
    with pytest.raises(OSError):
        run_folder(load_model(lite_artifact), photo_folder, save, io_threads=2)
    assert not _live_threads()
    assert not [p for p in save.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_a_load_worker_bug_is_not_mistaken_for_a_corrupt_image(lite_artifact, photo_folder, tmp_path, monkeypatch):
    model = load_model(lite_artifact)
    original = model.preprocessor.load

    def load(path):
        if os.path.basename(path) == "p3.jpg":
            raise ValueError("bug in a pre-processing op")
        return original(path)

    monkeypatch.setattr(model.preprocessor, "load", load)
    with pytest.raises(ValueError, match="bug in a pre-processing op"):
        run_folder(model, photo_folder, tmp_path / "masks", io_threads=3)
    assert not (tmp_path / "masks" / FAILURES_FILE).exists()


def test_masks_saved_inside_the_image_folder_are_not_taken_as_images(lite_artifact, photo_folder):
    model = load_model(lite_artifact)
    first = run_folder(model, photo_folder, photo_folder / "masks")
    second = run_folder(model, photo_folder, photo_folder / "masks", resume=True)
    assert first.total == second.total == 6
    assert second.skipped == 6 and second.done == 0
    assert not (photo_folder / "masks" / "masks").exists()


def test_an_empty_folder_is_a_user_error(lite_artifact, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(IsnetError, match="no images with suffix jpg"):
        run_folder(load_model(lite_artifact), tmp_path / "empty", tmp_path / "masks")


def test_flags_have_one_spelling(run_isnet, lite_artifact, tmp_path):
    images = tmp_path / "images"
    write_synthetic_photos(images, 2)
    # Spellings of flags renamed before any release are refused like any unknown flag.
    old = run_isnet("run", "--model", lite_artifact, "--image-dir", images, "--output-dir", tmp_path / "masks",
                    "--save-dir", tmp_path / "masks")
    assert old.returncode == 2 and "unrecognized arguments: --save-dir" in old.stderr
    missing = run_isnet("run", "--model", lite_artifact, "--image-dir", images)
    assert missing.returncode == 2 and "the following arguments are required: --output-dir" in missing.stderr
    assert not (tmp_path / "masks").exists()
