"""Batches of items: patches collated in one read, files and works padded to the longest.

A batch of patches is one time-major block read straight from the store (:mod:`train.views`);
:class:`PatchBatch` carries the ``(file, start)`` pairs of a ``__getitems__`` call until a
collate function makes the batch of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .lending import LENDER


class PatchBatch(Sequence):
    """The patches of one ``__getitems__`` call, as ``(file, start)`` pairs.

    :func:`collate_patches` makes the batch straight from them; any other collate function
    (torch's ``default_collate``) sees a sequence of per-patch items, made once, when first
    asked for, and stacks them (see :mod:`train.views`).
    """

    def __init__(self, ds, files: np.ndarray, starts: np.ndarray):
        self.ds, self.files, self.starts = ds, files, starts
        self._items: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def items(self) -> list[dict[str, Any]]:
        if self._items is None:
            self._items = self.ds.patches(self.files, self.starts)
        return self._items

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items()[i]

    def __iter__(self):
        return iter(self.items())


def collate_patches(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate for patch units: a :class:`PatchBatch` becomes the batch directly (read, in a
    DataLoader worker, into blocks it lends to the main process: :mod:`train.lending`);
    anything else goes to torch's ``default_collate``."""
    if isinstance(items, PatchBatch):
        in_worker = torch.utils.data.get_worker_info() is not None
        return items.ds.batch(items.files, items.starts, LENDER if in_worker else None)
    return torch.utils.data.default_collate(items)


def collate_padded(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate file or work items whose first axis differs: pad to the longest, with a mask.

    ``X`` becomes ``(B, N_max, ...)`` and ``mask`` ``(B, N_max)`` (True where real).
    """
    out: dict[str, Any] = {}
    n = [it["X"].shape[0] for it in items]
    n_max = max(n)
    mask = torch.zeros(len(items), n_max, dtype=torch.bool)
    for i, k in enumerate(n):
        mask[i, :k] = True
    for key in items[0]:
        vals = [it[key] for it in items]
        if (
            isinstance(vals[0], torch.Tensor)
            and vals[0].dim() > 0
            and key in ("X", "y", "start", "files")
        ):
            padded = torch.zeros((len(vals), n_max, *vals[0].shape[1:]), dtype=vals[0].dtype)
            for i, v in enumerate(vals):
                padded[i, : v.shape[0]] = v
            out[key] = padded
        elif isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack(vals)
        else:
            out[key] = torch.tensor(vals)
    out["mask" if "mask" not in out else "item_mask"] = mask
    return out
