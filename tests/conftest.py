"""Shared fixtures: small real data made in the test session (synthesized audio, demo clips)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SR = 22050

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs a worker per core: torch's threads in each would only fight each other
    # (and the processes a test starts inherit it)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    """The slow tests first: run on several workers, the long ones start early and the short
    ones fill the gaps at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)``'s result, made once per test session: also when pytest-xdist runs the
    tests in several processes, where the first to ask builds it under a lock and the others
    wait for it (on the lock, not on a timer) and share it. Tests only read what it made."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # popen-gwN/ of the session's one folder
        root = root.parent
    folder, made = root / name, root / f"{name}.made"
    with FileLock(root / f"{name}.lock"):
        if not made.exists():
            result = Path(build(folder))
            made.write_text(str(result))
    return Path(made.read_text())


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory) -> Path:
    """A small demo dataset: 2 tunes per dance x 3 versions = 24 clips of 4 s."""
    from precompute.demo import make_demo

    return built_once(tmp_path_factory, "demo", lambda out: make_demo(out, per_class=2, clip_s=4.0))


@pytest.fixture(scope="session")
def demo_medium(tmp_path_factory) -> Path:
    """Enough tunes to score a held-out split: 5 tunes per dance x 3 versions = 60 clips of 4 s."""
    from precompute.demo import make_demo

    return built_once(
        tmp_path_factory, "demo-medium", lambda out: make_demo(out, per_class=5, clip_s=4.0)
    )


def _stores(demo: Path, root: Path, jobs: int) -> Path:
    from precompute.pipeline import run

    for f in ("lms", "cqt"):
        run(demo, f, root, jobs=jobs)
    return root


@pytest.fixture(scope="session")
def medium_stores(demo_medium, tmp_path_factory) -> Path:
    """lms and cqt stores of ``demo_medium``."""
    return built_once(
        tmp_path_factory, "medium-stores", lambda root: _stores(demo_medium, root, jobs=2)
    )


@pytest.fixture(scope="session")
def tiny_stores(demo_small, tmp_path_factory) -> Path:
    """lms and cqt stores of ``demo_small``, under one stores folder."""
    return built_once(
        tmp_path_factory, "trainer-stores", lambda root: _stores(demo_small, root, jobs=1)
    )


def tone(midi: float, duration_s: float, sr: int = SR, n_harm: int = 6) -> np.ndarray:
    """A harmonic tone at ``midi`` (float32)."""
    t = np.arange(int(round(duration_s * sr))) / sr
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    y = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, n_harm + 1) if f0 * k < sr / 2)
    return (0.3 * y).astype(np.float32)


def write_json(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


def write_wav(path: Path, y: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y, sr)
    return path


def done_markers(stores: Path) -> list[Path]:
    """The markers of finished files that a build into ``stores`` has flushed so far."""
    return sorted(Path(stores).glob("pool/*/*.parts/done-*.json"))


def partial_segments(stores: Path) -> list[Path]:
    return sorted(Path(stores).glob("pool/*/*.partial"))


def wait_for(event, proc=None, what: str = "the event"):
    """Poll until ``event()`` is true (a file appeared, a line was printed); fail if ``proc``
    ends first. No deadline: a busy machine only makes it take longer."""
    import time

    while not event():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}")
        time.sleep(0.01)


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (from /proc), children first found first."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def kill_tree(proc) -> None:
    """``kill -9`` a launcher and every process below it, in whatever session each one runs
    (torchrun starts each rank in a session of its own), then reap the launcher."""
    import contextlib
    import os
    import signal

    below = descendants(proc.pid)  # before the launcher dies and they move to init
    for pid in [proc.pid, *below]:  # the launcher first: it cannot start another rank
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
