"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of either.

Files: the content goes to a hidden temp file in the destination's directory
(same file system, so the final rename is atomic), is flushed and fsync-ed, and
``os.replace``-d over the destination; the directory is fsync-ed after so the
rename itself survives a power cut.  Any exception (KeyboardInterrupt included)
removes the temp file and leaves the destination as it was.

Folders: :func:`atomic_folder` yields an empty hidden sibling folder to fill;
on success an existing destination is moved aside, the new folder renamed into
place (the old one is moved back if that rename fails) and the old one deleted.
On error the temp folder is deleted and the destination is untouched.

Temp files and folders are created with mode 0o666 / 0o777 minus the umask, so
the results have the permissions of a plain ``open(path, "w")`` / ``mkdir``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_file", "atomic_folder", "atomic_path", "check_destination", "write_bytes_atomic",
           "write_json_atomic", "write_text_atomic"]


def _sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name next to ``path``: ``.<name>.<tag>-<random>``."""
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:12]}")


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path`` for a writer that wants a file name (pyarrow, safetensors).

    The temp file exists (empty) when yielded.  On a clean exit it is fsync-ed
    and renamed over ``path``; on any exception it is removed.  The parent
    directory is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8") -> Iterator[IO]:
    """Yield an open temp file (``mode`` "w" text or "wb" binary) that replaces ``path`` on a clean exit."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_file(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_file(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
                      default: Any = None, ensure_ascii: bool = True) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically; returns ``path``.

    The text is built before the temp file is created, so an unserialisable
    ``obj`` raises without touching the file system.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default, ensure_ascii=ensure_ascii) + "\n"
    return write_text_atomic(path, text)


def check_destination(path: str | os.PathLike, overwrite: bool) -> None:
    """Raise FileExistsError when ``path`` may not become a freshly written folder.

    A missing path or an empty folder is fine; a non-empty folder only with
    ``overwrite``; anything that is not a folder never.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if path.is_dir() and not overwrite and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is moved aside, restored on failure, then deleted."""
    if not path.exists():
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return
    backup = _sibling(path, "old")
    os.replace(path, backup)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(backup, path)
        raise
    _fsync_dir(path.parent)
    shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty hidden sibling folder to fill; on a clean exit it becomes ``path``.

    ``path`` is checked with :func:`check_destination` on entry and again
    just before the swap (it may have been filled meanwhile).  On any exception
    the temp folder is deleted and ``path`` is left as it was.  File contents
    are not fsync-ed (folders hold model weights; the rename is what is atomic).
    """
    path = Path(path)
    check_destination(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "partial")
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
        check_destination(path, overwrite)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
