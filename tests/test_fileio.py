"""The atomic write helpers: a failure leaves the previous file / folder untouched, success replaces it whole."""

import os

import pytest

from ternary_hf.fileio import atomic_output_file, atomic_write_json, atomic_write_text, staged_directory


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_output_file_failure_keeps_old_content(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_output_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_staged_directory_failure_keeps_old_folder(tmp_path):
    out = tmp_path / "model"
    with staged_directory(out) as stage:
        (stage / "config.json").write_text("1")
    assert (out / "config.json").read_text() == "1"
    with pytest.raises(OSError):
        with staged_directory(out) as stage:
            (stage / "config.json").write_text("2")
            raise OSError(28, "No space left on device")
    assert (out / "config.json").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_staged_directory_replaces_folder_and_sets_normal_modes(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.bin").write_text("x")
    with staged_directory(out) as stage:
        (stage / "weights.bin").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["weights.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == (0o777 & ~umask)


def test_staged_directory_refuses_existing_without_overwrite(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep").write_text("k")
    with pytest.raises(FileExistsError):
        with staged_directory(out, overwrite=False) as stage:
            (stage / "new").write_text("n")
    assert (out / "keep").read_text() == "k"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
