"""``frame_value``: numbers per frame (a numeric segment, or the rows of a numeric breakpoint
track that is not a pitch): float32 ``(n_frames, n_dims)``, NaN where nothing is annotated. Stored as runs of equal rows
``(first frame, frames, row)``."""

from __future__ import annotations

import numpy as np

from .base import Description, FrameKind, TargetSpec, register
from .frames import nearest, segment_values, segments_frames, tracks
from .runs import MAX_RUN, decode_values, runs_of_values


@register
class FrameValue(FrameKind):
    name = "frame_value"
    order = 130  # whatever frame-level description no kind before took

    @classmethod
    def plan(cls, d: Description) -> TargetSpec | None:
        if d.extent == "global":
            return None
        if d.extent == "segment":
            return TargetSpec(d.name, cls.name, [d.name])
        rows = d.definition.row_name or [
            f"{d.name}[{i}]" for i in range(len(d.descs[0].atoms[0].value))
        ]
        return TargetSpec(d.name, cls.name, [str(r) for r in rows])

    @classmethod
    def row_layout(cls, spec: TargetSpec) -> tuple[tuple[int, ...], np.dtype]:
        return (len(spec.vocabulary),), np.dtype("<f4")

    @classmethod
    def encode_runs(cls, spec: TargetSpec, d, times: np.ndarray, frame_s: float):
        arr = np.full((len(times), len(spec.vocabulary)), np.nan, dtype=np.float32)
        for lo, hi, v in zip(*segments_frames(times, d), segment_values(d)):
            arr[lo:hi, 0] = v
        for a in tracks(d):
            k = nearest(times, np.asarray(a.time))
            inside = k >= 0
            arr[inside] = np.asarray(a.value, dtype=np.float32).T[k[inside]]
        return runs_of_values(arr)

    @classmethod
    def runs_of_dense(cls, spec: TargetSpec, rows: np.ndarray):
        return runs_of_values(rows)

    @classmethod
    def value_layout(cls, spec: TargetSpec) -> tuple[tuple[int, ...], np.dtype]:
        return (len(spec.vocabulary),), np.dtype("<f4")

    @classmethod
    def decode(cls, spec: TargetSpec, runs, addrs, n: int, out=None, longest: int = MAX_RUN):
        return decode_values(*runs, addrs, n, len(spec.vocabulary), out, longest)
