"""`isnet compare` end to end on a tiny random model and a tiny generated set."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from isnet.build_in import decode_mask
from isnet.export.model import ISNet
from isnet.export.weights import save_checkpoint
from isnet.tools.synth import generate_dataset

COLUMNS = ["build", "backend", "precision", "calibration", "size MB", "MAE", "maxF", "avgF", "adpF", "maxE",
           "avgE", "adpE", "Sm", "wFm", "drift vs fp32", "images/s", "p50 ms"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    torch.manual_seed(0)
    save_checkpoint(root / "tiny.pth", ISNet("isnet-lite"))
    generate_dataset(root / "eval", 6, seed=3)
    generate_dataset(root / "calib", 4, seed=4)
    data = {
        "name": "tiny", "model": "tiny.pth", "input_size": [64, 64], "dataset": {"path": "eval"},
        "calibration": {"path": "calib/image", "count": 4},
        "builds": {"fp32": {"backend": {"dtype": "fp32"}}, "fp16": {"backend": {"dtype": "fp16"}},
                   "int8": {"backend": {"dtype": "int8", "quantize": {"calibrate_mode": "max"}}}},
        "profile": {"seconds": 0.3},
        "report": {"path": "report", "strip_images": 2,
                   "photos": ["matplotlib:mpl-data/sample_data/grace_hopper.jpg", "notapackage:photo.jpg"]},
    }
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow
def test_compare_writes_every_report_file_and_column(run_isnet, experiment):
    proc = run_isnet("compare", experiment, cwd=experiment.parent)
    assert proc.returncode == 0, proc.stderr
    report = experiment.parent / "report"
    assert {"report.md", "report.json", "tiny.png", "strip.png"} <= {p.name for p in report.iterdir()}
    header = next(line for line in proc.stdout.splitlines() if line.strip().startswith("build"))
    spent = next(line for line in proc.stdout.splitlines() if line.startswith("time: "))
    for stage in ("build", "run", "eval", "profile", "photos"):
        assert f" {stage} " in spent, spent
    for column in COLUMNS:
        assert column in header
    markdown = (report / "report.md").read_text()
    table_header = next(line for line in markdown.splitlines() if line.startswith("| build"))
    assert [c.strip() for c in table_header.strip("|").split("|")] == COLUMNS
    payload = json.loads((report / "report.json").read_text())
    builds = {b["name"]: b for b in payload["builds"]}
    assert list(builds) == ["fp32", "fp16", "int8"]
    assert builds["int8"]["calibration"] == "max" and builds["fp32"]["drift_mean_abs"] == 0.0
    for build in builds.values():
        assert set(build["metrics"]) >= {"mae", "maxfmeasure", "avgfmeasure", "adpfmeasure", "maxem", "avgem",
                                         "adpem", "sm", "wfm"}
        assert 0 <= build["metrics"]["mae"] <= 1 and build["throughput_ips"] > 0 and build["size_mb"] > 0
        assert len(list((report / "masks" / build["name"]).glob("*.png"))) == 6
    assert 0 < builds["int8"]["drift_mean_abs"] < 0.1
    # Calibration and evaluation images are disjoint; the photo of a missing package is left out.
    assert payload["notes"] == ["report.photos: 'notapackage:photo.jpg' left out: the package notapackage is "
                                "not installed"]
    for build in builds:
        photo_mask = report / "photos" / "masks" / build / "grace_hopper.png"
        assert photo_mask.is_file() and decode_mask(photo_mask).shape == (600, 512)
    assert "photographs without ground truth (grace_hopper.jpg)" in markdown
    # Per picture: how far each build moved each picture's MAE from fp32, and its worst pictures in the strip.
    assert builds["fp32"]["picture_drift"] is None
    drift = builds["int8"]["picture_drift"]
    assert 0 <= drift["p50"] <= drift["p95"] <= drift["max"] and len(drift["worst"]) == 3
    assert max(abs(change) for change in drift["worst"].values()) == pytest.approx(drift["max"])
    assert "## Per-picture drift" in markdown and "the strip shows those a build moved most" in markdown
    # Without bounds nothing is recommended; with them, the fastest build within them is, and --deploy copies it.
    assert payload["recommended"] is None and "give max_delta" in proc.stdout
    assert payload["host"]["cpu_features"] == [f for f in payload["host"]["cpu_features"] if f]
    bounded = run_isnet("compare", experiment, "--max-delta", "mae=1", "--deploy", "deployed", cwd=experiment.parent)
    assert bounded.returncode == 0, bounded.stderr
    payload = json.loads((report / "report.json").read_text())
    fastest = max(payload["builds"], key=lambda b: b["throughput_ips"])["name"]
    assert payload["recommended"] == fastest and f"recommended: {fastest} (" in bounded.stdout
    deployed = experiment.parent / "deployed" / Path(builds[fastest]["artifact"]).name
    assert (deployed / "build.json").is_file() and json.loads((deployed / "build.json").read_text())["name"]
    assert "**Recommended:** " + fastest in (report / "report.md").read_text()


def test_the_recommendation_is_the_fastest_build_within_the_bounds():
    from isnet.tools.compare import BuildReport, recommend

    def build(name, mae, speed, nonfinite=0):
        return BuildReport(name, Path(name), {}, {"mae": mae}, {}, 0.0, speed, 1.0, 1.0, nonfinite=nonfinite)

    reports = [build("fp32", 0.050, 10), build("int8", 0.0504, 30), build("int8_kl", 0.060, 40),
               build("broken", 0.050, 50, nonfinite=3)]
    # The fastest one within the bounds; a build with NaN maps never, whatever its scores.
    assert recommend(reports, "fp32", {"mae": 0.001}).name == "int8"
    assert recommend(reports, "fp32", {"mae": 0.02}).name == "int8_kl"
    assert recommend(reports, "fp32", {"mae": 0.0001}).name == "fp32"  # only the reference is within them
    assert recommend(reports, "fp32", {}) is None  # no bounds: no recommendation
    assert recommend([build("fp32", 0.05, 10, nonfinite=1)], "fp32", {"mae": 1}) is None


def test_the_recommendation_names_the_faster_int8_backend_among_builds_within_the_bounds():
    from isnet.tools.compare.report import BuildReport, recommend, recommendation_line

    def build(name, backend, precision, mae, speed):
        return BuildReport(name, Path(name), {"backend": backend, "precision": precision}, {"mae": mae}, {}, 0.0,
                           speed, 1.0, 1.0)

    host = {"cpu": "AMD EPYC", "cpu_features": ["AVX-512 VNNI"]}
    reports = [build("fp32", "onnxruntime", "fp32", 0.050, 4.4), build("int8_auto", "onnxruntime", "int8", 0.0502, 4.5),
               build("ov_int8_auto", "openvino", "int8", 0.0498, 10.9),
               build("int8_kl", "onnxruntime", "int8", 0.070, 20.0)]  # faster, but out of bounds: not counted
    line = recommendation_line(recommend(reports, "fp32", {"mae": 0.001}), reports, "fp32", {"mae": 0.001}, host)
    assert line.startswith("ov_int8_auto (openvino int8)")
    assert "openvino is the faster int8 path on this CPU (ov_int8_auto 10.9 images/s, int8_auto 4.5)" in line
    # One backend's int8 alone: nothing to compare.
    alone = reports[:2]
    assert "faster int8 path" not in recommendation_line(recommend(alone, "fp32", {"mae": 0.001}), alone, "fp32",
                                                         {"mae": 0.001}, host)


@pytest.mark.slow
def test_rerun_reuses_every_stage(run_isnet, experiment):
    first = run_isnet("compare", experiment, cwd=experiment.parent)
    assert first.returncode == 0, first.stderr
    again = run_isnet("compare", experiment, cwd=experiment.parent)
    assert again.returncode == 0, again.stderr
    for name in ("fp32", "fp16", "int8"):
        assert f"{name}: reused build, masks, scores, profile" in again.stdout
    # Reused stages do not run: no inference, scoring or profiling time.
    spent = next(line for line in again.stdout.splitlines() if line.startswith("time: "))
    assert not any(f" {stage} " in spent for stage in ("run", "eval", "profile")), spent
    # A build made by other isnet code (build.json's versions.isnet_code) is built again.
    info_path = experiment.parent / "report" / "artifacts" / "int8" / "build.json"
    info = json.loads(info_path.read_text())
    assert len(info["versions"]["isnet_code"]) == 16
    info["versions"]["isnet_code"] = "0" * 16
    info_path.write_text(json.dumps(info))
    rebuilt = run_isnet("compare", experiment, cwd=experiment.parent)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "int8: reused build" not in rebuilt.stdout and "fp32: reused build, masks, scores, profile" in rebuilt.stdout
    assert json.loads(info_path.read_text())["versions"]["isnet_code"] != "0" * 16


@pytest.mark.slow
def test_gate_fails_a_drifting_build_and_overlap_is_reported(run_isnet, experiment):
    root = experiment.parent
    # Same report folder as the tests above: the export and the fp32 / fp16 stages are reused.
    proc = run_isnet("compare", experiment, "--max-delta", "drift=0", "--set", "calibration.path=eval/image",
                     cwd=root)
    assert proc.returncode == 3, proc.stderr
    assert "FAIL int8: mean |diff| vs fp32" in proc.stdout
    assert "int8: 4 of the 6 evaluation images were also calibration images" in proc.stdout
    payload = json.loads((root / "report" / "report.json").read_text())
    assert payload["violations"] and payload["notes"]


def test_bad_experiment_is_one_line_exit_2(run_isnet, experiment):
    proc = run_isnet("compare", experiment, "--set", "builds=[fp32, int9]", cwd=experiment.parent)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown preset 'int9'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("override, message", [
    ("run.batchh=1", "run.batchh: unknown key (did you mean 'batch'?)"),
    ("run.batch=two", "run.batch: expected an integer, got 'two'"),
    ("run.batch=0", "run.batch: must be at least 1, got 0"),
    ("profile.seconds=-1", "profile.seconds: must be greater than 0"),
    ("reprt.path=x", "reprt: unknown key (did you mean 'report'?)"),
    ("max_delta.maee=0.1", "max_delta.maee: unknown metric (did you mean 'mae'?)"),
    ("max_delta.mae=lots", "max_delta.mae: expected a number, got 'lots'"),
    ("input_size=[64]", "input_size: expected a list of 2 values"),
    ("builds.fp32.backend.dtyp=fp16", "builds.fp32: backend.dtyp: unknown key (did you mean 'dtype'?)"),
    ("builds.old={artifact: nowhere, config: x}", "builds.old: {artifact: PATH} takes one path and no other keys"),
    ("reference=int9", "reference: 'int9' is not a build (did you mean 'int8'?)"),
    ("dataset.path=missing", "dataset.path folder not found"),
])
def test_experiment_mistakes_name_the_key_and_the_file(experiment, override, message):
    from isnet.core import IsnetError
    from isnet.tools.compare import read_experiment

    with pytest.raises(IsnetError) as info:
        read_experiment(experiment, [override])
    text = str(info.value)
    assert text.startswith(str(experiment)) and message in text and "\n" not in text


def test_experiment_mistake_on_the_command_line_is_one_line_exit_2(run_isnet, experiment):
    proc = run_isnet("compare", experiment, "--set", "run.batchh=1", cwd=experiment.parent)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"isnet compare: error: {experiment}: run.batchh: unknown key (did you mean "
                                   "'batch'?); valid keys: batch, io_threads, threads, drift_images")


def test_flags_resolve_against_the_current_folder(experiment, tmp_path, monkeypatch):
    from isnet.tools.compare import read_experiment

    monkeypatch.chdir(experiment.parent / "eval")
    loaded = read_experiment(experiment, [("dataset", {"path": "."}), "report.path=out"])
    assert loaded.images == experiment.parent / "eval" / "image"
    assert loaded.output == experiment.parent / "eval" / "out"


def test_set_inside_a_preset_list_extends_it(experiment):
    from isnet.tools.compare import read_experiment

    loaded = read_experiment(experiment, ["builds=[fp32, fp16]", "builds.fp16.backend.dtype=int8",
                                          "builds.fp16.backend.quantize.calibrate_mode=max"])
    builds = {b.name: b.config.backend for b in loaded.builds}
    assert list(builds) == ["fp32", "fp16"]
    assert builds["fp32"].dtype.value == "fp32" and builds["fp16"].dtype.value == "int8"
    # The preset table itself is not changed by an override.
    assert read_experiment(experiment, ["builds=[fp16]"]).builds[0].config.backend.dtype.value == "fp16"


def test_set_paths_inside_a_build_resolve_against_the_current_folder(experiment, monkeypatch):
    from isnet.tools.compare import read_experiment

    monkeypatch.chdir(experiment.parent / "calib")
    loaded = read_experiment(experiment, ["builds=[int8_max]", "builds.int8_max.dataset.path=image"])
    assert loaded.builds[0].config.dataset.path == experiment.parent / "calib" / "image"


def test_unknown_keys_and_empty_sections(experiment):
    from isnet.core import IsnetError
    from isnet.tools.compare import read_experiment

    with pytest.raises(IsnetError, match="run.workers: unknown key; valid keys: batch, io_threads"):
        read_experiment(experiment, ["run.workers=2"])
    loaded = read_experiment(experiment, ["run=", "max_delta="])  # empty sections mean the defaults
    assert loaded.run.batch == 1 and loaded.max_delta == {}


def test_int8_auto_takes_its_budget_from_max_delta_and_validates_on_the_calibration_folder(experiment):
    from isnet.core import IsnetError
    from isnet.tools.compare import read_experiment

    loaded = read_experiment(experiment, ["builds=[fp32, int8_auto]", "calibration.count=2",
                                          "max_delta.mae=0.001", "max_delta.sm=0.002", "max_delta.wfm=0.01"])
    quantize = loaded.builds[1].config.backend.quantize
    assert quantize.max_drift.metric_bounds() == {"mae": 0.001, "sm": 0.002}  # wfm is not a budget key
    assert quantize.validation.path == experiment.parent / "calib" / "image"
    # The build's own setting wins over the experiment's.
    mine = read_experiment(experiment, ["builds=[int8_auto]", "max_delta.mae=0.001",
                                        "builds.int8_auto.backend.quantize.max_drift.maxfmeasure=0.004"])
    assert mine.builds[0].config.backend.quantize.max_drift.metric_bounds() == {"maxfmeasure": 0.004}
    with pytest.raises(IsnetError, match="the budget comes from max_delta"):
        read_experiment(experiment, ["builds=[int8_auto]"])
    with pytest.raises(IsnetError, match="calibration.path is the evaluation set"):
        read_experiment(experiment, ["builds=[int8_auto]", "max_delta.mae=0.001", "calibration.path="])


def test_a_build_that_fails_is_a_row_and_every_other_build_is_reported(run_isnet, experiment, tmp_path):
    """A build the settings cannot make is reported failed with its reason; the others (here one at another
    input size) are built, run, scored and plotted; the exit code is 1."""
    data = yaml.safe_load(experiment.read_text())
    data["builds"] = {"fp32": {"backend": {"dtype": "fp32"}},
                      "fp32_48": {"preset": "fp32", "input_size": [48, 48]},
                      "bf16": {"backend": {"dtype": "bf16"}}}  # ONNX Runtime builds no bf16
    data["report"] = {"path": str(tmp_path / "report"), "strip_images": 1}
    path = experiment.parent / "failing.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = run_isnet("compare", path, cwd=experiment.parent)
    assert proc.returncode == 3, proc.stderr
    assert "FAIL bf16: not built: backend.dtype: onnxruntime builds fp32, fp16, int8, not bf16" in proc.stdout
    payload = json.loads((tmp_path / "report" / "report.json").read_text())
    builds = {b["name"]: b for b in payload["builds"]}
    assert list(builds) == ["fp32", "fp32_48"] and builds["fp32_48"]["input_size"] == [48, 48]
    assert 0 < builds["fp32_48"]["drift_mean_abs"] < 1  # its maps resized to the reference's 64x64
    assert payload["failed"] == [{"name": "bf16", "backend": "onnxruntime", "precision": "bf16",
                                  "reason": "backend.dtype: onnxruntime builds fp32, fp16, int8, not bf16"}]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Builds that failed" in markdown and "| bf16 | onnxruntime | bf16 | FAILED |" in markdown
    assert "| input |" in markdown and "| 48x48 |" in markdown and "resized (bilinear)" in markdown
    assert (tmp_path / "report" / "accuracy_speed.png").stat().st_size > 10_000


@pytest.mark.slow
def test_the_real_isnet_file_compares_sizes_and_precisions(run_isnet, isnet_fp16, ecssd, tmp_path):
    """IMG.LY's fp16 ISNet as it is: upcast and built at two cut sizes, scored on real pictures."""
    for kind in ("image", "mask"):
        (tmp_path / "set" / kind).mkdir(parents=True)
        for stem in ("0021", "0042", "0063", "0084"):
            suffix = "jpg" if kind == "image" else "png"
            (tmp_path / "set" / kind / f"{stem}.{suffix}").symlink_to(ecssd / kind / f"{stem}.{suffix}")
    data = {"name": "isnet", "model": str(isnet_fp16), "input_size": [256, 256], "dataset": {"path": "set"},
            "builds": {"fp32": {"backend": {"dtype": "fp32"}}, "fp32_192": {"preset": "fp32", "input_size": [192, 192]}},
            "profile": {"seconds": 0.5}, "report": {"path": "report", "strip_images": 2}}
    (tmp_path / "isnet.yaml").write_text(yaml.safe_dump(data))
    proc = run_isnet("compare", "isnet.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    builds = {b["name"]: b for b in json.loads((tmp_path / "report" / "report.json").read_text())["builds"]}
    info = json.loads((tmp_path / "report" / "artifacts" / "fp32" / "build.json").read_text())
    assert info["source"]["upcast"]["weights"] == 238
    assert any("fixed at 1024x1024; built at 256x256" in note for note in info["source"]["notes"])
    # The real network at a quarter of its size still finds the objects of these photographs.
    # (measured: MAE 0.085, max F 0.856; an all-black map scores MAE 0.22 on them, the mean foreground share)
    assert builds["fp32"]["metrics"]["mae"] < 0.12 and builds["fp32"]["metrics"]["maxfmeasure"] > 0.8
    assert builds["fp32_192"]["drift_mean_abs"] > 0
