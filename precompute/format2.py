"""Stores of format 2 (one file holding its own copy of the features), read only, for
``precompute migrate`` to move into the pool."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from common.store import (
    STATUS_OK,
    STATUS_PENDING,
    StoreError,
    attrs_of,
    byte_address,
    memmap_dataset,
)
from common.targets import TargetSpec


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

    def byte_range(self, i: int) -> tuple[int, int]:
        """``(byte offset, nbytes)`` of file ``i``'s rows in the store."""
        fb = self.frame_bytes
        return byte_address(self.features_at, int(self.offset[i]), fb), int(self.n_frames[i]) * fb


def read_format2(path: str | os.PathLike) -> Format2Store:
    path = Path(path)
    with h5py.File(path, "r") as h:
        attrs = attrs_of(h)
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
    into a view (frame-level targets, dense rows there, are read per file and made runs by the
    returned ``frame_runs``)."""
    with h5py.File(src, "r") as h:
        specs = [TargetSpec.from_attrs(n, ds.attrs) for n, ds in h["targets"].items()]
        per_file = {s.name: h[f"targets/{s.name}"][()][files] for s in specs if not s.frame_level}
        marks = {n: ds[()][files] for n, ds in h.get("annotated", {}).items()}
        offsets, counts = h["files/offset"][()][files], h["files/n_frames"][()][files]
    frame_maps = {s.name: memmap_dataset(src, f"targets/{s.name}") for s in specs if s.frame_level}

    by_name = {s.name: s for s in specs}

    def frame_runs(i: int) -> dict:
        o, n = int(offsets[i]), int(counts[i])
        return {name: by_name[name].kind_class.runs_of_dense(by_name[name], np.asarray(m[o : o + n]))
                for name, m in frame_maps.items()}  # fmt: skip

    return {"targets": specs, "file_targets": per_file, "annotated": marks,
            "frame_runs": frame_runs}  # fmt: skip
