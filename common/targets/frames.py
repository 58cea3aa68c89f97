"""Annotations on a feature's frame grid: which frames a segment covers, which annotation time
is nearest a frame.

A frame at time ``t`` (librosa's centred framing) is inside a segment when
``time <= t < time + duration`` (half-open, as ``librosa.time_to_frames``); a breakpoint track
gives each frame its nearest annotation time, within the annotated span.
"""

from __future__ import annotations

import numpy as np


def segments_frames(times: np.ndarray, atoms: list) -> tuple[np.ndarray, np.ndarray]:
    """Frames inside each segment atom, ``start <= t < start + duration``: slices ``[lo, hi)``."""
    start = np.array([a.time for a in atoms], dtype=np.float64)
    end = start + np.array([a.duration for a in atoms], dtype=np.float64)
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


def segment_atoms(atoms: list) -> list:
    """The atoms of a description that are segments (not breakpoint tracks)."""
    return [a for a in atoms if not isinstance(a.time, list)]


def track_atoms(atoms: list) -> list:
    """The atoms that are breakpoint tracks (a list of times, a matrix of values)."""
    return [a for a in atoms if isinstance(a.time, list)]
