"""The stage cache of ``isnet compare``: each finished stage leaves a manifest keyed by its inputs.

``<report>/manifests/<stage>-<build>.json`` holds the digest of the stage's inputs and its result;
a rerun reuses the result when the digest is unchanged, so only what changed is recomputed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from isnet.core import digest_of, write_text_atomic


def jsonable(value):
    """``json.dumps`` default for numpy values and paths."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value))


def artifact_key(info: dict) -> str:
    """What makes an artifact's outputs what they are: its files, pre-processing and runtime options."""
    return digest_of({"artifact": info.get("artifact_sha256"), "preprocess": info.get("preprocess"),
                      "runtime": info.get("runtime_options")})


def image_list_key(images: list[Path]) -> str:
    """A cheap key of a list of files: names, sizes and modification times."""
    return digest_of([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in images])


class StageCache:
    """Manifests of finished stages under ``<root>/manifests``."""

    def __init__(self, root: Path):
        self.root = root / "manifests"

    def get(self, stage: str, build: str, inputs: str):
        """The stored result when the stage ran with the same ``inputs`` digest, else None."""
        path = self.root / f"{stage}-{build}.json"
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return record.get("result") if record.get("inputs") == inputs else None

    def put(self, stage: str, build: str, inputs: str, result) -> None:
        """Record a finished stage (atomically)."""
        write_text_atomic(self.root / f"{stage}-{build}.json",
                          json.dumps({"inputs": inputs, "result": result}, indent=1, default=jsonable))
