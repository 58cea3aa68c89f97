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
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.catalogue import Catalogue
from common.fileio import write_json
from common.holds import hold
from common.store import (
    DiskFullError,
    SegmentRef,
    StoreError,
    ViewFiles,
    read_attrs,
    relative_to,
    segment_bytes,
    view_files,
    write_view,
)

from .format2 import copy_view_parts, read_format2
from .layout import fill_by_copy, group_segments, segment_attrs, size_text
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


def _marker(path: Path) -> Path:
    """``<store>.migrating``: the segments a migration made and the rows whose bytes it freed
    in the old store (written before freeing them). gc keeps those segments."""
    return path.with_name(path.name + ".migrating")


def migrating_segments(stores: str | os.PathLike) -> set[Path]:
    """The segments of migrations not finished (for gc, which must keep them)."""
    out = set()
    for m in Path(stores).glob("*/*.migrating"):
        out |= {
            Path(os.path.abspath(m.parent.parent / p))
            for p in json.loads(m.read_text())["segments"]
        }
    return out


def _migrate_one(root: Path, cat: Catalogue, path: Path, log: Callable) -> Path:
    old = read_format2(path)
    key = str(old.attrs["feature_key"])
    cat.sync_pool(key)
    files = old.ok
    marker = _marker(path)
    state = json.loads(marker.read_text()) if marker.is_file() else {"segments": [], "freed": []}
    found = cat.find_rows(old.keys[files])
    holds = [h for h in map(hold, {s.segment for s in found.values()}) if h is not None]
    held = {h.path for h in holds}
    reuse = {k: s for k, s in found.items() if Path(os.path.abspath(s.segment)) in held}
    gone = [str(old.names[i]) for i in state["freed"] if str(old.keys[i]) not in reuse]
    if gone:
        raise StoreError(
            f"{path}: an interrupted migration moved the rows of {len(gone)} file(s) "
            f"({', '.join(gone[:3])}) into segments that are gone; delete {path} and "
            f"{marker.name}, and rebuild with: precompute run --dataset {old.attrs.get('pyjama')}"
        )
    new: dict[str, int] = {}
    for i in files:
        if str(old.keys[i]) not in reuse:
            new.setdefault(str(old.keys[i]), int(old.n_frames[i]))
    first_row = {str(old.keys[i]): int(i) for i in files[::-1]}
    attrs = segment_attrs(key, old.attrs.get("feature", {}))
    fb = old.frame_bytes
    for b in group_segments(root, key, fb, list(new.items())):
        with StoreLock(b.lock_path, wait=True, log=log):
            h = hold(b.final)
            if h is None:
                _check_space(root, segment_bytes(b.n_frames, fb))
                b.prepare(old.frame_shape, old.dtype, attrs)
                rows = [first_row[k] for k in b.keys]
                fill_by_copy(b, [(old.path, *old.byte_range(i), None) for i in rows])
                h = seal(b, cat)
            holds.append(h)
        rows = [first_row[k] for k in b.keys]
        state["segments"].append(relative_to(root, b.final))
        state["freed"] += rows
        write_json(marker, state)  # durable before any byte is freed
        _free(old, rows)
    found = cat.find_rows(old.keys[files])  # now every row is in the pool
    view = _write(path, old, found)
    cat.register_view(view)
    marker.unlink(missing_ok=True)
    log(f"migrated {path}: {len(files)} files, {len(reuse)} rows reused, {len(new)} moved "
        "into the pool")  # fmt: skip
    return view


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
    # written beside the store, then renamed over it: the store is whole until the view is
    return write_view(path, table, refs, old.frame_shape, old.dtype, parts["targets"],
                      parts["file_targets"], parts["frame_runs"], attrs, parts["annotated"])  # fmt: skip


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
            at, n = old.byte_range(i)
            if n and fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, at, n) != 0:
                return  # not on this filesystem: kept until the view replaces the store
        os.fsync(fd)
    finally:
        os.close(fd)
