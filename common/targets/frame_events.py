"""``frame_events``: markers (beats, onsets) on the frame nearest each, within a frame: multi-hot
uint8 ``(n_frames, n_labels or 1)``, stored as runs ``(frame, 1, label)``."""

from __future__ import annotations

import numpy as np

from .base import Description, FrameKind, TargetSpec, register
from .runs import decode_multi_hot, make_runs, runs_of_multi_hot


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
    def encode_runs(cls, spec: TargetSpec, atoms: list, times: np.ndarray, frame_s: float):
        index = {v: i for i, v in enumerate(spec.vocabulary)}
        n = len(times)
        frames, labels = [], []
        for a in atoms:
            k = int(np.argmin(np.abs(times - a.time))) if n else -1
            if 0 <= k < n and abs(times[k] - a.time) <= frame_s:
                frames.append(k)
                labels.append(index[str(a.value)] if spec.vocabulary else 0)
        frames_a = np.asarray(frames, np.int64)
        return make_runs(frames_a, frames_a + 1, np.asarray(labels, np.int32))

    @classmethod
    def runs_of_dense(cls, spec: TargetSpec, rows: np.ndarray):
        return runs_of_multi_hot(rows)

    @classmethod
    def decode(cls, spec: TargetSpec, runs, addrs, n: int, out=None):
        return decode_multi_hot(*runs, addrs, n, max(1, len(spec.vocabulary)), out)
