"""Shared locks that keep ``precompute gc`` off the files a process reads.

Whoever reads a view (a :class:`train.dataset.StoreDataset`, a build reusing rows) holds a
shared ``flock`` on the view and on every segment it needs, from the moment it finds them until
it lets go; forked DataLoader workers share their parent's. gc deletes a file only when it can
take an exclusive lock on it, so a training never loses a file it reads. A lock is released by
the kernel when its holder dies, so a crashed reader holds nothing.

On a network filesystem, locks may not be seen from other hosts: there ``precompute gc
--grace HOURS`` also keeps unreferenced segments for that long.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path


class Hold:
    """A shared lock on one file, for as long as this object lives."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd
        self._finalizer = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        self._finalizer()


_HOLDS: weakref.WeakValueDictionary[tuple[str, int], Hold] = weakref.WeakValueDictionary()


def hold(path: str | os.PathLike) -> Hold | None:
    """A shared lock on ``path`` (one per file and process, shared by whoever asks), or None
    when the file is gone (deleted before or while the lock was taken)."""
    path = Path(os.path.abspath(path))
    key = (str(path), os.getpid())
    found = _HOLDS.get(key)
    if found is not None:
        return found
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:  # removed, or replaced, meanwhile
            raise FileNotFoundError(path)
    except OSError:
        os.close(fd)
        return None
    h = Hold(path, fd)
    _HOLDS[key] = h
    return h


def try_exclusive(path: str | os.PathLike) -> int | None:
    """An exclusive lock on ``path`` if nobody holds it (an fd to close after removing the
    file), else None."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
