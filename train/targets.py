"""Frame-level targets of a batch, read from the runs a view stores (one per note, segment,
marker or stretch of a track) and handed out as the dense rows every reader expects.

A batch's windows are decoded together, vectorised (:meth:`TargetKind.decode
<common.targets.base.FrameKind.decode>`), in the process that reads the batch: a DataLoader
worker or the main process. The runs are mapped, not loaded: workers share their pages.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from common.store import frame_target_runs
from common.targets import TargetSpec

from .views import BUFFERS, Rows

_COLUMNS = ("start", "length", "value")


class TargetLayout:
    """Frame-level target rows ``(T,)`` or ``(T, W)`` -> a patch ``(L,)`` or ``(W, L)``
    (a class, not a closure: a spawned worker gets it pickled)."""

    def __init__(self, row_shape: tuple[int, ...]):
        self.width = int(row_shape[0]) if len(row_shape) else None

    def __call__(self, length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if self.width is None:
            return (length,), (1,)
        return (self.width, length), (1, self.width)


def _rows_of(length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return (length,), (1,)


class FrameTargetRows:
    """One frame-level target of a view, read as dense rows of any window of its frames."""

    def __init__(self, path: str | os.PathLike, spec: TargetSpec, pin_memory: bool = False):
        self.spec = spec
        self.row_shape, dtype = spec.row_layout()
        self.dtype = np.dtype(dtype)
        self.layout = TargetLayout(self.row_shape)
        self.row_elems = int(np.prod(self.row_shape, dtype=np.int64))
        self.pin_memory = pin_memory
        self.columns = {
            c: Rows([(path, at, shape[0])], shape[1:], dt, _rows_of)
            for c, (shape, dt, at) in frame_target_runs(path, spec.name).items()
        }
        for rows in self.columns.values():
            rows.fd(0)  # now: forked workers keep this file if the view is rewritten

    def runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(start, length, value)``, mapped in this process."""
        return tuple(self.columns[c]._map(0).numpy() for c in _COLUMNS)

    def block(self, addrs, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Dense rows ``(len(addrs), n, *row_shape)`` of the windows ``[a, a + n)``."""
        addrs = np.asarray(addrs, np.int64)
        return self.spec.kind_class.decode(self.spec, self.runs(), addrs, n, out)

    def _view(self, block: torch.Tensor, count: int, hop: int, n: int) -> torch.Tensor:
        shape, strides = self.layout(n)
        return block.as_strided((count, *shape), (hop * self.row_elems, *strides), 0)

    def batch(self, addrs, n: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The windows' rows as one time-major block (a pooled batch buffer, or ``out``), seen
        in the model's layout ``(B, W, L)`` or ``(B, L)``."""
        shape = (len(addrs), n, *self.row_shape)
        flat = BUFFERS.take(shape, self.dtype, self.pin_memory) if out is None else out.view(-1)
        self.block(addrs, n, flat.numpy().reshape(shape))
        return self._view(flat, len(addrs), n, n)

    def batch_items(self, addrs, n: int) -> list[torch.Tensor]:
        """The windows' rows decoded together, one view of them per window."""
        block = torch.from_numpy(self.block(addrs, n))
        return list(self._view(block, len(addrs), n, n).unbind(0))

    def read(self, addr: int, n: int) -> np.ndarray:
        """Rows ``[addr, addr + n)`` as a new array ``(n, *row_shape)``."""
        return self.block([addr], n)[0]

    def windows(self, addr: int, count: int, hop: int, n: int) -> torch.Tensor:
        """``count`` windows of ``n`` rows, ``hop`` apart, from ``addr``: decoded once, seen as
        ``(count, *layout)`` (overlapping windows share their bytes)."""
        total = (count - 1) * hop + n if count else 0
        block = torch.from_numpy(self.block([addr], total)[0])
        return self._view(block, count, hop, n)
