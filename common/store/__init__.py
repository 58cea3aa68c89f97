"""The on-disk format: the feature pool and the stores (views) over it. The one package that
knows HDF5 paths and byte offsets.

Features are written once, into the **pool** (:mod:`.segments`), and never copied for a new
annotation version; a **store** is a light view over the pool, one file per (annotations,
feature values) (:mod:`.write`, :mod:`.read`). By responsibility:

- :mod:`.format`: the format's version, statuses, paths of a stores folder, errors, and
  :func:`byte_address`, the one place a frame of a segment becomes a byte offset;
- :mod:`.hdf5`: contiguous datasets, attributes, HDF5's errors as OS errors;
- :mod:`.segments`: lay out, seal and read segments of the pool;
- :mod:`.write`: draft, finish and re-point views;
- :mod:`.read`: a view's tables, and the byte ranges of its files' rows.
"""

from __future__ import annotations

from .format import (
    CHECKSUM_BYTES,
    FORMAT_VERSION,
    POOL,
    SEGMENT_FORMAT,
    SEGMENT_MAX_BYTES,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PENDING,
    DiskFullError,
    MissingSegmentsError,
    Outcome,
    SegmentRef,
    StoreError,
    byte_address,
    format_error,
    frames_checksum,
    pool_dir,
    rebuild_hint,
    relative_to,
    segment_files,
    segment_path,
    store_path,
    stores_root_of,
    view_files,
)
from .hdf5 import attrs_of, dataset_location, memmap_dataset, read_attrs
from .read import (
    StoreTables,
    frame_target_runs,
    read_features,
    read_file_targets,
    read_frame_target,
    read_frames,
    read_runs,
    read_tables,
    target_rows,
    view_segment_paths,
    view_summary,
)
from .segments import (
    SegmentLayout,
    SegmentTable,
    lay_out_segment,
    open_segment_layout,
    read_segment,
    seal_segment,
    segment_bytes,
)
from .write import ViewFiles, draft_view, finish_view, repoint_view, view_target_bytes, write_view

__all__ = [
    "CHECKSUM_BYTES",
    "FORMAT_VERSION",
    "POOL",
    "SEGMENT_FORMAT",
    "SEGMENT_MAX_BYTES",
    "STATUS_FAILED",
    "STATUS_OK",
    "Outcome",
    "STATUS_PENDING",
    "DiskFullError",
    "MissingSegmentsError",
    "SegmentLayout",
    "SegmentRef",
    "SegmentTable",
    "StoreError",
    "StoreTables",
    "ViewFiles",
    "attrs_of",
    "byte_address",
    "dataset_location",
    "draft_view",
    "finish_view",
    "format_error",
    "frame_target_runs",
    "lay_out_segment",
    "memmap_dataset",
    "open_segment_layout",
    "pool_dir",
    "read_attrs",
    "read_features",
    "read_file_targets",
    "read_frame_target",
    "read_frames",
    "read_runs",
    "read_segment",
    "read_tables",
    "rebuild_hint",
    "relative_to",
    "repoint_view",
    "frames_checksum",
    "seal_segment",
    "segment_bytes",
    "segment_files",
    "segment_path",
    "store_path",
    "stores_root_of",
    "target_rows",
    "view_files",
    "view_segment_paths",
    "view_summary",
    "view_target_bytes",
    "write_view",
]
