"""Writing views: a files table over the pool, the targets, and a virtual ``/features``.

A **view** is one file per (annotations, feature values)::

    STORES/<dataset>/<feature>-<id>.h5
        /segments/path        str (n_segments,)  relative to the stores folder
        /segments/features_at int64              byte offset of the segment's /features
        /segments/frames      int64
        /files/name           str (n_files,)     the pyjama filepath
        /files/entry          int32              index of the entry in the pyjama
        /files/segment        int32              row of /segments holding the file's frames
        /files/first          int64              first frame of the file in that segment
        /files/offset         int64              first frame of the file in this view's order
                                                 (index of /features and of frame-level targets)
        /files/n_frames       int64
        /files/duration_s     float64
        /files/orig_sr        int32
        /files/content        str                blake2b of the audio file's bytes
        /files/key            str                content key of the file's frames
        /files/checksum       S32                as in the segment's table
        /features             a virtual dataset over the segments (paths relative to this
                              file, so the stores folder can move): plain h5py reads the view's
                              features as one array; a missing segment reads as NaN
        /targets/<name>       per pyjama description (attrs: kind, vocabulary, ...): per file,
                              a dataset (n_files, ...); frame level, a group of runs
                              (``start`` int64 frame in the view's order, ``length`` int32,
                              ``value`` int32 bin or class, or float32 rows), sorted by start,
                              none longer than 256 frames (see :mod:`common.targets.runs`)
        /annotated/<name>     uint8 (n_files,): 1 where the entry carries the description
        attrs                 format_version, role="view", dataset, pyjama, pyjama_sha1,
                              audio_root, feature (JSON), feature_key, store_id, versions, skipped,
                              failed, warnings, notes, off_grid

Only files whose features were computed are in a view; the others are listed in its ``failed``
attribute, with their reasons. Nothing in it holds a clock, so the same build gives the same
bytes. It is written under a temporary name, flushed and renamed (:func:`common.fileio.replace_file`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from common.fileio import claim, replace_file, temporary_name
from common.targets import Runs, TargetSpec

from .format import CHECKSUM_BYTES, SegmentRef, relative_to, stores_root_of
from .hdf5 import removed_on_error, write_attrs
from .read import read_tables


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
    h: h5py.File, view: Path, files: ViewFiles, segments: list[SegmentRef], frame_shape, dtype
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
    """Where each file's frames are in the pool: the segments, each file's segment, first frame
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


def _frame_runs(
    files: ViewFiles, targets: list[TargetSpec], frame_runs: Callable[[int], dict[str, Runs]]
) -> dict[str, Runs]:
    """Every file's runs of each frame-level target, in the view's frame order."""
    offsets, n_frames = files.offset, np.asarray(files.n_frames, np.int64)
    parts: dict[str, list[Runs]] = {s.name: [] for s in targets if s.frame_level}
    for i in range(len(files)):
        if n_frames[i]:
            for name, runs in frame_runs(i).items():
                parts[name].append(runs.shifted(int(offsets[i])))
    layouts = {s.name: s.kind_class.value_layout(s) for s in targets if s.frame_level}
    return {name: Runs.concat(p, *layouts[name]) for name, p in parts.items()}


def _write_runs(h: h5py.File, spec: TargetSpec, runs: Runs, total_frames: int) -> None:
    """A frame-level target as runs: ``targets/<name>/{start, length, value}``, contiguous."""
    g = h.require_group(f"targets/{spec.name}")
    for column in ("start", "length", "value"):
        g.create_dataset(column, data=getattr(runs, column))
    g.attrs.update({**spec.to_attrs(), "frames": total_frames})


def view_target_bytes(targets: list[TargetSpec], n_files: int, annotation_points: int) -> int:
    """About what a view's tables and targets take on disk: a run or less per annotated point
    (a segment, a marker, a breakpoint of a track), a row per file."""
    per_file = 1024 + sum(s.row_bytes() for s in targets if not s.frame_level)
    return annotation_points * 32 + n_files * per_file + (1 << 20)


def draft_view(
    path: str | os.PathLike,
    files: ViewFiles,
    targets: list[TargetSpec],
    file_targets: dict[str, np.ndarray],
    frame_runs: Callable[[int], dict[str, Runs]],
    attrs: dict[str, Any],
    annotated: dict[str, np.ndarray] | None = None,
) -> Path:
    """All of a view but where its frames are, under a temporary name (it can be written while
    the features are still being computed); :func:`finish_view` completes it.

    ``file_targets`` have one row per file of ``files``; ``frame_runs(i)`` gives file ``i``'s
    frame-level targets as runs counted from its first frame.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    total = int(np.sum(files.n_frames))
    with removed_on_error(tmp, path):
        runs = _frame_runs(files, targets, frame_runs)
        size = sum(a.nbytes for r in runs.values() for a in (r.start, r.length, r.value))
        claim(tmp, size + view_target_bytes(targets, len(files), 0))
        with h5py.File(tmp, "w", libver="latest") as h:
            _write_file_columns(h, files)
            h.require_group("targets")
            for spec in targets:
                if spec.frame_level:
                    _write_runs(h, spec, runs[spec.name], total)
                else:
                    h.create_dataset(f"targets/{spec.name}", data=file_targets[spec.name])
                    h[f"targets/{spec.name}"].attrs.update(spec.to_attrs())
            for name, mask in (annotated or {}).items():
                h.create_dataset(f"annotated/{name}", data=np.asarray(mask, dtype=np.uint8))
            write_attrs(h, attrs)
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
    """Add where the frames are to a :func:`draft_view`, flush it and give it its name."""
    path = Path(path)
    with removed_on_error(draft, path):
        with h5py.File(draft, "r+") as h:
            _write_locations(h, path, files, segments, frame_shape, dtype)
            write_attrs(h, {**(attrs or {}), "role": "view"})
        return replace_file(draft, path)


def write_view(
    path: str | os.PathLike,
    files: ViewFiles,
    segments: list[SegmentRef],
    frame_shape: tuple[int, int],
    dtype: np.dtype,
    targets: list[TargetSpec],
    file_targets: dict[str, np.ndarray],
    frame_runs: Callable[[int], dict[str, Runs]],
    attrs: dict[str, Any],
    annotated: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a view: under a temporary name, flushed, then renamed (never half visible)."""
    draft = draft_view(path, files, targets, file_targets, frame_runs, attrs, annotated)
    return finish_view(draft, path, files, segments, frame_shape, dtype)


def repoint_view(
    path: str | os.PathLike, segment: np.ndarray, first: np.ndarray, segments: list[SegmentRef]
) -> Path:
    """The same view with its files' frames found elsewhere in the pool (after compaction or a
    repair): a new file, renamed over the old one, which keeps its last-used time."""
    path = Path(path)
    t = read_tables(path, missing_ok=True)
    files = ViewFiles(
        t.names.tolist(), t.entry, np.asarray(segment), np.asarray(first), t.n_frames,
        t.duration_s, t.orig_sr, t.content.tolist(), t.keys.tolist(), t.checksum.tolist(),
    )  # fmt: skip
    st = path.stat()
    tmp = temporary_name(path)
    with removed_on_error(tmp, path):
        with h5py.File(path, "r") as old, h5py.File(tmp, "w", libver="latest") as h:
            _write_file_columns(h, files)
            _write_locations(h, path, files, segments, t.frame_shape, t.dtype)
            for group in ("targets", "annotated"):
                if group in old:
                    old.copy(old[group], h, name=group)
            h.attrs.update(dict(old.attrs))
        replace_file(tmp, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return path
