"""A batch: one block of memory, its patches read and their targets decoded into it once, and
handed to any collate function whole.

Memory. Every batch of patches lives in one block that this process takes from :data:`BLOCKS`
(the one owner of batch memory) and that goes back to it when the batch's last tensor is gone
(a finalizer), to be filled again by a later batch without a new allocation or page fault:

- in the main process, a block is plain memory (pinned, from torch's caching host allocator,
  when batches go to a GPU: the step's ``non_blocking`` copy to the device is then the only
  copy after the read);
- in a DataLoader worker, a block is shared memory that the worker *lends* to the main process:
  a batch is pickled as one reference to its block (features and targets together), the main
  process clears the block's byte in a flag array shared with the worker when it is done with
  the batch, and the worker fills the block again. (Torch would hand each batch over in shared
  memory allocated, mapped and zeroed anew.) When every block of a worker is lent (a consumer
  that keeps its batches), it takes fresh memory, as torch would.

Hand-over. :class:`Items` is what ``StoreDataset.__getitems__`` returns: the batch, seen by a
collate function as one item per patch. :func:`collate` takes the batch out of it; torch's
``default_collate`` stacks its items, and stacking the items of a batch, in their order, gives
the batch's own tensors back (:class:`BatchRow`), so a user's DataLoader gets the same block.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

SLOTS = 16  # blocks a worker may lend at once
KEEP = 4  # free blocks of one size the main process keeps
ALIGN = 64  # block sizes and the offsets of the parts of a block, in bytes


class Blocks:
    """This process's batch blocks."""

    def __init__(self):
        self._pid = -1

    def _fresh(self) -> None:
        """This process's own state (a forked worker starts with none of its parent's)."""
        self._pid = os.getpid()
        self.in_worker = torch.utils.data.get_worker_info() is not None
        self.free: dict[int, list[np.ndarray]] = {}  # main process: free blocks by size
        self.flags = torch.zeros(SLOTS, dtype=torch.uint8)  # worker: 1 while a block is lent
        if self.in_worker:
            self.flags.share_memory_()
        self._lent = self.flags.numpy()
        self.shared: list[torch.Tensor | None] = [None] * SLOTS

    def take(self, nbytes: int, pinned: bool = False) -> torch.Tensor:
        """A flat uint8 block of at least ``nbytes``, this batch's until its last tensor is
        gone (a :class:`Lent` block in a DataLoader worker)."""
        if self._pid != os.getpid():
            self._fresh()
        nbytes = aligned(nbytes)
        if not nbytes:  # an empty batch: nothing to lend or pool
            return torch.empty(0, dtype=torch.uint8)
        if self.in_worker:
            lent = self._lend(nbytes)
            return lent if lent is not None else torch.empty(nbytes, dtype=torch.uint8)
        if pinned:  # torch's caching host allocator reuses a block once its copies are done
            return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        free = self.free.setdefault(nbytes, [])
        buf = free.pop() if free else np.empty(nbytes, np.uint8)
        mine = buf[:]  # the batch's own array: once it is freed, ``buf`` is free again
        weakref.finalize(mine, self._give_back, buf)
        return torch.from_numpy(mine)

    def _give_back(self, buf: np.ndarray) -> None:
        free = self.free.setdefault(buf.nbytes, [])
        if len(free) < KEEP:
            free.append(buf)

    def _lend(self, nbytes: int) -> torch.Tensor | None:
        free = np.flatnonzero(self._lent == 0).tolist()
        if not free:
            return None
        same = [i for i in free if self.shared[i] is not None and self.shared[i].numel() == nbytes]
        slot = (same or [i for i in free if self.shared[i] is None] or free)[0]
        if not same:  # a new block (or one of another size, dropped)
            # made in shared memory (not made, then copied there by ``share_memory_``)
            storage = torch.UntypedStorage._new_shared(nbytes)
            self.shared[slot] = torch.empty(0, dtype=torch.uint8).set_(storage)
        self._lent[slot] = 1
        block = self.shared[slot].as_subclass(Lent)
        block._lent = (self.shared[slot], self.flags, slot)
        return block


def aligned(nbytes: int) -> int:
    return -(-int(nbytes) // ALIGN) * ALIGN


def carve(block: torch.Tensor, offset: int, dtype: torch.dtype, shape, strides) -> torch.Tensor:
    """A tensor of ``dtype`` over ``block``'s bytes from ``offset`` (a multiple of
    :data:`ALIGN`), of ``shape`` and element ``strides``; over a lent block, lent too."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    at = (block.storage_offset() * block.element_size() + offset) // itemsize
    out = torch.empty(0, dtype=dtype).set_(block.untyped_storage(), at, shape, strides)
    if isinstance(block, Lent):
        out = out.as_subclass(Lent)
        out._lent = block._lent
    return out


def block_array(block: torch.Tensor, offset: int, dtype, shape) -> np.ndarray:
    """The bytes of ``block`` from ``offset`` as a numpy array of ``dtype`` and ``shape`` (to
    read or decode into)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return block.as_subclass(torch.Tensor)[offset : offset + n].numpy().view(dtype).reshape(shape)


class Lent(torch.Tensor):
    """A tensor over a block a worker lends, until it is pickled for the main process: there it
    is a plain tensor over the same shared memory, and the block goes back to the worker when
    the last tensor over it is gone."""

    __torch_function__ = torch._C._disabled_torch_function_impl  # operations: plain tensors
    _lent: tuple[torch.Tensor, torch.Tensor, int]  # (the block, the worker's flags, the slot)

    def __reduce_ex__(self, protocol):
        block, flags, slot = self._lent
        # the block is one object for every tensor of a batch: the pickle holds it once
        return _received, (block, flags, slot, self.dtype, tuple(self.shape), self.stride(),
                           self.storage_offset())  # fmt: skip


def _received(block, flags, slot, dtype, shape, strides, offset) -> torch.Tensor:
    # the block goes back once, when the shared storage of all its tensors is freed: one
    # finalizer per storage (a second one, clearing the flag again a moment later, could free
    # the slot after the worker had lent it anew for the next batch)
    storage = block.untyped_storage()
    key = id(storage)
    if key not in _WATCHED:
        _WATCHED[key] = weakref.finalize(
            storage, _give_back_lent, flags, slot, key, os.getpid()
        )
    return block.view(dtype).as_strided(shape, strides, offset)


_WATCHED: dict[int, weakref.finalize] = {}  # received blocks' storages, until they are freed


def _give_back_lent(flags: torch.Tensor, slot: int, key: int, pid: int) -> None:
    _WATCHED.pop(key, None)
    if os.getpid() == pid:  # not in a forked child, whose copy of the batch was never lent
        flags[slot] = 0


BLOCKS = Blocks()


class Items(Sequence):
    """A batch seen as one item per patch (``{"X": ..., "y": ...}``), for a collate function.

    :func:`collate` takes the batch back whole; torch's ``default_collate`` stacks the items'
    tensors, which gives the batch's own tensors (:class:`BatchRow`): no copy either way.
    """

    def __init__(self, batch: dict[str, torch.Tensor]):
        self.batch = batch
        self._items: list[dict[str, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(next(iter(self.batch.values())))

    def items(self) -> list[dict[str, torch.Tensor]]:
        if self._items is None:
            columns = {}
            for key, t in self.batch.items():
                rows = list(t.as_subclass(torch.Tensor).unbind(0))
                first = rows[0].as_subclass(BatchRow)
                first._of = (t, tuple(map(id, rows[1:])))
                columns[key] = [first, *rows[1:]]
            self._items = [dict(zip(columns, vals)) for vals in zip(*columns.values())]
        return self._items

    def __getitem__(self, i):
        return self.items()[i]

    def __iter__(self):
        return iter(self.items())


class BatchRow(torch.Tensor):
    """The first item's tensor of a batch: a plain tensor, except that ``torch.stack`` of the
    batch's items in their order gives the batch's tensor, and that pickling it alone sends a
    copy of its values."""

    _of: tuple[torch.Tensor, tuple[int, ...]]  # (the batch's tensor, ids of the other items)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.stack and not kwargs.get("dim", args[1] if len(args) > 1 else 0):
            items = args[0]
            if type(items[0]) is BatchRow:
                batch, ids = items[0]._of
                if len(items) == len(ids) + 1 and tuple(map(id, items[1:])) == ids:
                    return batch
        return _DEFAULT(torch.Tensor, func, (torch.Tensor,), args, kwargs)

    def __reduce_ex__(self, protocol):
        return torch.from_numpy, (self.as_subclass(torch.Tensor).numpy().copy(),)


_DEFAULT = torch.Tensor.__torch_function__.__func__


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The DataModule's collate function: the batch of :class:`Items`, as assembled; anything
    else as torch's ``default_collate`` makes it."""
    if isinstance(items, Items):
        return items.batch
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
