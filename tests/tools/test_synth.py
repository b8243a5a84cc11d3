"""Synthetic saliency data: deterministic, exact, varied and learnable; the ``isnet synth`` command."""

import cv2
import numpy as np
import pytest

from isnet.build_in.imageio import decode_image, decode_mask
from isnet.core import IsnetError
from isnet.tools.synth import (BACKGROUND_MAX_CHROMA, SALIENT_MIN_CHROMA, SHAPE_FAMILIES, generate_dataset,
                               render_sample, sample_stem)

SEED = 11
COUNT = 6


def _chroma(image: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.float32) / 255
    return rgb.max(axis=2) - rgb.min(axis=2)


def _files(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def samples():
    """Pictures rendered in memory: enough for statistics, no disk."""
    return [render_sample(SEED, i) for i in range(48)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small set written by two worker processes."""
    out = tmp_path_factory.mktemp("synth") / "set"
    summary = generate_dataset(out, COUNT, seed=SEED, workers=2)
    return summary


def test_layout_names_and_sizes(dataset):
    stems = [sample_stem(i) for i in range(COUNT)]
    assert stems[:2] == ["0000", "0001"]
    assert sorted(p.name for p in dataset.image_dir.iterdir()) == [f"{s}.jpg" for s in stems]
    assert sorted(p.name for p in dataset.mask_dir.iterdir()) == [f"{s}.png" for s in stems]
    assert sorted(p.name for p in dataset.out_dir.iterdir()) == ["image", "mask", "synth.json"]  # no temp files
    assert (dataset.written, dataset.skipped) == (COUNT, 0)
    for stem in stems:
        image = decode_image(dataset.image_dir / f"{stem}.jpg")
        mask = decode_mask(dataset.mask_dir / f"{stem}.png")
        assert image.shape[:2] == mask.shape
        assert 160 <= min(mask.shape) and max(mask.shape) <= 480


def test_files_hold_the_rendered_pictures(dataset):
    for i in range(COUNT):
        sample = render_sample(SEED, i)
        mask = decode_mask(dataset.mask_dir / f"{sample_stem(i)}.png")
        image = decode_image(dataset.image_dir / f"{sample_stem(i)}.jpg")
        # The mask is lossless, binary and never empty.
        assert np.array_equal(mask, sample.mask)
        assert set(np.unique(mask)) <= {0, 255} and np.count_nonzero(mask) > 0
        # JPEG q95 with full-resolution chroma: 1.5-1.8 grey levels on average over 100 pictures
        # (the grain costs most), so 2.5 catches a wrong picture or a lower quality, not noise.
        # The colour cue read from the file agrees with the rendered picture almost everywhere.
        assert np.abs(image.astype(np.int16) - sample.image).mean() < 2.5
        assert np.mean((_chroma(image) > 0.26) == (_chroma(sample.image) > 0.26)) > 0.998


def test_same_seed_gives_identical_bytes_for_any_worker_count_and_resumes(dataset, tmp_path):
    expected = _files(dataset.out_dir)
    again = generate_dataset(tmp_path / "again", COUNT, seed=SEED, workers=1)
    assert _files(again.out_dir) == expected

    # An interrupted run: a pair without its mask, a pair without its image.
    (again.mask_dir / "0003.png").unlink()
    (again.image_dir / "0001.jpg").unlink()
    resumed = generate_dataset(again.out_dir, COUNT, seed=SEED)
    assert (resumed.written, resumed.skipped) == (2, COUNT - 2)
    assert _files(again.out_dir) == expected

    # A larger count extends the set and leaves the first pictures alone.
    extended = generate_dataset(again.out_dir, COUNT + 2, seed=SEED)
    assert (extended.written, extended.skipped) == (2, COUNT)
    files = _files(again.out_dir)
    assert {k: files[k] for k in expected} == expected
    assert np.array_equal(decode_mask(again.mask_dir / f"{sample_stem(COUNT + 1)}.png"),
                          render_sample(SEED, COUNT + 1).mask)


def test_different_seed_gives_different_pictures(dataset, tmp_path):
    other = generate_dataset(tmp_path / "other", 3, seed=SEED + 1)
    for i in range(3):
        for folder, name in (("image", f"{sample_stem(i)}.jpg"), ("mask", f"{sample_stem(i)}.png")):
            assert (other.out_dir / folder / name).read_bytes() != (dataset.out_dir / folder / name).read_bytes()


def test_variety_of_sizes_shapes_and_object_areas(samples):
    shapes = [s.mask.shape for s in samples]
    assert all(160 <= min(shape) and max(shape) <= 480 for shape in shapes)
    aspect = np.array([w / h for h, w in shapes])
    assert aspect.min() < 0.75 and aspect.max() > 1.33 and len(set(shapes)) > 40

    areas = np.array([np.count_nonzero(s.mask) / s.mask.size for s in samples])
    assert areas.min() < 0.01, "no tiny objects"
    assert areas.max() > 0.5, "no frame-filling objects"
    assert 0.02 < np.median(areas) < 0.3

    assert set().union(*(s.shapes for s in samples)) == set(SHAPE_FAMILIES)
    assert sum(len(s.shapes) > 1 for s in samples) >= 8, "too few pictures with several objects"
    touching = sum(bool(s.mask[0].any() or s.mask[-1].any() or s.mask[:, 0].any() or s.mask[:, -1].any())
                   for s in samples)
    assert touching >= 5, "too few objects cut by the frame"
    with_holes = 0
    for s in samples:
        _, hierarchy = cv2.findContours(s.mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        with_holes += bool((hierarchy[0][:, 3] >= 0).any())  # a contour with a parent is a hole
    assert with_holes >= 3


def test_colour_cue_separates_objects_from_everything_else(samples):
    # Two pixels in from the mask edge (anti-aliasing, feathering and defocus stay within that),
    # salient pixels are strongly coloured and the rest is nearly grey. A seam where two salient
    # objects of different colours meet is anti-aliased through grey, hence the 0.1% allowance.
    kernel = np.ones((5, 5), np.uint8)
    inside, outside = [], []
    for s in samples:
        chroma = _chroma(s.image)
        inside.append(chroma[cv2.erode(s.mask, kernel) > 0])
        outside.append(chroma[cv2.dilate(s.mask, kernel) == 0])
    inside, outside = np.concatenate(inside), np.concatenate(outside)
    # 0.1 below the design minimum: luminance noise clipped at white or black eats some chroma.
    assert np.mean(inside < SALIENT_MIN_CHROMA - 0.1) < 1e-3
    # 8-bit rounding of a 0.12 chroma is within 1/255; 0.02 leaves room for noise clipping.
    assert np.mean(outside > BACKGROUND_MAX_CHROMA + 0.02) < 1e-4


def test_a_per_pixel_colour_rule_nearly_solves_it(samples):
    # The learnability floor: if thresholding chroma is this good, a small network trained on the
    # set has a clear path to MAE <= 0.03 and max-F >= 0.95.
    maes, fscores = [], []
    for s in samples:
        pred = _chroma(s.image) > (SALIENT_MIN_CHROMA + BACKGROUND_MAX_CHROMA) / 2
        gt = s.mask > 127
        tp = np.count_nonzero(pred & gt)
        maes.append(np.mean(pred != gt))
        fscores.append(1.3 * tp / (0.3 * np.count_nonzero(pred) + np.count_nonzero(gt)))
    assert np.mean(maes) < 0.005 and np.mean(fscores) > 0.97


@pytest.mark.parametrize("kwargs, message", [
    ({"count": 0}, "count must be an integer >= 1"),
    ({"count": -3}, "count must be an integer >= 1"),
    ({"count": 2, "workers": 0}, "workers must be"),
    ({"count": 2, "seed": -1}, "seed must be"),
])
def test_bad_requests_raise_before_writing(tmp_path, kwargs, message):
    with pytest.raises(IsnetError, match=message):
        generate_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_unwritable_or_foreign_folders_raise(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(IsnetError, match="cannot write"):
        generate_dataset(tmp_path / "file" / "out", 2, seed=0)
    with pytest.raises(IsnetError, match="is a file"):
        generate_dataset(tmp_path / "file", 2, seed=0)
    generate_dataset(tmp_path / "set", 1, seed=0)
    with pytest.raises(IsnetError, match="seed 0"):
        generate_dataset(tmp_path / "set", 2, seed=1)  # would mix two datasets in one folder


def test_command_writes_the_set_and_reports_bad_input(run_isnet, tmp_path):
    done = run_isnet("synth", "--output-dir", "set", "--count", 3, "--seed", 4, "--workers", 1)
    assert done.returncode == 0, done.stderr
    assert "wrote 3 image/mask pairs" in done.stdout
    for i in range(3):
        assert np.array_equal(decode_mask(tmp_path / "set" / "mask" / f"{sample_stem(i)}.png"),
                              render_sample(4, i).mask)
    rerun = run_isnet("synth", "--output-dir", "set", "--count", 3, "--seed", 4)
    assert rerun.returncode == 0 and "wrote 0 image/mask pairs" in rerun.stdout and "3 already complete" in rerun.stdout

    (tmp_path / "file").write_text("x")
    for args in (["--output-dir", "bad", "--count", 0], ["--output-dir", tmp_path / "file" / "x", "--count", 2],
                 ["--output-dir", "set", "--count", 3, "--seed", 5]):
        bad = run_isnet("synth", *args)
        assert bad.returncode == 2, bad.stderr
        assert "Traceback" not in bad.stderr
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("isnet synth: error: ")
    assert not (tmp_path / "bad").exists()
