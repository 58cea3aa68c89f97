"""Reading views: the tables of a view, loaded once, and the bytes of a file's frames.

Without h5py, a file's frames are::

    t = read_tables(view); i = ...  # a file of the view
    frames = read_frames(t, i)        # (n_frames, C, F), by one pread of its byte range

:meth:`StoreTables.byte_range` is where a file and a frame become a segment and a byte offset.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from common.fileio import pread_into
from common.targets import TargetSpec

from .format import (
    FORMAT_VERSION,
    MissingSegmentsError,
    SegmentRef,
    StoreError,
    byte_address,
    format_error,
    rebuild_hint,
    relative_to,
    stores_root_of,
)
from .hdf5 import attrs_of, dataset_location, memmap_dataset


@dataclass
class StoreTables:
    """Everything of a view but its big arrays, as numpy, loaded once.

    The per-file arrays list the files whose features exist; ``failed`` the others, with
    their reasons. ``offset`` indexes the view's order (frame-level targets, ``/features``);
    ``segment`` and ``first`` say where each file's frames are in the pool.
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
        return seg.path, byte_address(seg.features_at, int(self.first[i]) + start, fb), n * fb

    def missing_error(self) -> MissingSegmentsError:
        names = [str(n) for n in self.names[self.missing]]
        gone = sorted({relative_to(stores_root_of(self.path), self.segments[s].path)
                       for s in self.segment[self.missing]})  # fmt: skip
        head = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return MissingSegmentsError(
            f"{self.path}: the frames of {len(names)} file(s) are gone ({head}): "
            f"segment(s) {', '.join(gone)} were deleted; recompute them with: "
            f"{rebuild_hint(self.attrs)}"
        )


def _open_view(path: Path) -> h5py.File:
    if not path.is_file():
        raise StoreError(f"{path}: no such store")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise StoreError(f"{path}: not a readable HDF5 store ({e}); re-run precompute") from None


def _checked_attrs(path: Path, h: h5py.File) -> dict[str, Any]:
    attrs = attrs_of(h)
    if attrs.get("format_version") != FORMAT_VERSION or attrs.get("role") != "view":
        raise format_error(path, attrs)
    return attrs


def read_tables(path: str | os.PathLike, missing_ok: bool = False) -> StoreTables:
    """Open a view, check its format and load its tables (not its features).

    Raises :class:`MissingSegmentsError` when segments it needs are gone, unless
    ``missing_ok`` (then ``missing`` lists the files whose frames are gone).
    """
    path = Path(path)
    with _open_view(path) as h:
        attrs = _checked_attrs(path, h)
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
            path=path, attrs=attrs, feature=feature, rows=np.arange(len(names)), names=names,
            entry=f["entry"][()], offset=f["offset"][()], n_frames=f["n_frames"][()],
            duration_s=f["duration_s"][()], orig_sr=f["orig_sr"][()],
            content=f["content"].asstr()[()], keys=f["key"].asstr()[()],
            checksum=f["checksum"][()].astype(str), segment=segment, first=f["first"][()],
            segments=segments, targets=targets, frame_shape=tuple(h["features"].shape[1:]),
            dtype=dtype, total_frames=int(h["features"].shape[0]),
            failed=sorted(list(attrs.get("failed") or []), key=lambda d: d["entry"]),
            annotated=annotated, missing=np.zeros(0, np.int64),
        )  # fmt: skip
    gone = np.array([not sg.path.is_file() for sg in segments], dtype=bool)
    if gone.any():
        t.missing = np.nonzero(gone[segment])[0]
        if not missing_ok:
            raise t.missing_error()
    return t


def read_frames(t: StoreTables, i: int, start: int = 0, n_frames: int | None = None) -> np.ndarray:
    """Time-major frames ``(n, C, F)`` of file ``i`` of a view, read by one pread."""
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
        np.concatenate([read_frames(t, i) for i in range(t.n_files)])
        if t.n_files
        else np.zeros((0, *t.frame_shape), t.dtype)
    )


RUN_COLUMNS = ("start", "length", "value")


def frame_target_runs(
    path: str | os.PathLike, name: str
) -> dict[str, tuple[tuple[int, ...], np.dtype, int]]:
    """Where the runs of a view's frame-level target ``name`` are: per column (``start``,
    ``length``, ``value``), ``(shape, dtype, byte offset)``, to map them without h5py."""
    return {c: dataset_location(path, f"targets/{name}/{c}") for c in RUN_COLUMNS}


def read_runs(path: str | os.PathLike, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of a frame-level target, mapped read-only: ``(start, length, value)``."""
    return tuple(memmap_dataset(path, f"targets/{name}/{c}") for c in RUN_COLUMNS)


def target_rows(path: str | os.PathLike) -> dict[str, int]:
    """How many rows each target of a view stands for (files, or frames for frame-level
    ones)."""
    with h5py.File(path, "r") as h:
        return {
            n: int(x.attrs["frames"]) if isinstance(x, h5py.Group) else int(x.shape[0])
            for n, x in h["targets"].items()
        }


def read_frame_target(t: StoreTables, name: str, i: int) -> np.ndarray:
    """File ``i``'s dense frames ``(n_frames, ...)`` of the frame-level target ``name``."""
    spec = t.targets[name]
    runs = read_runs(t.path, name)
    return spec.kind_class.decode(spec, runs, [int(t.offset[i])], int(t.n_frames[i]))[0]


def read_file_targets(path: str | os.PathLike, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Per-file targets, one row per file of the view."""
    with h5py.File(path, "r") as h:
        return {n: h[f"targets/{n}"][()] for n in names}


def view_segment_paths(path: str | os.PathLike) -> list[Path]:
    """The segments a view refers to (absolute), read without checking they exist."""
    root = stores_root_of(path)
    with h5py.File(path, "r") as h:
        return [root / p for p in h["segments/path"].asstr()[()]]


def view_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What the catalogue keeps of a view: its request, sizes, and the segments it needs."""
    path = Path(path)
    with h5py.File(path, "r") as h:
        attrs = _checked_attrs(path, h)
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
