"""Files every stage writes and identifies: atomic writes and content hashes.

Every stage writes through the atomic helpers (checkpoints, ONNX files, masks, npz, reports), so
a crash or Ctrl-C leaves either the old file or the new one, never a torn one. Artifacts record
the sha256 of their sources and files, and stage caches are keyed by digests of their inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


_TEMP_HEX = 12  # hex digits of the unique part of an atomic_path temporary name


def atomic_temp_target(name: str) -> str | None:
    """The final file name an :func:`atomic_path` temporary name (``.<stem>.<hex>.tmp<suffix>``) was
    for, or None for any other name: what a writer killed mid-write leaves behind."""
    match = re.fullmatch(rf"\.(.+)\.[0-9a-f]{{{_TEMP_HEX}}}\.tmp(\.[^.]*)?", name)
    return f"{match.group(1)}{match.group(2) or ''}" if match else None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the final suffix, so writers that infer a format from it work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh unique name (not mkstemp) so the file gets the user's umask permissions, not 0600.
    tmp = path.parent / f".{path.stem}.{uuid.uuid4().hex[:_TEMP_HEX]}.tmp{path.suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it into place if the block succeeds.

    An existing ``path`` is swapped out only when ``replace`` is true (after the new folder is
    complete); otherwise :class:`FileExistsError` is raised before any work starts.
    """
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.mkdir()  # os.mkdir honours the umask, unlike tempfile.mkdtemp's 0700
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "prev")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def digest_of(value) -> str:
    """Hex sha256 of a JSON-able value (keys sorted, other objects by ``str``): a cache key."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
