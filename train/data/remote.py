"""Remote stores in training: a view's frames fetched from an object store into a local cache of
limited size, and read from there exactly as a local store is read.

The cache keeps, for each remote segment a store reads, a **replica**: a sparse local file of
the segment's size in which each file's frames (a **row**) sit at the byte offset they have in
the segment. A :class:`RemoteFrames` is therefore a :class:`~train.data.read.Frames` over the
replicas (the same ``pread`` and map gathers, the same bytes at the same offsets), which first
makes sure the rows of a batch are there. A row is fetched whole by parallel ranged GETs of
:data:`CHUNK_BYTES`, verified against the checksum the view gives it, written in place and
flushed; only then is it marked present (an empty file ``present/<replica>/<checksum>-<offset>-
<bytes>``). A fill killed half-way leaves bytes without a mark, which the next fill writes again:
a marked row is always right. Processes share the folder (DataLoader workers, several runs): one
process fills a row while the others wait for it (a lock per row).

Size: at most ``limit`` bytes of rows. Which rows stay: each row has a **rank**, its checksum
read as a number (random, and the same in every process and run). A store keeps its
lowest-ranked rows, as many as fill the cache less a reserve for the rows being streamed
(``keep``: the highest rank that stays); they stay from epoch to epoch (resident). The other
rows are streamed: kept while they are read and evicted first, least recently used first;
resident rows go last, highest rank first. Evicting a row removes its mark, then frees its
bytes (a hole punched in the replica); a reader that read a batch while rows were evicted (a
counter says so) checks its rows again and reads what was lost once more. An epoch then
downloads the store less its resident part, not all of it (an LRU cache over a shuffled order
downloads everything every epoch once the store is larger than the cache). For the streamed
rows to be fetched once per epoch, not once per patch, the training order reads them a few
blocks at a time (:meth:`StoreDataset.stream_blocks`, :class:`EpochSampler`): resident patches
are spread over the whole epoch, streamed ones shuffled within a draw of blocks.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import ctypes
import fcntl
import hashlib
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from common.pause import pause_point
from common.remote import Remote, RemoteError
from common.store import StoreError, StoreTables, byte_address, relative_to, stores_root_of

from .read import Frames

CHUNK_BYTES = 8 << 20  # one ranged GET: rows larger than this are fetched by several at once
AHEAD_BYTES = 64 << 20  # a fill that must fetch rows fetches rows to come with them, up to this
_COUNTER_AT = 1 << 62  # byte-range locks of the lock file: rows below, the folder's own here
_FILLING = threading.Lock()  # this process's turn at the cache's locks
_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
_LIBC: list = []  # this process's C library, loaded when a row is first freed


def rank(checksum: str) -> int:
    """A row's place in the order of what the cache keeps (lowest first)."""
    return int(checksum[:15], 16)


def punch_hole(fd: int, at: int, nbytes: int) -> None:
    """Free the disk blocks of bytes ``[at, at + nbytes)`` of a file (they read as zeros)."""
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))  # the C library Python runs on
    fallocate = _LIBC[0].fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if fallocate(fd, _PUNCH, at, nbytes) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"cannot free cached bytes ({os.strerror(e)}): the cache needs a "
                         "filesystem with sparse files (ext4, xfs, btrfs, tmpfs)")  # fmt: skip


class Row:
    """One file's frames as the cache knows them: in replica ``replica`` (of the remote segment
    ``segment``) at ``at``, ``nbytes`` long, with their checksum and the file's name."""

    __slots__ = ("checksum", "segment", "replica", "at", "nbytes", "name")

    def __init__(self, checksum: str, segment: str, replica: str, at: int, nbytes: int, name: str):
        self.checksum, self.segment, self.replica = checksum, segment, replica
        self.at, self.nbytes, self.name = at, nbytes, name

    @property
    def mark(self) -> str:  # the name of the file that says the row is present
        return f"{self.replica}/{self.checksum}-{self.at}-{self.nbytes}"


class RowCache:
    """Replicas of remote segments, holding at most ``limit`` bytes of verified rows."""

    def __init__(self, folder: str | os.PathLike, limit: int):
        self.folder = Path(folder)
        self.limit = int(limit)
        (self.folder / "present").mkdir(parents=True, exist_ok=True)
        (self.folder / "segments").mkdir(exist_ok=True)
        self._lock: tuple[int, int] | None = None
        self._counter: tuple[int, int] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_lock": None, "_counter": None}

    def replica_key(self, url: str) -> str:  # the name of a remote segment's replica
        return hashlib.sha1(url.encode()).hexdigest()[:24]

    def replica(self, key: str, size: int) -> Path:
        """The replica ``key``, made (sparse, ``size`` bytes) if it is not there."""
        path = self.folder / "segments" / f"{key}.seg"
        if not path.exists() or path.stat().st_size < size:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)
        return path

    def present(self, row: Row) -> bool:
        return os.path.exists(self.folder / "present" / row.mark)

    def touch(self, row: Row) -> None:
        """``row`` was used now (what evicts streamed rows, least recently used first)."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.folder / "present" / row.mark)

    # -- locks and counters ----------------------------------------------------------------
    def _lock_fd(self) -> int:
        if self._lock is None or self._lock[0] != os.getpid():
            fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
            self._lock = (os.getpid(), fd)
        return self._lock[1]

    @contextlib.contextmanager
    def _locked(self, offsets: Sequence[int]) -> Iterator[None]:
        """POSIX byte-range locks (between processes) at ``offsets``, taken in order."""
        fd, taken = self._lock_fd(), []
        try:
            for at in sorted(set(offsets)):
                fcntl.lockf(fd, fcntl.LOCK_EX, 1, at)
                taken.append(at)
            yield
        finally:
            for at in taken:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, at)

    def _counters(self) -> int:
        if self._counter is None or self._counter[0] != os.getpid():
            fd = os.open(self.folder / "counters", os.O_RDWR | os.O_CREAT, 0o644)
            self._counter = (os.getpid(), fd)
        return self._counter[1]

    def _read(self) -> tuple[int, int, int]:
        """(bytes downloaded, bytes held, evictions); held is an upper bound until a scan."""
        raw = os.pread(self._counters(), 24, 0)
        return struct.unpack("<qqq", raw) if len(raw) == 24 else (0, 1 << 62, 0)

    def _write(self, downloaded: int, held: int, evictions: int) -> None:
        os.pwrite(self._counters(), struct.pack("<qqq", downloaded, held, evictions), 0)

    def downloaded(self) -> int:
        """Bytes this cache folder has fetched since it was made (all processes)."""
        return self._read()[0]

    def evictions(self) -> int:
        """How many times rows were evicted (by any process): one read of a counter."""
        return self._read()[2]

    def held(self) -> int:
        """Bytes of rows in the cache now."""
        return sum(size for _, size, _, _ in self._marks())

    def _marks(self) -> list[tuple[str, int, float, str]]:
        """``(checksum, bytes, last used, mark)`` of every row present."""
        out = []
        for sub in os.scandir(self.folder / "present"):
            if not sub.is_dir():
                continue
            for e in os.scandir(sub.path):
                parts = e.name.split("-")
                if len(parts) != 3:
                    continue
                checksum, size = parts[0], int(parts[2])
                with contextlib.suppress(FileNotFoundError):
                    out.append((checksum, size, e.stat().st_mtime, f"{sub.name}/{e.name}"))
        return out

    # -- filling and evicting ---------------------------------------------------------------
    def fill(
        self, remote: Remote, rows: list[Row], keep: int, protect: set[str] = frozenset()
    ) -> int:
        """Fetch, verify and mark each row not present yet; returns the bytes fetched. Then
        the folder is brought under its limit (never evicting these rows, nor the marks in
        ``protect``: the other rows of the batch being read)."""
        fetched = 0
        # POSIX locks belong to a process: its threads (a prefetching thread beside the main
        # one) take turns here first
        with _FILLING, self._locked([_row_lock(r) for r in rows]):
            todo = [r for r in rows if not self.present(r)]
            if todo:
                fetched = self._fetch(remote, todo)
        if fetched:
            with _FILLING, self._locked([_COUNTER_AT]):
                down, held, evictions = self._read()
                self._write(down + fetched, held + fetched, evictions)
                if held + fetched > self.limit:  # scanned only when it may be full
                    self._evict(keep, {r.mark for r in rows} | set(protect))
        return fetched

    def _fetch(self, remote: Remote, rows: list[Row]) -> int:
        """The rows' bytes by parallel ranged GETs: rows that are neighbours in a segment
        coalesced, in requests of :data:`CHUNK_BYTES`; verified, written, flushed, marked."""
        rows = sorted(rows, key=lambda r: (r.segment, r.at))
        spans: list[list] = []  # [segment, start, end]: neighbouring rows as one range
        for row in rows:
            last = spans[-1] if spans else None
            if last and last[0] == row.segment and last[2] == row.at:
                last[2] = row.at + row.nbytes
            else:
                spans.append([row.segment, row.at, row.at + row.nbytes])
        rels, starts, ends = [], [], []
        for seg, lo, hi in spans:
            for s in range(lo, hi, CHUNK_BYTES):
                rels.append(seg)
                starts.append(s)
                ends.append(min(s + CHUNK_BYTES, hi))
        got = remote.ranges(rels, starts, ends)
        keys = list(zip(rels, starts))  # sorted: spans are in (segment, offset) order
        fds: dict[str, int] = {}
        written: list[Row] = []
        try:
            for row in rows:
                chunks = _pieces(row, keys, starts, ends, got)
                h = hashlib.blake2b(digest_size=16)
                for c in chunks:
                    h.update(c)
                if h.hexdigest() != row.checksum:
                    raise StoreError(
                        f"{remote.url_of(row.segment)}: the frames of {row.name} (bytes {row.at}-"
                        f"{row.at + row.nbytes}) fail their checksum: the segment changed or is "
                        f"corrupt; run `precompute verify {remote.url}` and rebuild what it names"
                    )
                fd = fds.get(row.replica)
                if fd is None:
                    fd = fds[row.replica] = os.open(self.folder / "segments" / f"{row.replica}.seg",
                                                    os.O_WRONLY)  # fmt: skip
                written.append(row)
                at = row.at
                for c in chunks:
                    view = memoryview(c)
                    while view:
                        n = os.pwrite(fd, view, at)
                        view, at = view[n:], at + n
            for fd in fds.values():  # the bytes are on disk before any mark says so
                os.fdatasync(fd)
        except BaseException:  # a bad row, a full disk: free what was written, unmarked
            with contextlib.suppress(OSError):
                self._punch([(r.mark, r.nbytes) for r in written])
            raise
        finally:
            for fd in fds.values():
                os.close(fd)
        for row in rows:
            mark = self.folder / "present" / row.mark
            mark.parent.mkdir(exist_ok=True)
            mark.touch()
        return sum(r.nbytes for r in rows)

    def _evict(self, keep: int, protect: set[str]) -> None:
        """Remove rows until the cache holds at most 98 % of its limit (it is then scanned once
        per 2 % filled, not at every fill). A row being filled (its lock taken) is left alone;
        the others lose their mark, then the count of evictions grows, then their bytes are
        freed: a reader that checked a mark before the count grew and read after the bytes were
        freed sees the count change, and reads again."""
        marks = self._marks()
        total = sum(m[1] for m in marks)
        down, _, evictions = self._read()
        if total <= self.limit:
            self._write(down, total, evictions)
            return
        target = self.limit - self.limit // 50
        free = [m for m in marks if m[3] not in protect]
        streamed = sorted((m for m in free if rank(m[0]) > keep), key=lambda m: m[2])
        resident = sorted((m for m in free if rank(m[0]) <= keep), key=lambda m: -rank(m[0]))
        fd, gone = self._lock_fd(), []
        try:
            for m in streamed + resident:
                if total <= target:
                    break
                try:  # a row another process fills now stays
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, rank(m[0]) % _COUNTER_AT)
                except OSError:
                    continue
                gone.append(m)
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / "present" / m[3]).unlink()
                total -= m[1]
            self._write(down, total, evictions + 1)
            pause_point("evicting")  # marks removed, count grown, bytes not yet freed
            self._punch([(mark, size) for _, size, _, mark in gone])
        finally:
            for m in gone:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, rank(m[0]) % _COUNTER_AT)

    def _punch(self, marks: list[tuple[str, int]]) -> None:
        """Free the bytes of rows (by their marks' names: ``replica/checksum-offset-bytes``)."""
        fds: dict[str, int] = {}
        try:
            for mark, size in marks:
                replica, _, name = mark.partition("/")
                fd = fds.get(replica)
                if fd is None:
                    fd = fds[replica] = os.open(self.folder / "segments" / f"{replica}.seg",
                                                os.O_WRONLY)  # fmt: skip
                punch_hole(fd, int(name.split("-")[1]), size)
        finally:
            for fd in fds.values():
                os.close(fd)

    def __del__(self) -> None:
        for held in (getattr(self, "_lock", None), getattr(self, "_counter", None)):
            if held is not None and held[0] == os.getpid():
                with contextlib.suppress(OSError):
                    os.close(held[1])


def _row_lock(row: Row) -> int:
    """The byte of the lock file that a row's lock is (rows whose ranks collide share one)."""
    return rank(row.checksum) % _COUNTER_AT


def _pieces(row: Row, keys, starts, ends, got) -> list[memoryview]:
    """The parts of the fetched requests that hold ``row``'s bytes, in order (``keys``: the
    requests' ``(segment, start)``, sorted)."""
    out = []
    at, end = row.at, row.at + row.nbytes
    k = bisect.bisect_right(keys, (row.segment, at)) - 1  # the request holding byte ``at``
    while at < end:
        s, e = starts[k], ends[k]
        piece = memoryview(got[k])[at - s : min(end, e) - s]
        out.append(piece)
        at += len(piece)
        k += 1
    return out


class RemoteFrames(Frames):
    """The frames of a remote view, read from the cache's replicas of its segments (filled on
    demand). Addresses, offsets and reads are those of :class:`Frames` over the segments, so a
    Dataset reads a remote store exactly as a local one, byte for byte.

    ``reserve``: bytes of the cache left to streamed rows when the store does not fit in it
    (what the draws of the training order read at a time).
    """

    def __init__(self, remote: Remote, t: StoreTables, layout, cache: RowCache, reserve: int = 0):
        root = stores_root_of(t.path)
        self.remote, self.cache = remote, cache
        self.segments = [relative_to(root, s.path) for s in t.segments]
        keys = [cache.replica_key(remote.url_of(s)) for s in self.segments]
        parts = [(cache.replica(k, byte_address(s.features_at, s.frames, t.frame_bytes)),
                  s.features_at, s.frames) for k, s in zip(keys, t.segments)]  # fmt: skip
        super().__init__(parts, t.frame_shape, t.dtype, layout)
        # the rows (files), in address order
        addr = self.starts[t.segment] + t.first if t.n_files else np.zeros(0, np.int64)
        order = np.argsort(addr, kind="stable")
        order = order[t.n_frames[order] > 0]  # a file without frames has nothing to fetch
        self.row_addr = addr[order].astype(np.int64)
        self.row_frames = t.n_frames[order].astype(np.int64)
        seg = t.segment[order]
        at = byte_address(self.part_at[seg], t.first[order], self.frame_bytes)
        self.rows = [Row(str(c), self.segments[s], keys[s], int(a), int(n) * self.frame_bytes,
                         str(name)) for c, s, a, n, name in
                     zip(t.checksum[order], seg, at, self.row_frames, t.names[order])]  # fmt: skip
        sizes = self.row_frames * self.frame_bytes
        self.store_bytes = int(sizes.sum())
        self.fits = self.store_bytes <= cache.limit
        self.keep = self._keep_rank(sizes, cache.limit - (0 if self.fits else reserve))
        self.resident = np.array([rank(r.checksum) <= self.keep for r in self.rows], dtype=bool)
        self.ahead_rows = np.zeros(0, np.int64)

    def _keep_rank(self, sizes: np.ndarray, budget: int) -> int:
        """The highest rank of the rows that stay: the lowest-ranked rows that fill ``budget``."""
        if self.fits:
            return 1 << 62
        ranks = np.array([rank(r.checksum) for r in self.rows], dtype=np.int64)
        order = np.argsort(ranks)
        within = np.cumsum(sizes[order]) <= max(0, budget)
        return int(ranks[order][within][-1]) if within.any() else -1

    def _fresh(self) -> None:
        super()._fresh()
        self._known: set[int] = set()  # rows seen present since the last eviction
        self._evictions = -1
        self._ahead: collections.deque[int] | None = None  # this process's rows to fetch next

    def __getstate__(self) -> dict:
        return {k: v for k, v in super().__getstate__().items()
                if k not in ("_known", "_ahead")}  # fmt: skip

    def fetch_ahead(self, rows) -> None:
        """The rows this process will read (a split's files): a fill that must fetch some rows
        fetches more of these with them, up to :data:`AHEAD_BYTES`, so that the object store
        gets many requests at once. Only rows the cache keeps are fetched ahead (streamed rows
        come with the draws that read them); a DataLoader worker starts at a place of its own
        in the list, so that workers fetch different rows."""
        rows = np.asarray(rows, dtype=np.int64)
        self.ahead_rows = rows[self.resident[rows]] if not self.fits else rows
        self._ahead = None

    def rows_of(self, addrs) -> np.ndarray:
        """The row (file, in address order) of each frame address."""
        return np.searchsorted(self.row_addr, np.asarray(addrs, np.int64), side="right") - 1

    def ensure(self, rows) -> int:
        """Make sure ``rows`` are present in the cache, fetching those that are not; returns
        the count of evictions read before they were checked (their bytes read after are
        right if the count is still that)."""
        evictions = self.cache.evictions()
        if evictions != self._evictions:
            self._known.clear()
            self._evictions = evictions
        batch = np.unique(np.asarray(rows)).tolist()
        want = [r for r in batch if r not in self._known]
        for _ in range(3):
            missing = []
            for r in want:
                if self.cache.present(self.rows[r]):
                    if r not in self._known:
                        self.cache.touch(self.rows[r])
                        self._known.add(r)
                else:
                    missing.append(r)
            if not missing:
                return evictions
            protect = {self.rows[r].mark for r in batch}
            self.cache.fill(
                self.remote, self._fill_list(missing), self.keep, protect
            )
            want = missing
        raise RemoteError(
            f"{self.remote.url}: rows were evicted from the cache {self.cache.folder} as soon as "
            "they were fetched; give it more room (--cache-gb)"
        )

    def _fill_list(self, missing: list[int]) -> list[Row]:
        """``missing`` and, up to :data:`AHEAD_BYTES` in all, rows of :meth:`fetch_ahead` that
        are not present."""
        if self._ahead is None:
            ahead = self.ahead_rows
            info = torch.utils.data.get_worker_info()
            if info is not None and len(ahead):
                ahead = np.roll(ahead, -(len(ahead) * info.id // info.num_workers))
            self._ahead = collections.deque(ahead.tolist())
        rows = list(missing)
        size = sum(self.rows[r].nbytes for r in rows)
        taken = set(rows)
        while self._ahead and size < AHEAD_BYTES:
            r = self._ahead.popleft()
            if r in taken or r in self._known or self.cache.present(self.rows[r]):
                continue
            rows.append(r)
            taken.add(r)
            size += self.rows[r].nbytes
        return [self.rows[r] for r in rows]

    def gather(self, addrs, length: int, out: np.ndarray) -> None:
        if not len(addrs) or not length:
            return
        rows = self.rows_of(addrs)
        for _ in range(4):
            before = self.ensure(rows)
            super().gather(addrs, length, out)
            if self.cache.evictions() == before:
                return
            # rows were evicted meanwhile (any of these may have been): check and read again
        raise RemoteError(
            f"{self.remote.url}: rows were evicted from the cache {self.cache.folder} while they "
            "were read; give it more room (--cache-gb)"
        )

    def item(self, addr: int, length: int) -> torch.Tensor:
        return self.read_many([addr], length)[0]  # a copy: a map could lose evicted bytes

    def prefetch(self, addr: int, length: int) -> None:
        self.ensure(self.rows_of([addr]))
