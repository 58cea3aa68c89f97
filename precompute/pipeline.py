"""Plan -> lay the store out -> copy the rows that exist -> compute the rest -> finish.

The store file is laid out in full first, under ``<store>.partial``: tables, targets, and the
disk space of every feature row, reserved. Rows whose content key the catalogue knows are
copied from the stores that hold them (in the kernel, ``copy_file_range``); the others are
computed by joblib tasks that write them in place, at their offsets. There is no merge: peak
disk use is the store itself.

Finished files are recorded in ``<store>.parts/done-*.json`` markers, written only after the
rows they name are flushed to disk, so after ``kill -9``, Ctrl-C or a full disk a rerun does
only what is missing, and the store is bit-identical to an uninterrupted run's. The store
appears under its final name once complete, and is then registered in the catalogue.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from common.audio import AudioError, load_audio
from common.catalogue import Catalogue, StoreRecord
from common.features import make_feature
from common.progress import progress as progress_bar
from common.pyjama import PyjamaError
from common.store import (
    STATUS_FAILED,
    STATUS_OK,
    DiskFullError,
    FileLayout,
    Layout,
    StoreError,
    copy_range,
    features_offset,
    finish,
    lay_out,
    open_layout,
    pwrite_all,
    read_tables,
)

from .backends import joblib_backend
from .lock import LockedError, StoreLock
from .plan import Plan, PlanError, make_plan
from .targets import annotated, file_targets, frame_targets

MARKER_EVERY_S = 2.0  # at most this much finished work is lost (and redone) after a kill


@dataclass
class FileJob:
    """One file for a worker: where its audio is, as planned, and where its rows go."""

    row: int
    path: str
    size: int
    mtime_ns: int
    n_frames: int
    at: int  # byte offset of its first row in the store file


@dataclass
class TaskResult:
    rows: dict[int, tuple[int, str]] = field(default_factory=dict)  # row -> (status, error)
    audio_s: float = 0.0
    pid: int = 0
    peak_rss_mb: float = 0.0


@dataclass
class Summary:
    store_path: Path
    files: int = 0  # files whose features the store holds
    computed: int = 0  # by this run
    copied: int = 0  # from other stores, by this run
    resumed: int = 0  # done by an earlier, interrupted run
    failed: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    audio_s: float = 0.0
    seconds: float = 0.0
    existed: bool = False
    peak_rss_mb: dict[int, float] = field(default_factory=dict)  # per process, workers and this one

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


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


def run_task(
    jobs: list[FileJob], feature_params: dict, store: str, dtype: str, cache: str | None = None
) -> TaskResult:
    """Decode and compute a task's files and write their rows in place (a worker's whole job)."""
    use_filter_cache(cache)
    feature = make_feature(feature_params)
    result = TaskResult()
    fd = os.open(store, os.O_WRONLY)
    try:
        for j in jobs:
            try:
                rows = _compute_rows(j, feature, np.dtype(dtype))
                pwrite_all(fd, rows, j.at)
                result.rows[j.row] = (STATUS_OK, "")
                result.audio_s += j.n_frames * feature.hop_length / feature.sr
            except AudioError as err:
                result.rows[j.row] = (STATUS_FAILED, f"{err.path}: {err.reason}")
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EFBIG):
                    raise
                result.rows[j.row] = (STATUS_FAILED, f"{j.path}: {err}")
            except Exception as err:  # noqa: BLE001 - one bad file must not stop the others
                result.rows[j.row] = (STATUS_FAILED, f"{j.path}: {type(err).__name__}: {err}")
    finally:
        os.close(fd)  # on a shared filesystem, close publishes the writes
    result.pid, result.peak_rss_mb = os.getpid(), peak_rss_mb()
    return result


def _compute_rows(j: FileJob, feature, dtype: np.dtype) -> np.ndarray:
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


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("mirpatch", "librosa", "numpy", "scipy", "soundfile", "soxr", "h5py"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "?"
    return out


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class Build:
    """One store being built under its lock: layout, markers, copies, tasks, finish."""

    def __init__(self, plan: Plan, catalogue: Catalogue, summary: Summary, log=print):
        self.plan, self.catalogue, self.summary, self.log = plan, catalogue, summary, log
        self.layout: Layout | None = None
        self.fd: int | None = None
        self.done: dict[int, tuple[int, str]] = {}  # row -> (status, error), flushed or not
        self.unflushed: dict[int, tuple[int, str]] = {}
        self.flushed_at = time.monotonic()
        self.sources: set[Path] = set()

    # -- layout -------------------------------------------------------------------------
    def resume(self) -> bool:
        """Pick up a laid-out partial store and its finished files, if there is one."""
        plan = self.plan
        plan.parts_dir.mkdir(parents=True, exist_ok=True)
        for p in plan.parts_dir.glob("*.tmp-*"):
            p.unlink(missing_ok=True)
        for p in plan.store_path.parent.glob(plan.store_path.name + ".tmp-*"):
            p.unlink(missing_ok=True)
        if not ((plan.parts_dir / "layout.json").is_file() and plan.partial_path.is_file()):
            return False
        self.layout = open_layout(plan.partial_path)
        for m in sorted(plan.parts_dir.glob("done-*.json")):
            for row, (status, error) in json.loads(m.read_text()).items():
                self.done[int(row)] = (status, error)
        self.summary.resumed = len(self.done)
        return True

    def prepare(self) -> None:
        """Lay a new store file out, unless one was resumed; open it for writing."""
        plan = self.plan
        if self.layout is None:
            plan.partial_path.unlink(missing_ok=True)
            for m in plan.parts_dir.glob("done-*.json"):
                m.unlink()
            self.layout = self._lay_out()
            _write_json(
                plan.parts_dir / "layout.json", {"store_id": plan.store_id, **self.layout.to_json()}
            )
        self.fd = os.open(plan.partial_path, os.O_RDWR)

    def _lay_out(self) -> Layout:
        plan, feat = self.plan, self.plan.feature
        files = [
            FileLayout(
                f.entry.index,
                f.entry.filepath,
                f.n_frames,
                f.duration_s,
                f.info.orig_sr,
                f.content,
                f.key,
            )
            for f in plan.files
        ]
        dtype = np.dtype(feat.store_dtype)
        frame_bytes = int(np.prod(feat.frame_shape)) * dtype.itemsize
        target_bytes = sum(
            int(np.prod(s.frame_layout()[0], dtype=np.int64)) * s.frame_layout()[1].itemsize
            for s in plan.targets
            if s.frame_level
        )
        total = sum(f.n_frames for f in files)
        need = total * (frame_bytes + target_bytes) + len(files) * 1024 + (1 << 20)
        folder = plan.store_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if need > free:
            raise DiskFullError(
                f"not enough space in {folder}: the store needs {_size(need)}, {_size(free)} are free; "
                "free some space or give another --stores folder"
            )
        # take the space before HDF5 writes a byte: a write that fails inside HDF5 leaves it
        # in a state it cannot close cleanly
        fd = os.open(plan.partial_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, need)
        finally:
            os.close(fd)
        attrs = {
            "dataset": plan.collection.name,
            "pyjama": str(plan.dataset),
            "pyjama_sha1": plan.pyjama_sha1,
            "audio_root": plan.audio_root or "",
            "feature": feat.value_params(),
            "feature_key": plan.feature_key,
            "store_id": plan.store_id,
            "versions": library_versions(),
            "skipped": [str(p) for p in plan.collection.problems],
            "failed": plan.failed,
            "warnings": [
                f"entry {f.entry.index} ({f.entry.filepath}): {w}"
                for f in plan.files
                for w in f.warnings
            ],
            "notes": plan.notes,
            "off_grid": plan.off_grid,
        }
        entries = [f.entry for f in plan.files]
        return lay_out(
            plan.partial_path,
            files,
            feat.frame_shape,
            dtype,
            plan.targets,
            file_targets(entries, plan.targets),
            lambda i: frame_targets(entries[i], plan.targets, feat, plan.files[i].n_frames),
            attrs,
            annotated(entries, plan.targets),
        )

    # -- markers ----------------------------------------------------------------------------
    def record(self, rows: dict[int, tuple[int, str]], force: bool = False) -> None:
        self.done.update(rows)
        self.unflushed.update(rows)
        if force or time.monotonic() - self.flushed_at >= MARKER_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Make the finished rows durable, then say so in a marker."""
        if not self.unflushed:
            return
        os.fdatasync(self.fd)
        n = len(list(self.plan.parts_dir.glob("done-*.json")))
        _write_json(
            self.plan.parts_dir / f"done-{n:06d}.json",
            {str(k): list(v) for k, v in sorted(self.unflushed.items())},
        )
        self.unflushed.clear()
        self.flushed_at = time.monotonic()

    # -- rows that exist elsewhere ----------------------------------------------------------
    def find_sources(self) -> dict[Path, list[tuple[int, Any]]]:
        """Files left whose rows the catalogue knows, grouped by the store that holds them."""
        files = self.plan.files
        todo = {i: files[i].key for i in range(len(files)) if i not in self.done}
        found = self.catalogue.find_rows(todo.values())
        by_source: dict[Path, list[tuple[int, Any]]] = {}
        for i, key in todo.items():
            src = found.get(key)
            if src is not None and src.n_frames == files[i].n_frames:
                by_source.setdefault(src.store, []).append((i, src))
        return by_source

    def copy_existing(self, by_source: dict[Path, list[tuple[int, Any]]]) -> None:
        for store, items in by_source.items():
            try:
                at, dtype, shape = features_offset(store)
                src_fd = os.open(store, os.O_RDONLY)
            except (OSError, StoreError):
                continue  # gone or damaged since: those files are computed instead
            try:
                if dtype != self.layout.dtype or shape != self.layout.frame_shape:
                    continue
                fb = self.layout.frame_bytes
                for i, src in items:
                    copy_range(
                        src_fd,
                        self.fd,
                        at + src.offset * fb,
                        self.layout.rows_at(i),
                        src.n_frames * fb,
                    )
                    # no marker: after a crash, copying again costs less than a flush now
                    self.done[i] = (STATUS_OK, "")
                    self.summary.copied += 1
            finally:
                os.close(src_fd)
            self.sources.add(store)

    # -- rows to compute --------------------------------------------------------------------
    def tasks(self, jobs: int) -> list[list[FileJob]]:
        """The files left, longest first, in tasks small enough to balance ``jobs`` workers."""
        files = self.plan.files
        left = sorted(
            (i for i in range(len(files)) if i not in self.done),
            key=lambda i: -files[i].n_frames,
        )
        workers = max(1, jobs if jobs > 0 else os.cpu_count() or 1)
        per = max(1, min(16, math.ceil(len(left) / (32 * workers))))
        out = []
        for s in range(0, len(left), per):
            out.append(
                [
                    FileJob(
                        i,
                        str(files[i].path),
                        files[i].size,
                        files[i].mtime_ns,
                        files[i].n_frames,
                        self.layout.rows_at(i),
                    )
                    for i in left[s : s + per]
                ]
            )
        return out

    def compute(
        self, jobs: int, backend: str, scheduler: str | None, strict: bool, progress: bool
    ) -> None:
        from joblib import Parallel, delayed

        tasks = self.tasks(jobs)
        if not tasks:
            return
        feat = self.plan.feature
        params, dtype = feat.to_dict(), self.layout.dtype.str
        store = str(self.plan.partial_path.absolute())
        cache = filter_cache_dir(self.plan.stores)
        bar = progress_bar(sum(len(t) for t in tasks), feat.kind, "file", enabled=progress)
        try:
            with joblib_backend(backend, jobs, scheduler):
                results = Parallel(return_as="generator_unordered")(
                    delayed(run_task)(t, params, store, dtype, cache) for t in tasks
                )
                for res in results:
                    s = self.summary
                    s.peak_rss_mb[res.pid] = max(s.peak_rss_mb.get(res.pid, 0.0), res.peak_rss_mb)
                    s.computed += sum(st == STATUS_OK for st, _ in res.rows.values())
                    self.record(res.rows)
                    bar.update(len(res.rows))
                    errors = [e for st, e in res.rows.values() if st == STATUS_FAILED]
                    for e in errors:
                        self.log(f"error: {e}")
                    if strict and errors:
                        raise StrictStop(errors[0])
        finally:
            bar.close()
            self.flush()

    # -- done -------------------------------------------------------------------------------
    def finish(self) -> None:
        plan, layout = self.plan, self.layout
        n = len(plan.files)
        missing = [i for i in range(n) if i not in self.done]
        if missing:
            raise StoreError(f"{len(missing)} file(s) of {plan.store_path} were not computed")
        status = np.array([self.done[i][0] for i in range(n)], dtype=np.uint8)
        errors = {i: e for i, (st, e) in self.done.items() if st == STATUS_FAILED}
        finish(self.fd, layout, status, errors)
        os.close(self.fd)
        self.fd = None
        os.replace(plan.partial_path, plan.store_path)
        _fsync_dir(plan.store_path.parent)
        shutil.rmtree(plan.parts_dir, ignore_errors=True)
        self.catalogue.touch(self.sources)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
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


def register(plan: Plan, catalogue: Catalogue) -> StoreRecord:
    """Record a complete store and its rows in the catalogue (again, harmlessly, if known)."""
    t = read_tables(plan.store_path)
    now = time.time()
    rec = catalogue.record(plan.store_path)
    record = StoreRecord(
        plan.store_path.absolute(),
        plan.collection.name,
        str(plan.dataset),
        plan.pyjama_sha1,
        plan.audio_root,
        plan.feature.kind,
        plan.feature_key,
        plan.feature.value_params(),
        t.n_files,
        t.total_frames,
        float(t.duration_s.sum()),
        plan.store_path.stat().st_size,
        rec.created if rec else now,
        now,
    )
    catalogue.register(record, zip(t.keys.tolist(), t.offset.tolist(), t.n_frames.tolist()))
    return record


def execute(
    plan: Plan,
    jobs: int = 1,
    backend: str = "loky",
    strict: bool = False,
    progress: bool = True,
    log=print,
    scheduler: str | None = None,
    wait: bool = False,
) -> Summary:
    """Build the store of ``plan`` (or find it built). Returns the summary; the store exists
    when it returns.

    ``backend`` and ``scheduler``: see :func:`precompute.backends.joblib_backend`.
    Raises :class:`LockedError` when another process builds it (unless ``wait``),
    :class:`DiskFullError` when the disk is full (a rerun continues), :class:`StrictStop`.
    """
    t0 = time.perf_counter()
    summary = Summary(
        plan.store_path,
        skipped=[str(p) for p in plan.collection.problems],
        changed=list(plan.changed),
        warnings=_warnings(plan),
    )
    catalogue = Catalogue(plan.stores)
    try:
        summary.existed = plan.store_path.exists()
        if not summary.existed:
            with StoreLock(plan.lock_path, wait=wait, log=log):
                summary.existed = plan.store_path.exists()  # built while this one waited
                if not summary.existed:
                    _build(
                        plan, catalogue, summary, jobs, backend, scheduler, strict, progress, log
                    )
        if catalogue.record(plan.store_path) is None:
            register(plan, catalogue)
        else:
            catalogue.touch([plan.store_path])
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG):
            raise DiskFullError(
                f"no space left in {plan.store_path.parent} ({e.strerror}); free some space "
                "and re-run: the files already computed are kept"
            ) from None
        raise
    t = read_tables(plan.store_path)
    summary.files = t.n_files
    summary.failed = t.failed
    summary.audio_s = float(t.duration_s.sum())
    summary.seconds = time.perf_counter() - t0
    summary.peak_rss_mb[os.getpid()] = peak_rss_mb()
    return summary


def _warnings(plan: Plan) -> list[str]:
    out = []
    for f in plan.files:
        where = f"entry {f.entry.index} ({f.entry.filepath})"
        out += [f"{where}: {w}" for w in f.warnings]
        if f.n_frames < plan.feature.patch_frames:
            out.append(
                f"{where}: shorter than one patch ({f.n_frames} < {plan.feature.patch_frames} frames): kept, 0 patches"
            )
    return out


def _build(plan, catalogue, summary, jobs, backend, scheduler, strict, progress, log) -> None:
    build = Build(plan, catalogue, summary, log)
    warm = None
    try:
        build.resume()
        sources = build.find_sources()
        n_copied = sum(len(v) for v in sources.values())
        if len(plan.files) - len(build.done) - n_copied > 0 and backend == "loky" and jobs != 1:
            # the workers start (and import librosa) while this process lays out and copies
            warm = threading.Thread(
                target=warm_up,
                args=(plan.feature.to_dict(), jobs, filter_cache_dir(plan.stores)),
                daemon=True,
            )
            warm.start()
        build.prepare()
        build.copy_existing(sources)
        if warm is not None:
            warm.join()
        build.compute(jobs, backend, scheduler, strict, progress)
        build.finish()
    finally:
        build.close()


def filter_cache_dir(stores: Path) -> str:
    return str((stores / ".cache" / "librosa").absolute())


def warm_up(feature_params: dict, jobs: int, cache: str | None = None) -> None:
    """Start ``jobs`` loky workers and have each compute the feature once on a short silence,
    so that imports and first-call costs are paid before the first file arrives."""
    from joblib import Parallel, delayed

    with joblib_backend("loky", jobs):
        n = jobs if jobs > 0 else os.cpu_count() or 1
        Parallel()(delayed(_warm_worker)(feature_params, cache) for _ in range(n))


def _warm_worker(feature_params: dict, cache: str | None) -> int:
    use_filter_cache(cache)
    feature = make_feature(feature_params)
    feature.compute(np.zeros(2 * feature.sr, dtype=np.float32))
    return os.getpid()


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
    wait: bool = False,
    pitch_units: dict[str, str] | None = None,
) -> Summary:
    """Plan and execute in one call (the Python face of ``precompute run``)."""
    plan = make_plan(dataset, feature, stores, audio_root, strict, pitch_units=pitch_units)
    return execute(
        plan,
        jobs=jobs,
        backend=backend,
        strict=strict,
        progress=progress,
        log=log,
        scheduler=scheduler,
        wait=wait,
    )


__all__ = [
    "DiskFullError",
    "LockedError",
    "Plan",
    "PlanError",
    "PyjamaError",
    "StoreError",
    "StrictStop",
    "Summary",
    "execute",
    "make_plan",
    "run",
]
