"""Shared locks that keep ``precompute gc`` off the files a process reads.

Whoever reads a view (a :class:`train.data.StoreDataset`, a build reusing frames) holds a
shared ``flock`` on the view and on every segment it needs, from the moment it finds them until
it lets go; forked DataLoader workers share their parent's. gc deletes a file only when it can
take an exclusive lock on it, so a training never loses a file it reads. A lock is released by
the kernel when its holder dies, so a crashed reader holds nothing.

On a network filesystem, locks may not be seen from other hosts, and NFS's locks (POSIX locks
underneath) go when the process closes any descriptor of the file: there ``precompute gc
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


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def hold(path: str | os.PathLike) -> Hold | None:
    """A shared lock on ``path`` (one per file and process, shared by whoever asks), or None
    when the file is gone (deleted before or while the lock was taken)."""
    path = Path(os.path.abspath(path))
    key = (str(path), os.getpid())
    found = _HOLDS.get(key)
    if found is not None and _same_file(found.fd, path):
        return found
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not _same_file(fd, path):  # removed, or replaced, meanwhile
            raise FileNotFoundError(path)
    except OSError:
        os.close(fd)
        return None
    return adopt(path, fd)


def adopt(path: str | os.PathLike, fd: int) -> Hold:
    """The hold of an fd that already has its shared lock (taken before the file got its name,
    so that nobody can delete it in between)."""
    h = Hold(Path(os.path.abspath(path)), fd)
    _HOLDS[(str(h.path), os.getpid())] = h
    return h


def try_exclusive(path: str | os.PathLike) -> int | None:
    """An exclusive lock on ``path`` if nobody holds it (an fd to close after removing the
    file), else None."""
    try:
        fd = os.open(path, os.O_RDWR)  # POSIX locks (flock on NFS) need write access for it
    except PermissionError:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _same_file(fd, Path(path)):  # replaced by a new file since: not ours to remove
            raise FileNotFoundError(path)
    except OSError:
        os.close(fd)
        return None
    return fd
