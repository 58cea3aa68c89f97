"""The patch grid of files: where each patch of ``patch_frames`` frames, ``patch_hop`` apart,
starts. Patch length and hop belong to the Dataset, not to the store: any grid is derived from
the files' frame counts, nothing is recomputed."""

from __future__ import annotations

import numpy as np


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
