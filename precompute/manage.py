"""``precompute ls`` and ``precompute gc``: what the stores folder holds, and clearing it out."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from common.catalogue import Catalogue
from common.store import StoreError, read_tables

from .lock import LockedError, StoreLock


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def list_stores(stores: str | os.PathLike) -> list[str]:
    """One line per store: the catalogue's, then files the catalogue does not know."""
    root = Path(stores)
    cat = Catalogue(root)
    records = cat.stores()
    rows = [("store", "dataset", "feature", "files", "hours", "size", "created", "last used")]
    for r in records:
        rows.append(
            (
                str(r.path.relative_to(root.absolute()))
                if r.path.is_relative_to(root.absolute())
                else str(r.path),
                r.dataset,
                r.feature_kind,
                str(r.files),
                f"{r.audio_s / 3600:.2f}",
                _mb(r.bytes),
                _when(r.created),
                _when(r.last_used),
            )
        )
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    known = {r.path for r in records}
    for p in sorted(root.glob("*/*.h5")):
        if p.absolute() in known:
            continue
        try:
            t = read_tables(p)
            lines.append(
                f"{p}: not in the catalogue ({t.n_files} files); `precompute run` registers it"
            )
        except StoreError as e:
            lines.append(f"not usable: {e}")
    for p in sorted(root.glob("*/*.h5.partial")):
        lines.append(f"{p}: unfinished build; `precompute run` with the same request continues it")
    if len(lines) == 1 and not records:
        lines.append(f"(no stores in {root})")
    return lines


def collect_garbage(
    stores: str | os.PathLike, days: float, dry_run: bool = False, log: Callable = print
) -> int:
    """Remove stores unused for ``days`` days, with their catalogue rows, and unfinished builds
    (and leftovers of older versions) untouched for as long. Returns the bytes freed."""
    root = Path(stores)
    cutoff = time.time() - days * 86400
    cat = Catalogue(root)
    freed = 0
    verb = "would remove" if dry_run else "removed"
    for r in cat.stores():
        if r.last_used >= cutoff:
            continue
        size = r.path.stat().st_size
        log(f"{verb} {r.path} ({_mb(size)}, last used {_when(r.last_used)})")
        if not dry_run:
            cat.forget(r.path)
            r.path.unlink(missing_ok=True)
        freed += size
    leftovers = [*root.glob("*/*.h5.partial"), *root.glob("*/*.shards"), *root.glob("*/*.tmp-*")]
    for p in leftovers:
        if p.stat().st_mtime >= cutoff:
            continue
        store = p.with_name(p.name.split(".h5")[0] + ".h5")
        try:
            with StoreLock(store.with_name(store.name + ".lock")):
                size = _tree_size(p)
                log(f"{verb} {p} (abandoned, {_mb(size)})")
                if not dry_run:
                    _remove(p)
                    if p.suffix == ".partial":
                        shutil.rmtree(store.with_name(store.name + ".parts"), ignore_errors=True)
                freed += size
        except LockedError:
            log(f"kept {p}: a build is running")
    return freed


def _tree_size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
