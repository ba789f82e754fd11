"""Atomic file and folder writes: success replaces, any failure leaves the old content and no temp litter."""

import json
import os

import pytest

from jaxalign.io import atomic
from jaxalign.io.atomic import (atomic_file, atomic_folder, atomic_path, check_destination, write_bytes_atomic,
                                write_json_atomic, write_text_atomic)


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


class Boom(Exception):
    pass


# -- files --------------------------------------------------------------------------------------


def test_writes_create_and_replace(tmp_path):
    assert write_text_atomic(tmp_path / "sub" / "a.txt", "één\n").read_text(encoding="utf-8") == "één\n"
    assert write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    write_json_atomic(tmp_path / "c.json", {"b": 1, "a": [1, 2]}, sort_keys=True)
    assert (tmp_path / "c.json").read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
    write_text_atomic(tmp_path / "sub" / "a.txt", "new")
    assert (tmp_path / "sub" / "a.txt").read_text() == "new"
    assert _names(tmp_path) == ["b.bin", "c.json", "sub"] and _names(tmp_path / "sub") == ["a.txt"]


def test_new_file_gets_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # not mkstemp's 0o600


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_failure_mid_write_keeps_old_file_and_no_litter(tmp_path, exc):
    path = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(exc):
        with atomic_file(path) as f:
            f.write("half of the new")
            f.flush()
            raise exc
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["a.txt"]


def test_failure_mid_write_of_new_file_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        with atomic_path(tmp_path / "t.parquet") as tmp:
            tmp.write_bytes(b"partial")
            raise Boom
    assert _names(tmp_path) == []


def test_failed_rename_keeps_old_file_and_no_litter(tmp_path, monkeypatch):
    path = write_text_atomic(tmp_path / "a.txt", "old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old" and _names(tmp_path) == ["a.txt"]


def test_unserialisable_json_touches_nothing(tmp_path):
    path = write_json_atomic(tmp_path / "a.json", {"x": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"x": object()})
    assert json.loads(path.read_text()) == {"x": 1} and _names(tmp_path) == ["a.json"]


def test_atomic_file_rejects_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_file(tmp_path / "a", "a"):
            pass
    assert _names(tmp_path) == []


# -- folders ------------------------------------------------------------------------------------


def _old_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    return out


def test_folder_created(tmp_path):
    with atomic_folder(tmp_path / "deep" / "out") as tmp:
        assert tmp.parent == tmp_path / "deep" and tmp.name.startswith(".out.") and _names(tmp) == []
        (tmp / "w.bin").write_bytes(b"w")
    assert _names(tmp_path / "deep") == ["out"] and _names(tmp_path / "deep" / "out") == ["w.bin"]


def test_folder_replaces_existing_with_overwrite(tmp_path):
    out = _old_folder(tmp_path)
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert _names(out) == ["keep.txt"]  # untouched until the swap
    assert _names(out) == ["new.txt"] and _names(tmp_path) == ["out"]  # no backup left


def test_folder_error_leaves_destination_and_no_litter(tmp_path):
    out = _old_folder(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("half")
            raise KeyboardInterrupt
    assert _names(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "old"
    assert _names(tmp_path) == ["out"]


def test_folder_failed_swap_restores_destination(tmp_path, monkeypatch):
    out = _old_folder(tmp_path)
    real = os.replace

    def replace(src, dst):
        if ".partial-" in os.fspath(src):  # moving the new folder into place fails
            raise OSError("rename failed")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_folder(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert _names(out) == ["keep.txt"] and _names(tmp_path) == ["out"]


def test_folder_refuses_non_empty_without_overwrite(tmp_path):
    out = _old_folder(tmp_path)
    with pytest.raises(FileExistsError, match=r"out exists and is not empty; pass overwrite=True"):
        with atomic_folder(out):
            raise AssertionError("the body must not run")
    assert _names(out) == ["keep.txt"] and _names(tmp_path) == ["out"]


def test_folder_rechecks_before_the_swap(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_folder(out) as tmp:
            (tmp / "new.txt").write_text("new")
            _old_folder(tmp_path)  # someone else filled it meanwhile
    assert _names(out) == ["keep.txt"] and _names(tmp_path) == ["out"]


def test_check_destination(tmp_path):
    check_destination(tmp_path / "missing", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_destination(tmp_path / "empty", overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="file exists and is not a directory"):
        check_destination(tmp_path / "file", overwrite=True)
