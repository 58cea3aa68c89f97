"""``frame_class``: a class per frame from text segments (chords, sections): int32
``(n_frames,)``, -1 where no segment is; where segments overlap, the later one."""

from __future__ import annotations

import numpy as np

from .base import Description, FrameKind, TargetSpec, register
from .frames import segments_frames


@register
class FrameClass(FrameKind):
    name = "frame_class"
    order = 120

    @classmethod
    def plan(cls, d: Description) -> TargetSpec | None:
        ok = d.extent == "segment" and d.content == "text"
        return TargetSpec(d.name, cls.name, d.vocabulary) if ok else None

    @classmethod
    def row_layout(cls, spec: TargetSpec) -> tuple[tuple[int, ...], np.dtype]:
        return (), np.dtype("<i4")

    @classmethod
    def encode_frames(cls, spec: TargetSpec, atoms: list, times: np.ndarray, frame_s: float):
        index = {v: i for i, v in enumerate(spec.vocabulary)}
        arr = np.full(len(times), -1, dtype=np.int32)
        for lo, hi, a in zip(*segments_frames(times, atoms), atoms):
            arr[lo:hi] = index[str(a.value)]
        return arr
