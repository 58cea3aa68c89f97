"""Annotations on a feature's frame grid: which frames a segment covers, which annotation time
is nearest a frame.

A frame at time ``t`` (librosa's centred framing) is inside a segment when
``time <= t < time + duration`` (half-open, as ``librosa.time_to_frames``); a breakpoint track
gives each frame its nearest annotation time, within the annotated span.
"""

from __future__ import annotations

import numpy as np

from common.pyjama import BREAKPOINT_EXTENTS


def segments_frames(times: np.ndarray, d) -> tuple[np.ndarray, np.ndarray]:
    """Frames inside each segment of description ``d``, ``start <= t < start + duration``:
    slices ``[lo, hi)`` (none when ``d`` is None or a breakpoint track)."""
    if d is None or is_track(d):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    start = d.column("time")
    end = start + d.column("duration")
    return np.searchsorted(times, start, side="left"), np.searchsorted(times, end, side="left")


def nearest(times: np.ndarray, annot_times: np.ndarray) -> np.ndarray:
    """Index of the nearest annotation time for each frame; -1 outside the annotated span."""
    if len(annot_times) == 0:
        return np.full(len(times), -1)
    j = np.clip(np.searchsorted(annot_times, times), 1, max(1, len(annot_times) - 1))
    if len(annot_times) == 1:
        k = np.zeros(len(times), dtype=np.int64)
        half = 0.0
    else:
        left, right = annot_times[j - 1], annot_times[j]
        k = np.where(times - left <= right - times, j - 1, j)
        half = float(np.median(np.diff(annot_times))) / 2
    inside = (times >= annot_times[0] - half) & (times <= annot_times[-1] + half)
    return np.where(inside, k, -1)


def is_track(d) -> bool:
    """Whether description ``d`` is made of breakpoint tracks (a list of times each)."""
    return d.extent in BREAKPOINT_EXTENTS


def tracks(d) -> list:
    """The breakpoint atoms of description ``d`` (a list of times, a matrix of values each)."""
    return d.atoms if d is not None and is_track(d) else []


def segment_values(d) -> list:
    """The values of description ``d``'s segments or markers (none for a track, or no ``d``)."""
    return [] if d is None or is_track(d) else d.values()
