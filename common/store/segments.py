"""Segments of the feature pool: laid out, written in place, sealed, read.

A segment ``STORES/pool/<feature key>/seg-<id>.h5`` holds the frames of many audio files::

    /features        float32 or float16 (frames, C, F): contiguous, uncompressed, time-major
    /rows/key        str (n,)   content key of each file's frames (feature values + audio hash)
    /rows/first      int64      first frame of the file in /features
    /rows/n_frames   int64
    /rows/status     uint8      1 computed, 2 failed (its frames are dead space)
    /rows/checksum   S32        blake2b-128 (hex) of the file's frame bytes; empty when failed
    attrs            format_version, role="segment", feature_key, feature (JSON), versions

It is laid out in full under ``seg-<id>.h5.partial`` (tables written, every file's disk space
reserved), the files' frames are then written in place by any process, and it is sealed:
status and checksums written in place, fsync, rename to its final name. It is never opened for
writing again. A file's frames are one byte range of one segment; ``/rows`` is the table of the
files, a row each.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from common.fileio import claim, pwrite_all, replace_file, reserve

from .format import CHECKSUM_BYTES, SEGMENT_FORMAT, StoreError, byte_address
from .hdf5 import attrs_of, create_contiguous, disk_error, write_attrs


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

    def frames_at(self, i: int) -> int:
        """Byte offset of row ``i``'s first frame in the file."""
        return byte_address(self.features_at, int(self.first[i]), self.frame_bytes)


def segment_bytes(n_frames: Iterable[int], frame_bytes: int) -> int:
    """About what a segment of these files takes on disk (frames plus tables)."""
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
    """Write a segment file but its frames, status and checksums, with its disk space reserved."""
    path = Path(path)
    n = np.asarray(list(n_frames), dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64) if len(n) else n
    dtype = np.dtype(dtype).newbyteorder("<")
    try:
        claim(path, segment_bytes(n, int(np.prod(frame_shape)) * dtype.itemsize))
        with h5py.File(path, "w", libver="latest") as h:
            feats = create_contiguous(h, "features", (int(n.sum()), *frame_shape), dtype)
            status = create_contiguous(h, "rows/status", (len(n),), np.dtype("u1"))
            sums = create_contiguous(h, "rows/checksum", (len(n),), np.dtype(f"S{CHECKSUM_BYTES}"))
            h.create_dataset("rows/key", data=keys, dtype=h5py.string_dtype("utf-8"))
            h.create_dataset("rows/first", data=first)
            h.create_dataset("rows/n_frames", data=n)
            write_attrs(h, {**attrs, "role": "segment"}, SEGMENT_FORMAT)
            layout = SegmentLayout(
                path, list(keys), first, n, tuple(frame_shape), dtype,
                feats.id.get_offset() or 0, status.id.get_offset() or 0,
                sums.id.get_offset() or 0,
            )  # fmt: skip
    except (OSError, RuntimeError) as e:
        disk_error(e, path)
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
            path, r["key"].asstr()[()].tolist(), r["first"][()], r["n_frames"][()],
            tuple(feats.shape[1:]), feats.dtype, feats.id.get_offset() or 0,
            r["status"].id.get_offset() or 0, r["checksum"].id.get_offset() or 0,
        )  # fmt: skip


def seal_segment(
    layout: SegmentLayout, status: np.ndarray, checksums: list[str], final: str | os.PathLike
) -> int:
    """Write status and checksums in place, flush, and give the segment its final name.

    Returns an fd of it that holds a shared ``flock`` taken before the rename (see
    :mod:`common.holds`): nobody can remove the segment before its view refers to it.
    """
    fd = os.open(layout.path, os.O_RDWR)
    try:
        pwrite_all(fd, np.ascontiguousarray(status, dtype=np.uint8), layout.status_at)
        raw = np.array([c.encode() for c in checksums], dtype=f"S{CHECKSUM_BYTES}")
        pwrite_all(fd, raw, layout.checksum_at)
        fcntl.flock(fd, fcntl.LOCK_SH)
        replace_file(layout.path, final, fd)
    except BaseException:
        os.close(fd)
        raise
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

    def byte_range(self, i: int) -> tuple[int, int]:
        """``(byte offset, nbytes)`` of row ``i``'s frames in the segment file."""
        fb = self.frame_bytes
        return byte_address(self.features_at, int(self.first[i]), fb), int(self.n_frames[i]) * fb


def read_segment(path: str | os.PathLike) -> SegmentTable:
    path = Path(path)
    try:
        h = h5py.File(path, "r")
    except OSError as e:
        raise StoreError(f"{path}: not a readable segment ({e})") from None
    with h:
        attrs = attrs_of(h)
        if attrs.get("role") != "segment" or attrs.get("format_version") != SEGMENT_FORMAT:
            raise StoreError(f"{path}: not a segment of format {SEGMENT_FORMAT}")
        feats, r = h["features"], h["rows"]
        return SegmentTable(
            path, str(attrs.get("feature_key", "")), r["key"].asstr()[()], r["first"][()],
            r["n_frames"][()], r["status"][()], r["checksum"][()].astype(str),
            feats.id.get_offset() or 0, tuple(feats.shape[1:]), feats.dtype,
            int(feats.shape[0]), attrs,
        )  # fmt: skip
