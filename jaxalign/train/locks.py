"""One writer per output: an exclusive, self-releasing lock beside (or inside) what a run writes.

``output_lock(target, key=...)`` takes ``fcntl.flock`` on ``<dir>/.jaxalign.lock``
(a directory output such as ``train.output_dir``) or ``<file>.lock`` (a file
output such as ``generate.output``) and records who holds it (pid, host,
command). The kernel drops a flock when its process dies, so a lock left by a
killed run is stale by construction: the next run takes it over and says so.
A second live writer gets ``OutputLockedError`` naming the holder. Creating
the lock is also the early check that the output is writable: a read-only
folder or an output path that is a directory fails here, before any model
loads. The lock file is removed on release (the inode is re-checked after
locking, so a racing run never holds a lock on an unlinked file).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

from jaxalign.data.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["OutputLockedError", "lock_path", "output_lock", "check_writable"]

LOCK_NAME = ".jaxalign.lock"


class OutputLockedError(RuntimeError):
    """Another live process is writing the same output."""


def lock_path(target: str | os.PathLike, *, directory: bool) -> Path:
    """The lock file of ``target``: inside it for a directory output, beside it for a file output."""
    target = Path(target)
    return target / LOCK_NAME if directory else target.with_name(target.name + ".lock")


def check_writable(target: str | os.PathLike, *, key: str, directory: bool) -> None:
    """Refuse, naming ``key``, an output that cannot be written: a file where a folder is needed (or the
    reverse), or a parent folder that is read-only or is a file. Creates nothing."""
    target = Path(target)
    if directory and target.exists() and not target.is_dir():
        raise DataError(f"{key}={target}: is a file, not a folder")
    if not directory and target.is_dir():
        raise DataError(f"{key}={target}: is a folder; give a file path")
    existing = target if directory and target.is_dir() else target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"{key}={target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{key}={target}: {existing} is not writable")


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command', '?')})"


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, *, key: str, directory: bool) -> Iterator[Path]:
    """Hold the exclusive lock of ``target`` for the ``with`` block (see the module doc).

    A folder output that this call had to create is removed again when the block raises and left it
    empty, so a refused run leaves nothing behind.
    """
    check_writable(target, key=key, directory=directory)
    target = Path(target)
    folder = target if directory else target.parent
    created = []
    p = folder
    while not p.exists():
        created.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{key}={target}: cannot create {folder} ({e.strerror})") from None
    path = lock_path(target, directory=directory)
    fd = _acquire(path, key=key, target=target)
    ok = False
    try:
        yield path
        ok = True
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        if not ok:
            for p in created:  # innermost first
                with contextlib.suppress(OSError):
                    p.rmdir()  # only when empty


def _acquire(path: Path, *, key: str, target: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise DataError(f"{key}={target}: cannot write there ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise OutputLockedError(f"{key}={target} is being written by {_describe(path)}; wait for it to finish "
                                        f"or choose another {key}") from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file between our open and lock: lock the new one
            os.close(fd)
            continue
        previous = os.pread(fd, 4096, 0)
        if previous.strip():
            log.warning("%s=%s: taking over a stale lock of %s (that process is gone)", key, target, _describe(path))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv[:3])[:200]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        return fd
