"""The catalogue beside the stores: a cache of what the segments and the views say.

One SQLite file, ``STORES/catalogue.sqlite``, shared by every process that builds or reads
stores under that folder::

    segments       segment path -> feature key, frames, byte offset of its features, size
    rows           content key -> (segment, first frame, frame count, checksum): the features of
                   one audio file with one set of value parameters, wherever they were computed
    views          one row per view: its request (dataset, pyjama and its sha1, audio root,
                   feature key and parameters), its size, and when it was registered
    dead           segments no view needs, and since when (gc's grace period)
    audio          path -> (size, mtime, content hash, header): a file is rehashed only when its
                   size or mtime changed

Paths are relative to the stores folder, so the folder can move as a whole. Nothing here is
the only copy of anything: deleting the file loses nothing, the next process rebuilds it from
the segments' tables and the views (and reads the audio hashes again). A segment sealed by a
run that died before registering it is found by :meth:`Catalogue.sync_pool`; a view or segment
deleted by hand is forgotten the next time it is looked up. When a view was last used is its
file's modification time, set by whoever opens it.

The journal: WAL on a local filesystem, so that readers never block. WAL needs memory shared
between the processes of one host, which a network filesystem (NFS, Lustre, CIFS, GPFS, BeeGFS,
CephFS, FUSE) cannot give, so there the rollback journal is used and every transaction also
holds a POSIX lock on ``catalogue.lock``. The filesystem is read from ``/proc/self/mountinfo``;
``MIRPATCH_CATALOGUE=local`` or ``network`` (or ``Catalogue(mode=...)``) sets it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .store import (
    StoreError,
    read_segment,
    relative_to,
    segment_files,
    view_files,
    view_summary,
)

FILENAME = "catalogue.sqlite"
LOCKNAME = "catalogue.lock"
SCHEMA_VERSION = "4"  # 4: views of format 4 only (runs); the audio hashes carry over from 3
MODES = ("auto", "local", "network")
NETWORK_FILESYSTEMS = (
    "nfs", "nfs4", "lustre", "cifs", "smb3", "smbfs", "gpfs", "beegfs", "ceph", "glusterfs",
    "9p", "afs", "panfs", "pvfs2", "orangefs", "wekafs", "fuse",
)  # fmt: skip
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS segments (
    path TEXT PRIMARY KEY, feature_key TEXT, frames INTEGER, features_at INTEGER, bytes INTEGER
);
CREATE TABLE IF NOT EXISTS rows (
    key TEXT, segment TEXT, first INTEGER, n_frames INTEGER, checksum TEXT,
    PRIMARY KEY (key, segment)
);
CREATE INDEX IF NOT EXISTS rows_by_segment ON rows (segment);
CREATE TABLE IF NOT EXISTS views (
    path TEXT PRIMARY KEY, dataset TEXT, pyjama TEXT, pyjama_sha1 TEXT, audio_root TEXT,
    feature_kind TEXT, feature_key TEXT, feature TEXT, files INTEGER, frames INTEGER,
    audio_s REAL, created REAL
);
CREATE TABLE IF NOT EXISTS dead (segment TEXT PRIMARY KEY, since REAL);
CREATE TABLE IF NOT EXISTS audio (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, hash TEXT, info TEXT
);
"""


class CatalogueError(UserError):
    """A catalogue setting that cannot be used."""


@dataclass
class StoreRecord:
    """A view as the catalogue knows it."""

    path: Path  # absolute
    dataset: str
    pyjama: str
    pyjama_sha1: str
    audio_root: str | None
    feature_kind: str
    feature_key: str
    feature: dict[str, Any]
    files: int
    frames: int
    audio_s: float
    created: float

    @property
    def last_used(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0


@dataclass
class RowSource:
    """Where the rows of one content key are in the pool."""

    segment: Path  # absolute
    first: int  # first frame in that segment's features
    n_frames: int
    checksum: str
    features_at: int
    frames: int  # of the whole segment


def filesystem_type(path: str | os.PathLike) -> str:
    """The type of the filesystem holding ``path`` (``ext4``, ``nfs4``, ...), '' if unknown."""
    target = os.path.realpath(path)
    while not os.path.exists(target):
        target = os.path.dirname(target)
    best, kind = "", ""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                point = left.split()[4].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, right.split()[0]
    except OSError:
        return ""
    return kind


def catalogue_mode(root: str | os.PathLike, mode: str | None = None) -> str:
    """``local`` (WAL journal) or ``network`` (rollback journal under a POSIX lock)."""
    mode = (mode or os.environ.get("MIRPATCH_CATALOGUE") or "auto").lower()
    if mode not in MODES:
        raise CatalogueError(f"MIRPATCH_CATALOGUE={mode!r}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    kind = filesystem_type(root)
    network = kind.split(".")[0] in NETWORK_FILESYSTEMS or kind.startswith("fuse")
    return "network" if network else "local"


class Catalogue:
    """The catalogue of the stores folder ``root`` (created, or rebuilt, on first use)."""

    def __init__(self, root: str | os.PathLike, mode: str | None = None):
        self.root = Path(root)
        self.path = self.root / FILENAME
        self.mode = catalogue_mode(self.root, mode)

    # -- connection ------------------------------------------------------------------
    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.root.mkdir(parents=True, exist_ok=True)
        with self._network_lock():
            con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            try:
                journal = "WAL" if self.mode == "local" else "DELETE"
                con.execute(f"PRAGMA journal_mode={journal}")
                con.execute("PRAGMA busy_timeout=60000")
                con.execute("BEGIN IMMEDIATE")
                try:
                    self._ensure_schema(con)
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            finally:
                con.close()

    @contextmanager
    def _network_lock(self) -> Iterator[None]:
        if self.mode != "network":
            yield
            return
        fd = os.open(self.root / LOCKNAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _ensure_schema(self, con: sqlite3.Connection) -> None:
        """Create the tables, and fill them from the files when the cache is new (or was made
        by another version)."""
        have = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" in have:
            row = con.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone()
            if row and row[0] == SCHEMA_VERSION:
                return
        # the audio hashes do not depend on the store format: reading the audio again costs
        # as much as the audio itself, so they are kept
        keep_audio = "audio" in have and [c[1] for c in con.execute("PRAGMA table_info(audio)")] == [
            "path", "size", "mtime_ns", "hash", "info"]  # fmt: skip
        for name in have - ({"audio"} if keep_audio else set()):
            con.execute(f"DROP TABLE IF EXISTS {name}")
        for stmt in SCHEMA.strip().split(";"):
            if stmt.strip():
                con.execute(stmt)
        self._scan(con)
        con.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))

    def _scan(self, con: sqlite3.Connection) -> None:
        """Fill the cache from the segments' tables and the views on disk."""
        for seg in segment_files(self.root):
            try:
                self._insert_segment(con, read_segment(seg))
            except StoreError:
                continue  # not a segment of this format: gc reports it
        for view in view_files(self.root):
            try:
                summary = view_summary(view)
            except (StoreError, OSError, KeyError):
                continue  # an older format, or not a view: `precompute ls` says which
            self._insert_view(con, view, summary, view.stat().st_mtime)

    def _rel(self, path: str | os.PathLike) -> str:
        return relative_to(self.root, path)

    def _abs(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else Path(os.path.abspath(self.root)) / p

    # -- audio: content hashes cached by size and mtime ---------------------------
    def audio(self, paths: Iterable[str]) -> dict[str, tuple[int, int, str, dict]]:
        """``path -> (size, mtime_ns, hash, info)`` of the paths known."""
        paths = list(paths)
        out = {}
        with self._db() as con:
            for i in range(0, len(paths), 500):
                part = paths[i : i + 500]
                q = f"SELECT path, size, mtime_ns, hash, info FROM audio WHERE path IN ({','.join('?' * len(part))})"
                for p, size, mtime, h, info in con.execute(q, part):
                    out[p] = (size, mtime, h, json.loads(info))
        return out

    def remember_audio(self, rows: Iterable[tuple[str, int, int, str, dict]]) -> None:
        with self._db() as con:
            con.executemany(
                "INSERT OR REPLACE INTO audio VALUES (?, ?, ?, ?, ?)",
                [(p, s, m, h, json.dumps(i)) for p, s, m, h, i in rows],
            )

    # -- segments and rows ------------------------------------------------------------
    def _insert_segment(self, con: sqlite3.Connection, t) -> None:
        rel = self._rel(t.path)
        con.execute("DELETE FROM rows WHERE segment = ?", (rel,))
        con.execute(
            "INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?, ?)",
            (rel, t.feature_key, t.total_frames, t.features_at, t.path.stat().st_size),
        )
        con.executemany(
            "INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?)",
            [
                (k, rel, int(f), int(n), c)
                for k, f, n, s, c in zip(t.keys, t.first, t.n_frames, t.status, t.checksum)
                if s == 1
            ],
        )

    def register_segment(self, path: str | os.PathLike) -> None:
        """Record a sealed segment and its rows (again, harmlessly, if known)."""
        t = read_segment(path)
        with self._db() as con:
            self._insert_segment(con, t)

    def sync_pool(self, feature_key: str) -> None:
        """Make the catalogue agree with the pool folder of one feature key: register sealed
        segments it does not know, forget those that are gone."""
        on_disk = {self._rel(p): p for p in segment_files(self.root, feature_key)}
        with self._db() as con:
            known = {
                r[0]
                for r in con.execute(
                    "SELECT path FROM segments WHERE feature_key = ?", (feature_key,)
                )
            }
        for rel in known - on_disk.keys():
            self.forget_segment(self._abs(rel))
        for rel in on_disk.keys() - known:
            try:
                self.register_segment(on_disk[rel])
            except StoreError:
                continue

    def forget_segment(self, path: str | os.PathLike) -> None:
        rel = self._rel(path)
        with self._db() as con:
            for table, col in (("rows", "segment"), ("segments", "path"), ("dead", "segment")):
                con.execute(f"DELETE FROM {table} WHERE {col} = ?", (rel,))

    def find_rows(self, keys: Iterable[str]) -> dict[str, RowSource]:
        """Rows of each content key found in a segment that exists (the oldest such segment).

        Segments that no longer exist are forgotten on the way.
        """
        keys = list(dict.fromkeys(keys))
        found: dict[str, RowSource] = {}
        gone: set[str] = set()
        with self._db() as con:
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                q = (
                    "SELECT r.key, r.segment, r.first, r.n_frames, r.checksum, s.features_at, "
                    "s.frames FROM rows r JOIN segments s ON s.path = r.segment "
                    f"WHERE r.key IN ({','.join('?' * len(part))}) ORDER BY s.rowid DESC"
                )
                for key, seg, first, n, checksum, at, frames in con.execute(q, part):
                    if seg in gone:
                        continue
                    path = self._abs(seg)
                    if not path.is_file():
                        gone.add(seg)
                        continue
                    found[key] = RowSource(path, int(first), int(n), checksum, int(at), int(frames))
        for seg in gone:
            self.forget_segment(self._abs(seg))
        return found

    def segments(self, feature_key: str | None = None) -> list[dict[str, Any]]:
        """Every segment known: path (absolute), feature key, frames, bytes, and the frames of
        it that some view needs (``live``)."""
        q = "SELECT s.path, s.feature_key, s.frames, s.features_at, s.bytes FROM segments s" + (
            " WHERE s.feature_key = ?" if feature_key else ""
        )
        with self._db() as con:
            rows = con.execute(q, (feature_key,) if feature_key else ()).fetchall()
        return [
            {"path": self._abs(p), "feature_key": k, "frames": n, "features_at": a, "bytes": b}
            for p, k, n, a, b in rows
        ]

    # -- views ------------------------------------------------------------------------
    def _insert_view(
        self, con: sqlite3.Connection, path: Path, s: dict[str, Any], created: float
    ) -> None:
        rel = self._rel(path)
        con.execute(
            "INSERT OR REPLACE INTO views VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rel, s["dataset"], s["pyjama"], s["pyjama_sha1"], s["audio_root"],
                s["feature_kind"], s["feature_key"], json.dumps(s["feature"], sort_keys=True),
                s["files"], s["frames"], s["audio_s"], created,
            ),
        )  # fmt: skip
        con.executemany(
            "DELETE FROM dead WHERE segment = ?", [(self._rel(p),) for p in s["segments"]]
        )

    def register_view(self, path: str | os.PathLike) -> StoreRecord:
        """Record a view (again, harmlessly, if known: its first registration time stays)."""
        path = Path(path)
        summary = view_summary(path)
        rel = self._rel(path)
        with self._db() as con:
            row = con.execute("SELECT created FROM views WHERE path = ?", (rel,)).fetchone()
            self._insert_view(con, path, summary, row[0] if row else time.time())
        return self.record(path)

    def sync_views(self) -> None:
        """Make the catalogue agree with the views on disk: register those it does not know
        (written by a run that died before registering them), forget those that are gone."""
        with self._db() as con:
            known = {r[0] for r in con.execute("SELECT path FROM views")}
        on_disk = {self._rel(p): p for p in view_files(self.root)}
        for rel in known - on_disk.keys():
            self.forget(self._abs(rel))
        for rel in on_disk.keys() - known:
            try:
                self.register_view(on_disk[rel])
            except (StoreError, OSError, KeyError):
                continue  # an older format, or not a view: `precompute ls` says which

    def views(self) -> list[StoreRecord]:
        """Every view, as on disk."""
        self.sync_views()
        with self._db() as con:
            rows = con.execute(
                "SELECT * FROM views ORDER BY dataset, feature_kind, created"
            ).fetchall()
        out = [self._record(r) for r in rows]
        for rec in [r for r in out if not r.path.is_file()]:
            self.forget(rec.path)
        return [r for r in out if r.path.is_file()]

    def record(self, view: str | os.PathLike) -> StoreRecord | None:
        with self._db() as con:
            row = con.execute("SELECT * FROM views WHERE path = ?", (self._rel(view),)).fetchone()
        return self._record(row) if row else None

    def find_store(
        self, pyjama: str | os.PathLike, feature_key: str, audio_root: str | None = None
    ) -> list[StoreRecord]:
        """Views built from this pyjama file with these feature values, newest first."""
        self.sync_views()
        with self._db() as con:
            rows = con.execute(
                "SELECT * FROM views WHERE pyjama = ? AND feature_key = ? "
                "AND coalesce(audio_root, '') = ? ORDER BY created DESC",
                (str(Path(pyjama).absolute()), feature_key, audio_root or ""),
            ).fetchall()
        return [r for r in map(self._record, rows) if r.path.is_file()]

    def forget(self, view: str | os.PathLike) -> None:
        rel = self._rel(view)
        with self._db() as con:
            con.execute("DELETE FROM views WHERE path = ?", (rel,))

    def dead_since(self, segments: Iterable[Path], now: float) -> dict[Path, float]:
        """When each of these unreferenced segments was first seen unreferenced (now if never)."""
        out = {}
        with self._db() as con:
            for seg in segments:
                rel = self._rel(seg)
                con.execute("INSERT OR IGNORE INTO dead VALUES (?, ?)", (rel, now))
                out[seg] = con.execute(
                    "SELECT since FROM dead WHERE segment = ?", (rel,)
                ).fetchone()[0]
        return out

    def _record(self, row: tuple) -> StoreRecord:
        (path, dataset, pyjama, sha1, root, kind, key, feature, files, frames, audio_s,
         created) = row  # fmt: skip
        return StoreRecord(
            self._abs(path), dataset, pyjama, sha1, root, kind, key, json.loads(feature),
            files, frames, audio_s, created,
        )  # fmt: skip


def touch(view: str | os.PathLike) -> None:
    """Mark a view as used now (its modification time; ``precompute gc`` reads it)."""
    with contextlib.suppress(OSError):  # a read-only stores folder: it stays as old as it was
        os.utime(view)
