"""Plan -> tasks (joblib) -> one shard per task -> merge into one store.

A shard that exists is done: after a crash, ``kill -9`` or Ctrl-C, a rerun
computes only the missing shards. The store is written under a temporary name
and renamed into place when complete; shards are removed only after that.
A lock file beside the store keeps two runs from building it at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from common.audio import AudioError, load_audio
from common.features import Feature, make_feature
from common.pyjama import Collection, Entry, PyjamaError, collection_to_json, read_pyjama
from common.store import (
    FileRecord,
    StoreError,
    TargetSpec,
    merge_shards,
    read_shard_index,
    read_tables,
    remove_stale_temporaries,
    store_identity,
    store_path,
    write_shard,
)

from .backends import joblib_backend
from .targets import file_targets, frame_targets, plan_targets


class LockedError(RuntimeError):
    """Another process is building the same store."""


@dataclass
class Task:
    index: int
    entries: list[Entry]
    shard: Path


@dataclass
class Plan:
    collection: Collection
    feature: Feature
    targets: list[TargetSpec]
    store_path: Path
    shard_dir: Path
    tasks: list[Task]
    store_hash: str
    pyjama_sha1: str

    @property
    def lock_path(self) -> Path:
        return self.store_path.with_suffix(".lock")


@dataclass
class TaskResult:
    index: int
    done: int = 0
    audio_s: float = 0.0
    failures: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pid: int = 0
    peak_rss_mb: float = 0.0


@dataclass
class Summary:
    store_path: Path
    files: int = 0
    computed_tasks: int = 0
    reused_tasks: int = 0
    failed: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    audio_s: float = 0.0
    seconds: float = 0.0
    merge_seconds: float = 0.0
    existed: bool = False
    peak_rss_mb: dict[int, float] = field(default_factory=dict)  # per process, workers and this one

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def files_per_task(n_files: int) -> int:
    """Files per task, from the file count alone, so resumed runs plan the same shards."""
    return max(1, min(16, math.ceil(n_files / 256)))


def make_plan(
    dataset: str | os.PathLike,
    feature: str | os.PathLike | Feature,
    stores: str | os.PathLike = "stores",
    audio_root: str | os.PathLike | None = None,
    strict: bool = False,
) -> Plan:
    """Read and validate the pyjama, resolve audio, and lay out the tasks and the store path.

    The store's identity covers the feature parameters, the dataset's entries and the
    store format: the same request finds the same store, any change makes a new one.
    """
    dataset = Path(dataset)
    collection = read_pyjama(dataset, audio_root=audio_root, on_error="raise" if strict else "skip")
    feat = feature if isinstance(feature, Feature) else make_feature(feature)
    store_hash = store_identity(
        feat.to_dict(), collection_to_json(collection)["collection"]["entry"]
    )
    path = store_path(stores, collection.name, feat.kind, store_hash)
    shard_dir = path.with_suffix(".shards")
    per = files_per_task(len(collection.entries))
    tasks = [
        Task(i, collection.entries[s : s + per], shard_dir / f"task-{i:06d}.h5")
        for i, s in enumerate(range(0, len(collection.entries), per))
    ]
    return Plan(
        collection,
        feat,
        plan_targets(collection, feat),
        path,
        shard_dir,
        tasks,
        store_hash,
        hashlib.sha1(dataset.read_bytes()).hexdigest(),
    )


def run_task(
    task: Task, feature_params: dict, targets: list[TargetSpec], feature_hash: str
) -> TaskResult:
    """Decode, compute and map the targets of a task's files; write its shard atomically."""
    feature = make_feature(feature_params)
    result = TaskResult(task.index)
    records = []
    for e in task.entries:
        where = f"entry {e.index} ({e.filepath})"
        try:
            audio = load_audio(e.audio_path, sr=feature.sr)
            X = feature.compute(audio.y)
            expected = feature.n_frames(len(audio.y))
            if X.shape != (feature.channels, feature.n_bins, expected):
                raise RuntimeError(
                    f"feature shape {X.shape}, expected {(feature.channels, feature.n_bins, expected)}"
                )
            if not np.isfinite(X).all():
                raise RuntimeError("feature has NaN or Inf values")
            targets_, warnings = frame_targets(e, targets, feature, expected, audio.duration_s)
        except AudioError as err:
            result.failures.append(
                {"entry": e.index, "name": e.filepath, "reason": f"{err.path}: {err.reason}"}
            )
            continue
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the others
            result.failures.append(
                {
                    "entry": e.index,
                    "name": e.filepath,
                    "reason": f"{e.audio_path}: {type(err).__name__}: {err}",
                }
            )
            continue
        if expected < feature.patch_frames:
            warnings.append(
                f"shorter than one patch ({expected} < {feature.patch_frames} frames): kept, 0 patches"
            )
        result.warnings += [f"{where}: {w}" for w in warnings]
        records.append(
            FileRecord(
                e.index,
                e.filepath,
                X.transpose(2, 0, 1),
                targets_,
                audio.duration_s,
                audio.orig_sr,
                audio.checksum,
                warnings,
            )
        )
        result.done += 1
        result.audio_s += audio.duration_s
    write_shard(task.shard, records, result.failures, feature_hash)
    result.pid, result.peak_rss_mb = os.getpid(), peak_rss_mb()
    return result


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


class StoreLock:
    """``<store>.lock`` holding the owner's pid and host; a dead owner's lock is taken over."""

    def __init__(self, path: Path):
        self.path = path
        self.held = False

    def __enter__(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._owner()
                if (
                    other
                    and other.get("host") == me["host"]
                    and not _alive(int(other.get("pid", -1)))
                ):
                    self.path.unlink(missing_ok=True)  # its owner died: take it over
                    continue
                if other is None:  # being written right now, or unreadable: look again
                    time.sleep(0.2)
                    other = self._owner() or {}
                raise LockedError(
                    f"{self.path.with_suffix('.h5')} is being built by another precompute "
                    f"(pid {other.get('pid', '?')} on {other.get('host', '?')}, since {other.get('started', '?')}); "
                    f"wait for it, or delete {self.path} if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise LockedError(f"could not take {self.path}")

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("mirpatch", "librosa", "numpy", "scipy", "soundfile", "soxr", "h5py"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "?"
    return out


def execute(
    plan: Plan,
    jobs: int = 1,
    backend: str = "loky",
    strict: bool = False,
    progress: bool = True,
    log=print,
    scheduler: str | None = None,
) -> Summary:
    """Run the missing tasks, then merge. Returns the summary; the store exists when it returns.

    ``backend`` and ``scheduler``: see :func:`precompute.backends.joblib_backend`.
    """
    from joblib import Parallel, delayed
    from tqdm import tqdm

    t0 = time.perf_counter()
    summary = Summary(plan.store_path)
    summary.skipped = [str(p) for p in plan.collection.problems]
    if plan.store_path.exists():
        tables = read_tables(plan.store_path)
        summary.existed = True
        summary.files = tables.n_files
        summary.failed = list(tables.attrs.get("failed") or [])
        summary.audio_s = float(tables.duration_s.sum())
        return summary

    with StoreLock(plan.lock_path):
        plan.shard_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(plan.shard_dir)
        todo = [t for t in plan.tasks if not t.shard.exists()]
        summary.reused_tasks = len(plan.tasks) - len(todo)
        feature_params, feature_hash = plan.feature.to_dict(), plan.feature.hash()
        n_files = sum(len(t.entries) for t in todo)
        bar = tqdm(
            total=n_files,
            unit="file",
            disable=not progress,
            desc=f"{plan.feature.kind}",
            file=sys.stderr,
        )
        try:
            with joblib_backend(backend, jobs, scheduler):
                results = Parallel(return_as="generator_unordered")(
                    delayed(run_task)(t, feature_params, plan.targets, feature_hash) for t in todo
                )
                for res in results:
                    summary.computed_tasks += 1
                    summary.peak_rss_mb[res.pid] = max(
                        summary.peak_rss_mb.get(res.pid, 0.0), res.peak_rss_mb
                    )
                    bar.update(res.done + len(res.failures))
                    for f in res.failures:
                        log(f"error: {f['reason']}")
                    if strict and res.failures:
                        raise StrictStop(res.failures[0]["reason"])
        finally:
            bar.close()

        t_merge = time.perf_counter()
        files, failures = [], []
        for t in plan.tasks:
            fs, fails = read_shard_index(t.shard, feature_hash)
            files += fs
            failures += fails
        files.sort(key=lambda f: f.entry)
        by_index = {e.index: e for e in plan.collection.entries}
        summary.warnings = [f"entry {f.entry} ({f.name}): {w}" for f in files for w in f.warnings]
        summary.failed = sorted(failures, key=lambda f: f["entry"])
        attrs = {
            "dataset": plan.collection.name,
            "feature": feature_params,
            "feature_hash": feature_hash,
            "store_hash": plan.store_hash,
            "pyjama_sha1": plan.pyjama_sha1,
            "versions": library_versions(),
            "failed": summary.failed,
            "skipped": summary.skipped,
        }
        merge_shards(
            files,
            plan.store_path,
            plan.feature.frame_shape,
            plan.feature.patch_frames,
            plan.feature.patch_hop,
            plan.targets,
            file_targets([by_index[f.entry] for f in files], plan.targets),
            attrs,
        )
        shutil.rmtree(plan.shard_dir, ignore_errors=True)
        summary.merge_seconds = time.perf_counter() - t_merge
    summary.files = len(files)
    summary.audio_s = float(sum(f.duration_s for f in files))
    summary.seconds = time.perf_counter() - t0
    summary.peak_rss_mb[os.getpid()] = peak_rss_mb()
    return summary


class StrictStop(RuntimeError):
    """--strict: the first bad file stops the run (finished shards are kept)."""


def run(
    dataset: str | os.PathLike,
    feature: str | os.PathLike,
    stores: str | os.PathLike = "stores",
    audio_root: str | os.PathLike | None = None,
    jobs: int = 1,
    backend: str = "loky",
    strict: bool = False,
    progress: bool = False,
    log=print,
    scheduler: str | None = None,
) -> Summary:
    """Plan and execute in one call (the Python face of ``precompute run``)."""
    plan = make_plan(dataset, feature, stores, audio_root, strict)
    return execute(
        plan,
        jobs=jobs,
        backend=backend,
        strict=strict,
        progress=progress,
        log=log,
        scheduler=scheduler,
    )


__all__ = [
    "LockedError",
    "Plan",
    "PyjamaError",
    "StoreError",
    "StrictStop",
    "Summary",
    "execute",
    "make_plan",
    "run",
]
