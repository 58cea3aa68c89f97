"""The on-disk format of a store: the one module that knows HDF5 paths.

A store is one ``.h5`` file per (dataset annotations, feature values)::

    /features              float32 or float16 (total_frames, C, F): contiguous, uncompressed,
                           time-major, every file's rows one after the other
    /files/name            str   (n_files,)  the pyjama filepath
    /files/entry           int32            index of the entry in the pyjama
    /files/offset          int64            first frame of the file in /features
    /files/n_frames        int64
    /files/duration_s      float64
    /files/orig_sr         int32            sample rate of the audio file
    /files/content         str              blake2b of the audio file's bytes
    /files/key             str              content key of the file's rows (feature values + content)
    /files/status          uint8            1 computed, 2 failed (0: not yet, only while building)
    /files/error           S256             why a file failed (utf-8), empty otherwise
    /targets/<name>        one dataset per pyjama description (attrs: kind, vocabulary, ...)
                           per file: (n_files, ...); frame level: (total_frames, ...) aligned with /features
    /annotated/<name>      uint8 (n_files,): 1 where the entry carries the description (0: no
                           label at all, which is not an empty one)
    attrs                  format_version, dataset, pyjama, pyjama_sha1, audio_root, feature (JSON),
                           feature_key, store_id, versions (JSON), skipped, failed, warnings,
                           notes, off_grid (JSON)

The file is laid out in full before any feature is computed (the frame count of every file is
known from its header): tables and targets are written, the big datasets allocated. Feature rows
are then written in place, at their offsets, by any process, and ``status`` last. Patches are
not stored: their index is derived from the frame counts by whoever reads the store.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import UserError

FORMAT_VERSION = 2
ERROR_BYTES = 256
STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2

# Target kinds with one row per feature frame (the others have one row per file:
# class, multilabel, value, work).
FRAME_KINDS = ("frame_class", "frame_events", "frame_pitch", "frame_value")


class StoreError(UserError):
    """A store that cannot be used as it is; the message says what to do."""


class DiskFullError(StoreError):
    """No space left (or a file size limit) while writing under a stores folder."""


def store_path(
    stores: str | os.PathLike, dataset_name: str, feature_kind: str, identity: str
) -> Path:
    """``STORES/<dataset>/<feature>-<identity>.h5``."""
    return Path(stores) / dataset_name / f"{feature_kind}-{identity}.h5"


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


@dataclass
class FileLayout:
    """One file of a store, as planned before its features exist."""

    entry: int
    name: str
    n_frames: int
    duration_s: float
    orig_sr: int
    content: str  # hash of the audio bytes
    key: str  # content key of its feature rows


@dataclass
class Layout:
    """Where things are in a laid-out store file: all a writer needs, no h5py."""

    path: Path
    offsets: np.ndarray  # first frame of each file
    n_frames: np.ndarray
    frame_shape: tuple[int, int]
    dtype: np.dtype
    features_at: int  # byte offset of /features in the file
    status_at: int
    error_at: int

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.frame_shape)) * self.dtype.itemsize

    @property
    def total_frames(self) -> int:
        return int(self.n_frames.sum())

    def rows_at(self, i: int) -> int:
        """Byte offset of file ``i``'s first feature row."""
        return self.features_at + int(self.offsets[i]) * self.frame_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "frame_shape": list(self.frame_shape),
            "dtype": self.dtype.str,
            "features_at": self.features_at,
            "status_at": self.status_at,
            "error_at": self.error_at,
        }


# ---------------------------------------------------------------------------
# Writing: lay out, write rows in place, finish


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


def lay_out(
    path: str | os.PathLike,
    files: list[FileLayout],
    frame_shape: tuple[int, int],
    dtype: np.dtype,
    targets: list[TargetSpec],
    file_targets: dict[str, np.ndarray],
    frame_targets: Callable[[int], dict[str, np.ndarray]],
    attrs: dict[str, Any],
    annotated: dict[str, np.ndarray] | None = None,
) -> Layout:
    """Write the whole store file but its feature rows, and reserve their disk space.

    ``frame_targets(i)`` gives file ``i``'s frame-level targets (computed one file at a time,
    so memory does not grow with the dataset). The same arguments give the same bytes.
    """
    try:
        return _lay_out(
            path, files, frame_shape, dtype, targets, file_targets, frame_targets, attrs, annotated
        )
    except (OSError, RuntimeError) as e:
        # HDF5 reports a full disk as text: "... errno = 28, error message = ..."
        found = re.search(r"errno = (\d+)", str(e))
        code = int(found.group(1)) if found else getattr(e, "errno", None)
        if code in (errno.ENOSPC, errno.EFBIG):
            raise OSError(code, os.strerror(code), str(path)) from None
        raise


def _lay_out(
    path, files, frame_shape, dtype, targets, file_targets, frame_targets, attrs, annotated
) -> Layout:
    path = Path(path)
    n_frames = np.array([f.n_frames for f in files], dtype=np.int64)
    offsets = (
        np.concatenate([[0], np.cumsum(n_frames)[:-1]]).astype(np.int64) if files else n_frames
    )
    total = int(n_frames.sum())
    str_dt = h5py.string_dtype("utf-8")
    dtype = np.dtype(dtype).newbyteorder("<")
    with h5py.File(path, "w", libver="latest") as h:
        feats = _create_contiguous(h, "features", (total, *frame_shape), dtype)
        status = _create_contiguous(h, "files/status", (len(files),), np.dtype("u1"))
        error = _create_contiguous(h, "files/error", (len(files),), np.dtype(f"S{ERROR_BYTES}"))
        frame_ds = {}
        for spec in targets:
            if spec.frame_level:
                row, dt = spec.frame_layout()
                frame_ds[spec.name] = _create_contiguous(
                    h, f"targets/{spec.name}", (total, *row), dt
                )
        for col, data in {
            "name": [f.name for f in files],
            "content": [f.content for f in files],
            "key": [f.key for f in files],
        }.items():
            h.create_dataset(f"files/{col}", data=data, dtype=str_dt)
        numeric = {
            "entry": np.array([f.entry for f in files], dtype=np.int32),
            "offset": offsets,
            "n_frames": n_frames,
            "duration_s": np.array([f.duration_s for f in files], dtype=np.float64),
            "orig_sr": np.array([f.orig_sr for f in files], dtype=np.int32),
        }
        for col, data in numeric.items():
            h.create_dataset(f"files/{col}", data=data)
        for spec in targets:
            if not spec.frame_level:
                h.create_dataset(f"targets/{spec.name}", data=file_targets[spec.name])
            h[f"targets/{spec.name}"].attrs.update(spec.to_attrs())
        h.require_group("targets")
        for name, mask in (annotated or {}).items():
            h.create_dataset(f"annotated/{name}", data=np.asarray(mask, dtype=np.uint8))
        for i, f in enumerate(files):
            if f.n_frames:
                for name, arr in frame_targets(i).items():
                    frame_ds[name][offsets[i] : offsets[i] + f.n_frames] = arr
        h.attrs.update(
            {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in attrs.items()}
        )
        h.attrs["format_version"] = FORMAT_VERSION
        layout = Layout(
            path,
            offsets,
            n_frames,
            tuple(frame_shape),
            dtype,
            feats.id.get_offset() or 0,
            status.id.get_offset() or 0,
            error.id.get_offset() or 0,
        )
    reserve(path)
    return layout


def reserve(path: Path) -> None:
    """Allocate the file's blocks now, so that writing rows later cannot run out of space."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EFBIG):
                    raise
                # a filesystem without fallocate: the blocks are allocated as rows are written
    finally:
        os.close(fd)


def open_layout(path: str | os.PathLike) -> Layout:
    """The layout of a laid-out (possibly unfinished) store file."""
    path = Path(path)
    with h5py.File(path, "r") as h:
        feats = h["features"]
        return Layout(
            path,
            h["files/offset"][()],
            h["files/n_frames"][()],
            tuple(feats.shape[1:]),
            feats.dtype,
            feats.id.get_offset() or 0,
            h["files/status"].id.get_offset() or 0,
            h["files/error"].id.get_offset() or 0,
        )


def pwrite_all(fd: int, data: bytes | memoryview, at: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def write_rows(fd: int, layout: Layout, i: int, rows: np.ndarray) -> None:
    """File ``i``'s time-major feature rows ``(n_frames, C, F)``, at their place."""
    expected = (int(layout.n_frames[i]), *layout.frame_shape)
    if rows.shape != expected:
        raise StoreError(f"{layout.path}: file {i} has rows {rows.shape}, the layout {expected}")
    data = np.ascontiguousarray(rows, dtype=layout.dtype)
    pwrite_all(fd, data, layout.rows_at(i))


def features_offset(path: str | os.PathLike) -> tuple[int, np.dtype, tuple[int, ...]]:
    """Byte offset, dtype and frame shape of a store's contiguous features."""
    with h5py.File(path, "r") as h:
        ds = h["features"]
        if ds.chunks is not None or ds.id.get_offset() is None and ds.shape[0]:
            raise StoreError(f"{path}: features are not one contiguous array")
        return ds.id.get_offset() or 0, ds.dtype, tuple(ds.shape[1:])


def copy_range(src: int, dst: int, src_off: int, dst_off: int, n: int) -> None:
    """Copy ``n`` bytes between file descriptors at the given offsets (in the kernel when it can)."""
    while n > 0:
        try:
            done = os.copy_file_range(src, dst, n, src_off, dst_off)
        except (AttributeError, OSError) as e:
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG):
                raise
            data = os.pread(src, min(n, 1 << 26), src_off)
            done = os.pwrite(dst, data, dst_off)
        if done <= 0:
            raise StoreError(f"short copy ({n} bytes left)")
        src_off, dst_off, n = src_off + done, dst_off + done, n - done


def finish(fd: int, layout: Layout, status: np.ndarray, errors: dict[int, str]) -> None:
    """Write every file's status and error (fixed-size, in place), then flush the file."""
    pwrite_all(fd, np.ascontiguousarray(status, dtype=np.uint8), layout.status_at)
    for i, reason in errors.items():
        raw = reason.encode("utf-8")[:ERROR_BYTES].decode("utf-8", "ignore").encode("utf-8")
        pwrite_all(fd, raw.ljust(ERROR_BYTES, b"\0"), layout.error_at + i * ERROR_BYTES)
    os.fsync(fd)


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
# Reading


@dataclass
class StoreTables:
    """Everything of a store but its big arrays, as numpy, loaded once.

    The per-file arrays list the files whose features were computed; ``failed`` the others,
    with their reasons. ``offset`` indexes the store's ``features`` (and frame targets).
    """

    path: Path
    attrs: dict[str, Any]
    feature: dict[str, Any]
    rows: np.ndarray  # each file's row in the store's files table
    names: np.ndarray
    entry: np.ndarray
    offset: np.ndarray
    n_frames: np.ndarray
    duration_s: np.ndarray
    content: np.ndarray
    keys: np.ndarray
    targets: dict[str, TargetSpec]
    frame_shape: tuple[int, int]
    dtype: np.dtype
    total_frames: int
    failed: list[dict[str, Any]]
    pending: int  # files neither computed nor failed: an unfinished store
    annotated: dict[str, np.ndarray]  # per target: 1 where the file carries its description

    @property
    def n_files(self) -> int:
        return len(self.names)


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


def read_tables(path: str | os.PathLike, unfinished: bool = False) -> StoreTables:
    """Open a store, check its format and load its tables (not its features).

    ``unfinished``: also read a store still being built (files not yet computed count as
    ``pending``); otherwise such a file is refused.
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
        version = attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(
                f"{path}: store format {version}, this mirpatch reads format {FORMAT_VERSION}; "
                f"delete it and rebuild with: {_rebuild_hint(attrs)}"
            )
        f = h["files"]
        feats = h["features"]
        status = f["status"][()]
        ok = status == STATUS_OK
        pending = int((status == STATUS_PENDING).sum())
        if pending and not unfinished:
            raise StoreError(f"{path}: {pending} file(s) were never computed; re-run precompute")
        names = f["name"].asstr()[()]
        errors = f["error"][()]
        failed = [
            {
                "entry": int(e),
                "name": str(n),
                "reason": r.decode("utf-8", "ignore").rstrip("\0"),
            }
            for n, e, r in zip(
                names[status == STATUS_FAILED],
                f["entry"][()][status == STATUS_FAILED],
                errors[status == STATUS_FAILED],
            )
        ]
        failed = sorted(list(attrs.get("failed") or []) + failed, key=lambda d: d["entry"])
        targets = {n: TargetSpec.from_attrs(n, ds.attrs) for n, ds in h["targets"].items()}
        marks = h.get("annotated", {})
        annotated = {
            n: marks[n][()][ok] if n in marks else np.ones(int(ok.sum()), np.uint8) for n in targets
        }
        return StoreTables(
            path=path,
            attrs=attrs,
            feature=attrs["feature"],
            rows=np.nonzero(ok)[0],
            names=names[ok],
            entry=f["entry"][()][ok],
            offset=f["offset"][()][ok],
            n_frames=f["n_frames"][()][ok],
            duration_s=f["duration_s"][()][ok],
            content=f["content"].asstr()[()][ok],
            keys=f["key"].asstr()[()][ok],
            targets=targets,
            frame_shape=tuple(feats.shape[1:]),
            dtype=feats.dtype,
            total_frames=int(feats.shape[0]),
            failed=failed,
            pending=pending,
            annotated=annotated,
        )


def memmap_dataset(path: str | os.PathLike, name: str) -> np.memmap | np.ndarray:
    """Map a contiguous dataset of the store read-only, without h5py on the read path.

    Fails with a clear error when the dataset is chunked, compressed, or not
    little-endian, since those cannot be mapped.
    """
    path = Path(path)
    shape, dtype, offset = dataset_location(path, name)
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def dataset_location(path: str | os.PathLike, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, byte offset)`` of a contiguous dataset, for mapping it."""
    path = Path(path)
    with h5py.File(path, "r") as h:
        if name not in h:
            raise StoreError(f"{path}: no dataset '{name}'")
        ds = h[name]
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


def read_file_targets(path: str | os.PathLike, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Per-file targets, one row per row of the store's files table (failed files included)."""
    with h5py.File(path, "r") as h:
        return {n: h[f"targets/{n}"][()] for n in names}


def iter_feature_blocks(path: str | os.PathLike, block_frames: int = 65536) -> Iterator[np.ndarray]:
    """The feature dataset in blocks of frames (for verification without loading it all)."""
    with h5py.File(path, "r") as h:
        ds = h["features"]
        for s in range(0, ds.shape[0], block_frames):
            yield ds[s : s + block_frames]


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
                    "offset": obj.id.get_offset(),
                }

        h.visititems(visit)
    return out
