"""The ``isnet`` command's two tiers of errors: the user's (one line, exit 2) and ours (traceback, exit 1)."""

import pytest

from isnet.core import IsnetError
from isnet.tools.cli import main


@pytest.mark.parametrize("raised, code", [(IsnetError("--count: expected a folder"), 2),
                                          (ZeroDivisionError("division by zero"), 1)])
def test_errors_in_two_tiers(monkeypatch, tmp_path, capsys, raised, code):
    import isnet.tools.synth as synth

    def failing(*args, **kwargs):
        raise raised

    monkeypatch.setattr(synth, "generate_dataset", failing)
    assert main(["synth", "--output-dir", str(tmp_path / "set"), "--count", "1"]) == code
    err = capsys.readouterr().err
    if code == 2:  # the user's mistake: one line, no traceback
        assert err.strip().splitlines() == ["isnet synth: error: --count: expected a folder"]
    else:  # a bug: its traceback, and a line saying it is one
        assert "Traceback (most recent call last)" in err and "ZeroDivisionError: division by zero" in err
        assert err.strip().splitlines()[-1].startswith("isnet synth: internal error: the traceback above is a bug")


def test_errors_in_two_tiers_on_the_int8_build_path(monkeypatch, capsys, write_config):
    """A bug deep in the int8 path (here: bias correction) is ours: traceback, exit 1. A bad config is the
    user's: one line, exit 2, whatever the build would have done next."""
    import isnet.build_in.backends.onnxruntime as backend

    def broken_shifts(*args, **kwargs):
        raise KeyError("Conv_7")  # a slip in isnet's own code

    monkeypatch.setattr(backend, "conv_weight_error_shifts", broken_shifts)
    config = write_config({"backend": {"quantize": {"calibrate_mode": "max", "bias_correction": True}}})
    assert main(["build", str(config)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "broken_shifts" in err and "KeyError: 'Conv_7'" in err
    assert err.strip().splitlines()[-1].startswith("isnet build: internal error: the traceback above is a bug")
    assert not (config.parent / "deploy" / "tiny").exists()  # and nothing half-written

    bad = write_config({"backend": {"quantize": {"calibrate_mode": "max", "bias_corection": True}}}, "bad.yaml")
    assert main(["build", str(bad)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "backend.quantize.bias_corection: unknown key (did you mean 'bias_correction'?)" in lines[0]
