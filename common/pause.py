"""Named moments at which a process can be told to wait, so that a test (or a demonstration)
acts at a chosen moment, such as sending Ctrl-C after the first file is done, instead of racing a
timer.

``MIRPATCH_PAUSE=<point>:<n>:<folder>`` makes the process's ``n``-th arrival at ``<point>``
write ``<folder>/<point>.paused`` (holding its pid) and wait until ``<folder>/<point>.go``
exists. Without the variable a pause point costs a dictionary lookup.

Points: ``file_done`` (precompute: a task's files recorded, their marker flushed),
``locked`` (precompute: the store's build lock taken, nothing laid out yet), ``step``
(train: a training step done, its checkpoint written if one was due), ``evicting`` (a remote
store's cache: rows unmarked and the count of evictions grown, their bytes not yet freed).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

_ARRIVALS: Counter[str] = Counter()


def pause_point(name: str) -> None:
    """Wait here if ``MIRPATCH_PAUSE`` names this point and this is its arrival to wait at."""
    spec = os.environ.get("MIRPATCH_PAUSE")
    if not spec or not spec.startswith(f"{name}:"):
        return
    _, n, folder = spec.split(":", 2)
    _ARRIVALS[name] += 1
    if _ARRIVALS[name] != int(n):
        return
    folder_p = Path(folder)
    go = folder_p / f"{name}.go"
    parent = os.getppid()
    (folder_p / f"{name}.paused").write_text(str(os.getpid()))
    while not go.exists():  # an interrupt (Ctrl-C, a signal) ends the wait as it would the work
        if os.getppid() != parent:  # whoever started us is gone: nobody will say go
            os._exit(1)
        time.sleep(0.01)


def pause_env(point: str, n: int, folder: str | os.PathLike) -> dict[str, str]:
    """The environment of a child process that pauses at the ``n``-th ``point``."""
    return {**os.environ, "MIRPATCH_PAUSE": f"{point}:{n}:{folder}"}
