"""``frame_events``: markers (beats, onsets) on the frame nearest each, within a frame: multi-hot
uint8 ``(n_frames, n_labels or 1)``."""

from __future__ import annotations

import numpy as np

from .base import Description, FrameKind, TargetSpec, register


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
    def encode_frames(cls, spec: TargetSpec, atoms: list, times: np.ndarray, frame_s: float):
        index = {v: i for i, v in enumerate(spec.vocabulary)}
        n = len(times)
        arr = np.zeros((n, max(1, len(spec.vocabulary))), dtype=np.uint8)
        for a in atoms:
            k = int(np.argmin(np.abs(times - a.time))) if n else -1
            if 0 <= k < n and abs(times[k] - a.time) <= frame_s:
                arr[k, index[str(a.value)] if spec.vocabulary else 0] = 1
        return arr
