"""Patches as views of a memory-mapped store, and batches that move their bytes once.

An item's ``X`` (or frame-level ``y``) is a view of the store's time-major rows in the model's
layout, e.g. ``(C, F, L)`` over ``L`` contiguous rows of ``(C, F)``: nothing is copied until
items are stacked into a batch. Then, whoever stacks them (torch's ``default_collate``, or
:meth:`Rows.batch` for a batch of offsets), the batch is one time-major block ``(B, L, C, F)``
filled by one gather of row runs (memory-copy speed, no transpose) and handed out as that block
seen as ``(B, C, F, L)``: a permuted view, which ``.to(device)`` keeps as it is and a model's
first operation reads in place or makes contiguous on its device.

Where the block lives: in a DataLoader worker, in the shared memory torch allocates for the
handover (``default_collate``'s ``out``); in the main process, in a small ring of buffers reused
from batch to batch (no fresh allocation, no page faults), or pinned memory from torch's caching
host allocator when batches go to a GPU. A buffer is reused only once no tensor of the batch it
held is alive, so a batch kept by the consumer is never overwritten.
"""

from __future__ import annotations

import sys
import threading
import warnings

import numpy as np
import torch

RING_DEPTH = 4  # buffers per batch shape; beyond that, batches still held get fresh memory


class Rows:
    """One process's map of a contiguous ``(T, *row_shape)`` store dataset, as numpy and torch."""

    def __init__(self, array: np.ndarray, layout, pin_memory: bool = False):
        self.np = array
        with warnings.catch_warnings():  # an empty store's placeholder is not writable
            warnings.simplefilter("ignore", UserWarning)
            self.torch = torch.from_numpy(array)
        self.row_shape = tuple(array.shape[1:])
        self.row_elems = int(np.prod(self.row_shape, dtype=np.int64))
        self.layout = layout  # length -> (view shape, view strides) over `length` rows
        self.pin_memory = pin_memory
        self._layouts: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._windows: dict[tuple[str, int], torch.Tensor] = {}

    def view_layout(self, length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        found = self._layouts.get(length)
        if found is None:
            found = self._layouts[length] = self.layout(length)
        return found

    def view(self, start: int, length: int) -> RowView:
        """Rows ``[start, start + length)`` in the model's layout, without copying them."""
        shape, strides = self.view_layout(length)
        v = torch.as_strided(self.torch, shape, strides, start * self.row_elems).as_subclass(
            RowView
        )
        v._batch = (self, [start], length, (id(v),))
        return v

    def batch_items(self, starts: list[int], length: int) -> list[torch.Tensor]:
        """Views of many row runs, to be stacked into a batch.

        The first is a :class:`RowView` that knows the whole batch, so that stacking them all
        (as ``default_collate`` does) fills one block straight from the store; the others are
        plain views of the map, the cheapest tensors torch makes (a batch makes one per patch).
        """
        if not starts:
            return []
        windows = self._windows_in_model_layout(length)
        items = [self.view(starts[0], length), *(windows[s] for s in starts[1:])]
        items[0]._batch = (self, starts, length, tuple(map(id, items)))
        return items

    def _windows_in_model_layout(self, length: int) -> torch.Tensor:
        """Every run of ``length`` rows seen in the model's layout ``(T - length + 1, *shape)``."""
        w = self._windows.get(("model", length))
        if w is None:
            shape, strides = self.view_layout(length)
            n = max(0, self.np.shape[0] - length + 1)
            w = torch.as_strided(self.torch, (n, *shape), (self.row_elems, *strides))
            self._windows[("model", length)] = w
        return w

    def windows(self, length: int) -> torch.Tensor:
        """Every run of ``length`` rows, ``(T - length + 1, length, *row_shape)``, as one view."""
        w = self._windows.get(("rows", length))
        if w is None:
            n = max(0, self.np.shape[0] - length + 1)
            w = torch.as_strided(
                self.torch, (n, length, *self.row_shape), (self.row_elems, *self.torch.stride())
            )
            self._windows[("rows", length)] = w
        return w

    def strided(self, start: int, count: int, hop: int, length: int) -> torch.Tensor:
        """``count`` windows of ``length`` rows, ``hop`` rows apart, from ``start``: one view
        ``(count, *view shape)`` (overlapping windows share their bytes)."""
        shape, strides = self.view_layout(length)
        return torch.as_strided(
            self.torch, (count, *shape), (hop * self.row_elems, *strides), start * self.row_elems
        )

    def batch(self, starts, length: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of each start, one time-major block, seen in the model's layout ``(B, ...)``."""
        n = len(starts)
        block_shape = (n, length, *self.row_shape)
        if out is None:
            flat = _BUFFERS.take(block_shape, self.np.dtype, self.pin_memory)
        else:  # the caller's memory (shared memory in a DataLoader worker): just the bytes
            flat = out.view(-1)
        if threading.current_thread() is threading.main_thread():
            # one gather of contiguous row runs, spread over torch's threads
            index = torch.as_tensor(starts, dtype=torch.int64)
            torch.index_select(self.windows(length), 0, index, out=flat.view(block_shape))
        else:  # a prefetching thread: no second team of torch threads beside the model's
            block, src = flat.view(block_shape).numpy(), self.np
            for i, s in enumerate(starts):
                block[i] = src[s : s + length]
        shape, strides = self.view_layout(length)
        return flat.as_strided((n, *shape), (length * self.row_elems, *strides), 0)


class RowView(torch.Tensor):
    """A tensor that is a view of a store's rows (see the module docstring).

    It behaves as a plain tensor, whose operations give plain tensors, except that
    ``torch.stack`` of views of one store fills one time-major block, and that pickling it
    sends a copy of its values, not the map.
    """

    # (rows, first row of each view of its batch, rows per view, ids of the batch's views)
    _batch: tuple[Rows, list[int], int, tuple[int, ...]]

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.stack:
            batch = _stack_rows(*args, **kwargs)
            if batch is not None:
                return batch
        # torch's own implementation, run as for a plain tensor: results are plain tensors
        return _DEFAULT(torch.Tensor, func, (torch.Tensor,), args, kwargs)

    def numel(self) -> int:
        # default_collate asks every item its size: answered here, not through dispatch
        rows, _, length, _ = self._batch
        return length * rows.row_elems

    def __reduce_ex__(self, protocol):
        return (_rebuild_copy, (self.as_subclass(torch.Tensor).contiguous().numpy().copy(),))


_DEFAULT = torch.Tensor.__torch_function__.__func__


def _rebuild_copy(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array)


def _stack_rows(tensors, dim: int = 0, *, out: torch.Tensor | None = None) -> torch.Tensor | None:
    """``torch.stack`` of views of one store's rows: one block filled row-wise.

    For the views of one :meth:`Rows.batch_items` call, in their order, or single
    :class:`RowView` items of one store and length; ``None`` for anything else (the caller
    stacks them as plain tensors).
    """
    first = tensors[0] if len(tensors) else None
    if dim != 0 or type(first) is not RowView:
        return None
    rows, starts, length, ids = first._batch
    if len(ids) != len(tensors) or tuple(map(id, tensors)) != ids:
        starts = []
        for t in tensors:
            if type(t) is not RowView or len(t._batch[3]) != 1:
                return None
            r, (s,), n, _ = t._batch
            if r is not rows or n != length:
                return None
            starts.append(s)
    if out is not None and out.numel() != len(starts) * length * rows.row_elems:
        return None
    return rows.batch(starts, length, out)


class Buffers:
    """Batch buffers reused once nothing refers to the batch they held (see module docstring)."""

    def __init__(self, depth: int = RING_DEPTH):
        self.depth = depth
        self.pools: dict[tuple, list[np.ndarray]] = {}

    def take(self, shape: tuple[int, ...], dtype: np.dtype, pinned: bool = False) -> torch.Tensor:
        """A flat tensor of ``prod(shape)`` elements whose memory no live tensor uses."""
        n = int(np.prod(shape, dtype=np.int64))
        if pinned:  # torch's caching host allocator reuses blocks once their copies are done
            return torch.empty(n, dtype=_torch_dtype(dtype), pin_memory=True)
        pool = self.pools.setdefault((n, np.dtype(dtype).str), [])
        for buf in pool:
            # references: the pool, this loop, getrefcount's argument; each batch tensor made
            # from it holds one more, alive as long as any view of that batch is
            if sys.getrefcount(buf) <= 3:
                return torch.from_numpy(buf)
        buf = np.empty(n, dtype=dtype)
        if len(pool) < self.depth:
            pool.append(buf)
        return torch.from_numpy(buf)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


_BUFFERS = Buffers()
