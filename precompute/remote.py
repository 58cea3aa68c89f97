"""The precompute commands on a stores folder at a URL (``s3://bucket/prefix``): push and pull,
list, info, verify and gc (:mod:`common.remote` says how the folder is laid out).

``push`` uploads a local view and exactly the segments it needs, after checking each of its
files' frames against their checksums; the view goes last, so that a reader never finds a view
whose frames are not there yet. ``pull`` downloads them into a local stores folder, checks
them the same way, and records them in its catalogue. ``precompute run --stores URL`` builds
into a local stage (``<cache>/stage/``, a stores folder of its own whose pool later runs
reuse) and pushes what it built.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.catalogue import Catalogue
from common.fileio import replace_file
from common.remote import Remote, RemoteError, cache_root, view_at, views_at
from common.store import (
    POOL,
    StoreError,
    StoreTables,
    frames_checksum,
    read_tables,
    relative_to,
    stores_root_of,
    view_files,
    view_segment_paths,
)

from .inspect import _check_tables, check_rows, info

Log = Callable[[str], None]
VERIFY_BATCH = 256 << 20  # bytes of rows fetched at once by verify


def stage_of(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local stores folder that ``precompute run --stores URL`` builds in."""
    return cache_root(cache_dir) / "stage" / Remote(url).key


def find_remote(dataset: str, feature, url: str, cache_dir=None) -> str | None:
    """The URL of the store of this pyjama and feature in the stores folder at ``url``, if it
    is there (what makes ``precompute run --stores URL`` a no-op)."""
    if not Path(dataset).is_file():
        return None
    found, _ = Remote(url).find_view(Path(dataset), feature.key(), feature.kind, cache_dir)
    return found


def push(
    stores: str | os.PathLike, url: str, views: list[Path] | None = None, log: Log = print
) -> list[str]:
    """Upload views of ``stores`` (default: all) and the segments they need that the remote
    folder lacks; returns the views' URLs."""
    root, remote = Path(stores), Remote(url)
    if views is None:
        views = [v for v in view_files(root) if _is_view(v)]
    have = {
        rel: int(d.get("size", -1)) for rel, d in remote.ls_details(f"{POOL}/*/seg-*.h5").items()
    }
    out = []
    for v in views:
        t = read_tables(v)  # every segment it needs is here
        bad = [f"{t.names[i]}: {fault}" for i in range(t.n_files) if (fault := check_rows(t, i))]
        if bad:
            raise StoreError(f"{v}: not pushed, {len(bad)} file(s) fail their checks: {bad[0]}")
        for s in sorted({int(s) for s in t.segment}):
            seg = t.segments[s].path
            rel = relative_to(root, seg)
            if have.get(rel) == seg.stat().st_size:
                _same_rows(remote, rel, t, s)  # reused: its rows must be this view's
                continue
            log(f"push {rel} ({seg.stat().st_size / 2**20:,.1f} MB)")
            remote.put(seg, rel)
            have[rel] = seg.stat().st_size
        rel = relative_to(root, v)
        remote.put(v, rel)  # last: the view appears once its frames are there
        log(f"push {rel}")
        out.append(remote.url_of(rel))
    return out


def _same_rows(remote: Remote, rel: str, t: StoreTables, s: int) -> None:
    """The remote segment ``rel`` holds the rows view ``t`` expects of its segment ``s`` (their
    checksums, read from the segment's table by a few ranged GETs): a segment of the same name
    built elsewhere with other bytes is refused, never overwritten (other views may use it)."""
    import h5py

    with (
        remote.errors(rel),
        remote.fs.open(remote.path(rel), "rb", block_size=1 << 20) as f,
        h5py.File(f, "r") as h,
    ):
        there = dict(zip(h["rows/first"][()].tolist(), h["rows/checksum"][()].astype(str)))
    mine = [i for i in range(t.n_files) if int(t.segment[i]) == s]
    differ = [str(t.names[i]) for i in mine if there.get(int(t.first[i])) != t.checksum[i]]
    if differ:
        raise StoreError(
            f"{remote.url_of(rel)}: a segment of this name is there with other frames for "
            f"{len(differ)} file(s) ({differ[0]}, ...), built elsewhere; not pushed. Pull the "
            f"remote store instead (precompute pull {remote.url} STORES), or remove that segment"
        )


def pull(url: str, stores: str | os.PathLike, log: Log = print) -> list[Path]:
    """Download the view at ``url`` (or every view of the stores folder at ``url``) and the
    segments it needs that ``stores`` lacks, checked against their checksums, and record them
    in the catalogue; returns the local views."""
    root = Path(stores)
    remote, rels = views_at(url)
    catalogue = Catalogue(root)
    out = []
    for rel in rels:
        local = root / rel
        tmp = local.with_name(f".{local.name}.pull")
        remote.get(rel, tmp)
        try:
            t = read_tables(tmp, missing_ok=True)
            for s in sorted({int(s) for s in t.segment}):
                seg = t.segments[s].path
                srel = relative_to(stores_root_of(tmp), seg)
                if seg.is_file():
                    continue
                log(f"pull {srel}")
                remote.get(srel, seg)
            t = read_tables(tmp)
            bad = [f"{t.names[i]}: {f}" for i in range(t.n_files) if (f := check_rows(t, i))]
            if bad:
                raise StoreError(
                    f"{remote.url_of(rel)}: {len(bad)} file(s) fail their checks: {bad[0]}"
                )
            replace_file(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        for seg in {t.segments[int(s)].path for s in t.segment}:
            catalogue.register_segment(seg)
        catalogue.register_view(local)
        log(f"pull {rel}")
        out.append(local)
    return out


def _is_view(path: Path) -> bool:
    try:
        read_tables(path, missing_ok=True)
    except StoreError:
        return False
    return True


def list_remote(url: str, cache_dir=None) -> list[str]:
    """One line per view of the stores folder at ``url``, then its pool."""
    remote = Remote(url)
    details = remote.ls_details("*/*.h5")
    segs = remote.ls_details(f"{POOL}/*/seg-*.h5")
    rows = [("store", "dataset", "feature", "files", "hours", "view", "features", "uploaded")]
    for rel, d in details.items():
        if rel.startswith(f"{POOL}/"):
            continue
        try:
            t = read_tables(remote.mirror(rel, cache_dir), missing_ok=True)
        except StoreError as e:
            rows.append((rel, f"not usable ({e})", "", "", "", "", "", ""))
            continue
        rows.append((rel, str(t.attrs.get("dataset", "")), str(t.feature.get("kind", "")),
                     str(t.n_files), f"{t.duration_s.sum() / 3600:.2f}",
                     f"{int(d['size']) / 2**20:.1f} MB",
                     f"{t.total_frames * t.frame_bytes / 2**20:.1f} MB", _when(d)))  # fmt: skip
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if segs:
        mb = sum(int(d["size"]) for d in segs.values()) / 2**20
        lines.append(f"pool: {len(segs)} segment(s), {mb:,.1f} MB")
    if len(rows) == 1:
        lines.append(f"(no stores in {remote.url})")
    return lines


def _when(d: dict) -> str:
    t = d.get("LastModified")
    return t.strftime("%Y-%m-%d %H:%M") if hasattr(t, "strftime") else ""


def remote_info(url: str, cache_dir=None) -> dict:
    """``precompute info`` of a view at ``url``."""
    remote, rel = view_at(url)
    local = remote.mirror(rel, cache_dir)
    out = info(local)
    out["store"] = url
    out["segments"] = [remote.url_of(s) for s in out["segments"]]
    t = read_tables(local, missing_ok=True)
    gone = {k for k, s in enumerate(t.segments)
            if remote.info(relative_to(stores_root_of(local), s.path)) is None}  # fmt: skip
    out["files_missing"] = int(sum(int(s) in gone for s in t.segment))
    return out


def verify_remote(url: str, cache_dir=None, log: Log | None = None) -> tuple[list[str], str]:
    """Faults of the view at ``url``, or of every view of the stores folder at ``url``: its
    tables, and every file's frames fetched by ranged GETs and checked against their
    checksum (a changed byte in a remote segment is named by its file); and what was checked."""
    remote, rels = views_at(url)
    faults: list[str] = []
    seen: set[tuple[str, int, int]] = set()
    files = nbytes = 0
    present: dict[str, int | None] = {}  # segment -> its size, None when unusable
    for rel in rels:
        try:
            t = read_tables(remote.mirror(rel, cache_dir), missing_ok=True)
        except StoreError as e:
            faults.append(f"{remote.url_of(rel)}: {e}")
            continue
        faults += [f"{remote.url_of(rel)}: {f}" for f in _check_tables(t)]
        root = stores_root_of(t.path)
        segs = [relative_to(root, s.path) for s in t.segments]
        for s in segs:
            if s not in present:
                found = remote.info(s)
                present[s] = None if found is None else int(found.get("size", 0))
        bad: set[int] = set()
        for k, s in enumerate(segs):
            used = np.flatnonzero(t.segment == k)
            if not len(used):
                continue
            end = max(sum(t.byte_range(int(i))[1:]) for i in used)
            if present[s] is None:
                faults.append(f"{remote.url_of(s)}: missing (the view {rel} needs it)")
                bad.add(k)
            elif present[s] < end:
                faults.append(f"{remote.url_of(s)}: {present[s]} bytes, shorter than the "
                              f"{end} the view {rel} reads from it")  # fmt: skip
                bad.add(k)
        todo = [i for i in range(t.n_files) if int(t.segment[i]) not in bad
                and (segs[int(t.segment[i])], int(t.first[i]), int(t.n_frames[i])) not in seen]  # fmt: skip
        seen.update((segs[int(t.segment[i])], int(t.first[i]), int(t.n_frames[i])) for i in todo)
        faults += _check_remote_rows(remote, t, segs, todo)
        files += len(todo)
        nbytes += int(sum(int(t.n_frames[i]) for i in todo)) * t.frame_bytes
        if log:
            log(f"{remote.url_of(rel)}: {len(todo)} file(s) checked")
    what = (f"{len(rels)} store(s), {files} files ({nbytes / 2**20:,.1f} MB of features fetched): "
            "their frames match their checksums, hold no NaN or Inf; tables, targets and "
            "parameters consistent")  # fmt: skip
    return faults, what


def _check_remote_rows(
    remote: Remote, t: StoreTables, segs: list[str], files: list[int]
) -> list[str]:
    faults = []
    fb = t.frame_bytes
    batch: list[int] = []
    size = 0
    for k, i in enumerate(files):
        batch.append(i)
        size += int(t.n_frames[i]) * fb
        if size < VERIFY_BATCH and k + 1 < len(files):
            continue
        rels, starts, ends = [], [], []
        for j in batch:
            _, at, n = t.byte_range(j)
            rels.append(segs[int(t.segment[j])])
            starts.append(at)
            ends.append(at + n)
        for j, data, rel, s, e in zip(batch, remote.ranges(rels, starts, ends), rels, starts, ends):
            problems = []
            if frames_checksum(data) != t.checksum[j]:
                problems.append("its frames differ from their checksum: the segment changed")
            values = np.frombuffer(data, dtype=t.dtype)
            bad = int((~np.isfinite(values)).sum())
            if bad:
                problems.append(f"{bad} NaN or Inf values")
            if problems:
                faults.append(
                    f"{t.names[j]}: {'; '.join(problems)} ({remote.url_of(rel)}, bytes {s}-{e})"
                )
        batch, size = [], 0
    return faults


def gc_remote(
    url: str, days: float | None, grace_hours: float, dry_run: bool, log: Log = print
) -> int:
    """Remove the views of the stores folder at ``url`` uploaded more than ``days`` days ago
    (an object store keeps no last use), then the segments no view there needs that were
    uploaded more than ``grace_hours`` hours ago (a push uploads a view's segments before the
    view: a grace of an hour keeps those of a push under way). Returns the bytes freed."""
    remote = Remote(url)
    now = time.time()
    verb = "would remove" if dry_run else "remove"
    freed = 0
    details = remote.ls_details("*/*.h5")
    views = {r: d for r, d in details.items() if not r.startswith(f"{POOL}/")}
    if days is not None:
        old = [r for r, d in views.items() if now - _stamp(d) > days * 86400]
        for r in old:
            log(f"{verb} {remote.url_of(r)} (uploaded {_when(views[r])})")
            freed += int(views.pop(r)["size"])
        if old and not dry_run:
            remote.remove(old)
    needed = _needed(remote, list(views))
    grace = grace_hours * 3600
    segs = remote.ls_details(f"{POOL}/*/seg-*.h5")
    dead = [r for r, d in segs.items() if r not in needed and now - _stamp(d) > grace]
    if dead:  # a view pushed meanwhile may reuse one: the views are read again
        needed |= _needed(remote, [r for r in remote.views() if r not in views])
        dead = [r for r in dead if r not in needed]
    for r in dead:
        log(
            f"{verb} {remote.url_of(r)} ({int(segs[r]['size']) / 2**20:,.1f} MB, no store needs it)"
        )
        freed += int(segs[r]["size"])
    if dead and not dry_run:
        remote.remove(dead)
    return freed


def _needed(remote: Remote, views: list[str]) -> set[str]:
    """The segments these views refer to, whatever their format."""
    needed: set[str] = set()
    for r in views:
        local = remote.mirror(r)
        try:
            needed.update(relative_to(stores_root_of(local), p) for p in view_segment_paths(local))
        except KeyError:
            continue  # an older format: it needs no segment
        except OSError as e:
            raise RemoteError(f"{remote.url_of(r)}: not readable ({e}); gc stops, removing no "
                              "segment") from None  # fmt: skip
    return needed


def _stamp(d: dict) -> float:
    t = d.get("LastModified")
    if hasattr(t, "timestamp"):
        return t.timestamp()
    raise RemoteError(f"{d.get('name')}: the object store gives no upload time")
