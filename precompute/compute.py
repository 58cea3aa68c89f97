"""Compute: the joblib tasks that decode audio, compute a feature and write its rows in place.

A task is a few files, each with the segment file and byte offset its rows go to. The worker
writes them with ``pwrite`` and returns, per file, its status, its error and the checksum of the
bytes it wrote; the builder records them in the segment's markers. Nothing here runs when there
is nothing to compute: no worker starts, and neither librosa nor joblib is imported.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.audio import AudioError, load_audio
from common.features import make_feature
from common.fileio import pwrite_all
from common.progress import progress as progress_bar
from common.store import STATUS_FAILED, STATUS_OK, Outcome, frames_checksum

from .backends import joblib_backend

FILES_PER_WORKER = 8  # fewer files to compute than this per worker: fewer workers (each costs
# an interpreter and librosa's import, about 2.5 s on 2 cores)


@dataclass
class FileJob:
    """One file for a worker: where its audio is, as planned, and where its rows go."""

    build: int
    row: int
    path: str
    size: int
    mtime_ns: int
    n_frames: int
    segment: str  # the partial segment file
    at: int  # byte offset of its first frame there


@dataclass
class TaskResult:
    done: dict[tuple[int, int], Outcome] = field(default_factory=dict)  # (build, row) ->
    audio_s: float = 0.0
    pid: int = 0
    peak_rss_mb: float = 0.0


class StrictStop(RuntimeError):
    """--strict: the first bad file stops the run (finished files are kept)."""


def use_filter_cache(folder: str | os.PathLike | None) -> None:
    """Let librosa keep the CQT filter bases it builds in ``folder`` (its own disk cache,
    ``LIBROSA_CACHE_DIR``), so that each process builds them once, not once per file.

    Building the bases is most of the cost of a CQT of a short file (0.04 of 0.06 s for 7.5 s
    of audio); the cached bases are the same arrays, so the features are bit for bit the same.
    It must be set before librosa loads: a process that loaded it already keeps its setting.
    """
    if folder is not None and "librosa._cache" not in sys.modules:
        os.environ.setdefault("LIBROSA_CACHE_DIR", str(folder))


def filter_cache_dir(stores: Path) -> str:
    return str((stores / ".cache" / "librosa").absolute())


def run_task(
    jobs: list[FileJob], feature_params: dict, dtype: str, cache: str | None = None
) -> TaskResult:
    """Decode and compute a task's files and write their rows in place (a worker's whole job)."""
    use_filter_cache(cache)
    feature = make_feature(feature_params)
    result = TaskResult()
    fds: dict[str, int] = {}
    try:
        for j in jobs:
            key = (j.build, j.row)
            try:
                if j.segment not in fds:
                    fds[j.segment] = os.open(j.segment, os.O_WRONLY)
                frames = _compute_frames(j, feature, np.dtype(dtype))
                pwrite_all(fds[j.segment], frames, j.at)
                result.done[key] = Outcome(STATUS_OK, "", frames_checksum(frames))
                result.audio_s += j.n_frames * feature.hop_length / feature.sr
            except AudioError as err:
                result.done[key] = Outcome(STATUS_FAILED, f"{err.path}: {err.reason}", "")
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EFBIG):
                    raise
                result.done[key] = Outcome(STATUS_FAILED, f"{j.path}: {err}", "")
            except Exception as err:  # noqa: BLE001 - one bad file must not stop the others
                result.done[key] = Outcome(
                    STATUS_FAILED, f"{j.path}: {type(err).__name__}: {err}", ""
                )
    finally:
        for fd in fds.values():
            os.close(fd)  # on a shared filesystem, close publishes the writes
    result.pid, result.peak_rss_mb = os.getpid(), peak_rss_mb()
    return result


def _compute_frames(j: FileJob, feature, dtype: np.dtype) -> np.ndarray:
    st = os.stat(j.path)
    if (st.st_size, st.st_mtime_ns) != (j.size, j.mtime_ns):
        raise AudioError(j.path, "changed while the store was being built; re-run precompute")
    audio = load_audio(j.path, sr=feature.sr)
    X = feature.compute(audio.y)
    expected = (feature.channels, feature.n_bins, j.n_frames)
    if X.shape != expected:
        raise RuntimeError(
            f"decoded to {X.shape[-1]} frames, its header gives {j.n_frames}; the file may be damaged"
        )
    rows = np.ascontiguousarray(X.transpose(2, 0, 1), dtype=dtype)
    if not np.isfinite(rows).all():
        raise RuntimeError(f"feature has NaN or Inf values (as {dtype.name})")
    return rows


def split_tasks(jobs: list[FileJob], workers: int) -> list[list[FileJob]]:
    """Files longest first, in tasks small enough to balance ``workers``."""
    jobs = sorted(jobs, key=lambda j: -j.n_frames)
    per = max(1, min(16, math.ceil(len(jobs) / (32 * max(1, workers)))))
    return [jobs[s : s + per] for s in range(0, len(jobs), per)]


def workers_for(n_files: int, jobs: int, backend: str) -> int:
    """How many worker processes are worth starting for ``n_files``: 0 when this process
    computes them (``--jobs 1``, or a backend that runs here), at least 1 otherwise, so that
    librosa's import in the worker overlaps this process's work on the view."""
    if backend in ("dask", "ray"):
        return jobs if jobs > 0 else os.cpu_count() or 1
    if jobs == 1 or backend in ("sequential", "threading") or not n_files:
        return 0
    asked = jobs if jobs > 0 else os.cpu_count() or 1
    return max(1, min(asked, math.ceil(n_files / FILES_PER_WORKER)))


def compute(
    jobs_: list[FileJob],
    feature_params: dict,
    dtype: str,
    cache: str,
    workers: int,
    backend: str,
    scheduler: str | None,
    on_result: Callable[[TaskResult], list[str]],
    strict: bool,
    progress: bool,
    warm: threading.Thread | None = None,
) -> None:
    """Run the tasks on ``workers`` processes (0: here); ``on_result`` records each and returns
    its errors."""
    from joblib import Parallel, delayed

    tasks = split_tasks(jobs_, max(1, workers))
    bar = progress_bar(len(jobs_), feature_params["kind"], "file", enabled=progress)
    if warm is not None:
        warm.join()
    try:
        with joblib_backend(backend if workers else "sequential", max(1, workers), scheduler):
            if workers == 1 and backend in ("loky", "multiprocessing"):
                results = _one_worker(tasks, feature_params, dtype, cache)
            else:
                results = Parallel(return_as="generator_unordered")(
                    delayed(run_task)(t, feature_params, dtype, cache) for t in tasks
                )
            for res in results:
                errors = on_result(res)
                bar.update(len(res.done))
                if strict and errors:
                    raise StrictStop(errors[0])
    finally:
        bar.close()
        if workers and backend == "loky":
            _stop_workers()


def _one_worker(tasks, feature_params: dict, dtype: str, cache: str):
    """The tasks in one worker process (joblib runs ``n_jobs=1`` here, in this process)."""
    from joblib.externals.loky import get_reusable_executor

    ex = get_reusable_executor(max_workers=1)
    for f in [ex.submit(run_task, t, feature_params, dtype, cache) for t in tasks]:
        yield f.result()


def _stop_workers() -> None:
    """Stop the idle loky workers now: left to the interpreter's exit, waiting for them costs
    a run about 0.6 s. (loky keeps the one executor that joblib and we use in this global.)"""
    from joblib.externals.loky import reusable_executor

    ex = getattr(reusable_executor, "_executor", None)
    if ex is not None:
        ex.shutdown(wait=False, kill_workers=True)


def start_warm_up(feature_params: dict, workers: int, cache: str) -> threading.Thread:
    """Start ``workers`` loky workers in a thread, each computing the feature once on a short
    silence, so that imports and first-call costs overlap this process's layout work."""
    t = threading.Thread(target=warm_up, args=(feature_params, workers, cache), daemon=True)
    t.start()
    return t


def warm_up(feature_params: dict, jobs: int, cache: str | None = None) -> None:
    from joblib import Parallel, delayed

    if jobs == 1:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor(max_workers=1).submit(_warm_worker, feature_params, cache).result()
        return
    with joblib_backend("loky", jobs):
        Parallel()(delayed(_warm_worker)(feature_params, cache) for _ in range(jobs))


def _warm_worker(feature_params: dict, cache: str | None) -> int:
    use_filter_cache(cache)
    feature = make_feature(feature_params)
    feature.compute(np.zeros(2 * feature.sr, dtype=np.float32))
    return os.getpid()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far.

    ``VmHWM`` on Linux, since ``ru_maxrss`` carries a parent's peak across fork + exec
    and would credit every worker with its parent's memory.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("mirpatch", "librosa", "numpy", "scipy", "soundfile", "soxr", "h5py"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "?"
    return out
