"""The real ``isnet eval`` command on small generated folders: outputs, and every bad input.

Bad input must end with exit code 2 and a one-line message on stderr (no traceback) that names
the problem, never with a number.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from isnet.build_in.imageio import decode_mask
from isnet.eval import RESULT_KEYS, evaluate_folders, evaluate_json

ALL_KEYS = [key for keys in RESULT_KEYS.values() for key in keys]


def _maps(n: int, seed: int = 0, size=(36, 48)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (prediction, GT) with an ellipse object."""
    rng = np.random.default_rng(seed)
    maps = {}
    for i in range(n):
        gt = np.zeros(size, np.uint8)
        cv2.ellipse(gt, (int(rng.integers(15, size[1] - 15)), int(rng.integers(12, size[0] - 12))), (10, 7),
                    float(rng.uniform(0, 180)), 0, 360, 255, -1)
        pred = np.clip(cv2.GaussianBlur(gt, (0, 0), 2) + rng.normal(0, 15, size), 0, 255).astype(np.uint8)
        maps[f"img{i:02d}"] = (pred, gt)
    return maps


@pytest.fixture
def folders(tmp_path, masks_folder):
    """A prediction folder and a GT folder of 6 pairs: ``(pred_dir, gt_dir, maps)``."""
    maps = _maps(6)
    pred_dir = masks_folder(tmp_path / "preds" / "mynet", {name: p for name, (p, _) in maps.items()})
    gt_dir = masks_folder(tmp_path / "DS" / "mask", {name: g for name, (_, g) in maps.items()})
    return pred_dir, gt_dir, maps


def _fails(proc, *fragments: str) -> str:
    """Assert a user-error exit: code 2, one stderr line with every fragment, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("isnet eval: error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _ok(proc) -> str:
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc.stdout


# -- results and records ---------------------------------------------------------------------------

def test_folders_print_the_table_and_write_every_record(run_isnet, tmp_path, folders):
    pred_dir, gt_dir, _ = folders
    out = tmp_path / "out"
    stdout = _ok(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--num-bits", "4",
                           "--record-json", out / "r.json", "--record-csv", out / "r.csv",
                           "--record-txt", out / "r.txt", "--curves-npy", out / "curves.npy",
                           "--plot-dir", out / "plots"))
    header = stdout.splitlines()[0].split()
    assert header == ["dataset", "method", *ALL_KEYS]
    row = next(line for line in stdout.splitlines() if line.startswith("DS "))
    assert row.split()[1] == "mynet"  # dataset from the GT folder's parent ("mask" is generic)

    expected = evaluate_folders(pred_dir, gt_dir)
    recorded = json.loads((out / "r.json").read_text())
    assert recorded == {"DS": {"mynet": expected.metrics}}  # full precision, same numbers
    assert row.split()[2:] == [f"{expected.metrics[key]:.4f}" for key in ALL_KEYS]
    assert (out / "r.txt").read_text().splitlines()[2] == row.rstrip()

    rows = list(csv.DictReader((out / "r.csv").open()))
    assert len(rows) == 1 and rows[0]["num_images"] == "6"
    assert float(rows[0]["wfm"]) == expected.metrics["wfm"]

    curves = np.load(out / "curves.npy", allow_pickle=True).item()
    assert set(curves["DS"]["mynet"]) == {"precision", "recall", "fmeasure", "em"}
    np.testing.assert_array_equal(curves["DS"]["mynet"]["fmeasure"], expected.curves["fmeasure"])
    plot = out / "plots" / "DS.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert decode_mask(plot).shape[1] > 600
    assert not list(out.rglob(".*.tmp*"))  # atomic writes leave no temporary files


def _json_setup(tmp_path: Path, masks_folder) -> tuple[Path, Path]:
    """Two datasets, two methods; one method's files carry a prefix and a suffix; relative paths."""
    root = tmp_path / "data"
    datasets, methods = {}, {"A": {}, "B": {}}
    for d, name in enumerate(["DS1", "DS2"]):
        maps = _maps(5, seed=d)
        masks_folder(root / name / "gt", {n: g for n, (_, g) in maps.items()})
        masks_folder(root / "A" / name, {n: p for n, (p, _) in maps.items()})
        masks_folder(root / "B" / name, {n: 255 - p for n, (p, _) in maps.items()}, prefix="b_", suffix="_sal.png")
        datasets[name] = {"image": {"path": f"{name}/im", "suffix": ".jpg"},
                          "mask": {"path": f"{name}/gt", "suffix": ".png"}}
        methods["A"][name] = {"path": f"A/{name}", "suffix": ".png"}
        methods["B"][name] = {"path": f"B/{name}", "prefix": "b_", "suffix": "_sal.png"}
    (root / "datasets.json").write_text(json.dumps(datasets))
    (root / "methods.json").write_text(json.dumps({"A": methods["A"]}))
    (root / "more_methods.json").write_text(json.dumps({"B": methods["B"]}))
    return root / "datasets.json", root


def test_json_files_are_read_like_pysodevaltoolkit(run_isnet, tmp_path, masks_folder):
    dataset_json, root = _json_setup(tmp_path, masks_folder)
    common = ["eval", "--dataset-json", dataset_json, "--method-json", root / "methods.json",
              root / "more_methods.json"]
    _ok(run_isnet(*common, "--record-json", tmp_path / "one.json"))
    _ok(run_isnet(*common, "--workers", "2", "--record-json", tmp_path / "two.json"))
    one = json.loads((tmp_path / "one.json").read_text())
    assert list(one) == ["DS1", "DS2"] and list(one["DS1"]) == ["A", "B"]
    assert one == json.loads((tmp_path / "two.json").read_text())  # identical with 2 workers
    expected = evaluate_folders(root / "A" / "DS2", root / "DS2" / "gt")
    assert one["DS2"]["A"] == expected.metrics
    in_process = evaluate_json(dataset_json, [root / "methods.json", root / "more_methods.json"])
    assert {d: {m: r.metrics for m, r in methods.items()} for d, methods in in_process.items()} == one
    assert one["DS1"]["B"]["mae"] > one["DS1"]["A"]["mae"]  # B's maps are inverted

    stdout = _ok(run_isnet(*common, "--include-datasets", "DS2", "--include-methods", "B",
                           "--metric-names", "mae", "sm"))
    assert stdout.splitlines()[0].split() == ["dataset", "method", "mae", "sm"]
    assert [line.split()[:2] for line in stdout.splitlines()[2:]] == [["DS2", "B"]]


# -- bad input -------------------------------------------------------------------------------------

def test_missing_predictions_fail_unless_allowed(run_isnet, folders):
    pred_dir, gt_dir, _ = folders
    (pred_dir / "img01.png").unlink()
    (pred_dir / "img04.png").unlink()
    _fails(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir),
           "2 of 6 GT masks have no prediction", "img01, img04", "--allow-missing")
    stdout = _ok(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--allow-missing",
                           "--record-csv", pred_dir.parent / "r.csv"))
    assert "2 GT masks have no prediction and were skipped (img01, img04)" in stdout
    assert next(csv.DictReader((pred_dir.parent / "r.csv").open()))["num_images"] == "4"


def test_predictions_of_another_size_are_resized_and_said_once(run_isnet, folders, masks_folder):
    pred_dir, gt_dir, maps = folders
    masks_folder(pred_dir, {name: cv2.resize(p, (60, 45)) for name, (p, _) in maps.items()})
    stdout = _ok(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir))
    notes = [line for line in stdout.splitlines() if "resized" in line]
    assert len(notes) == 1 and "6 of 6 predictions differ in size" in notes[0] and "bilinear" in notes[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_files_are_named(run_isnet, folders, damage):
    pred_dir, gt_dir, _ = folders
    victim = pred_dir / "img03.png"
    data = victim.read_bytes()
    victim.write_bytes({"garbage": b"not an image at all" * 10, "truncated": data[: len(data) // 2],
                        "empty": b""}[damage])
    _fails(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--workers", "2"), str(victim))


def test_colour_masks_are_refused_but_grey_rgb_is_read(run_isnet, folders):
    pred_dir, gt_dir, maps = folders
    pred, _ = maps["img02"]
    grey_rgb = pred_dir / "img02.png"
    cv2.imencode(".png", cv2.merge([pred, pred, pred]))[1].tofile(grey_rgb)
    before = evaluate_folders(pred_dir, gt_dir).metrics
    _ok(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir))
    assert evaluate_folders(pred_dir, gt_dir).metrics == before  # grey stored as RGB: the same map

    colour = gt_dir / "img05.png"
    gt = maps["img05"][1]
    cv2.imencode(".png", cv2.merge([np.zeros_like(gt), np.zeros_like(gt), gt]))[1].tofile(colour)  # red object
    _fails(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir), str(colour), "colour mask")


def test_sixteen_bit_masks(run_isnet, folders):
    pred_dir, gt_dir, maps = folders
    gt = maps["img00"][1]
    before = evaluate_folders(pred_dir, gt_dir).metrics
    full_range = (gt.astype(np.uint16) * 257)  # 0 / 65535
    cv2.imencode(".png", full_range)[1].tofile(gt_dir / "img00.png")
    _ok(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir))
    assert evaluate_folders(pred_dir, gt_dir).metrics == before

    labels = (gt > 0).astype(np.uint16)  # a 0/1 label map in 16 bits would read as all black
    cv2.imencode(".png", labels)[1].tofile(gt_dir / "img00.png")
    _fails(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir), "img00.png", "16-bit", "stop at 1")


def test_gt_label_maps_are_refused(run_isnet, folders, masks_folder):
    pred_dir, gt_dir, maps = folders
    masks_folder(gt_dir, {"img03": (maps["img03"][1] > 0).astype(np.uint8)})
    _fails(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir), "img03.png", "values up to 1",
           "0/255")


def test_non_ascii_paths(run_isnet, tmp_path, masks_folder):
    maps = _maps(3)
    pred_dir = masks_folder(tmp_path / "预测 é", {f"图像-{n}": p for n, (p, _) in maps.items()})
    gt_dir = masks_folder(tmp_path / "données" / "真值", {f"图像-{n}": g for n, (_, g) in maps.items()})
    stdout = _ok(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--record-json", tmp_path / "r.json"))
    assert "预测 é" in stdout
    recorded = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert recorded["真值"]["预测 é"]["mae"] == evaluate_folders(pred_dir, gt_dir).metrics["mae"]


def test_empty_folders(run_isnet, tmp_path, folders):
    pred_dir, gt_dir, _ = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(run_isnet("eval", "--pred-dir", empty, "--gt-dir", gt_dir), "none of the 6 GT names has a prediction",
           "it is empty")
    _fails(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", empty), "no GT masks in", str(empty))
    (empty / "notes.txt").write_text("x")
    _fails(run_isnet("eval", "--pred-dir", empty, "--gt-dir", gt_dir), "such as 'notes.txt'")
    _fails(run_isnet("eval", "--pred-dir", tmp_path / "nowhere", "--gt-dir", gt_dir), "folder not found")


def test_dataset_in_one_json_and_not_the_other(run_isnet, tmp_path, masks_folder):
    dataset_json, root = _json_setup(tmp_path, masks_folder)
    methods = json.loads((root / "methods.json").read_text())
    methods["A"]["DS3"] = methods["A"].pop("DS2")  # a typo'd name, and DS2 now missing
    (root / "methods.json").write_text(json.dumps(methods))
    _fails(run_isnet("eval", "--dataset-json", dataset_json, "--method-json", root / "methods.json"),
           "method 'A' has no entry for dataset 'DS2'", "did you mean 'DS3'", "--include-datasets")

    datasets = json.loads(dataset_json.read_text())
    del datasets["DS2"]
    dataset_json.write_text(json.dumps(datasets))
    _fails(run_isnet("eval", "--dataset-json", dataset_json, "--method-json", root / "methods.json"),
           "method 'A' lists dataset 'DS3'", "does not define", "did you mean 'DS1'")
    _ok(run_isnet("eval", "--dataset-json", dataset_json, "--method-json", root / "methods.json",
                  "--include-datasets", "DS1"))
    _fails(run_isnet("eval", "--dataset-json", dataset_json, "--method-json", root / "methods.json",
                     "--include-methods", "AA"), "unknown method 'AA'", "did you mean 'A'")


def test_malformed_json_files(run_isnet, tmp_path, masks_folder):
    dataset_json, root = _json_setup(tmp_path, masks_folder)
    methods = root / "methods.json"
    datasets = json.loads(dataset_json.read_text())
    datasets["DS1"]["mask"]["sufix"] = datasets["DS1"]["mask"].pop("suffix")
    dataset_json.write_text(json.dumps(datasets))
    _fails(run_isnet("eval", "--dataset-json", dataset_json, "--method-json", methods),
           "dataset 'DS1' mask: unknown key 'sufix'", "did you mean 'suffix'")
    dataset_json.write_text('{"DS1": {"mask": {"path": "x",}}}')
    _fails(run_isnet("eval", "--dataset-json", dataset_json, "--method-json", methods),
           "not valid JSON", "line 1")
    _fails(run_isnet("eval", "--dataset-json", tmp_path / "missing.json", "--method-json", methods),
           "dataset JSON not found")
    dataset_json.write_text(json.dumps(json.loads(json.dumps(datasets).replace("sufix", "suffix"))))
    _fails(run_isnet("eval", "--dataset-json", dataset_json, "--method-json", methods, methods),
           "method 'A' is defined in both")


def test_flag_combinations(run_isnet, folders, tmp_path):
    pred_dir, gt_dir, _ = folders
    _fails(run_isnet("eval", "--pred-dir", pred_dir), "--pred-dir and --gt-dir go together")
    _fails(run_isnet("eval"), "nothing to score")
    _fails(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--dataset-json", tmp_path / "d.json",
                     "--method-json", tmp_path / "m.json"), "not both")
    _fails(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--include-datasets", "DS"),
           "do not apply to --pred-dir")
    _fails(run_isnet("eval", "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--metric-names", "mae",
                     "--plot-dir", tmp_path / "plots"), "add fmeasure")
    assert not (tmp_path / "plots").exists()


def test_command_metric_choices_are_the_library_names(run_isnet):
    from isnet.tools.commands.eval import _METRIC_NAMES

    assert _METRIC_NAMES == tuple(RESULT_KEYS)  # duplicated so that `isnet --help` need not import OpenCV
    listed = _ok(run_isnet("--help"))
    assert "eval" in listed and "Score saliency maps against GT masks" in listed
