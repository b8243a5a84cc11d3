"""Typed configs: values checked against annotations, bounds, overrides, paths from the file or the command line."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from isnet.core import IsnetError, apply_overrides, bounded, load_dataclass, read_yaml_mapping


@dataclass(frozen=True)
class _Inner:
    count: int = bounded(1, minimum=1)
    seconds: float = bounded(1.0, above=0)
    path: Path | None = None


@dataclass(frozen=True)
class _Outer:
    name: str
    size: tuple[int, int] = (1, 1)
    inner: _Inner = field(default_factory=_Inner)


def _load(data, cwd_keys=frozenset(), base=Path("/base")):
    return load_dataclass(_Outer, data, "x.yaml", base, frozenset(cwd_keys))


@pytest.mark.parametrize("data, message", [
    ({"name": "a", "inner": {"cuont": 2}}, "x.yaml: inner.cuont: unknown key (did you mean 'count'?)"),
    ({"name": "a", "inner": {"count": "two"}}, "x.yaml: inner.count: expected an integer, got 'two'"),
    ({"name": "a", "inner": {"count": True}}, "x.yaml: inner.count: expected an integer, got True"),
    ({"name": "a", "inner": {"count": 0}}, "x.yaml: inner.count: must be at least 1, got 0"),
    ({"name": "a", "inner": {"seconds": 0}}, "x.yaml: inner.seconds: must be greater than 0, got 0.0"),
    ({"name": "a", "size": [1, 2, 3]}, "x.yaml: size: expected a list of 2 values"),
    ({"name": "a", "inner": 3}, "x.yaml: inner: expected a mapping, got 3"),
    ({}, "x.yaml: name: required key is missing"),
])
def test_mistakes_are_one_line_naming_key_and_file(data, message):
    with pytest.raises(IsnetError) as info:
        _load(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_paths_resolve_against_the_file_unless_given_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _load({"name": "a", "inner": {"path": "d/x"}}).inner.path == Path("/base/d/x")
    data = {"name": "a"}
    given = apply_overrides(data, ["inner.path=d/x"])
    assert _load(data, given).inner.path == tmp_path / "d" / "x"
    # A whole mapping given on the command line counts for the keys inside it.
    data = {"name": "a"}
    given = apply_overrides(data, [("inner", {"path": "d/y"})])
    assert _load(data, given).inner.path == tmp_path / "d" / "y"


def test_overrides_parse_yaml_strings_and_keep_typed_values():
    data = {"a": {"b": 1}}
    assert apply_overrides(data, ["a.b=2", "a.c=[1, 2]", ("a.d", "3")]) == {"a.b", "a.c", "a.d"}
    assert data == {"a": {"b": 2, "c": [1, 2], "d": "3"}}
    with pytest.raises(IsnetError, match="an override is key.path=value"):
        apply_overrides({}, ["novalue"])


def test_yaml_file_errors_name_the_file(tmp_path):
    with pytest.raises(IsnetError, match="config not found"):
        read_yaml_mapping(tmp_path / "none.yaml", "config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(IsnetError, match="bad.yaml: not valid YAML"):
        read_yaml_mapping(bad, "config")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(IsnetError, match="top level must be a mapping"):
        read_yaml_mapping(listed, "config")
