"""``precompute ls`` and ``precompute gc``: what the stores folder holds, and clearing it out.

gc never breaks a reader. Every process that reads a view (a training's StoreDataset, a build
reusing rows) holds a shared lock on the view and its segments (:mod:`common.holds`); gc
removes a file only when it can take an exclusive lock on it, so a view or segment in use stays,
whatever its age. A segment is removed once no view on disk needs it, nobody holds it, and it has
been unneeded for ``--grace`` hours (0 by default; on a network filesystem whose locks other
hosts may not see, give the longest a training runs).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.catalogue import Catalogue
from common.config import ConfigError
from common.features import make_feature
from common.holds import try_exclusive
from common.store import (
    POOL,
    StoreError,
    read_attrs,
    read_tables,
    rebuild_hint,
    relative_to,
    segment_files,
    view_files,
    view_segment_paths,
)

from .lock import LockedError, StoreLock
from .migrate import migrating_segments


def _old_format_hint(root: Path, attrs: dict) -> str:
    version = attrs.get("format_version")
    if version == 2:
        return f"format 2: move its features into the pool with `precompute migrate {root}`"
    if version == 3 and attrs.get("role") == "view":
        return (f"a view of format 3 (dense frame targets): write it again, nothing recomputed, "
                f"with `{rebuild_hint(attrs, root)}`; gc removes it once unused")  # fmt: skip
    return f"format {version}: not usable, delete it"


def _frame_bytes(feature: dict) -> int:
    """Bytes of one frame of a store's features (its rows live in the pool)."""
    try:
        f = make_feature(feature)
    except (ConfigError, TypeError):
        return 0
    return int(np.prod(f.frame_shape)) * np.dtype(f.store_dtype).itemsize


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def list_stores(stores: str | os.PathLike) -> list[str]:
    """One line per view, then the pool, then files that are not usable views."""
    root = Path(stores)
    cat = Catalogue(root)
    records = cat.views()
    rows = [("store", "dataset", "feature", "files", "hours", "view", "features", "created",
             "last used")]  # fmt: skip
    for r in records:
        rows.append((relative_to(root, r.path), r.dataset, r.feature_kind, str(r.files),
                     f"{r.audio_s / 3600:.2f}", _mb(r.path.stat().st_size),
                     _mb(r.frames * _frame_bytes(r.feature)), _when(r.created),
                     _when(r.last_used)))  # fmt: skip
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    segs = cat.segments()
    if segs:
        live = live_frames(root)
        total = sum(s["frames"] for s in segs)
        used = sum(min(live.get(s["path"], 0), s["frames"]) for s in segs)
        lines.append(
            f"pool: {len(segs)} segment(s), {_mb(sum(s['bytes'] for s in segs))}, "
            f"{used / max(total, 1):.0%} of their frames used by a store"
        )
    known = {r.path for r in records}
    for p in view_files(root):
        if Path(os.path.abspath(p)) in known:
            continue
        try:
            attrs = read_attrs(p)
        except OSError as e:
            lines.append(f"{p}: not usable ({e})")
            continue
        lines.append(f"{p}: {_old_format_hint(root, attrs)}")
    for p in sorted(root.glob(f"{POOL}/*/*.partial")):
        lines.append(f"{p}: unfinished segment; the `precompute run` that made it continues it")
    if len(lines) == 1 and not records:
        lines.append(f"(no stores in {root})")
    return lines


def live_frames(root: Path) -> dict[Path, int]:
    """Per segment, the frames that the views on disk use."""
    live: dict[Path, set[tuple[int, int]]] = {}
    for v in view_files(root):
        try:
            t = read_tables(v, missing_ok=True)
        except StoreError:
            continue
        for s, f, n in zip(t.segment, t.first, t.n_frames):
            live.setdefault(t.segments[s].path, set()).add((int(f), int(n)))
    return {p: sum(n for _, n in rows) for p, rows in live.items()}


def needed_segments(root: Path) -> set[Path]:
    """The segments some view on disk refers to (read from the views, not the cache), and
    those of migrations not finished."""
    out: set[Path] = migrating_segments(root)
    for v in view_files(root):
        try:
            out.update(Path(os.path.abspath(p)) for p in view_segment_paths(v))
        except (OSError, KeyError):
            continue  # an older format: it needs no segment
    return out


def collect_garbage(
    stores: str | os.PathLike,
    days: float,
    dry_run: bool = False,
    grace_hours: float = 0.0,
    log: Callable = print,
) -> int:
    """Remove views unused for ``days`` days, then the segments no remaining view needs, and
    builds abandoned for as long. Returns the bytes freed."""
    root = Path(stores)
    cutoff = time.time() - days * 86400
    cat = Catalogue(root)
    verb = "would remove" if dry_run else "removed"
    freed = 0
    for r in cat.views():
        if r.last_used >= cutoff:
            continue
        if read_attrs(r.path).get("role") != "view":  # replaced by something else since
            cat.forget(r.path)
            continue
        fd = try_exclusive(r.path)
        if fd is None:
            log(f"kept {r.path}: a process is reading it")
            continue
        try:
            size = r.path.stat().st_size
            log(f"{verb} {r.path} ({_mb(size)}, last used {_when(r.last_used)})")
            if not dry_run:
                cat.forget(r.path)
                r.path.unlink(missing_ok=True)
            freed += size
        finally:
            os.close(fd)
    freed += _remove_old_views(root, cutoff, verb, dry_run, log)
    freed += remove_unneeded_segments(root, cat, grace_hours, dry_run, log)
    return freed + _remove_abandoned(root, cutoff, verb, dry_run, log)


def remove_unneeded_segments(
    root: Path, cat: Catalogue, grace_hours: float, dry_run: bool, log: Callable
) -> int:
    """Segments no view needs, unheld, unneeded for ``grace_hours``: removed."""
    needed = needed_segments(root)
    unneeded = [Path(os.path.abspath(p)) for p in segment_files(root)]
    unneeded = [p for p in unneeded if p not in needed]
    now = time.time()
    since = {p: now for p in unneeded} if dry_run else cat.dead_since(unneeded, now)
    verb = "would remove" if dry_run else "removed"
    freed = 0
    for p in unneeded:
        if now - since[p] < grace_hours * 3600:
            log(f"kept {relative_to(root, p)}: unneeded since {_when(since[p])}, within --grace")
            continue
        fd = try_exclusive(p)
        if fd is None:
            log(f"kept {relative_to(root, p)}: a process is reading it")
            continue
        try:
            size = p.stat().st_size
            log(f"{verb} {relative_to(root, p)} (no store needs it, {_mb(size)})")
            if not dry_run:
                p.unlink(missing_ok=True)
                cat.forget_segment(p)
            freed += size
        finally:
            os.close(fd)
    return freed


def _remove_old_views(root: Path, cutoff: float, verb: str, dry_run: bool, log) -> int:
    """Views of format 3 (dense frame targets, read by no mirpatch since) unused since ``cutoff``
    and held by nobody; their segments then go as any unneeded segment."""
    freed = 0
    for p in view_files(root):
        try:
            attrs = read_attrs(p)
        except OSError:
            continue
        if (attrs.get("format_version"), attrs.get("role")) != (3, "view"):
            continue
        if p.stat().st_mtime >= cutoff or (fd := try_exclusive(p)) is None:
            continue
        try:
            size = p.stat().st_size
            log(f"{verb} {p} (a view of format 3, {_mb(size)})")
            if not dry_run:
                p.unlink(missing_ok=True)
            freed += size
        finally:
            os.close(fd)
    return freed


def _remove_abandoned(root: Path, cutoff: float, verb: str, dry_run: bool, log) -> int:
    """Unfinished segments (and build leftovers) untouched since ``cutoff``, that no build holds."""
    freed = 0
    leftovers = [*root.glob(f"{POOL}/*/*.partial"), *root.glob("*/*.tmp-*"),
                 *root.glob(f"{POOL}/*/*.tmp-*")]  # fmt: skip
    for p in leftovers:
        if not p.exists() or p.stat().st_mtime >= cutoff:
            continue
        final = p.with_name(p.name.split(".h5")[0] + ".h5")
        in_pool = final.parent.parent.name == POOL  # a segment's lock, or a view's build lock
        lock = final.with_name(final.stem + ".lock" if in_pool else final.name + ".lock")
        try:
            with StoreLock(lock):
                size = p.stat().st_size
                log(f"{verb} {p} (abandoned, {_mb(size)})")
                if not dry_run:
                    p.unlink(missing_ok=True)
                    shutil.rmtree(final.with_name(final.stem + ".parts"), ignore_errors=True)
                freed += size
        except LockedError:
            log(f"kept {p}: a build is running")
    return freed
