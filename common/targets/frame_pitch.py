"""``frame_pitch``: which pitches sound in each frame, on the feature's own pitch grid (MIDI
notes as segments, f0 tracks as breakpoints): multi-hot uint8 ``(n_frames, n_pitch_bins)``, stored as runs ``(first frame, frames, bin)``:
one per note, one per stretch of an f0 track on one bin.

Silence (0, negative, NaN) sets no bin; pitches off the grid set none and are counted
(:func:`common.targets.pitch.pitches_off_grid`)."""

from __future__ import annotations

import numpy as np

from common.pyjama import BREAKPOINT_EXTENTS

from .base import Description, FrameKind, TargetSpec, register
from .frames import nearest, segments_frames, tracks
from .pitch import is_pitch, midi_of, numbers_of, pitch_bins, pitch_unit
from .runs import MAX_RUN, Runs, decode_multi_hot, make_runs, runs_of_multi_hot, runs_of_sequence


@register
class FramePitch(FrameKind):
    name = "frame_pitch"
    order = 110  # a pitch description is read as pitch before any other frame-level kind

    @classmethod
    def plan(cls, d: Description) -> TargetSpec | None:
        if d.extent not in ("segment", *BREAKPOINT_EXTENTS) or not is_pitch(d.name, d.content):
            return None
        unit, _ = pitch_unit(d.name, d.collection, numbers_of(d.descs), d.unit)
        return TargetSpec(d.name, cls.name, pitch_midi=d.feature.pitch_midi().tolist(), unit=unit)

    @classmethod
    def row_layout(cls, spec: TargetSpec) -> tuple[tuple[int, ...], np.dtype]:
        return (len(spec.pitch_midi),), np.dtype("u1")

    @classmethod
    def n_out(cls, spec: TargetSpec) -> int:
        return len(spec.pitch_midi)

    @classmethod
    def encode_runs(cls, spec: TargetSpec, d, times: np.ndarray, frame_s: float):
        grid = np.asarray(spec.pitch_midi)
        n = len(times)
        lo, hi = segments_frames(times, d)
        values = d.column("value") if len(lo) else np.zeros(0)
        bins = pitch_bins(midi_of(values, spec.unit), grid)
        parts = [make_runs(lo[bins >= 0], hi[bins >= 0], bins[bins >= 0])]
        for a in tracks(d):
            rows = midi_of(np.asarray(a.value, dtype=np.float64), spec.unit)
            k = nearest(times, np.asarray(a.time))
            inside = k >= 0
            for row in rows:
                b = np.full(n, -1)
                b[inside] = pitch_bins(row[k[inside]], grid)
                parts.append(runs_of_sequence(b, -1))
        return _sorted(Runs.concat(parts))

    @classmethod
    def runs_of_dense(cls, spec: TargetSpec, rows: np.ndarray):
        return runs_of_multi_hot(rows)

    @classmethod
    def decode(cls, spec: TargetSpec, runs, addrs, n: int, out=None, longest: int = MAX_RUN):
        return decode_multi_hot(*runs, addrs, n, len(spec.pitch_midi), out, longest)


def _sorted(r: Runs) -> Runs:
    order = np.argsort(r.start, kind="stable")
    return Runs(r.start[order], r.length[order], r.value[order])
