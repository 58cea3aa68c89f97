"""The catalogue beside the stores: which feature rows exist already, and where.

One SQLite file, ``STORES/catalogue.sqlite``, shared by every process that builds or reads
stores under that folder (SQLite's own locking; WAL journal, so readers never block)::

    stores  one row per complete store: its request (dataset, pyjama and its sha1, audio
            root, feature key and parameters), its size, and when it was created and last used
    rows    content key -> (store, first frame, frame count): the features of one audio file
            with one set of value parameters, wherever they were computed
    audio   path -> (size, mtime, content hash, header): a file is rehashed only when its size
            or mtime changed

Store paths are kept relative to the stores folder, so the folder can move as a whole.
A store deleted by hand is forgotten the next time it is looked up; nothing fails.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILENAME = "catalogue.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS stores (
    path TEXT PRIMARY KEY, dataset TEXT, pyjama TEXT, pyjama_sha1 TEXT, audio_root TEXT,
    feature_kind TEXT, feature_key TEXT, feature TEXT, files INTEGER, frames INTEGER,
    audio_s REAL, bytes INTEGER, created REAL, last_used REAL
);
CREATE TABLE IF NOT EXISTS rows (
    key TEXT, store TEXT, offset INTEGER, n_frames INTEGER, PRIMARY KEY (key, store)
);
CREATE INDEX IF NOT EXISTS rows_by_store ON rows (store);
CREATE TABLE IF NOT EXISTS audio (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, hash TEXT, info TEXT
);
"""


@dataclass
class StoreRecord:
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
    bytes: int
    created: float
    last_used: float


@dataclass
class RowSource:
    """Where the rows of one content key already are."""

    store: Path
    offset: int  # first frame in that store's features
    n_frames: int


class Catalogue:
    """The catalogue of the stores folder ``root`` (created on first use)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / FILENAME

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.root.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA busy_timeout=60000")
            con.executescript(SCHEMA)
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    def _rel(self, store: str | os.PathLike) -> str:
        p = Path(store).absolute()
        try:
            return str(p.relative_to(self.root.absolute()))
        except ValueError:
            return str(p)

    def _abs(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root.absolute() / p

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

    # -- rows ---------------------------------------------------------------------------
    def find_rows(self, keys: Iterable[str]) -> dict[str, RowSource]:
        """Existing rows for each content key found (one source each, the newest store).

        Rows of stores that no longer exist are dropped from the catalogue on the way.
        """
        keys = list(dict.fromkeys(keys))
        found: dict[str, RowSource] = {}
        gone: set[str] = set()
        with self._db() as con:
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                q = (
                    "SELECT r.key, r.store, r.offset, r.n_frames FROM rows r "
                    "LEFT JOIN stores s ON s.path = r.store "
                    f"WHERE r.key IN ({','.join('?' * len(part))}) ORDER BY s.created"
                )
                for key, store, offset, n in con.execute(q, part):
                    if store in gone:
                        continue
                    path = self._abs(store)
                    if not path.is_file():
                        gone.add(store)
                        continue
                    found[key] = RowSource(path, int(offset), int(n))
            for store in gone:
                self._forget(con, store)
        return found

    def register(self, record: StoreRecord, rows: Iterable[tuple[str, int, int]]) -> None:
        """Record a complete store and its rows ``(content key, offset, n_frames)``."""
        rel = self._rel(record.path)
        with self._db() as con:
            self._forget(con, rel)
            con.execute(
                "INSERT INTO stores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rel,
                    record.dataset,
                    record.pyjama,
                    record.pyjama_sha1,
                    record.audio_root,
                    record.feature_kind,
                    record.feature_key,
                    json.dumps(record.feature, sort_keys=True),
                    record.files,
                    record.frames,
                    record.audio_s,
                    record.bytes,
                    record.created,
                    record.last_used,
                ),
            )
            con.executemany(
                "INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?)",
                [(k, rel, int(o), int(n)) for k, o, n in rows],
            )

    def touch(self, stores: Iterable[str | os.PathLike], when: float | None = None) -> None:
        """Mark stores as used now (``precompute gc`` removes the long unused)."""
        when = time.time() if when is None else when
        with self._db() as con:
            con.executemany(
                "UPDATE stores SET last_used = ? WHERE path = ?",
                [(when, self._rel(s)) for s in stores],
            )

    # -- stores ---------------------------------------------------------------------------
    def stores(self) -> list[StoreRecord]:
        """Every store recorded; those deleted by hand are forgotten here."""
        out, gone = [], []
        with self._db() as con:
            for row in con.execute("SELECT * FROM stores ORDER BY dataset, feature_kind, created"):
                rec = self._record(row)
                (out if rec.path.is_file() else gone).append(rec)
            for rec in gone:
                self._forget(con, self._rel(rec.path))
        return out

    def record(self, store: str | os.PathLike) -> StoreRecord | None:
        with self._db() as con:
            row = con.execute("SELECT * FROM stores WHERE path = ?", (self._rel(store),)).fetchone()
        return self._record(row) if row else None

    def find_store(
        self, pyjama: str | os.PathLike, feature_key: str, audio_root: str | None = None
    ) -> list[StoreRecord]:
        """Stores built from this pyjama file with these feature values, newest first."""
        with self._db() as con:
            rows = con.execute(
                "SELECT * FROM stores WHERE pyjama = ? AND feature_key = ? "
                "AND coalesce(audio_root, '') = ? ORDER BY created DESC",
                (str(Path(pyjama).absolute()), feature_key, audio_root or ""),
            ).fetchall()
        return [r for r in map(self._record, rows) if r.path.is_file()]

    def forget(self, store: str | os.PathLike) -> None:
        with self._db() as con:
            self._forget(con, self._rel(store))

    @staticmethod
    def _forget(con: sqlite3.Connection, rel: str) -> None:
        con.execute("DELETE FROM rows WHERE store = ?", (rel,))
        con.execute("DELETE FROM stores WHERE path = ?", (rel,))

    def _record(self, row: tuple) -> StoreRecord:
        (path, dataset, pyjama, sha1, root, kind, key, feature, files, frames, audio_s, size,
         created, used) = row  # fmt: skip
        return StoreRecord(
            self._abs(path), dataset, pyjama, sha1, root, kind, key, json.loads(feature),
            files, frames, audio_s, size, created, used,
        )  # fmt: skip
