"""``frame_events``: markers (beats, onsets) on the frame nearest each, within a frame: multi-hot
uint8 ``(n_frames, n_labels or 1)``, stored as runs ``(frame, 1, label)``."""

from __future__ import annotations

import numpy as np

from .base import Description, FrameKind, TargetSpec, register
from .frames import is_track
from .runs import MAX_RUN, decode_multi_hot, make_runs, runs_of_multi_hot


@register
class FrameEvents(FrameKind):
    name = "frame_events"
    order = 125

    @classmethod
    def plan(cls, d: Description) -> TargetSpec | None:
        if d.extent != "marker":
            return None
        return TargetSpec(d.name, cls.name, d.vocabulary if d.content == "text" else [])

    @classmethod
    def row_layout(cls, spec: TargetSpec) -> tuple[tuple[int, ...], np.dtype]:
        return (max(1, len(spec.vocabulary)),), np.dtype("u1")

    @classmethod
    def encode_runs(cls, spec: TargetSpec, d, times: np.ndarray, frame_s: float):
        n = len(times)
        if d is None or not n or is_track(d):
            return make_runs([], [], [])
        at = d.column("time")
        j = np.clip(np.searchsorted(times, at), 1, max(1, n - 1))
        left = np.maximum(j - 1, 0)
        right = np.minimum(j, n - 1)
        # the nearest frame; on a tie the earlier one (as argmin of the distances picks)
        k = np.where(np.abs(times[left] - at) <= np.abs(times[right] - at), left, right)
        ok = np.abs(times[k] - at) <= frame_s
        if spec.vocabulary:
            index = {v: i for i, v in enumerate(spec.vocabulary)}
            labels = np.array([index[str(v)] for v in d.values()], np.int32)
        else:
            labels = np.zeros(len(at), np.int32)
        return make_runs(k[ok], k[ok] + 1, labels[ok])

    @classmethod
    def runs_of_dense(cls, spec: TargetSpec, rows: np.ndarray):
        return runs_of_multi_hot(rows)

    @classmethod
    def decode(cls, spec: TargetSpec, runs, addrs, n: int, out=None, longest: int = MAX_RUN):
        return decode_multi_hot(*runs, addrs, n, max(1, len(spec.vocabulary)), out, longest)
