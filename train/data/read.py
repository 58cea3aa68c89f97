"""Reading a store's frames: byte ranges of the pool's segments, read once into memory.

:class:`Frames` is one process's access to the frames of a view's features, spread over the
pool's segments ("parts"). A run of frames of a file is one byte range of one segment; a batch
of them is read by :meth:`Frames.gather` into the block the batch was given (one ``pread`` per
range, exactly its bytes, no read-ahead): what the page cache holds first, with ``RWF_NOWAIT``,
then what needs the disk, by up to :data:`READ_THREADS` threads so the disk has that many
requests in flight. In the main process, when every range of a batch is in the page cache, one
``index_select`` from a map of the segment instead (copying mapped pages beats a read per patch
there). Nothing is mapped in a DataLoader worker's reads, so its memory does not grow with what
it has read. A single item (``ds[i]``) is a window of a private map instead, which reads only
when its values are touched.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from common.fileio import pread_into
from common.store import StoreError, byte_address


class Frames:
    """The frames ``(T, *frame_shape)`` of a view's features over its parts.

    A frame is addressed by one number across all parts (part ``p``'s frames start at
    ``starts[p]``); a run of frames never crosses a part, since a file's frames never span two
    segments. ``layout(length)`` gives the model's ``(shape, strides)`` of ``length`` frames
    (:meth:`common.features.Feature.patch_layout`). File descriptors and maps are made on
    first use in each process and never pickled.
    """

    def __init__(self, parts: list[tuple[str, int, int]], frame_shape, dtype, layout):
        self.parts = [(str(p), int(at), int(n)) for p, at, n in parts]  # (path, offset, frames)
        counts = np.array([n for _, _, n in self.parts], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.part_at = np.array([at for _, at, _ in self.parts], dtype=np.int64)
        self.identity = [(st.st_dev, st.st_ino) for st in (os.stat(p) for p, _, _ in self.parts)]
        self.dtype = np.dtype(dtype)
        self.frame_shape = tuple(frame_shape)
        self.frame_elems = int(np.prod(self.frame_shape, dtype=np.int64))
        self.frame_bytes = self.frame_elems * self.dtype.itemsize
        self.layout = layout
        self._fresh()

    def _fresh(self) -> None:
        self._fds: dict[int, int] = {}
        self._maps: dict[int, torch.Tensor] = {}
        self._windows: dict[int, torch.Tensor] = {}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_fds", "_maps", "_windows")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fresh()

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- where frames are ----------------------------------------------------------------
    def locate(self, addrs) -> tuple[np.ndarray, np.ndarray]:
        """Part and byte offset of each frame address."""
        addrs = np.asarray(addrs, dtype=np.int64)
        part = np.searchsorted(self.starts, addrs, side="right") - 1
        return part, byte_address(self.part_at[part], addrs - self.starts[part], self.frame_bytes)

    def byte_ranges(self, addrs, length: int) -> list[tuple[str, int, int]]:
        """``(path, offset, nbytes)`` of ``length`` frames from each address."""
        part, at = self.locate(addrs)
        n = length * self.frame_bytes
        return [(self.parts[p][0], int(o), n) for p, o in zip(part.tolist(), at.tolist())]

    def fd(self, p: int) -> int:
        """This process's descriptor of part ``p``, opened on first use: the very file this
        object was made for (a segment rewritten since, by compaction or a repair, is refused)."""
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
        """Part ``p`` mapped copy-on-write ``(frames, *frame_shape)``: writing to an item
        changes this process's copy, never the file."""
        m = self._maps.get(p)
        if m is None:
            _, at, n = self.parts[p]
            shape = (n, *self.frame_shape)
            array = np.zeros(shape, dtype=self.dtype)
            if n and self.frame_elems:  # mapped through this process's descriptor: the same file
                start = at - at % mmap.ALLOCATIONGRANULARITY
                end = byte_address(at, n, self.frame_bytes)
                mm = mmap.mmap(self.fd(p), end - start, access=mmap.ACCESS_COPY, offset=start)
                array = np.frombuffer(mm, self.dtype, n * self.frame_elems, at - start)
                array = array.reshape(shape)
            with warnings.catch_warnings():  # an empty placeholder is not writable
                warnings.simplefilter("ignore", UserWarning)
                m = self._maps[p] = torch.from_numpy(np.asarray(array))
        return m

    def _local(self, addr: int) -> tuple[int, int]:
        p = int(np.searchsorted(self.starts, addr, side="right")) - 1
        return p, int(addr - self.starts[p])

    # -- single items: windows of the map --------------------------------------------------
    def prefetch(self, addr: int, length: int) -> None:
        """Ask the kernel for the bytes of ``length`` frames from ``addr`` now (in the
        background, exactly those): an item touched later reads them from memory."""
        (p,), (at,) = self.locate([addr])
        if hasattr(os, "posix_fadvise") and length:
            os.posix_fadvise(
                self.fd(int(p)), int(at), length * self.frame_bytes, os.POSIX_FADV_WILLNEED
            )

    def item(self, addr: int, length: int) -> torch.Tensor:
        """Frames ``[addr, addr + length)`` in the model's layout, a window of the map: nothing
        is read until its values are touched."""
        p, local = self._local(addr)
        shape, strides = self.layout(length)
        return torch.as_strided(self._map(p), shape, strides, local * self.frame_elems)

    # -- reads: every block of frames is filled here ---------------------------------------
    def gather(self, addrs, length: int, out: np.ndarray) -> None:
        """Frames ``[a, a + length)`` of each address into ``out``, a time-major block
        ``(len(addrs), length, *frame_shape)`` of this dtype: the one path from byte ranges to
        memory, for batches of patches, whole files and the versions of a work."""
        n = len(addrs)
        if not n or not length:
            return
        part, at = self.locate(addrs)
        in_main = torch.utils.data.get_worker_info() is None
        if in_main and len(self.parts) == 1 and _all_cached(self.fd(0), at.tolist()):
            # in this process, cached frames: one gather from the map over torch's threads
            # (copying from mapped pages beats a read per patch from the page cache)
            index = torch.from_numpy(np.asarray(addrs, dtype=np.int64) - self.starts[0])
            torch.index_select(self._frame_windows(length), 0, index, out=torch.from_numpy(out))
            return
        raw = out.view(np.uint8).reshape(n, length * self.frame_bytes)
        reads = zip(part.tolist(), at.tolist())
        read_all([(self.fd(p), raw[i], o) for i, (p, o) in enumerate(reads)])

    def _frame_windows(self, length: int) -> torch.Tensor:
        """Every run of ``length`` frames of a one-part store, ``(T - length + 1, length, ...)``."""
        w = self._windows.get(length)
        if w is None:
            m = self._map(0)
            n = max(0, m.shape[0] - length + 1)
            w = self._windows[length] = torch.as_strided(
                m, (n, length, *self.frame_shape), (self.frame_elems, *m.stride())
            )
        return w

    def read_many(self, addrs, length: int) -> torch.Tensor:
        """Frames ``[a, a + length)`` of each address, read into memory of their own and seen in
        the model's layout ``(len(addrs), *layout)``."""
        block = np.empty((len(addrs), length, *self.frame_shape), self.dtype)
        self.gather(addrs, length, block)
        shape, strides = self.layout(length)
        return torch.from_numpy(block).as_strided(
            (len(addrs), *shape), (length * self.frame_elems, *strides), 0
        )

    def read(self, addr: int, length: int) -> np.ndarray:
        """Frames ``[addr, addr + length)`` as a new array ``(length, *frame_shape)``."""
        out = np.empty((1, length, *self.frame_shape), self.dtype)
        self.gather([addr], length, out)
        return out[0]

    def windows(self, addr: int, count: int, hop: int, length: int) -> torch.Tensor:
        """``count`` windows of ``length`` frames, ``hop`` frames apart, from ``addr``, read
        once into memory of their own: ``(count, *model layout)``, overlapping windows sharing
        their bytes."""
        total = (count - 1) * hop + length if count else 0
        block = torch.from_numpy(self.read(addr, total))
        shape, strides = self.layout(length)
        return block.as_strided((count, *shape), (hop * self.frame_elems, *strides), 0)


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
        mem = memoryview(buf).cast("B")
        try:
            n = os.preadv(fd, [mem], at, _NOWAIT)
        except BlockingIOError:
            n = 0
        except OSError:  # a kernel or filesystem without RWF_NOWAIT: read everything plainly
            _NOWAIT = 0
            n = 0
        if n < len(mem):
            misses.append((fd, mem[n:], at + n))
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
