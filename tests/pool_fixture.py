"""A view of many small files over a few segments, written with the store format's own writer
(a real pipeline run of 100,000 files would take minutes): for memory tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.features import make_feature
from common.fileio import pwrite_all
from common.store import (
    STATUS_OK,
    SegmentRef,
    ViewFiles,
    frames_checksum,
    lay_out_segment,
    seal_segment,
    segment_path,
    store_path,
    write_view,
)


def many_files_view(
    root: str, n_files: int, n_segments: int, frames: int = 4, n_mels: int = 8
) -> Path:
    """``n_files`` files of ``frames`` frames of an ``n_mels``-band log-mel, spread over
    ``n_segments``; patches of 4 frames."""
    stores = Path(root) / f"many-{n_files}-{frames}-{n_mels}"
    feat = make_feature("lms", {"n_mels": n_mels, "patch_frames": 4, "patch_hop": 4})
    key = feat.key()
    per = -(-n_files // n_segments)
    refs, seg_col, first_col, sums = [], [], [], []
    rng = np.random.default_rng(0)
    for s in range(n_segments):
        keys = [f"k{i}" for i in range(s * per, min(n_files, (s + 1) * per))]
        final = segment_path(stores, key, f"{s:016d}")
        final.parent.mkdir(parents=True, exist_ok=True)
        lay = lay_out_segment(final.with_name(final.name + ".partial"), keys,
                              [frames] * len(keys), feat.frame_shape, np.float32, {"feature_key": key})  # fmt: skip
        rows = rng.standard_normal((len(keys) * frames, *feat.frame_shape)).astype(np.float32)
        fd = os.open(lay.path, os.O_WRONLY)
        pwrite_all(fd, rows, lay.features_at)
        os.close(fd)
        block = rows.reshape(len(keys), -1)
        checks = [frames_checksum(np.ascontiguousarray(r)) for r in block]
        os.close(seal_segment(lay, np.full(len(keys), STATUS_OK, np.uint8), checks, final))
        refs.append(SegmentRef(final, lay.features_at, lay.total_frames))
        seg_col += [s] * len(keys)
        first_col += lay.first.tolist()
        sums += checks
    files = ViewFiles(
        [f"f{i}.wav" for i in range(n_files)], np.arange(n_files, dtype=np.int32),
        np.array(seg_col, np.int32), np.array(first_col, np.int64),
        np.full(n_files, frames, np.int64), np.full(n_files, frames * 512 / 22050),
        np.full(n_files, 22050, np.int32), ["c"] * n_files, [f"k{i}" for i in range(n_files)], sums,
    )  # fmt: skip
    view = store_path(stores, "many", "lms", "0" * 16)
    write_view(view, files, refs, feat.frame_shape, np.float32, [], {}, lambda i: {},
               {"dataset": "many", "feature": feat.value_params(), "feature_key": key})  # fmt: skip
    return view


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
