"""``precompute gc --compact``: rewrite segments that are mostly dead.

A segment's frames are live when some view on disk refers to them. The live rows of every
segment less than half live are copied (in the order they were in) into new segments of the
same feature key, sealed and registered like any other; every view that referred to the old
segments is then re-pointed (a new view file renamed over the old one, keeping its last-used
time). The old segments, now unneeded, are removed by gc's rule: only once nobody holds them,
so a training still reading through the old view keeps its bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.catalogue import Catalogue
from common.store import (
    STATUS_OK,
    SegmentRef,
    StoreError,
    read_segment,
    read_tables,
    relative_to,
    repoint_view,
    segment_files,
    view_files,
)

from .compute import library_versions
from .layout import copy_rows, group_segments
from .lock import StoreLock
from .manage import live_frames, remove_unneeded_segments
from .seal import seal

LIVE_BELOW = 0.5  # a segment with less than this share of its frames live is rewritten


def compact(
    stores: str | os.PathLike,
    dry_run: bool = False,
    grace_hours: float = 0.0,
    log: Callable = print,
) -> int:
    """Rewrite the segments less than half live; returns the bytes freed."""
    root = Path(stores)
    cat = Catalogue(root)
    live = live_frames(root)
    by_key: dict[str, list] = {}
    for p in segment_files(root):
        p = Path(os.path.abspath(p))
        try:
            t = read_segment(p)
        except StoreError:
            continue
        share = live.get(p, 0) / max(t.total_frames, 1)
        if 0 < share < LIVE_BELOW:
            by_key.setdefault(t.feature_key, []).append(t)
            log(f"{'would rewrite' if dry_run else 'rewriting'} {relative_to(root, p)}: "
                f"{share:.0%} of its {t.total_frames} frames live")  # fmt: skip
    if dry_run:
        return 0
    for key, old in by_key.items():
        _rewrite(root, cat, key, old, log)
    return remove_unneeded_segments(root, cat, grace_hours, False, log)


def _rewrite(root: Path, cat: Catalogue, feature_key: str, old: list, log: Callable) -> None:
    """Copy the live rows of segments ``old`` into new ones and re-point the views."""
    used = _used_rows(root, {t.path for t in old})
    rows: dict[str, tuple] = {}  # key -> (segment table, row) of its live copy
    for t in old:
        for r, (k, f, s) in enumerate(zip(t.keys, t.first, t.status)):
            if s == STATUS_OK and (t.path, int(f)) in used and k not in rows:
                rows[k] = (t, r)
    frame_bytes = old[0].frame_bytes
    builds = group_segments(
        root, feature_key, frame_bytes, [(k, int(t.n_frames[r])) for k, (t, r) in rows.items()]
    )
    attrs = {"feature_key": feature_key, "feature": old[0].attrs.get("feature", {}),
             "versions": library_versions()}  # fmt: skip
    holds, moved = [], {}
    for b in builds:
        with StoreLock(b.lock_path, wait=True, log=log):
            if not b.final.is_file():
                b.prepare(old[0].frame_shape, old[0].dtype, attrs)
                for r, k in enumerate(b.keys):
                    t, i = rows[k]
                    fd = os.open(t.path, os.O_RDONLY)
                    try:
                        at = t.features_at + int(t.first[i]) * frame_bytes
                        checksum = copy_rows(fd, at, b, r, int(t.n_frames[i]) * frame_bytes)
                    finally:
                        os.close(fd)
                    if checksum != t.checksum[i]:
                        raise StoreError(f"{t.path}: the rows of {k} differ from their checksum; "
                                         "run precompute verify before compacting")  # fmt: skip
                    b.record({r: (STATUS_OK, "", checksum)})
                holds.append(seal(b, cat))
            new = read_segment(b.final)
            for r, k in enumerate(new.keys):
                t, i = rows[k]
                moved[(t.path, int(t.first[i]))] = (new, int(new.first[r]))
    for view in used_by(root, {t.path for t in old}):
        _repoint(view, moved)
        cat.register_view(view)
        log(f"re-pointed {relative_to(root, view)}")


def _used_rows(root: Path, segments: set[Path]) -> set[tuple[Path, int]]:
    """``(segment, first frame)`` of every row of ``segments`` that a view refers to."""
    out = set()
    for v in used_by(root, segments):
        t = read_tables(v, missing_ok=True)
        for s, f in zip(t.segment, t.first):
            if t.segments[s].path in segments:
                out.add((t.segments[s].path, int(f)))
    return out


def used_by(root: Path, segments: set[Path]) -> list[Path]:
    out = []
    for v in view_files(root):
        try:
            t = read_tables(v, missing_ok=True)
        except StoreError:
            continue
        if any(s.path in segments for s in t.segments):
            out.append(v)
    return out


def _repoint(view: Path, moved: dict) -> None:
    t = read_tables(view, missing_ok=True)
    refs: list[SegmentRef] = []
    index: dict[Path, int] = {}
    segment, first = np.array(t.segment), np.array(t.first)
    for i in range(t.n_files):
        ref, f = t.segments[int(t.segment[i])], int(t.first[i])
        if (ref.path, f) in moved:
            new, f = moved[(ref.path, f)]
            ref = SegmentRef(new.path, new.features_at, new.total_frames)
        if ref.path not in index:
            index[ref.path] = len(refs)
            refs.append(ref)
        segment[i], first[i] = index[ref.path], f
    repoint_view(view, segment, first, refs)
