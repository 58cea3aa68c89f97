"""HDF5 as the store format uses it: contiguous datasets laid out in advance and read by byte
offset, attributes as JSON, and HDF5's errors said as the OS errors they are."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .format import FORMAT_VERSION, StoreError


def disk_error(e: Exception, path: Path) -> None:
    """HDF5 reports a full disk as text ("... errno = 28 ..."): raise it as an OSError."""
    found = re.search(r"errno = (\d+)", str(e))
    code = int(found.group(1)) if found else getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EFBIG):
        raise OSError(code, os.strerror(code), str(path)) from None


@contextlib.contextmanager
def removed_on_error(tmp: Path, path: Path) -> Iterator[None]:
    """A temporary file removed if writing it fails (a full disk said as an OSError)."""
    try:
        yield
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):
            disk_error(e, path)
        raise


def create_contiguous(h: h5py.File, name: str, shape: tuple, dtype: np.dtype) -> h5py.Dataset:
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


def write_attrs(h: h5py.File, attrs: dict[str, Any], version: int = FORMAT_VERSION) -> None:
    """Attributes (mappings and lists as JSON), and the format's version (a view's, unless
    given: segments have their own)."""
    h.attrs.update(
        {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in attrs.items()}
    )
    h.attrs["format_version"] = version


def decode(v: Any) -> Any:
    """An attribute as Python: text, JSON parsed, numpy scalars as numbers."""
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


def attrs_of(h: h5py.File | h5py.Dataset) -> dict[str, Any]:
    return {k: decode(v) for k, v in h.attrs.items()}


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The attributes of a view, a segment or an older store (for listing what a folder holds)."""
    with h5py.File(path, "r") as h:
        return attrs_of(h)


def dataset_location(path: str | os.PathLike, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, byte offset)`` of a contiguous dataset, for mapping or reading it."""
    path = Path(path)
    with h5py.File(path, "r") as h:
        if name not in h:
            raise StoreError(f"{path}: no dataset '{name}'")
        ds = h[name]
        if ds.is_virtual:
            raise StoreError(f"{path}: '{name}' is a view of the pool; read it with read_frames")
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


def memmap_dataset(path: str | os.PathLike, name: str) -> np.memmap | np.ndarray:
    """Map a contiguous dataset read-only, without h5py on the read path."""
    shape, dtype, offset = dataset_location(path, name)
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
