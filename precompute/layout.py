"""Lay out: which rows the pool has already, and the new segments that will hold the rest.

Every planned file's content key is looked up in the catalogue (after it has been made to
agree with the pool folder). Files found are reused where they are, under a shared lock that
keeps gc off their segments until the view is written. The others, one per distinct key, are
grouped in plan order into new segments of at most :data:`SEGMENT_MAX_BYTES`, each named by a
hash of the keys it holds: a rerun of the same work (after a kill, or with other labels) finds
the same segment and continues it from its markers, and two builds that need the same new rows
wait for each other instead of computing them twice.

A segment being built is ``seg-<id>.h5.partial`` with ``seg-<id>.parts/done-*.json`` markers,
written only after the rows they name are flushed to disk, under the lock ``seg-<id>.lock``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.catalogue import Catalogue, RowSource
from common.features import params_hash
from common.fileio import pread_into, pwrite_all, write_json
from common.holds import Hold, hold
from common.store import (
    SEGMENT_MAX_BYTES,
    STATUS_OK,
    DiskFullError,
    Outcome,
    SegmentLayout,
    StoreError,
    lay_out_segment,
    open_segment_layout,
    segment_bytes,
    segment_path,
)

from .compute import library_versions
from .lock import StoreLock
from .plan import Plan

MARKER_EVERY_S = 2.0  # at most this much finished work is lost (and redone) after a kill


@dataclass
class SegmentBuild:
    """One new segment: the keys it holds, its layout, and the rows finished so far."""

    id: str
    final: Path
    keys: list[str]
    n_frames: list[int]
    lock: StoreLock | None = None
    layout: SegmentLayout | None = None
    fd: int | None = None
    done: dict[int, Outcome] = field(default_factory=dict)  # row -> its outcome
    unflushed: dict[int, Outcome] = field(default_factory=dict)
    flushed_at: float = 0.0
    resumed: int = 0

    @property
    def partial(self) -> Path:
        return self.final.with_name(self.final.name + ".partial")

    @property
    def parts(self) -> Path:
        return self.final.with_name(self.final.stem + ".parts")

    @property
    def lock_path(self) -> Path:
        return self.final.with_name(self.final.stem + ".lock")

    def resume(self) -> bool:
        """Pick up the partial segment and its markers, if a run before left them."""
        for p in self.parts.glob("*.tmp-*"):
            p.unlink(missing_ok=True)
        if not self.partial.is_file():
            return False
        try:
            layout = open_segment_layout(self.partial)
        except OSError:
            return False  # killed while HDF5 wrote the layout: laid out again
        if layout.keys != self.keys:
            return False
        self.layout = layout
        for m in sorted(self.parts.glob("done-*.json")):
            for row, (status, error, checksum) in json.loads(m.read_text()).items():
                self.done[int(row)] = Outcome(status, error, checksum)
        self.resumed = len(self.done)
        return True

    def prepare(self, frame_shape: tuple[int, int], dtype: np.dtype, attrs: dict) -> None:
        """Lay the segment out, unless it was resumed; open it for flushing."""
        if self.layout is None:
            shutil.rmtree(self.parts, ignore_errors=True)
            self.partial.unlink(missing_ok=True)
            self.layout = lay_out_segment(
                self.partial, self.keys, self.n_frames, frame_shape, dtype, attrs
            )
        self.parts.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.partial, os.O_RDWR)
        self.flushed_at = time.monotonic()

    def todo(self) -> list[int]:
        return [i for i in range(len(self.keys)) if i not in self.done]

    def finished(self, rows: dict[int, Outcome]) -> None:
        """Rows finished by a task; made durable at least every :data:`MARKER_EVERY_S`, and at
        once for the first (so that an interrupted run always leaves something to resume)."""
        first = not self.done
        self.done.update(rows)
        self.unflushed.update(rows)
        if first or time.monotonic() - self.flushed_at >= MARKER_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Make the finished rows durable, then say so in a marker."""
        if not self.unflushed or self.fd is None:
            return
        os.fdatasync(self.fd)
        n = len(list(self.parts.glob("done-*.json")))
        write_json(
            self.parts / f"done-{n:06d}.json",
            {str(k): list(v) for k, v in sorted(self.unflushed.items())},
        )
        self.unflushed.clear()
        self.flushed_at = time.monotonic()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class RowPlan:
    """Where each planned file's rows are or will be."""

    reused: dict[int, RowSource]  # plan file -> rows found in the pool
    builds: list[SegmentBuild]
    place: dict[int, tuple[int, int]]  # plan file -> (build, row in it)
    holds: list[Hold] = field(default_factory=list)

    @property
    def n_new(self) -> int:
        return sum(len(b.keys) for b in self.builds)


def find_rows(plan: Plan, catalogue: Catalogue) -> RowPlan:
    """The rows the pool has, held, and the new segments for the rest (not yet laid out)."""
    catalogue.sync_pool(plan.feature_key)
    for parts in plan.pool.glob("*.parts"):  # markers of a segment sealed by a run that died
        if parts.with_name(parts.name.removesuffix(".parts") + ".h5").is_file():
            shutil.rmtree(parts, ignore_errors=True)
    found = catalogue.find_rows(f.key for f in plan.files)
    reused: dict[int, RowSource] = {}
    holds: dict[Path, Hold | None] = {}
    for i, f in enumerate(plan.files):
        src = found.get(f.key)
        if src is None or src.n_frames != f.n_frames:
            continue
        if src.segment not in holds:
            holds[src.segment] = hold(src.segment)
        if holds[src.segment] is not None:  # else deleted since it was looked up: computed
            reused[i] = src
    new: dict[str, int] = {}
    for i, f in enumerate(plan.files):
        if i not in reused:
            new.setdefault(f.key, f.n_frames)
    builds = group_segments(plan.stores, plan.feature_key, frame_bytes_of(plan), list(new.items()))
    where = {k: (b, r) for b, build in enumerate(builds) for r, k in enumerate(build.keys)}
    place = {i: where[f.key] for i, f in enumerate(plan.files) if i not in reused}
    return RowPlan(reused, builds, place, [h for h in holds.values() if h is not None])


def group_segments(
    stores: Path, feature_key: str, frame_bytes: int, new: list[tuple[str, int]]
) -> list[SegmentBuild]:
    """New rows ``(key, n_frames)`` in order, in segments of at most :data:`SEGMENT_MAX_BYTES`,
    each named by its feature key and keys."""
    groups: list[list[tuple[str, int]]] = []
    size = 0
    for key, n in new:
        nbytes = n * frame_bytes
        if groups and size + nbytes <= SEGMENT_MAX_BYTES:
            groups[-1].append((key, n))
            size += nbytes
        else:
            groups.append([(key, n)])
            size = nbytes
    out = []
    for g in groups:
        keys = [k for k, _ in g]
        sid = params_hash([feature_key, keys])[:16]
        out.append(SegmentBuild(sid, segment_path(stores, feature_key, sid), keys,
                                [n for _, n in g]))  # fmt: skip
    return out


def copy_rows(src: int, src_at: int, build: SegmentBuild, row: int, nbytes: int) -> str:
    """Copy a file's rows from another file into row ``row`` of a segment being built, and
    return their checksum (one read and one write of each byte, in blocks)."""
    h = hashlib.blake2b(digest_size=16)
    buf = np.empty(min(nbytes, 1 << 24), dtype=np.uint8)
    dst, at = build.layout.frames_at(row), 0
    while at < nbytes:
        n = min(len(buf), nbytes - at)
        pread_into(src, buf[:n], src_at + at)
        h.update(buf[:n])
        pwrite_all(build.fd, buf[:n], dst + at)
        at += n
    return h.hexdigest()


def fill_by_copy(build: SegmentBuild, sources: list[tuple[Path, int, int, str | None]]) -> None:
    """Fill every row of a laid-out segment from ``(file, offset, nbytes, checksum)`` ranges of
    other files (compaction, migration): read once, checksummed, written once. A range whose
    bytes differ from the checksum given is refused."""
    fds: dict[Path, int] = {}
    try:
        for r, (path, at, nbytes, expected) in enumerate(sources):
            if path not in fds:
                fds[path] = os.open(path, os.O_RDONLY)
            checksum = copy_rows(fds[path], at, build, r, nbytes)
            if expected is not None and checksum != expected:
                raise StoreError(
                    f"{path}: the rows of {build.keys[r]} (bytes {at}-{at + nbytes}) differ from "
                    "their checksum; run precompute verify"
                )
            build.finished({r: Outcome(STATUS_OK, "", checksum)})
    finally:
        for fd in fds.values():
            os.close(fd)


def segment_attrs(feature_key: str, feature: dict) -> dict:
    """What a segment says of itself: the feature it holds and the versions that made it."""
    return {"feature_key": feature_key, "feature": feature, "versions": library_versions()}


def frame_bytes_of(plan: Plan) -> int:
    feat = plan.feature
    return int(np.prod(feat.frame_shape)) * np.dtype(feat.store_dtype).itemsize


def check_space(plan: Plan, rows: RowPlan, view_bytes: int) -> None:
    """Refuse a build that cannot fit, before anything is computed."""
    fb = frame_bytes_of(plan)
    # a resumed segment has its blocks already (reserved when it was laid out)
    need = view_bytes + sum(segment_bytes(b.n_frames, fb) for b in rows.builds if not b.layout)
    folder = plan.pool if rows.builds else plan.store_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise DiskFullError(
            f"not enough space in {plan.store_path.parent}: the store needs {size_text(need)}, "
            f"{size_text(free)} are free; free some space or give another --stores folder"
        )


def size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
