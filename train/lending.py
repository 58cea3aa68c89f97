"""Batch blocks that a DataLoader worker lends to the main process and fills again once the
main process is done with them.

Torch hands a worker's batch over in shared memory that it allocates anew for every batch, and
the kernel maps and zeroes each page of it on first touch: at the speed of a cold epoch from a
fast disk that costs the workers about as much CPU as the reads themselves, and on two cores it
is what kept a 2-worker epoch below ``os.pread`` of the same bytes. Here a worker keeps its
blocks instead. A batch is read into a free block, marked lent in a byte of a flag array that
the worker shares with the main process; the main process clears the byte when its last tensor
on the block is gone (a finalizer on the block's storage), and the worker fills the block again,
its pages already mapped. When every block is lent (a consumer that keeps its batches), the
worker reads into fresh memory, as torch would.
"""

from __future__ import annotations

import os
import weakref

import numpy as np
import torch

SLOTS = 32  # blocks a worker may lend at once (X and y of a batch are two)


class Lender:
    """One worker's blocks and the flags saying which ones the main process holds."""

    def __init__(self, slots: int = SLOTS):
        self.slots = slots
        self._pid = -1

    def _fresh(self) -> None:
        """Blocks of this process (a forked worker starts with none of its parent's)."""
        self._pid = os.getpid()
        self.flags = torch.zeros(self.slots, dtype=torch.uint8).share_memory_()
        self._lent = self.flags.numpy()  # the same bytes, read without a tensor per look
        self.blocks: list[torch.UntypedStorage | None] = [None] * self.slots

    def take(self, n: int, dtype: np.dtype) -> tuple[torch.Tensor, int] | None:
        """A flat shared tensor of ``n`` elements of ``dtype`` and its slot, marked lent;
        ``None`` when every slot is lent."""
        if self._pid != os.getpid():
            self._fresh()
        nbytes = n * np.dtype(dtype).itemsize
        free = np.flatnonzero(self._lent == 0).tolist()
        if not free:
            return None
        same = [i for i in free if self.blocks[i] is not None and self.blocks[i].nbytes() == nbytes]
        empty = [i for i in free if self.blocks[i] is None]
        slot = (same or empty or free)[0]
        if not same:  # a new block (or one of another size, dropped)
            self.blocks[slot] = torch.UntypedStorage._new_shared(nbytes)
        self._lent[slot] = 1
        flat = torch.from_numpy(np.empty(0, dtype)).set_(self.blocks[slot], 0, (n,), (1,))
        return flat, slot

    def lend(self, t: torch.Tensor, slot: int) -> torch.Tensor:
        """``t`` (a view of the block in ``slot``) as it goes to the main process."""
        out = t.as_subclass(LentTensor)
        out._lent_by = (self.flags, slot)
        return out


class LentTensor(torch.Tensor):
    """A view of a lent block, in the worker, until it is pickled for the main process: there
    it becomes a plain tensor whose storage gives the block back when it is freed."""

    __torch_function__ = torch._C._disabled_torch_function_impl  # operations give plain tensors
    _lent_by: tuple[torch.Tensor, int]

    def __reduce_ex__(self, protocol):
        flags, slot = self._lent_by
        return _received, (self.as_subclass(torch.Tensor), flags, slot)


def _received(t: torch.Tensor, flags: torch.Tensor, slot: int) -> torch.Tensor:
    weakref.finalize(t.untyped_storage(), _give_back, flags, slot)
    return t


def _give_back(flags: torch.Tensor, slot: int) -> None:
    flags[slot] = 0


LENDER = Lender()
