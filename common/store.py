"""The on-disk format: the feature pool and the stores (views) over it. The one module that
knows HDF5 paths.

Features are written once, into the **pool**, and never copied for a new annotation version::

    STORES/pool/<feature key>/seg-<id>.h5     a sealed segment: the rows of many audio files
        /features        float32 or float16 (frames, C, F): contiguous, uncompressed, time-major
        /rows/key        str (n,)   content key of each file's rows (feature values + audio hash)
        /rows/first      int64      first frame of the file's rows in /features
        /rows/n_frames   int64
        /rows/status     uint8      1 computed, 2 failed (its frames are dead space)
        /rows/checksum   S32        blake2b-128 (hex) of the file's row bytes; empty when failed
        attrs            format_version, role="segment", feature_key, feature (JSON), versions

A segment is laid out in full under ``seg-<id>.h5.partial`` (tables written, every row's disk
space reserved), its rows are then written in place by any process, and it is sealed: status
and checksums written in place, fsync, rename to its final name. It is never opened for writing
again. A file's rows are one byte range of one segment.

A **store** is a light view over the pool, one file per (annotations, feature values)::

    STORES/<dataset>/<feature>-<id>.h5
        /segments/path        str (n_segments,)  relative to the stores folder
        /segments/features_at int64              byte offset of the segment's /features
        /segments/frames      int64
        /files/name           str (n_files,)     the pyjama filepath
        /files/entry          int32              index of the entry in the pyjama
        /files/segment        int32              row of /segments holding the file's rows
        /files/first          int64              first frame of the file in that segment
        /files/offset         int64              first frame of the file in this view's order
                                                 (index of /features and of frame-level targets)
        /files/n_frames       int64
        /files/duration_s     float64
        /files/orig_sr        int32
        /files/content        str                blake2b of the audio file's bytes
        /files/key            str                content key of the file's rows
        /files/checksum       S32                as in the segment's table
        /features             a virtual dataset over the segments (paths relative to this
                              file, so the stores folder can move): plain h5py reads the view's
                              features as one array; a missing segment reads as NaN
        /targets/<name>       one dataset per pyjama description (attrs: kind, vocabulary, ...)
                              per file: (n_files, ...); frame level: (total_frames, ...), in the
                              view's order (``files/offset``)
        /annotated/<name>     uint8 (n_files,): 1 where the entry carries the description
        attrs                 format_version, role="view", dataset, pyjama, pyjama_sha1,
                              audio_root, feature (JSON), feature_key, store_id, versions, skipped,
                              failed, warnings, notes, off_grid

Only files whose features were computed are in a view; the others are listed in its ``failed``
attribute, with their reasons. Nothing in either file holds a clock, so the same build gives
the same bytes. Without h5py, a file's rows are::

    t = read_tables(view); i = ...  # a file of the view
    rows = read_rows(t, i)          # (n_frames, C, F), by one pread of its byte range
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import UserError

FORMAT_VERSION = 3
STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2
CHECKSUM_BYTES = 32  # hex of a 16-byte blake2b digest
SEGMENT_MAX_BYTES = (
    2 << 30
)  # a build starts a new segment past this (compaction, copies stay cheap)
POOL = "pool"

# Target kinds with one row per feature frame (the others have one row per file:
# class, multilabel, value, work).
FRAME_KINDS = ("frame_class", "frame_events", "frame_pitch", "frame_value")


class StoreError(UserError):
    """A store that cannot be used as it is; the message says what to do."""


class DiskFullError(StoreError):
    """No space left (or a file size limit) while writing under a stores folder."""


class MissingSegmentsError(StoreError):
    """A view whose segments were deleted: the message names the files whose rows are gone."""


# ---------------------------------------------------------------------------
# Where things are


def store_path(
    stores: str | os.PathLike, dataset_name: str, feature_kind: str, identity: str
) -> Path:
    """``STORES/<dataset>/<feature>-<identity>.h5`` (a view)."""
    return Path(stores) / dataset_name / f"{feature_kind}-{identity}.h5"


def pool_dir(stores: str | os.PathLike, feature_key: str) -> Path:
    """``STORES/pool/<feature key>/``: the segments of one feature's values."""
    return Path(stores) / POOL / feature_key


def segment_path(stores: str | os.PathLike, feature_key: str, segment_id: str) -> Path:
    return pool_dir(stores, feature_key) / f"seg-{segment_id}.h5"


def segment_files(stores: str | os.PathLike, feature_key: str | None = None) -> list[Path]:
    """The sealed segments of the pool (of one feature key, or all)."""
    root = Path(stores) / POOL
    pattern = f"{feature_key}/seg-*.h5" if feature_key else "*/seg-*.h5"
    return sorted(root.glob(pattern))


def view_files(stores: str | os.PathLike) -> list[Path]:
    """Every file of the stores folder that looks like a store (views, and older formats)."""
    return sorted(p for p in Path(stores).glob("*/*.h5") if p.parent.name != POOL)


def relative_to(root: str | os.PathLike, path: str | os.PathLike) -> str:
    """``path`` relative to ``root`` (as text with '/'), or absolute when it is not under it."""
    p = Path(os.path.abspath(path))
    try:
        return p.relative_to(Path(os.path.abspath(root))).as_posix()
    except ValueError:
        return str(p)


def stores_root_of(view: str | os.PathLike) -> Path:
    """The stores folder of a view: ``STORES/<dataset>/<view>.h5``."""
    return Path(os.path.abspath(view)).parent.parent


@dataclass
class TargetSpec:
    """How one pyjama description becomes a target array."""

    name: str
    kind: str
    vocabulary: list[str] = field(default_factory=list)  # labels, work ids, or row names
    pitch_midi: list[float] = field(default_factory=list)  # frame_pitch: MIDI of each bin
    unit: str = ""  # frame_pitch: "midi" or "hz"

    @property
    def frame_level(self) -> bool:
        return self.kind in FRAME_KINDS

    def frame_layout(self) -> tuple[tuple[int, ...], np.dtype]:
        """Shape of one frame's row and its dtype (frame-level kinds)."""
        if self.kind == "frame_class":
            return (), np.dtype("<i4")
        if self.kind == "frame_value":
            return (len(self.vocabulary),), np.dtype("<f4")
        width = len(self.pitch_midi) if self.kind == "frame_pitch" else max(1, len(self.vocabulary))
        return (width,), np.dtype("u1")

    def frame_bytes(self) -> int:
        shape, dtype = self.frame_layout()
        return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    def to_attrs(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vocabulary": json.dumps(self.vocabulary),
            "pitch_midi": json.dumps(self.pitch_midi),
            "unit": self.unit,
        }

    @classmethod
    def from_attrs(cls, name: str, attrs: Any) -> TargetSpec:
        return cls(
            name,
            str(attrs["kind"]),
            json.loads(attrs["vocabulary"]),
            json.loads(attrs["pitch_midi"]),
            str(attrs["unit"]),
        )


def rows_checksum(rows: np.ndarray | bytes | memoryview) -> str:
    """blake2b-128 of a file's row bytes, as stored in segment and view tables."""
    return hashlib.blake2b(memoryview(rows).cast("B"), digest_size=16).hexdigest()


def _disk_error(e: Exception, path: Path) -> None:
    """HDF5 reports a full disk as text ("... errno = 28 ..."): raise it as an OSError."""
    found = re.search(r"errno = (\d+)", str(e))
    code = int(found.group(1)) if found else getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EFBIG):
        raise OSError(code, os.strerror(code), str(path)) from None


def _create_contiguous(h: h5py.File, name: str, shape: tuple, dtype: np.dtype) -> h5py.Dataset:
    """A contiguous, uncompressed dataset whose bytes are allocated now, never filled."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    dcpl.set_obj_track_times(False)  # no clock in the file: the same build gives the same bytes
    space = h5py.h5s.create_simple(shape)
    parent_name, _, leaf = name.rpartition("/")
    parent = h.require_group(parent_name) if parent_name else h
    tid = h5py.h5t.py_create(np.dtype(dtype))
    dsid = h5py.h5d.create(parent.id, leaf.encode(), tid, space, dcpl=dcpl)
    return h5py.Dataset(dsid)


def _attrs_in(h: h5py.File, attrs: dict[str, Any]) -> None:
    h.attrs.update(
        {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in attrs.items()}
    )
    h.attrs["format_version"] = FORMAT_VERSION


def pwrite_all(fd: int, data: bytes | memoryview | np.ndarray, at: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def pread_into(fd: int, buf: np.ndarray | memoryview, at: int) -> None:
    """Fill ``buf`` with the bytes of ``fd`` from ``at`` (positioned reads, no seek)."""
    view = memoryview(buf).cast("B")
    while len(view):
        n = os.preadv(fd, [view], at)
        if n <= 0:
            raise StoreError(f"short read at byte {at}: the file is shorter than its tables say")
        view, at = view[n:], at + n


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def claim(path: Path, size: int) -> None:
    """Take ``size`` bytes of disk for a file about to be written by HDF5, and fail here (as an
    OSError) if they are not there: a write that fails inside HDF5 leaves a file it cannot
    close cleanly. HDF5 truncates the file and writes within that size, which stays free."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EFBIG):
                    raise
    finally:
        os.close(fd)


def reserve(path: Path, size: int | None = None) -> None:
    """Allocate a file's blocks now, so that writing rows later cannot run out of space."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size if size is None else size
        if size and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EFBIG):
                    raise
                # a filesystem without fallocate: the blocks are allocated as rows are written
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# The pool: segments


@dataclass
class SegmentLayout:
    """Where things are in a laid-out (possibly unsealed) segment: all a writer needs."""

    path: Path
    keys: list[str]
    first: np.ndarray
    n_frames: np.ndarray
    frame_shape: tuple[int, int]
    dtype: np.dtype
    features_at: int
    status_at: int
    checksum_at: int

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.frame_shape)) * self.dtype.itemsize

    @property
    def total_frames(self) -> int:
        return int(self.n_frames.sum())

    def rows_at(self, i: int) -> int:
        """Byte offset of row ``i``'s first frame in the file."""
        return self.features_at + int(self.first[i]) * self.frame_bytes


def segment_bytes(n_frames: Iterable[int], frame_bytes: int) -> int:
    """About what a segment of these files takes on disk (rows plus tables)."""
    n = list(n_frames)
    return sum(n) * frame_bytes + len(n) * 256 + (64 << 10)


def lay_out_segment(
    path: str | os.PathLike,
    keys: list[str],
    n_frames: Iterable[int],
    frame_shape: tuple[int, int],
    dtype: np.dtype,
    attrs: dict[str, Any],
) -> SegmentLayout:
    """Write a segment file but its rows, status and checksums, with its disk space reserved."""
    path = Path(path)
    n = np.asarray(list(n_frames), dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64) if len(n) else n
    dtype = np.dtype(dtype).newbyteorder("<")
    try:
        claim(path, segment_bytes(n, int(np.prod(frame_shape)) * dtype.itemsize))
        with h5py.File(path, "w", libver="latest") as h:
            feats = _create_contiguous(h, "features", (int(n.sum()), *frame_shape), dtype)
            status = _create_contiguous(h, "rows/status", (len(n),), np.dtype("u1"))
            sums = _create_contiguous(h, "rows/checksum", (len(n),), np.dtype(f"S{CHECKSUM_BYTES}"))
            h.create_dataset("rows/key", data=keys, dtype=h5py.string_dtype("utf-8"))
            h.create_dataset("rows/first", data=first)
            h.create_dataset("rows/n_frames", data=n)
            _attrs_in(h, {**attrs, "role": "segment"})
            layout = SegmentLayout(
                path,
                list(keys),
                first,
                n,
                tuple(frame_shape),
                dtype,
                feats.id.get_offset() or 0,
                status.id.get_offset() or 0,
                sums.id.get_offset() or 0,
            )
    except (OSError, RuntimeError) as e:
        _disk_error(e, path)
        raise
    reserve(path)
    return layout


def open_segment_layout(path: str | os.PathLike) -> SegmentLayout:
    """The layout of a laid-out segment (sealed or not)."""
    path = Path(path)
    with h5py.File(path, "r") as h:
        feats = h["features"]
        r = h["rows"]
        return SegmentLayout(
            path,
            r["key"].asstr()[()].tolist(),
            r["first"][()],
            r["n_frames"][()],
            tuple(feats.shape[1:]),
            feats.dtype,
            feats.id.get_offset() or 0,
            r["status"].id.get_offset() or 0,
            r["checksum"].id.get_offset() or 0,
        )


def seal_segment(
    layout: SegmentLayout, status: np.ndarray, checksums: list[str], final: str | os.PathLike
) -> int:
    """Write status and checksums in place, flush, and give the segment its final name.

    Returns an fd of it that holds a shared ``flock`` taken before the rename (see
    :mod:`common.holds`): nobody can remove the segment before its view refers to it.
    """
    final = Path(final)
    fd = os.open(layout.path, os.O_RDWR)
    try:
        pwrite_all(fd, np.ascontiguousarray(status, dtype=np.uint8), layout.status_at)
        raw = np.array([c.encode() for c in checksums], dtype=f"S{CHECKSUM_BYTES}")
        pwrite_all(fd, raw, layout.checksum_at)
        os.fsync(fd)
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.replace(layout.path, final)
    except BaseException:
        os.close(fd)
        raise
    fsync_dir(final.parent)
    return fd


@dataclass
class SegmentTable:
    """The table of a sealed segment, as numpy."""

    path: Path
    feature_key: str
    keys: np.ndarray
    first: np.ndarray
    n_frames: np.ndarray
    status: np.ndarray
    checksum: np.ndarray
    features_at: int
    frame_shape: tuple[int, int]
    dtype: np.dtype
    total_frames: int
    attrs: dict[str, Any]

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.frame_shape)) * self.dtype.itemsize


def read_segment(path: str | os.PathLike) -> SegmentTable:
    path = Path(path)
    try:
        h = h5py.File(path, "r")
    except OSError as e:
        raise StoreError(f"{path}: not a readable segment ({e})") from None
    with h:
        attrs = {k: _decode(v) for k, v in h.attrs.items()}
        if attrs.get("role") != "segment" or attrs.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: not a segment of format {FORMAT_VERSION}")
        feats, r = h["features"], h["rows"]
        return SegmentTable(
            path,
            str(attrs.get("feature_key", "")),
            r["key"].asstr()[()],
            r["first"][()],
            r["n_frames"][()],
            r["status"][()],
            r["checksum"][()].astype(str),
            feats.id.get_offset() or 0,
            tuple(feats.shape[1:]),
            feats.dtype,
            int(feats.shape[0]),
            attrs,
        )


# ---------------------------------------------------------------------------
# Views: writing


@dataclass
class SegmentRef:
    """A segment as a view refers to it."""

    path: Path  # absolute
    features_at: int
    frames: int


@dataclass
class ViewFiles:
    """The files table of a view, one entry per file whose features exist, in view order."""

    name: list[str]
    entry: np.ndarray
    segment: np.ndarray  # index into the view's segments
    first: np.ndarray  # first frame in that segment
    n_frames: np.ndarray
    duration_s: np.ndarray
    orig_sr: np.ndarray
    content: list[str]
    key: list[str]
    checksum: list[str]

    def __len__(self) -> int:
        return len(self.name)

    @property
    def offset(self) -> np.ndarray:
        n = np.asarray(self.n_frames, dtype=np.int64)
        return np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64) if len(n) else n


def _virtual_features(
    h: h5py.File,
    view: Path,
    files: ViewFiles,
    segments: list[SegmentRef],
    frame_shape: tuple[int, int],
    dtype: np.dtype,
) -> None:
    """``/features`` as a virtual dataset: one mapping per run of files that are neighbours in
    the same segment, sources named relative to the view's folder."""
    total = int(np.sum(files.n_frames))
    if total == 0:
        h.create_dataset("features", shape=(0, *frame_shape), dtype=dtype)
        return
    layout = h5py.VirtualLayout(shape=(total, *frame_shape), dtype=dtype)
    sources = [
        h5py.VirtualSource(
            os.path.relpath(s.path, view.parent), "features", shape=(s.frames, *frame_shape)
        )
        for s in segments
    ]
    at, i, n = 0, 0, len(files)
    while i < n:
        seg, lo = int(files.segment[i]), int(files.first[i])
        hi = lo + int(files.n_frames[i])
        j = i + 1
        while j < n and int(files.segment[j]) == seg and int(files.first[j]) == hi:
            hi += int(files.n_frames[j])
            j += 1
        if hi > lo:
            layout[at : at + hi - lo] = sources[seg][lo:hi]
        at, i = at + hi - lo, j
    fill = np.nan if np.dtype(dtype).kind == "f" else 0
    h.create_virtual_dataset("features", layout, fillvalue=fill)


def _write_file_columns(h: h5py.File, files: ViewFiles) -> None:
    str_dt = h5py.string_dtype("utf-8")
    for col in ("name", "content", "key"):
        h.create_dataset(f"files/{col}", data=list(getattr(files, col)), dtype=str_dt)
    numeric = {
        "entry": np.asarray(files.entry, np.int32),
        "offset": files.offset,
        "n_frames": np.asarray(files.n_frames, np.int64),
        "duration_s": np.asarray(files.duration_s, np.float64),
        "orig_sr": np.asarray(files.orig_sr, np.int32),
    }
    for col, data in numeric.items():
        h.create_dataset(f"files/{col}", data=data)


def _write_locations(
    h: h5py.File, view: Path, files: ViewFiles, segments: list[SegmentRef], frame_shape, dtype
) -> None:
    """Where each file's rows are in the pool: the segments, each file's segment, first frame
    and checksum, and the virtual ``/features``."""
    root = stores_root_of(view)
    h.create_dataset(
        "segments/path",
        data=[relative_to(root, s.path) for s in segments],
        dtype=h5py.string_dtype("utf-8"),
    )
    h.create_dataset(
        "segments/features_at", data=np.array([s.features_at for s in segments], np.int64)
    )
    h.create_dataset("segments/frames", data=np.array([s.frames for s in segments], np.int64))
    h.create_dataset("files/segment", data=np.asarray(files.segment, np.int32))
    h.create_dataset("files/first", data=np.asarray(files.first, np.int64))
    h.create_dataset(
        "files/checksum", data=np.array([c.encode() for c in files.checksum], f"S{CHECKSUM_BYTES}")
    )
    _virtual_features(h, view, files, segments, frame_shape, np.dtype(dtype).newbyteorder("<"))


@contextlib.contextmanager
def _removed_on_error(tmp: Path, path: Path):
    """A temporary file removed if writing it fails (a full disk said as an OSError)."""
    try:
        yield
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):
            _disk_error(e, path)
        raise


def _commit(tmp: Path, path: Path) -> Path:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def _write_frame_targets(
    frame_ds: dict[str, h5py.Dataset],
    offsets: np.ndarray,
    n_frames: np.ndarray,
    frame_targets: Callable[[int], dict[str, np.ndarray]],
    block_bytes: int = 32 << 20,
) -> None:
    """Each file's frame-level targets at its offset, written in blocks of neighbouring files
    (one HDF5 write per block, memory bounded by ``block_bytes``)."""
    pending: dict[str, list[np.ndarray]] = {name: [] for name in frame_ds}
    start, size = 0, 0

    def write() -> None:
        nonlocal size
        for name, parts in pending.items():
            if parts:
                block = np.concatenate(parts)
                frame_ds[name][start : start + len(block)] = block
                parts.clear()
        size = 0

    for i in range(len(n_frames)):
        if not n_frames[i]:
            continue
        if size == 0:
            start = int(offsets[i])
        for name, arr in frame_targets(i).items():
            pending[name].append(arr)
            size += arr.nbytes
        if size >= block_bytes:
            write()
    write()


def draft_view(
    path: str | os.PathLike,
    files: ViewFiles,
    targets: list[TargetSpec],
    file_targets: dict[str, np.ndarray],
    frame_targets: Callable[[int], dict[str, np.ndarray]],
    attrs: dict[str, Any],
    annotated: dict[str, np.ndarray] | None = None,
) -> Path:
    """All of a view but where its rows are, under a temporary name (it can be written while
    the features are still being computed); :func:`finish_view` completes it.

    ``file_targets`` have one row per file of ``files``; ``frame_targets(i)`` gives file ``i``'s
    frame-level targets (one file at a time, so memory does not grow with the dataset).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    offsets, n_frames = files.offset, np.asarray(files.n_frames, np.int64)
    total = int(n_frames.sum())
    with _removed_on_error(tmp, path):
        per_frame = sum(s.frame_bytes() for s in targets if s.frame_level)
        claim(tmp, total * per_frame + len(files) * 1024 + (1 << 20))
        with h5py.File(tmp, "w", libver="latest") as h:
            _write_file_columns(h, files)
            h.require_group("targets")
            frame_ds = {}
            for spec in targets:
                if spec.frame_level:
                    row, dt = spec.frame_layout()
                    frame_ds[spec.name] = _create_contiguous(
                        h, f"targets/{spec.name}", (total, *row), dt
                    )
                else:
                    h.create_dataset(f"targets/{spec.name}", data=file_targets[spec.name])
                h[f"targets/{spec.name}"].attrs.update(spec.to_attrs())
            for name, mask in (annotated or {}).items():
                h.create_dataset(f"annotated/{name}", data=np.asarray(mask, dtype=np.uint8))
            if frame_ds:
                _write_frame_targets(frame_ds, offsets, n_frames, frame_targets)
            _attrs_in(h, attrs)
    return tmp


def finish_view(
    draft: Path,
    path: str | os.PathLike,
    files: ViewFiles,
    segments: list[SegmentRef],
    frame_shape: tuple[int, int],
    dtype: np.dtype,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Add where the rows are to a :func:`draft_view`, flush it and give it its name."""
    path = Path(path)
    with _removed_on_error(draft, path):
        with h5py.File(draft, "r+") as h:
            _write_locations(h, path, files, segments, frame_shape, dtype)
            _attrs_in(h, {**(attrs or {}), "role": "view"})
        return _commit(draft, path)


def write_view(
    path: str | os.PathLike,
    files: ViewFiles,
    segments: list[SegmentRef],
    frame_shape: tuple[int, int],
    dtype: np.dtype,
    targets: list[TargetSpec],
    file_targets: dict[str, np.ndarray],
    frame_targets: Callable[[int], dict[str, np.ndarray]],
    attrs: dict[str, Any],
    annotated: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a view: under a temporary name, flushed, then renamed (never half visible)."""
    draft = draft_view(path, files, targets, file_targets, frame_targets, attrs, annotated)
    return finish_view(draft, path, files, segments, frame_shape, dtype)


def repoint_view(
    path: str | os.PathLike, segment: np.ndarray, first: np.ndarray, segments: list[SegmentRef]
) -> Path:
    """The same view with its files' rows found elsewhere in the pool (after compaction or a
    repair): a new file, renamed over the old one, which keeps its last-used time."""
    path = Path(path)
    t = read_tables(path, missing_ok=True)
    files = ViewFiles(
        t.names.tolist(), t.entry, np.asarray(segment), np.asarray(first), t.n_frames,
        t.duration_s, t.orig_sr, t.content.tolist(), t.keys.tolist(), t.checksum.tolist(),
    )  # fmt: skip
    st = path.stat()
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with _removed_on_error(tmp, path):
        with h5py.File(path, "r") as old, h5py.File(tmp, "w", libver="latest") as h:
            _write_file_columns(h, files)
            _write_locations(h, path, files, segments, t.frame_shape, t.dtype)
            for group in ("targets", "annotated"):
                if group in old:
                    old.copy(old[group], h, name=group)
            h.attrs.update(dict(old.attrs))
        _commit(tmp, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return path


# ---------------------------------------------------------------------------
# Views: reading


@dataclass
class StoreTables:
    """Everything of a view but its big arrays, as numpy, loaded once.

    The per-file arrays list the files whose features exist; ``failed`` the others, with
    their reasons. ``offset`` indexes the view's order (frame-level targets, ``/features``);
    ``segment`` and ``first`` say where each file's rows are in the pool.
    """

    path: Path
    attrs: dict[str, Any]
    feature: dict[str, Any]
    rows: np.ndarray  # each file's row in the view's files table
    names: np.ndarray
    entry: np.ndarray
    offset: np.ndarray
    n_frames: np.ndarray
    duration_s: np.ndarray
    orig_sr: np.ndarray
    content: np.ndarray
    keys: np.ndarray
    checksum: np.ndarray
    segment: np.ndarray
    first: np.ndarray
    segments: list[SegmentRef]
    targets: dict[str, TargetSpec]
    frame_shape: tuple[int, int]
    dtype: np.dtype
    total_frames: int
    failed: list[dict[str, Any]]
    annotated: dict[str, np.ndarray]  # per target: 1 where the file carries its description
    missing: np.ndarray  # files whose segment is gone

    @property
    def n_files(self) -> int:
        return len(self.names)

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.frame_shape)) * self.dtype.itemsize

    def byte_range(
        self, i: int, start: int = 0, n_frames: int | None = None
    ) -> tuple[Path, int, int]:
        """``(segment path, byte offset, nbytes)`` of frames ``[start, start + n)`` of file ``i``."""
        seg = self.segments[int(self.segment[i])]
        n = int(self.n_frames[i]) - start if n_frames is None else n_frames
        fb = self.frame_bytes
        return seg.path, seg.features_at + (int(self.first[i]) + start) * fb, n * fb

    def missing_error(self) -> MissingSegmentsError:
        names = [str(n) for n in self.names[self.missing]]
        gone = sorted({relative_to(stores_root_of(self.path), self.segments[s].path)
                       for s in self.segment[self.missing]})  # fmt: skip
        head = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return MissingSegmentsError(
            f"{self.path}: the rows of {len(names)} file(s) are gone ({head}): "
            f"segment(s) {', '.join(gone)} were deleted; recompute them with: "
            f"{_rebuild_hint(self.attrs)}"
        )


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    if isinstance(v, np.generic):
        return v.item()
    return v


def _rebuild_hint(attrs: dict[str, Any]) -> str:
    feature = attrs.get("feature") or {}
    kind = feature.get("kind", "FEATURE") if isinstance(feature, dict) else "FEATURE"
    dataset = attrs.get("pyjama") or f"{attrs.get('dataset', 'DATASET')}.pyjama"
    return f"precompute run --dataset {dataset} --feature {kind}"


def _format_error(path: Path, attrs: dict[str, Any]) -> StoreError:
    version = attrs.get("format_version")
    if version == 2:
        return StoreError(
            f"{path}: a store of format 2, which copies its features; move them into the pool "
            f"(no recomputation) with: precompute migrate {stores_root_of(path)}"
        )
    return StoreError(
        f"{path}: store format {version}, this mirpatch reads format {FORMAT_VERSION}; "
        f"delete it and rebuild with: {_rebuild_hint(attrs)}"
    )


def read_tables(path: str | os.PathLike, missing_ok: bool = False) -> StoreTables:
    """Open a view, check its format and load its tables (not its features).

    Raises :class:`MissingSegmentsError` when segments it needs are gone, unless
    ``missing_ok`` (then ``missing`` lists the files whose rows are gone).
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such store")
    try:
        h = h5py.File(path, "r")
    except OSError as e:
        raise StoreError(f"{path}: not a readable HDF5 store ({e}); re-run precompute") from None
    with h:
        attrs = {k: _decode(v) for k, v in h.attrs.items()}
        if attrs.get("format_version") != FORMAT_VERSION or attrs.get("role") != "view":
            raise _format_error(path, attrs)
        f, s = h["files"], h["segments"]
        root = stores_root_of(path)
        segments = [
            SegmentRef(root / p if not os.path.isabs(p) else Path(p), int(a), int(n))
            for p, a, n in zip(s["path"].asstr()[()], s["features_at"][()], s["frames"][()])
        ]
        targets = {n: TargetSpec.from_attrs(n, ds.attrs) for n, ds in h["targets"].items()}
        names = f["name"].asstr()[()]
        marks = h.get("annotated", {})
        annotated = {
            n: marks[n][()] if n in marks else np.ones(len(names), np.uint8) for n in targets
        }
        feature = attrs["feature"]
        dtype = np.dtype(feature.get("dtype", "float32")).newbyteorder("<")
        segment = f["segment"][()]
        t = StoreTables(
            path=path,
            attrs=attrs,
            feature=feature,
            rows=np.arange(len(names)),
            names=names,
            entry=f["entry"][()],
            offset=f["offset"][()],
            n_frames=f["n_frames"][()],
            duration_s=f["duration_s"][()],
            orig_sr=f["orig_sr"][()],
            content=f["content"].asstr()[()],
            keys=f["key"].asstr()[()],
            checksum=f["checksum"][()].astype(str),
            segment=segment,
            first=f["first"][()],
            segments=segments,
            targets=targets,
            frame_shape=tuple(h["features"].shape[1:]),
            dtype=dtype,
            total_frames=int(h["features"].shape[0]),
            failed=sorted(list(attrs.get("failed") or []), key=lambda d: d["entry"]),
            annotated=annotated,
            missing=np.zeros(0, np.int64),
        )
    gone = np.array([not sg.path.is_file() for sg in segments], dtype=bool)
    if gone.any():
        t.missing = np.nonzero(gone[segment])[0]
        if not missing_ok:
            raise t.missing_error()
    return t


def read_rows(t: StoreTables, i: int, start: int = 0, n_frames: int | None = None) -> np.ndarray:
    """Time-major rows ``(n, C, F)`` of file ``i`` of a view, read by one pread."""
    path, at, nbytes = t.byte_range(i, start, n_frames)
    out = np.empty((nbytes // t.frame_bytes, *t.frame_shape), dtype=t.dtype)
    fd = os.open(path, os.O_RDONLY)
    try:
        pread_into(fd, out, at)
    finally:
        os.close(fd)
    return out


def read_features(path: str | os.PathLike) -> np.ndarray:
    """Every frame of a view, in its order ``(total_frames, C, F)`` (for tests and tools)."""
    t = read_tables(path)
    return (
        np.concatenate([read_rows(t, i) for i in range(t.n_files)])
        if t.n_files
        else np.zeros((0, *t.frame_shape), t.dtype)
    )


def memmap_dataset(path: str | os.PathLike, name: str) -> np.memmap | np.ndarray:
    """Map a contiguous dataset of a view read-only (frame-level targets), without h5py on the
    read path. The features are in the pool: see :func:`read_rows`."""
    path = Path(path)
    shape, dtype, offset = dataset_location(path, name)
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def dataset_location(path: str | os.PathLike, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, byte offset)`` of a contiguous dataset, for mapping or reading it."""
    path = Path(path)
    with h5py.File(path, "r") as h:
        if name not in h:
            raise StoreError(f"{path}: no dataset '{name}'")
        ds = h[name]
        if ds.is_virtual:
            raise StoreError(f"{path}: '{name}' is a view of the pool; read it with read_rows")
        if ds.chunks is not None or ds.compression is not None:
            raise StoreError(
                f"{path}: '{name}' is chunked or compressed and cannot be memory-mapped; re-run precompute"
            )
        if ds.dtype.byteorder == ">":
            raise StoreError(f"{path}: '{name}' is big-endian; re-run precompute on this machine")
        shape, dtype, offset = ds.shape, ds.dtype, ds.id.get_offset()
    if offset is None and int(np.prod(shape)):
        raise StoreError(f"{path}: '{name}' has no storage allocated; re-run precompute")
    return tuple(shape), dtype, int(offset or 0)


def frame_target_location(
    path: str | os.PathLike, name: str
) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, byte offset)`` of a view's frame-level target ``name``, to read it
    without h5py (rows in the view's order: ``files/offset``)."""
    return dataset_location(path, f"targets/{name}")


def target_rows(path: str | os.PathLike) -> dict[str, int]:
    """How many rows each target of a view has (files, or frames for frame-level ones)."""
    with h5py.File(path, "r") as h:
        return {n: int(ds.shape[0]) for n, ds in h["targets"].items()}


def read_frame_target(t: StoreTables, name: str, i: int) -> np.ndarray:
    """File ``i``'s rows of the frame-level target ``name`` (one pread)."""
    shape, dtype, at = frame_target_location(t.path, name)
    row = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    out = np.empty((int(t.n_frames[i]), *shape[1:]), dtype=dtype)
    fd = os.open(t.path, os.O_RDONLY)
    try:
        pread_into(fd, out, at + int(t.offset[i]) * row)
    finally:
        os.close(fd)
    return out


def read_file_targets(path: str | os.PathLike, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Per-file targets, one row per file of the view."""
    with h5py.File(path, "r") as h:
        return {n: h[f"targets/{n}"][()] for n in names}


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The attributes of a view, a segment or an older store (for listing what a folder holds)."""
    with h5py.File(path, "r") as h:
        return {k: _decode(v) for k, v in h.attrs.items()}


def view_segment_paths(path: str | os.PathLike) -> list[Path]:
    """The segments a view refers to (absolute), read without checking they exist."""
    root = stores_root_of(path)
    with h5py.File(path, "r") as h:
        return [root / p for p in h["segments/path"].asstr()[()]]


def dataset_layouts(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Per dataset: shape, dtype, chunks, compression (for ``precompute info``/``verify``)."""
    out = {}
    with h5py.File(path, "r") as h:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = {
                    "shape": obj.shape,
                    "dtype": str(obj.dtype),
                    "chunks": obj.chunks,
                    "compression": obj.compression,
                    "virtual": obj.is_virtual,
                }

        h.visititems(visit)
    return out


def patch_index(
    n_frames: np.ndarray, patch_frames: int, patch_hop: int
) -> tuple[np.ndarray, np.ndarray]:
    """All patch starts of every file, vectorised: ``(file [int32], start frame [int64])``.

    A file shorter than ``patch_frames`` has no patch.
    """
    n_frames = np.asarray(n_frames, dtype=np.int64)
    per_file = np.where(n_frames >= patch_frames, (n_frames - patch_frames) // patch_hop + 1, 0)
    file_idx = np.repeat(np.arange(len(n_frames), dtype=np.int32), per_file)
    first = np.concatenate([[0], np.cumsum(per_file)[:-1]]) if len(per_file) else per_file
    start = (
        np.arange(int(per_file.sum()), dtype=np.int64) - np.repeat(first, per_file)
    ) * patch_hop
    return file_idx, start


# ---------------------------------------------------------------------------
# Format 2 (one file holding its own copy of the features): read only, to migrate it


@dataclass
class Format2Store:
    path: Path
    attrs: dict[str, Any]
    ok: np.ndarray  # rows of the files computed
    names: np.ndarray
    entry: np.ndarray
    offset: np.ndarray
    n_frames: np.ndarray
    duration_s: np.ndarray
    orig_sr: np.ndarray
    content: np.ndarray
    keys: np.ndarray
    failed: list[dict[str, Any]]
    features_at: int
    frame_shape: tuple[int, int]
    dtype: np.dtype

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.frame_shape)) * self.dtype.itemsize


def read_format2(path: str | os.PathLike) -> Format2Store:
    path = Path(path)
    with h5py.File(path, "r") as h:
        attrs = {k: _decode(v) for k, v in h.attrs.items()}
        if attrs.get("format_version") != 2:
            raise StoreError(f"{path}: not a store of format 2")
        f, feats = h["files"], h["features"]
        status = f["status"][()]
        if (status == STATUS_PENDING).any():
            raise StoreError(f"{path}: an unfinished format-2 store; delete it and run precompute")
        ok = status == STATUS_OK
        names = f["name"].asstr()[()]
        errors = f["error"][()]
        failed = list(attrs.get("failed") or []) + [
            {"entry": int(e), "name": str(n), "reason": r.decode("utf-8", "ignore").rstrip("\0")}
            for n, e, r in zip(names[~ok], f["entry"][()][~ok], errors[~ok])
        ]
        return Format2Store(
            path, attrs, np.nonzero(ok)[0], names, f["entry"][()], f["offset"][()],
            f["n_frames"][()], f["duration_s"][()], f["orig_sr"][()], f["content"].asstr()[()],
            f["key"].asstr()[()], sorted(failed, key=lambda d: d["entry"]),
            feats.id.get_offset() or 0, tuple(feats.shape[1:]), feats.dtype,
        )  # fmt: skip


def copy_view_parts(src: str | os.PathLike, files: np.ndarray) -> dict[str, Any]:
    """Targets, annotation marks (rows of ``files``) and attributes of a store, to write them
    into a view (frame-level targets are read per file by the returned ``frame_targets``)."""
    with h5py.File(src, "r") as h:
        specs = [TargetSpec.from_attrs(n, ds.attrs) for n, ds in h["targets"].items()]
        per_file = {s.name: h[f"targets/{s.name}"][()][files] for s in specs if not s.frame_level}
        marks = {n: ds[()][files] for n, ds in h.get("annotated", {}).items()}
        offsets, counts = h["files/offset"][()][files], h["files/n_frames"][()][files]
    frame_maps = {s.name: memmap_dataset(src, f"targets/{s.name}") for s in specs if s.frame_level}

    def frame_targets(i: int) -> dict[str, np.ndarray]:
        o, n = int(offsets[i]), int(counts[i])
        return {name: np.asarray(m[o : o + n]) for name, m in frame_maps.items()}

    return {"targets": specs, "file_targets": per_file, "annotated": marks,
            "frame_targets": frame_targets}  # fmt: skip


def view_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What the catalogue keeps of a view: its request, sizes, and the segments it needs."""
    path = Path(path)
    with h5py.File(path, "r") as h:
        attrs = {k: _decode(v) for k, v in h.attrs.items()}
        if attrs.get("format_version") != FORMAT_VERSION or attrs.get("role") != "view":
            raise _format_error(path, attrs)
        root = stores_root_of(path)
        feature = attrs.get("feature") or {}
        return {
            "dataset": str(attrs.get("dataset", "")),
            "pyjama": str(attrs.get("pyjama", "")),
            "pyjama_sha1": str(attrs.get("pyjama_sha1", "")),
            "audio_root": str(attrs.get("audio_root") or "") or None,
            "feature_kind": str(feature.get("kind", "")),
            "feature_key": str(attrs.get("feature_key", "")),
            "feature": feature,
            "files": int(h["files/name"].shape[0]),
            "frames": int(h["features"].shape[0]),
            "audio_s": float(h["files/duration_s"][()].sum()),
            "segments": [root / p for p in h["segments/path"].asstr()[()]],
        }
