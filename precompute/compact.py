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
from common.holds import hold
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

from .layout import fill_by_copy, group_segments, segment_attrs
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
    copies: dict[str, list[tuple]] = {}  # key -> every live copy (segment table, row)
    for t in old:
        for r, (k, f, s) in enumerate(zip(t.keys, t.first, t.status)):
            if s == STATUS_OK and (t.path, int(f)) in used:
                copies.setdefault(k, []).append((t, r))
    fb = old[0].frame_bytes
    builds = group_segments(
        root, feature_key, fb, [(k, int(c[0][0].n_frames[c[0][1]])) for k, c in copies.items()]
    )
    attrs = segment_attrs(feature_key, old[0].attrs.get("feature", {}))
    holds, moved = [], {}
    for b in builds:
        with StoreLock(b.lock_path, wait=True, log=log):
            held = hold(b.final)  # made by another compaction meanwhile
            if held is None:
                b.prepare(old[0].frame_shape, old[0].dtype, attrs)
                sources = []
                for k in b.keys:
                    t, i = copies[k][0]
                    sources.append((t.path, *t.byte_range(i), str(t.checksum[i])))
                fill_by_copy(b, sources)
                held = seal(b, cat)
            holds.append(held)
        new = read_segment(b.final)
        for r, k in enumerate(new.keys):
            for t, i in copies[k]:  # every copy of the key: the views on each are re-pointed
                moved[(t.path, int(t.first[i]))] = (new, int(new.first[r]))
    for view in used_by(root, {t.path for t in old}):
        with StoreLock(view.with_name(view.name + ".lock"), wait=True, log=log):
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
