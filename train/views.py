"""Patches as views of a store's rows, and batches that move their bytes once.

An item's ``X`` (or frame-level ``y``) is a view of the store's time-major rows in the model's
layout, e.g. ``(C, F, L)`` over ``L`` contiguous rows of ``(C, F)``: nothing is read until
items are stacked into a batch. Then, whoever stacks them (torch's ``default_collate``, or
:meth:`Rows.batch` for a batch of addresses), the batch is one time-major block ``(B, L, C, F)``
filled straight from the files, and handed out as that block seen as ``(B, C, F, L)``: a
permuted view, which ``.to(device)`` keeps as it is and a model's first operation reads in place
or makes contiguous on its device.

Every block is filled by :meth:`Rows.gather`, the one path from byte ranges to memory (batches
of patches, whole files, the versions of a work): one ``pread`` per range into its rows of the
block, exactly its bytes (no read-ahead around them); what the page cache holds is read first
(``RWF_NOWAIT``), what needs the disk after, by up to 16 threads at once so the disk has that
many requests in flight. In the main process, when every range of a batch is in the page cache,
one ``index_select`` from a map of the segment instead (copying mapped pages beats a read per
patch there). Nothing is mapped in a DataLoader worker's reads, so its RSS does not grow with
what it has read.

Where the block lives: in a DataLoader worker, in the shared memory torch allocates for the
handover (``default_collate``'s ``out``); in the main process, in a batch buffer that the batch
owns until its last tensor is gone (:class:`Buffers`; pinned memory from torch's caching host
allocator when batches go to a GPU); whole files and works in memory of their own.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from common.fileio import pread_into
from common.store import StoreError, byte_address

RING_DEPTH = 4  # buffers per batch shape; beyond that, batches still held get fresh memory


class Rows:
    """One process's access to a store's rows ``(T, *row_shape)`` spread over files ("parts"):
    the features over the pool's segments, or a frame-level target in the view.

    A row is addressed by one number across all parts (part ``p``'s rows start at
    ``starts[p]``); a run of rows never crosses a part, since a file's rows never span two
    segments. Batches are read straight into the batch block (see the module docstring). Items
    are views of a private map of their part, which costs nothing until an item's values are
    touched (and then reads what was prefetched for it). File descriptors and maps are made on
    first use in each process and never pickled.
    """

    def __init__(
        self,
        parts: list[tuple[str, int, int]],
        row_shape: tuple[int, ...],
        dtype: np.dtype,
        layout,
        pin_memory: bool = False,
    ):
        self.parts = [(str(p), int(at), int(n)) for p, at, n in parts]  # (path, offset, rows)
        counts = np.array([n for _, _, n in self.parts], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.part_at = np.array([at for _, at, _ in self.parts], dtype=np.int64)
        stats = [os.stat(path) for path, _, _ in self.parts]
        self.identity = [(st.st_dev, st.st_ino) for st in stats]
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.row_elems = int(np.prod(self.row_shape, dtype=np.int64))
        self.row_bytes = self.row_elems * self.dtype.itemsize
        self.layout = layout  # length -> (view shape, view strides) over `length` rows
        self.pin_memory = pin_memory
        self._layouts: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._fresh()

    def _fresh(self) -> None:
        self._fds: dict[int, int] = {}
        self._maps: dict[int, torch.Tensor] = {}
        self._windows: dict[tuple[int, int], torch.Tensor] = {}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_fds", "_maps", "_windows")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fresh()

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def total(self) -> int:
        return int(self.starts[-1])

    # -- where rows are ----------------------------------------------------------------
    def locate(self, addrs) -> tuple[np.ndarray, np.ndarray]:
        """Part and byte offset of each row address."""
        addrs = np.asarray(addrs, dtype=np.int64)
        part = np.searchsorted(self.starts, addrs, side="right") - 1
        return part, byte_address(self.part_at[part], addrs - self.starts[part], self.row_bytes)

    def byte_ranges(self, addrs, length: int) -> list[tuple[str, int, int]]:
        """``(path, offset, nbytes)`` of ``length`` rows from each address."""
        part, at = self.locate(addrs)
        n = length * self.row_bytes
        return [(self.parts[p][0], int(o), n) for p, o in zip(part.tolist(), at.tolist())]

    def fd(self, p: int) -> int:
        """This process's descriptor of part ``p``, opened on first use: the very file this
        object was made for (a view rewritten since, by compaction or a repair, is refused)."""
        fd = self._fds.get(p)
        if fd is None:
            fd = os.open(self.parts[p][0], os.O_RDONLY)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self.identity[p]:
                os.close(fd)
                raise StoreError(
                    f"{self.parts[p][0]} was rewritten (by compaction or a repair) after this "
                    "Dataset was made from it; make the Dataset again"
                )
            if hasattr(os, "posix_fadvise"):  # this descriptor reads what it is asked, no more
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            self._fds[p] = fd
        return fd

    def _map(self, p: int) -> torch.Tensor:
        """Part ``p`` mapped copy-on-write (writing to an item changes this process's copy)."""
        m = self._maps.get(p)
        if m is None:
            _, at, n = self.parts[p]
            shape = (n, *self.row_shape)
            array = np.zeros(shape, dtype=self.dtype)
            if n and self.row_elems:  # mapped through this process's descriptor: the same file
                start = at - at % mmap.ALLOCATIONGRANULARITY
                end = byte_address(at, n, self.row_bytes)
                mm = mmap.mmap(self.fd(p), end - start, access=mmap.ACCESS_COPY, offset=start)
                array = np.frombuffer(mm, self.dtype, n * self.row_elems, at - start).reshape(shape)
            with warnings.catch_warnings():  # an empty placeholder is not writable
                warnings.simplefilter("ignore", UserWarning)
                m = self._maps[p] = torch.from_numpy(np.asarray(array))
        return m

    def _local(self, addr: int) -> tuple[torch.Tensor, int]:
        p = int(np.searchsorted(self.starts, addr, side="right")) - 1
        return self._map(p), int(addr - self.starts[p])

    # -- views of the maps ------------------------------------------------------------
    def view_layout(self, length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        found = self._layouts.get(length)
        if found is None:
            found = self._layouts[length] = self.layout(length)
        return found

    def prefetch(self, addr: int, length: int) -> None:
        """Ask the kernel for the bytes of ``length`` rows from ``addr`` now (in the background,
        exactly those): an item touched later reads them from memory."""
        (p,), (at,) = self.locate([addr])
        if hasattr(os, "posix_fadvise") and length:
            os.posix_fadvise(
                self.fd(int(p)), int(at), length * self.row_bytes, os.POSIX_FADV_WILLNEED
            )

    def view(self, addr: int, length: int) -> RowView:
        """Rows ``[addr, addr + length)`` in the model's layout, without reading them."""
        m, local = self._local(addr)
        shape, strides = self.view_layout(length)
        v = torch.as_strided(m, shape, strides, local * self.row_elems).as_subclass(RowView)
        v._batch = (self, [int(addr)], length, (id(v),))
        return v

    def batch_items(self, addrs: list[int], length: int) -> list[torch.Tensor]:
        """Views of many row runs, to be stacked into a batch.

        The first is a :class:`RowView` that knows the whole batch, so that stacking them all
        (as ``default_collate`` does) reads one block straight from the files; the others are
        plain views of the maps, the cheapest tensors torch makes (a batch makes one per patch).
        """
        if not addrs:
            return []
        a = np.asarray(addrs, dtype=np.int64)
        part = np.searchsorted(self.starts, a, side="right") - 1
        local = (a - self.starts[part]).tolist()
        items = [self.view(addrs[0], length)]
        if len(self.parts) == 1:
            items += map(self._windows_of(0, length).__getitem__, local[1:])
        else:
            items += [self._windows_of(p, length)[i] for p, i in zip(part[1:].tolist(), local[1:])]
        items[0]._batch = (self, list(addrs), length, tuple(map(id, items)))
        return items

    def _row_windows(self, length: int) -> torch.Tensor:
        """Every run of ``length`` rows of a one-part store, ``(T - length + 1, length, ...)``."""
        w = self._windows.get((-1, length))
        if w is None:
            m = self._map(0)
            n = max(0, m.shape[0] - length + 1)
            w = self._windows[(-1, length)] = torch.as_strided(
                m, (n, length, *self.row_shape), (self.row_elems, *m.stride())
            )
        return w

    def _windows_of(self, p: int, length: int) -> torch.Tensor:
        """Every run of ``length`` rows of part ``p`` in the model's layout, as one view."""
        w = self._windows.get((p, length))
        if w is None:
            m = self._map(p)
            shape, strides = self.view_layout(length)
            n = max(0, m.shape[0] - length + 1)
            w = self._windows[(p, length)] = torch.as_strided(
                m, (n, *shape), (self.row_elems, *strides)
            )
        return w

    # -- reads: every block of rows is filled here --------------------------------------
    def gather(
        self, addrs, length: int, out: torch.Tensor | None = None, pooled: bool = False
    ) -> torch.Tensor:
        """Rows ``[a, a + length)`` of each address, one time-major block ``(n, length,
        *row_shape)``: the one path from byte ranges to memory, for batches of patches, whole
        files and the versions of a work.

        Into ``out`` (a DataLoader worker's shared memory), else into memory of its own: from
        the pool of batch buffers when ``pooled`` (fixed-size batches), else new.
        """
        n = len(addrs)
        shape = (n, length, *self.row_shape)
        if out is not None:
            block = out.view(shape)
        elif pooled:
            block = BUFFERS.take(shape, self.dtype, self.pin_memory).view(shape)
        else:
            block = torch.from_numpy(np.empty(shape, self.dtype))
        if n and length:
            part, at = self.locate(addrs)
            if out is None and len(self.parts) == 1 and _all_cached(self.fd(0), at.tolist()):
                # in this process, cached rows: one gather from the map over torch's threads
                # (copying from mapped pages beats a read per patch from the page cache)
                index = torch.from_numpy(np.asarray(addrs, dtype=np.int64) - self.starts[0])
                torch.index_select(self._row_windows(length), 0, index, out=block)
            else:
                raw = block.numpy().view(np.uint8).reshape(n, length * self.row_bytes)
                read_all([(self.fd(p), raw[i], o)
                          for i, (p, o) in enumerate(zip(part.tolist(), at.tolist()))])  # fmt: skip
        return block

    def batch(
        self, addrs, length: int, out: torch.Tensor | None = None, pooled: bool = True
    ) -> torch.Tensor:
        """Rows of each address gathered into one block (a pooled batch buffer, ``out``, or
        new memory), seen in the model's layout ``(B, ...)``."""
        block = self.gather(addrs, length, out, pooled)
        shape, strides = self.view_layout(length)
        return block.as_strided((len(addrs), *shape), (length * self.row_elems, *strides), 0)

    def read(self, addr: int, length: int) -> np.ndarray:
        """Rows ``[addr, addr + length)`` as a new array ``(length, *row_shape)``."""
        return self.gather([addr], length)[0].numpy()

    def windows(self, addr: int, count: int, hop: int, length: int) -> torch.Tensor:
        """``count`` windows of ``length`` rows, ``hop`` rows apart, from ``addr``, read once
        into memory of their own: ``(count, *view shape)``, overlapping windows sharing bytes."""
        total = (count - 1) * hop + length if count else 0
        block = self.gather([addr], total)[0]
        shape, strides = self.view_layout(length)
        return block.as_strided((count, *shape), (hop * self.row_elems, *strides), 0)


READ_THREADS = int(os.environ.get("MIRPATCH_READ_THREADS", "16"))
BYTES_PER_THREAD = 4 << 20  # a batch of cached bytes is copied by one thread per this much
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _reader_pool() -> ThreadPoolExecutor:
    """This process's reading threads (made again in a forked child, which has none)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(READ_THREADS, thread_name_prefix="mirpatch-read"))
    return _POOL[1]


def read_all(reads: list[tuple[int, np.ndarray, int]]) -> None:
    """``pread`` each ``(fd, buffer, offset)``.

    Bytes in the page cache are read first, by as many of torch's threads as they are worth
    (one in a DataLoader worker, and one for a small batch, where a thread costs more than the
    copy), with ``RWF_NOWAIT``, which reads only what needs no disk; what needs the disk is then
    read by up to :data:`READ_THREADS` threads, so that the disk has that many requests in
    flight (a read releases the GIL).
    """
    total = sum(buf.nbytes for _, buf, _ in reads)
    k = min(torch.get_num_threads(), len(reads), max(1, total // BYTES_PER_THREAD))
    if not _NOWAIT:
        _in_threads(reads, min(READ_THREADS, len(reads)))
        return
    if k > 1:
        groups = [_reader_pool().submit(_read_cached, reads[i::k]) for i in range(k)]
        misses = [m for g in groups for m in g.result()]
    else:
        misses = _read_cached(reads)
    _in_threads(misses, min(READ_THREADS, len(misses)))


def _all_cached(fd: int, offsets: list[int]) -> bool:
    """Whether the first byte of each read is in the page cache (``RWF_NOWAIT``)."""
    if not _NOWAIT:
        return False
    one = bytearray(1)
    try:
        return all(os.preadv(fd, [one], at, _NOWAIT) == 1 for at in offsets)
    except OSError:  # EAGAIN: on disk
        return False


def _read_cached(reads: list[tuple[int, np.ndarray, int]]) -> list[tuple[int, np.ndarray, int]]:
    """Read what the page cache holds; return the rest of each read that needs the disk."""
    global _NOWAIT
    misses = []
    for fd, buf, at in reads:
        view = memoryview(buf).cast("B")
        try:
            n = os.preadv(fd, [view], at, _NOWAIT)
        except BlockingIOError:
            n = 0
        except OSError:  # a kernel or filesystem without RWF_NOWAIT: read everything plainly
            _NOWAIT = 0
            n = 0
        if n < len(view):
            misses.append((fd, view[n:], at + n))
    return misses


def _in_threads(reads: list[tuple[int, np.ndarray, int]], k: int) -> None:
    if k <= 1:
        _read_group(reads)
        return
    for f in [_reader_pool().submit(_read_group, reads[i::k]) for i in range(k)]:
        f.result()


def _read_group(reads: list[tuple[int, np.ndarray, int]]) -> None:
    for fd, buf, at in reads:
        pread_into(fd, buf, at)


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
    """Batch buffers, each either free in the pool or owned by one batch.

    :meth:`take` hands a buffer to a batch: the batch's tensor is the only owner of the array it
    wraps, and when the last tensor (or view) of that batch is gone, the array's finalizer gives
    the buffer back. A batch kept by the consumer is never overwritten; a free buffer is
    reused without a fresh allocation (no page faults). At most ``depth`` free buffers are kept
    per batch shape.
    """

    def __init__(self, depth: int = RING_DEPTH):
        self.depth = depth
        self.free: dict[tuple, list[np.ndarray]] = {}

    def take(self, shape: tuple[int, ...], dtype: np.dtype, pinned: bool = False) -> torch.Tensor:
        """A flat tensor of ``prod(shape)`` elements, owned by the caller until it is gone."""
        n = int(np.prod(shape, dtype=np.int64))
        if pinned:  # torch's caching host allocator reuses blocks once their copies are done
            return torch.empty(n, dtype=_torch_dtype(dtype), pin_memory=True)
        key = (n, np.dtype(dtype).str)
        free = self.free.setdefault(key, [])
        buf = free.pop() if free else np.empty(n, dtype=dtype)
        lent = buf[:]  # the batch's own array: when it is freed, ``buf`` is free again
        weakref.finalize(lent, self._give_back, key, buf)
        return torch.from_numpy(lent)

    def _give_back(self, key: tuple, buf: np.ndarray) -> None:
        free = self.free.setdefault(key, [])
        if len(free) < self.depth:
            free.append(buf)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


BUFFERS = Buffers()
