"""Frame-level targets of a view, decoded from the runs it stores (one per note, segment,
marker or stretch of a track) into the dense frames every reader expects.

A batch's windows are decoded together, vectorised, straight into the block the batch was
given (beside its features), by the target kind's own decoder
(:meth:`common.targets.base.FrameKind.decode`), in the process that reads the batch: a
DataLoader worker or the main process. The runs are mapped, not loaded: workers share their
pages.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import torch

from common.store import StoreError, frame_target_runs
from common.targets import TargetSpec


class FrameTargets:
    """One frame-level target of a view: dense frames ``(n, *frame_shape)`` of any window."""

    def __init__(self, path: str | os.PathLike, spec: TargetSpec):
        self.spec = spec
        self.path = str(path)
        frame_shape, dtype = spec.row_layout()
        self.frame_shape, self.dtype = tuple(frame_shape), np.dtype(dtype)
        self.frame_elems = int(np.prod(self.frame_shape, dtype=np.int64))
        self.width = self.frame_shape[0] if self.frame_shape else None
        # the file opened now is the one read: a view written again later (gc --compact re-points
        # views) is refused, never read at the old offsets
        self._fd = os.open(self.path, os.O_RDONLY)
        st = os.fstat(self._fd)
        self.identity = (st.st_dev, st.st_ino)
        self.where = frame_target_runs(path, spec.name)  # column -> (shape, dtype, offset)
        self._check()
        self._runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._longest = 1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_runs": None, "_fd": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fd = os.open(self.path, os.O_RDONLY)
        self._check()

    def _check(self) -> None:
        """The view at ``path`` is still the file this object was made from."""
        st = os.stat(self.path)
        if (st.st_dev, st.st_ino) != self.identity:
            raise StoreError(
                f"{self.path} was written again (by compaction or a rebuild) after this Dataset "
                "was made from it; make the Dataset again"
            )

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(start, length, value)``, mapped in this process."""
        if self._runs is None:
            whole = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
            cols = {}
            for c, (shape, dtype, at) in self.where.items():
                n = int(np.prod(shape, dtype=np.int64))
                cols[c] = np.frombuffer(whole, dtype, n, at).reshape(shape)
            self._runs = (cols["start"], cols["length"], cols["value"])
            # a window looks back only as far as the longest run (notes: a second or two)
            self._longest = max(1, int(cols["length"].max())) if len(cols["length"]) else 1
        return self._runs

    def layout(self, length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(shape, strides)`` of ``length`` frames as a model sees them: ``(W, L)`` for rows
        of ``W`` (pitch bins, numbers), ``(L,)`` for one value a frame."""
        if self.width is None:
            return (length,), (1,)
        return (self.width, length), (1, self.width)

    def decode(self, addrs, length: int, out: np.ndarray) -> None:
        """Dense frames of the windows ``[a, a + length)`` into ``out``, a time-major block
        ``(len(addrs), length, *frame_shape)`` of this dtype."""
        runs = self.runs()
        self.spec.kind_class.decode(
            self.spec, runs, np.asarray(addrs, np.int64), length, out, self._longest
        )

    def read(self, addr: int, length: int) -> np.ndarray:
        """Frames ``[addr, addr + length)`` as a new array ``(length, *frame_shape)``."""
        out = np.empty((1, length, *self.frame_shape), self.dtype)
        self.decode([addr], length, out)
        return out[0]

    def windows(self, addr: int, count: int, hop: int, length: int) -> torch.Tensor:
        """``count`` windows of ``length`` frames, ``hop`` apart, from ``addr``: decoded once,
        seen as ``(count, *layout)`` (overlapping windows share their bytes)."""
        total = (count - 1) * hop + length if count else 0
        block = torch.from_numpy(self.read(addr, total))
        shape, strides = self.layout(length)
        return block.as_strided((count, *shape), (hop * self.frame_elems, *strides), 0)
