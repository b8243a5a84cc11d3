"""Typed configs: YAML (or JSON) mappings loaded into frozen dataclasses, every mistake one line.

Build configs and ``isnet compare`` experiments are both read through :func:`load_dataclass`:
unknown keys are refused with the key path, the file and a did-you-mean; values are checked
against the dataclass annotations (``bool``, ``int``, ``float``, ``str``, ``Path``, enums, tuples,
``Mapping[str, X]``, nested dataclasses, ``X | None``); relative paths resolve against the
config file's folder, except keys given on the command line (``--set``), which resolve against
the current folder.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from isnet.core.errors import IsnetError, did_you_mean, first_line


def resolve_path(value: str | os.PathLike, base: Path) -> Path:
    """``value`` (``~`` expanded) relative to ``base`` unless absolute, normalised but not resolved.

    ``normpath``, not ``resolve()``: it shows ``a/b`` for ``a/x/../b`` but keeps symlinked folders
    as the user named them.
    """
    path = Path(os.path.expanduser(str(value)))
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """Parse a YAML (or JSON) file whose top level is a mapping; IsnetError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise IsnetError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise IsnetError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise IsnetError(f"{path}: the top level must be a mapping of keys")
    return data


def apply_overrides(data: dict, overrides: Sequence[str | tuple[str, object]]) -> set[str]:
    """Apply overrides to a nested dict, in place; return the overridden key paths.

    An override is ``"key.path=value"`` (``--set``; the value is parsed as YAML) or a
    ``("key.path", value)`` pair whose value is used as it is (a command's own flags).
    """
    keys_set = set()
    for item in overrides:
        if isinstance(item, tuple):
            path, value = item
        else:
            if "=" not in item:
                raise IsnetError(f"an override is key.path=value, got '{item}'")
            path, raw = item.split("=", 1)
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise IsnetError(f"an override is key.path=value, got '{item}'")
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
        keys_set.add(".".join(keys))
    return keys_set


def load_dataclass(cls, data, source: str, base_dir: Path, cwd_keys: frozenset[str] = frozenset(),
                   key: str = ""):
    """Build dataclass ``cls`` from nested plain data, validating every key and value.

    ``source`` (the file name) prefixes every error; ``key`` is the key path of ``data`` inside
    the file. Fields made with :func:`internal` are never read from the data.
    """
    return _Loader(source, base_dir, cwd_keys).dataclass(cls, data, key)


def internal(default=None):
    """A dataclass field the program fills in (a resolved value, where the config came from): never
    read from a config file, never written out by :func:`to_plain`."""
    return dataclasses.field(default=default, metadata={"internal": True})


def _is_internal(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("internal"))


def bounded(default, *, minimum: float | None = None, above: float | None = None):
    """A dataclass field whose number must be ``>= minimum`` or ``> above`` (None always passes)."""
    return dataclasses.field(default=default, metadata={"minimum": minimum, "above": above})


def to_plain(value):
    """A dataclass (enums, paths, tuples and mappings inside) as JSON-able data."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if not _is_internal(f)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


class _Loader:
    """Turns nested dicts into dataclasses, with errors naming key path and file."""

    def __init__(self, source: str, base_dir: Path, cwd_keys: frozenset[str] = frozenset()):
        self.source = source
        self.base_dir = base_dir
        self.cwd_keys = cwd_keys

    def fail(self, key: str, message: str) -> IsnetError:
        return IsnetError(f"{self.source}: {key}: {message}")

    def _from_command_line(self, key: str) -> bool:
        """Whether ``key`` (or a mapping holding it) was given with ``--set``."""
        return any(key == given or key.startswith(f"{given}.") or key.startswith(f"{given}[")
                   for given in self.cwd_keys)

    def _check_bounds(self, value, f: dataclasses.Field, key: str) -> None:
        minimum, above = f.metadata.get("minimum"), f.metadata.get("above")
        if value is None:
            return
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be at least {minimum}, got {value}")
        if above is not None and not value > above:
            raise self.fail(key, f"must be greater than {above}, got {value}")

    def convert(self, value, annotation, key: str):
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            here = f"{self.source}: {key}: "
            errors: list[IsnetError] = []
            for member in inner:
                try:
                    return self.convert(value, member, key)
                except IsnetError as exc:
                    errors.append(exc)
            # A member that got as far as a nested key says more than "expected a list or a mapping".
            deeper = [e for e in errors if not str(e).startswith(here)]
            if deeper or len(errors) == 1:
                raise (deeper or errors)[0]
            expected = " or ".join(str(e).removeprefix(here).split(", got ")[0].removeprefix("expected ")
                                   for e in errors)
            raise self.fail(key, f"expected {expected}, got {value!r}")
        if dataclasses.is_dataclass(annotation):
            # An empty section (every line commented out) means the defaults.
            return self.dataclass(annotation, {} if value is None else value, key)
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            choices = [m.value for m in annotation]
            if value not in choices:
                raise self.fail(key, f"'{value}' is not valid{did_you_mean(str(value), choices)}; "
                                     f"choose from {', '.join(choices)}")
            return annotation(value)
        if annotation is Path:
            if not isinstance(value, (str, os.PathLike)) or not str(value):
                raise self.fail(key, f"expected a path, got {value!r}")
            return resolve_path(value, Path.cwd() if self._from_command_line(key) else self.base_dir)
        if annotation is bool:
            if not isinstance(value, bool):
                raise self.fail(key, f"expected true or false, got {value!r}")
            return value
        if annotation is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, f"expected an integer, got {value!r}")
            return value
        if annotation is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise self.fail(key, f"expected a number, got {value!r}")
            return float(value)
        if annotation is str:
            if not isinstance(value, str):
                raise self.fail(key, f"expected a string, got {value!r}")
            return value
        if origin is tuple:
            if isinstance(value, (str, int, float)) and args[0] is str:
                value = [value]  # `suffix: jpg` means one suffix
            if not isinstance(value, Sequence) or isinstance(value, str):
                raise self.fail(key, f"expected a list, got {value!r}")
            if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
                return tuple(self.convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
            if len(value) != len(args):
                raise self.fail(key, f"expected a list of {len(args)} values, got {value!r}")
            return tuple(self.convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        if origin in (Mapping, dict, typing.Mapping):
            value = {} if value is None else value
            if not isinstance(value, Mapping):
                raise self.fail(key, f"expected a mapping, got {value!r}")
            return {str(k): self.convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
        if annotation is Mapping:
            value = {} if value is None else value
            if not isinstance(value, Mapping):
                raise self.fail(key, f"expected a mapping, got {value!r}")
            return dict(value)
        raise TypeError(f"unsupported annotation {annotation!r}")  # a bug in a config class, not user input

    def dataclass(self, cls, data, key: str):
        if not isinstance(data, Mapping):
            raise self.fail(key or "(top level)", f"expected a mapping, got {data!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not _is_internal(f)}
        prefix = f"{key}." if key else ""
        for name in data:
            if name not in fields:
                raise self.fail(f"{prefix}{name}", f"unknown key{did_you_mean(str(name), fields)}; "
                                                   f"valid keys: {', '.join(fields)}")
        values = {}
        for name, f in fields.items():
            if name in data:
                values[name] = self.convert(data[name], hints[name], f"{prefix}{name}")
                self._check_bounds(values[name], f, f"{prefix}{name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise self.fail(f"{prefix}{name}", "required key is missing")
        return cls(**values)
