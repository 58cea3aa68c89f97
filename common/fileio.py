"""Files written so that a crash never leaves half of one, and bytes moved by position.

- :func:`replace_file` is the one atomic replace of the project: the new file is flushed to
  disk, renamed over the old name, and the rename is flushed (the folder fsynced), so that after
  a crash the name holds either the old file or the whole new one. Every writer uses it, through
  :func:`atomic_write` or directly (views, segments, layouts' markers, pyjamas, checkpoints, the
  demo data).
- :func:`pread_into` and :func:`pwrite_all` read and write at byte offsets, without a seek, so
  that many processes and threads share one descriptor.
- :func:`claim` and :func:`reserve` take disk space before it is written, so that running out
  of it fails early and in one place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError


def temporary_name(path: str | os.PathLike) -> Path:
    """A name beside ``path`` for writing its next version (unique to this process)."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the filesystem allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_file(tmp: str | os.PathLike, path: str | os.PathLike, fd: int | None = None) -> Path:
    """Make the written file ``tmp`` the file ``path``, atomically and durably: fsync it (through
    ``fd`` when the caller holds one open), rename it, fsync the folder."""
    tmp, path = Path(tmp), Path(path)
    own = fd is None
    if own:
        fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        if own:
            os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_write(p) as tmp:`` write ``tmp``; on leaving, it replaces ``p``
    (:func:`replace_file`); on an error it is removed and ``p`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        replace_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` into ``path`` atomically (UTF-8)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, **kw: Any) -> Path:
    """``obj`` as JSON into ``path`` atomically."""
    return write_text(path, json.dumps(obj, **kw))


def pwrite_all(fd: int, data: bytes | memoryview | np.ndarray, at: int) -> None:
    """Write all of ``data`` at byte ``at`` of ``fd``."""
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def pread_into(fd: int, buf: np.ndarray | memoryview, at: int) -> None:
    """Fill ``buf`` with the bytes of ``fd`` from ``at`` (positioned reads, no seek)."""
    view = memoryview(buf).cast("B")
    while len(view):
        n = os.preadv(fd, [view], at)
        if n <= 0:
            raise StoreError(f"short read at byte {at}: the file is shorter than its tables say")
        view, at = view[n:], at + n


def _allocate(fd: int, size: int) -> None:
    if size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EFBIG):
                raise
            # a filesystem without fallocate: the blocks are allocated as they are written


def claim(path: str | os.PathLike, size: int) -> None:
    """Take ``size`` bytes of disk for a file about to be written by HDF5, and fail here (as an
    OSError) if they are not there: a write that fails inside HDF5 leaves a file it cannot
    close cleanly. HDF5 truncates the file and writes within that size, which stays free."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _allocate(fd, size)
    finally:
        os.close(fd)


def reserve(path: str | os.PathLike, size: int | None = None) -> None:
    """Allocate a file's blocks now, so that writing rows later cannot run out of space."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _allocate(fd, os.fstat(fd).st_size if size is None else size)
    finally:
        os.close(fd)
