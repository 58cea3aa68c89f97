"""Batches of a loader made ahead, in a thread, while the model computes (on a GPU, where the
host is otherwise idle)."""

from __future__ import annotations

import queue
import threading


class Prefetcher:
    """Batches of a loader made one step ahead, in a thread, while the model computes.

    For a loader without worker processes: the next batch's gather (a copy that releases the
    GIL) overlaps the current step instead of adding to it. ``depth`` batches are made ahead;
    exceptions reach the consumer; :meth:`close` (or the end of a ``with``) stops the thread.
    """

    def __init__(self, loader, depth: int = 1):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iter(loader),), daemon=True)
        self._thread.start()

    _END = object()

    def _fill(self, it) -> None:
        try:
            for batch in it:
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            item = self._END
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            item = e
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
