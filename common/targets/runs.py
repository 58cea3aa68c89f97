"""Frame-level targets as runs: from frame ``start``, for ``length`` frames, the value ``value``.

A view stores a frame-level target as the annotation has it, not as one row per frame: a note
is one run ``(onset frame, frames, pitch bin)``, a segment ``(first frame, frames, class)``, a
marker ``(frame, 1, label)``, a stretch of an f0 track on one bin ``(first frame, frames,
bin)``. So a view's size follows the annotations, not the audio's length. Runs are sorted by
``start`` (the frame in the view's order, ``files/offset``), and none is longer than
:data:`MAX_RUN` frames (a longer one is stored in pieces), so that the runs a window of frames
overlaps are found by their starts alone: two ``searchsorted`` per window.

Reading turns the runs of a batch of windows back into the dense rows ``(B, L, ...)`` that a
model and every reader see, vectorised over the batch (:func:`overlapping`, then one scatter).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_RUN = 256  # frames


@dataclass
class Runs:
    """Runs of one target: ``start`` int64 (n,), ``length`` int32 (n,), ``value`` int32 (n,)
    (a bin or class) or float32 (n, D) (a row of numbers)."""

    start: np.ndarray
    length: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    @classmethod
    def empty(cls, value_shape: tuple[int, ...] = (), value_dtype="<i4") -> Runs:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int32),
                   np.zeros((0, *value_shape), value_dtype))  # fmt: skip

    @classmethod
    def concat(cls, parts: list[Runs], value_shape=(), value_dtype="<i4") -> Runs:
        if not parts:
            return cls.empty(value_shape, value_dtype)
        return cls(np.concatenate([p.start for p in parts]),
                   np.concatenate([p.length for p in parts]),
                   np.concatenate([p.value for p in parts]))  # fmt: skip

    def shifted(self, offset: int) -> Runs:
        return Runs(self.start + offset, self.length, self.value)


def make_runs(start, stop, value, value_dtype="<i4") -> Runs:
    """Runs ``[start, stop)`` of frames (empty ones dropped), in pieces of at most
    :data:`MAX_RUN`, sorted by start."""
    start = np.asarray(start, np.int64).ravel()
    stop = np.asarray(stop, np.int64).ravel()
    value = np.asarray(value, value_dtype)
    keep = stop > start
    start, stop, value = start[keep], stop[keep], value[keep]
    pieces = -(-(stop - start) // MAX_RUN)
    if len(pieces) and pieces.max() > 1:
        first = np.repeat(start, pieces)
        k = np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        start_p = first + k * MAX_RUN
        stop_p = np.minimum(np.repeat(stop, pieces), start_p + MAX_RUN)
        start, stop, value = start_p, stop_p, np.repeat(value, pieces, axis=0)
    order = np.argsort(start, kind="stable")
    return Runs(start[order], (stop - start)[order].astype(np.int32), value[order])


def runs_of_sequence(seq: np.ndarray, background) -> Runs:
    """Runs of equal values of a 1-D sequence (classes, bins), leaving out ``background``."""
    seq = np.asarray(seq)
    if len(seq) == 0:
        return Runs.empty()
    edges = np.flatnonzero(seq[1:] != seq[:-1]) + 1
    start = np.concatenate([[0], edges])
    stop = np.concatenate([edges, [len(seq)]])
    value = seq[start]
    keep = value != background
    return make_runs(start[keep], stop[keep], value[keep])


def runs_of_values(rows: np.ndarray) -> Runs:
    """Runs of equal rows of numbers ``(n, D)`` (NaN equal to NaN), leaving out all-NaN rows."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if len(rows) == 0:
        return Runs.empty((rows.shape[1],), "<f4")
    bits = rows.view(np.uint32)
    edges = np.flatnonzero((bits[1:] != bits[:-1]).any(axis=1)) + 1
    start = np.concatenate([[0], edges])
    stop = np.concatenate([edges, [len(rows)]])
    keep = ~np.isnan(rows[start]).all(axis=1)
    return make_runs(start[keep], stop[keep], rows[start][keep], "<f4")


def runs_of_multi_hot(rows: np.ndarray) -> Runs:
    """Runs of each active column of multi-hot rows ``(n, W)``."""
    on = np.asarray(rows) != 0
    padded = np.zeros((on.shape[0] + 2, on.shape[1]), np.int8)
    padded[1:-1] = on
    d = np.diff(padded, axis=0)
    s_col, s_frame = np.nonzero(d.T == 1)  # column-major: a column's starts and stops in order
    _, e_frame = np.nonzero(d.T == -1)
    return make_runs(s_frame, e_frame, s_col)


def overlapping(
    start: np.ndarray, length: np.ndarray, addrs: np.ndarray, n: int, longest: int = MAX_RUN
):
    """The runs each window ``[a, a + n)`` overlaps: ``(window, run, first, stop)`` per pair,
    ``first``/``stop`` the frames of the run inside the window, ``0 <= first < stop <= n``.
    ``longest``: no run is longer (:data:`MAX_RUN`, or the longest of these runs, which a
    reader knows once: the fewer runs before a window it looks at)."""
    addrs = np.asarray(addrs, np.int64)
    lo = np.searchsorted(start, addrs - (longest - 1), side="left")
    hi = np.searchsorted(start, addrs + n, side="left")
    counts = hi - lo
    window = np.repeat(np.arange(len(addrs)), counts)
    run = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts - lo, counts)
    first = start[run] - addrs[window]
    stop = first + length[run]
    keep = stop > 0
    window, run = window[keep], run[keep]
    return window, run, np.maximum(first[keep], 0), np.minimum(stop[keep], n)


def frames_of(window, first, stop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ``(window, frame)`` the pairs cover, and for each the index of its pair."""
    span = stop - first
    pair = np.repeat(np.arange(len(span)), span)
    frame = np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span) + first[pair]
    return window[pair], frame, pair


def decode_multi_hot(
    start, length, value, addrs, n: int, width: int, out=None, longest: int = MAX_RUN
) -> np.ndarray:
    """Dense multi-hot rows ``(B, n, width)`` uint8 of the windows from ``addrs``."""
    out = np.zeros((len(addrs), n, width), np.uint8) if out is None else out
    out.fill(0)
    window, run, first, stop = overlapping(start, length, addrs, n, longest)
    w, f, pair = frames_of(window, first, stop)
    out[w, f, value[run][pair]] = 1
    return out


def decode_classes(
    start, length, value, addrs, n: int, out=None, longest: int = MAX_RUN
) -> np.ndarray:
    """Dense classes ``(B, n)`` int64 of the windows (-1 where no run is)."""
    out = np.full((len(addrs), n), -1, np.int64) if out is None else out
    out.fill(-1)
    window, run, first, stop = overlapping(start, length, addrs, n, longest)
    w, f, pair = frames_of(window, first, stop)
    out[w, f] = value[run][pair]
    return out


def decode_values(
    start, length, value, addrs, n: int, width: int, out=None, longest: int = MAX_RUN
) -> np.ndarray:
    """Dense rows of numbers ``(B, n, width)`` float32 of the windows (NaN where no run is)."""
    out = np.full((len(addrs), n, width), np.nan, np.float32) if out is None else out
    out.fill(np.nan)
    window, run, first, stop = overlapping(start, length, addrs, n, longest)
    w, f, pair = frames_of(window, first, stop)
    out[w, f] = value[run][pair]
    return out
