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
