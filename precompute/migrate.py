"""``precompute migrate``: stores of format 2 (each holding its own copy of the features) become
views over the pool, without recomputing anything.

Per store, under its build lock: the rows the pool already has are reused; the others are copied
into new segments (read once, checksummed, written once), each sealed and registered before the
next. Where the filesystem can, the copied ranges of the old store are then freed (hole
punching), so the disk never holds more than one extra segment. Last, the view is written over
the old store's name. A migration that dies part-way leaves the old store with some ranges
freed whose rows are sealed in the pool: a rerun reuses them and copies the rest.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.catalogue import Catalogue
from common.holds import hold
from common.store import (
    STATUS_OK,
    DiskFullError,
    SegmentRef,
    ViewFiles,
    copy_view_parts,
    read_attrs,
    read_format2,
    segment_bytes,
    view_files,
    write_view,
)

from .compute import library_versions
from .layout import copy_rows, group_segments, size_text
from .lock import StoreLock
from .seal import seal

_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def format2_stores(stores: str | os.PathLike) -> list[Path]:
    out = []
    for p in view_files(stores):
        try:
            if read_attrs(p).get("format_version") == 2:
                out.append(p)
        except OSError:
            continue
    return out


def migrate(stores: str | os.PathLike, log: Callable = print) -> list[Path]:
    """Turn every format-2 store of ``stores`` into a view over the pool; returns the views."""
    root = Path(stores)
    cat = Catalogue(root)
    done = []
    for p in format2_stores(root):
        with StoreLock(p.with_name(p.name + ".lock"), wait=True, log=log):
            if p.is_file() and read_attrs(p).get("format_version") == 2:
                done.append(_migrate_one(root, cat, p, log))
    return done


def _migrate_one(root: Path, cat: Catalogue, path: Path, log: Callable) -> Path:
    old = read_format2(path)
    key = str(old.attrs["feature_key"])
    cat.sync_pool(key)
    files = old.ok
    found = cat.find_rows(old.keys[files])
    holds = {s.segment: hold(s.segment) for s in found.values()}
    reuse = {k: s for k, s in found.items() if holds.get(s.segment) is not None}
    new: dict[str, int] = {}
    for i in files:
        k = str(old.keys[i])
        if k not in reuse:
            new.setdefault(k, int(old.n_frames[i]))
    builds = group_segments(root, key, old.frame_bytes, list(new.items()))
    first_row = {str(old.keys[i]): int(i) for i in files[::-1]}
    attrs = {"feature_key": key, "feature": old.attrs.get("feature", {}),
             "versions": library_versions()}  # fmt: skip
    sealed = {}
    for b in builds:
        with StoreLock(b.lock_path, wait=True, log=log):
            if not b.final.is_file():
                _check_space(root, segment_bytes(b.n_frames, old.frame_bytes))
                b.prepare(old.frame_shape, old.dtype, attrs)
                _copy_into(old, b, first_row)
                seal(b, cat)
            sealed[b.final] = hold(b.final)
        _free(old, [first_row[k] for k in b.keys])
    found = cat.find_rows(old.keys[files])  # now every row is in the pool
    view = _write(path, old, found)
    cat.register_view(view)
    log(f"migrated {path}: {len(files)} files, {len(reuse)} rows reused, {len(new)} moved "
        "into the pool")  # fmt: skip
    return view


def _copy_into(old, build, first_row: dict[str, int]) -> None:
    fd = os.open(old.path, os.O_RDONLY)
    try:
        for r, k in enumerate(build.keys):
            i = first_row[k]
            at = old.features_at + int(old.offset[i]) * old.frame_bytes
            checksum = copy_rows(fd, at, build, r, int(old.n_frames[i]) * old.frame_bytes)
            build.record({r: (STATUS_OK, "", checksum)})
    finally:
        os.close(fd)


def _write(path: Path, old, found) -> Path:
    files = old.ok
    refs: list[SegmentRef] = []
    index: dict[Path, int] = {}
    seg, first, sums = [], [], []
    for i in files:
        src = found[str(old.keys[i])]
        if src.segment not in index:
            index[src.segment] = len(refs)
            refs.append(SegmentRef(src.segment, src.features_at, src.frames))
        seg.append(index[src.segment])
        first.append(src.first)
        sums.append(src.checksum)
    table = ViewFiles(
        old.names[files].tolist(), old.entry[files], np.array(seg, np.int32),
        np.array(first, np.int64), old.n_frames[files], old.duration_s[files],
        old.orig_sr[files], old.content[files].tolist(), old.keys[files].tolist(), sums,
    )  # fmt: skip
    parts = copy_view_parts(path, files)
    attrs = {k: v for k, v in old.attrs.items() if k != "format_version"}
    attrs["failed"] = old.failed
    tmp = path.with_name(path.name + ".view")
    write_view(tmp, table, refs, old.frame_shape, old.dtype, parts["targets"],
               parts["file_targets"], parts["frame_targets"], attrs, parts["annotated"])  # fmt: skip
    os.replace(tmp, path)
    return path


def _check_space(root: Path, need: int) -> None:
    free = shutil.disk_usage(root).free
    if need > free:
        raise DiskFullError(
            f"not enough space in {root} to move a segment into the pool: it needs "
            f"{size_text(need)}, {size_text(free)} are free"
        )


def _free(old, rows: list[int]) -> None:
    """Give the disk blocks of rows now sealed in the pool back (where the filesystem can)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fallocate = getattr(libc, "fallocate", None)
    if fallocate is None:
        return
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fd = os.open(old.path, os.O_RDWR)
    try:
        for i in rows:
            at = old.features_at + int(old.offset[i]) * old.frame_bytes
            n = int(old.n_frames[i]) * old.frame_bytes
            if n and fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, at, n) != 0:
                return  # not on this filesystem: kept until the view replaces the store
        os.fsync(fd)
    finally:
        os.close(fd)
