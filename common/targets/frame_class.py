"""``frame_class``: a class per frame from text segments (chords, sections): int32
``(n_frames,)``, -1 where no segment is; where segments overlap, the later one. Stored as runs
``(first frame, frames, class)``."""

from __future__ import annotations

import numpy as np

from .base import Description, FrameKind, TargetSpec, register
from .frames import segment_values, segments_frames
from .runs import MAX_RUN, decode_classes, runs_of_sequence


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
        return (), np.dtype("<i8")  # class indices as cross_entropy takes them (runs hold int32)

    @classmethod
    def encode_runs(cls, spec: TargetSpec, d, times: np.ndarray, frame_s: float):
        index = {v: i for i, v in enumerate(spec.vocabulary)}
        arr = np.full(len(times), -1, dtype=np.int32)  # one int per frame: a later one wins
        for lo, hi, v in zip(*segments_frames(times, d), segment_values(d)):
            arr[lo:hi] = index[str(v)]
        return runs_of_sequence(arr, -1)

    @classmethod
    def runs_of_dense(cls, spec: TargetSpec, rows: np.ndarray):
        return runs_of_sequence(rows, -1)

    @classmethod
    def decode(cls, spec: TargetSpec, runs, addrs, n: int, out=None, longest: int = MAX_RUN):
        return decode_classes(*runs, addrs, n, out, longest)
