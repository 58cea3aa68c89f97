"""One builder per store: an ``flock`` on ``<store>.lock``, released by the kernel if its
owner dies, so taking over from a dead owner is atomic (no pid file to judge)."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from common.errors import UserError


class LockedError(UserError, RuntimeError):
    """Another process is building the same store."""


class StoreLock:
    """Exclusive lock of one store; the file names its holder for whoever finds it taken.

    ``wait``: block until the holder is done (``log`` says who is awaited) instead of raising
    :class:`LockedError`. The lock file is removed on release; a waiter that then gets the lock
    of the removed file tries again on the new one.
    """

    def __init__(self, path: str | os.PathLike, wait: bool = False, log: Callable = print):
        self.path = Path(path)
        self.wait, self.log = wait, log
        self.fd: int | None = None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def describe(self) -> str:
        h = self.holder()
        return (
            f"pid {h.get('pid', '?')} on {h.get('host', '?')}, since {h.get('started', '?')}"
            if h
            else "a process that is starting"
        )

    def __enter__(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = self.describe()
                if not self.wait:
                    os.close(fd)
                    store = self.path.with_name(self.path.name.removesuffix(".lock"))
                    raise LockedError(
                        f"{store} is being built by another precompute ({who}); "
                        "wait for it (--wait) or stop that process"
                    ) from None
                self.log(f"waiting for {who}, which is building this store")
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed this file on release: lock the new one
                os.close(fd)
                continue
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            self.fd = fd
            return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
