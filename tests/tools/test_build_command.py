"""`isnet build` from the command line."""

import json


def test_build_command_writes_artifact_and_reports(run_isnet, write_config, tmp_path):
    config = write_config({"backend": {"dtype": "fp16"}})
    proc = run_isnet("build", config, "--set", "name=cli_fp16")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "deploy" / "cli_fp16" / "build.json").read_text())
    assert info["precision"] == "fp16"
    assert "built " in proc.stdout and "(onnxruntime fp16" in proc.stdout
    assert "fidelity vs fp32 on 4 held-out images" in proc.stdout
    again = run_isnet("build", config, "--set", "name=cli_fp16")
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr


def test_bad_config_is_one_line_exit_2(run_isnet, write_config, tmp_path):
    config = write_config({"backend": {"quantize": {"calibrate_mod": "max"}}})
    proc = run_isnet("build", config)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(config) in lines[0] and "backend.quantize.calibrate_mod" in lines[0]
    assert "did you mean 'calibrate_mode'" in lines[0]
    assert not (tmp_path / "deploy").exists()
