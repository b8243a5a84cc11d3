"""Atomic writes leave the old file or the new one, never a torn one; hashes identify content."""

import hashlib

import pytest

from isnet.core import atomic_dir, atomic_path, atomic_temp_target, digest_of, sha256_file, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_folder_is_swapped_in_only_when_complete(tmp_path):
    with atomic_dir(tmp_path / "art") as out:
        (out / "model").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_dir(tmp_path / "art"):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "art", replace=True) as out:
            (out / "model").write_text("2")
            raise RuntimeError("crash")
    assert (tmp_path / "art" / "model").read_text() == "1" and len(list(tmp_path.iterdir())) == 1


def test_hashes(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3_000_000)
    assert sha256_file(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert digest_of({"b": 1, "a": [1, 2]}) == digest_of({"a": [1, 2], "b": 1}) != digest_of({"a": [2, 1], "b": 1})


def test_a_temporary_name_leads_back_to_its_target(tmp_path):
    for name in ("0001.png", "a.b.png", "fleur_été.npy", "noext"):
        with atomic_path(tmp_path / name) as tmp:
            assert atomic_temp_target(tmp.name) == name
            tmp.write_bytes(b"x")
    for other in ("0001.png", ".hidden.png", ".x.tmp.png", ".a.0123456789AB.tmp.png"):
        assert atomic_temp_target(other) is None
