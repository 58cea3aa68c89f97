"""Plan -> lay out -> compute -> seal -> register: one view over the feature pool.

- :mod:`.plan` reads the pyjama and identifies every audio file by its content;
- :mod:`.layout` finds the rows the pool has and lays out new segments for the rest;
- :mod:`.compute` runs the joblib tasks that write the missing rows in place;
- :mod:`.seal` makes each finished segment whole, visible and registered;
- :mod:`.register` writes the view and records it in the catalogue.

Features are never copied: a label edit, another patch hop or a renamed file writes a view and
nothing else, added files add a segment holding only them. After ``kill -9``, Ctrl-C or a full
disk a rerun computes only what is missing, and the view reads the same bytes as an
uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.catalogue import Catalogue, touch
from common.features import Feature, make_feature
from common.holds import hold
from common.pause import pause_point
from common.pyjama import PyjamaError, resolve_audio_path
from common.store import (
    STATUS_OK,
    DiskFullError,
    MissingSegmentsError,
    Outcome,
    StoreError,
    open_segment_layout,
    read_segment,
    read_tables,
)

from .compute import (
    FileJob,
    StrictStop,
    TaskResult,
    compute,
    filter_cache_dir,
    peak_rss_mb,
    start_warm_up,
    workers_for,
)
from .layout import RowPlan, SegmentBuild, check_space, find_rows, segment_attrs
from .lock import LockedError, StoreLock
from .plan import Plan, PlanError, make_plan
from .register import draft, register_view, view_bytes
from .seal import seal


@dataclass
class Summary:
    store_path: Path
    files: int = 0  # files whose features the store holds
    computed: int = 0  # by this run
    reused: int = 0  # rows the pool already held
    resumed: int = 0  # done by an earlier, interrupted run
    failed: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    repaired: int = 0  # files whose segment had been deleted, computed again
    audio_s: float = 0.0
    seconds: float = 0.0
    existed: bool = False
    workers: int = 0  # processes started to compute (0: none, or this one computed)
    peak_rss_mb: dict[int, float] = field(default_factory=dict)  # per process, workers and this one

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


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
    """Build the view of ``plan`` (or find it built). Returns the summary; the view exists
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
        warnings=plan.warnings,
    )
    catalogue = Catalogue(plan.stores)
    try:
        summary.existed = _usable(plan, catalogue, summary)
        if not summary.existed:
            with StoreLock(plan.lock_path, wait=wait, log=log):
                pause_point("locked")
                summary.existed = _usable(plan, catalogue, summary)
                if not summary.existed:
                    _build(
                        plan, catalogue, summary, jobs, backend, scheduler, strict, progress, log
                    )
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


def _usable(plan: Plan, catalogue: Catalogue, summary: Summary) -> bool:
    """The view exists with every segment it needs (then it is registered and marked used)."""
    if not plan.store_path.is_file():
        return False
    try:
        t = read_tables(plan.store_path)
    except MissingSegmentsError as e:
        summary.repaired = len(read_tables(plan.store_path, missing_ok=True).missing)
        note = f"{e}; computing them again"
        if note not in summary.warnings:  # asked again once the lock is taken
            summary.warnings.append(note)
        return False
    except StoreError:
        return False  # not a view of this format: built again under the same name
    if catalogue.record(plan.store_path) is None:
        catalogue.register_view(plan.store_path)
    touch(plan.store_path)
    summary.reused = t.n_files
    return True


def _build(plan, catalogue, summary, jobs, backend, scheduler, strict, progress, log) -> None:
    rows = find_rows(plan, catalogue)
    summary.reused = len(rows.reused)
    drafted = None
    with contextlib.ExitStack() as stack:
        for b in sorted(rows.builds, key=lambda b: b.id):  # one order: no two builds deadlock
            b.lock = stack.enter_context(StoreLock(b.lock_path, wait=True, log=log))
        stack.callback(_close, rows.builds)
        todo = [b for b in rows.builds if not _sealed_meanwhile(b, catalogue, rows)]
        for b in todo:
            b.resume()
            summary.resumed += b.resumed
        check_space(plan, rows, view_bytes(plan))
        n_todo = sum(len(b.todo()) for b in todo)
        workers = workers_for(n_todo, jobs, backend)
        feat = plan.feature
        warm = None
        if workers and backend == "loky":  # the workers start (librosa's import) meanwhile
            warm = start_warm_up(feat.to_dict(), workers, filter_cache_dir(plan.stores))
        if n_todo:
            drafted = draft(plan)
            stack.callback(drafted.unlink, missing_ok=True)
        attrs = segment_attrs(plan.feature_key, feat.value_params())
        for b in todo:
            b.prepare(feat.frame_shape, np.dtype(feat.store_dtype), attrs)
        jobs_ = _file_jobs(plan, rows, todo)
        if jobs_:
            summary.workers = workers
            compute(
                jobs_, feat.to_dict(), np.dtype(feat.store_dtype).newbyteorder("<").str,
                filter_cache_dir(plan.stores), workers, backend, scheduler,
                lambda res: _on_result(res, rows, summary, log), strict, progress, warm,
            )  # fmt: skip
        for b in todo:
            held = seal(b, catalogue)
            if held is not None:
                rows.holds.append(held)
        register_view(plan, rows, catalogue, drafted)


def _sealed_meanwhile(b: SegmentBuild, catalogue: Catalogue, rows: RowPlan) -> bool:
    """Another build made this very segment while this one waited for its lock: use it."""
    held = hold(b.final)
    if held is None:
        return False
    rows.holds.append(held)
    catalogue.register_segment(b.final)
    t = read_segment(b.final)
    b.layout = open_segment_layout(b.final)
    b.done = {i: Outcome(int(s), "failed in another build", str(c))
              for i, (s, c) in enumerate(zip(t.status, t.checksum))}  # fmt: skip
    return True


def _file_jobs(plan: Plan, rows: RowPlan, todo: list[SegmentBuild]) -> list[FileJob]:
    """One job per row left to compute, with the byte offset its rows go to."""
    first_file = {}
    for i, (b, r) in rows.place.items():
        first_file.setdefault((b, r), plan.files[i])
    index = {id(b): k for k, b in enumerate(rows.builds)}
    out = []
    for b in todo:
        k = index[id(b)]
        for r in b.todo():
            f = first_file[(k, r)]
            out.append(FileJob(k, r, str(f.path), f.size, f.mtime_ns, f.n_frames,
                               str(b.partial.absolute()), b.layout.frames_at(r)))  # fmt: skip
    return out


def _on_result(res: TaskResult, rows: RowPlan, summary: Summary, log) -> list[str]:
    s = summary
    s.peak_rss_mb[res.pid] = max(s.peak_rss_mb.get(res.pid, 0.0), res.peak_rss_mb)
    by_build: dict[int, dict[int, Outcome]] = {}
    for (b, r), v in res.done.items():
        by_build.setdefault(b, {})[r] = v
    for b, done in by_build.items():
        rows.builds[b].finished(done)
    s.computed += sum(d.status == STATUS_OK for d in res.done.values())
    errors = [d.error for d in res.done.values() if d.status != STATUS_OK]
    for e in errors:
        log(f"error: {e}")
    pause_point("file_done")
    return errors


def _close(builds: list[SegmentBuild]) -> None:
    for b in builds:
        try:
            b.flush()
        finally:
            b.close()


def find_built(
    dataset: str | os.PathLike,
    feature: Feature,
    stores: str | os.PathLike = "stores",
    audio_root: str | os.PathLike | None = None,
) -> Summary | None:
    """The summary of the view this request would build, when it is built already, found
    without reading the pyjama: a view of this very pyjama (its sha1) and feature, every file
    of it complete and its audio unchanged (size and mtime as when it was hashed, that hash the
    view's). None otherwise, and then a plan decides (a real dataset's pyjama takes seconds to
    read, a no-op run must not)."""
    t0 = time.perf_counter()
    dataset = Path(dataset).absolute()
    if not dataset.is_file() or not Path(stores).is_dir():
        return None
    catalogue = Catalogue(stores)
    root = str(Path(audio_root).absolute()) if audio_root is not None else None
    sha1 = hashlib.sha1(dataset.read_bytes()).hexdigest()
    for rec in catalogue.find_store(dataset, feature.key(), root):
        if rec.pyjama_sha1 != sha1:
            continue
        try:
            t = read_tables(rec.path)
        except StoreError:
            return None  # segments gone, or another format: a plan repairs or rebuilds it
        if t.failed or t.attrs.get("skipped") or not _audio_unchanged(catalogue, t, dataset, root):
            return None
        touch(rec.path)
        path = Path(stores) / rec.path.parent.name / rec.path.name  # as a plan names it
        return Summary(path, files=t.n_files, reused=t.n_files, existed=True,
                       warnings=list(t.attrs.get("warnings") or []),
                       audio_s=float(t.duration_s.sum()), seconds=time.perf_counter() - t0)  # fmt: skip
    return None


def _audio_unchanged(catalogue: Catalogue, t, dataset: Path, audio_root: str | None) -> bool:
    paths = [str(resolve_audio_path(str(n), dataset.parent, audio_root).absolute())
             for n in t.names]  # fmt: skip
    known = catalogue.audio(paths)
    for p, content in zip(paths, t.content):
        k = known.get(p)
        try:
            st = os.stat(p)
        except OSError:
            return False
        if k is None or (k[0], k[1], k[2]) != (st.st_size, st.st_mtime_ns, content):
            return False
    return True


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
    feat = feature if isinstance(feature, Feature) else make_feature(feature)
    built = None if pitch_units else find_built(dataset, feat, stores, audio_root)
    if built is not None:
        return built
    plan = make_plan(dataset, feat, stores, audio_root, strict, pitch_units=pitch_units)
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
