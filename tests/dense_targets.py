"""Frame-level targets as dense rows, as mirpatch wrote them into views before runs (format 3):
the code of precompute/targets.py at bc8dec5, kept as the reference that the runs a view now
stores must give back exactly."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from common.features import Feature, make_feature
from common.pyjama import Entry, read_pyjama
from common.store import read_tables
from common.targets import TargetSpec


def midi_of(values: np.ndarray, unit: str) -> np.ndarray:
    """MIDI numbers of pitch values; silence (<= 0, NaN) becomes NaN."""
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v) & (v > 0), v, np.nan)
    if unit == "hz":
        with np.errstate(divide="ignore", invalid="ignore"):
            v = 69 + 12 * np.log2(v / 440.0)
    return v


def pitch_bins(midi: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Nearest bin of a uniform MIDI ``grid`` for each pitch; -1 for silence or out of range."""
    step = grid[1] - grid[0] if len(grid) > 1 else 1.0
    with np.errstate(invalid="ignore"):
        b = np.round((midi - grid[0]) / step)
    ok = np.isfinite(b) & (b >= 0) & (b < len(grid))
    return np.where(ok, b, -1).astype(np.int64)


def frame_targets(
    entry: Entry, specs: list[TargetSpec], feature: Feature, n_frames: int
) -> dict[str, np.ndarray]:
    """Frame-level targets of one file on the feature's frame grid."""
    times = feature.frame_times(n_frames)
    frame_s = feature.hop_length / feature.sr
    out = {}
    for spec in specs:
        if not spec.frame_level:
            continue
        d = entry.descriptions.get(spec.name)
        atoms = d.atoms if d else []
        index = {v: i for i, v in enumerate(spec.vocabulary)}
        if spec.kind == "frame_class":
            arr = np.full(n_frames, -1, dtype=np.int32)
            for lo, hi, a in zip(*_segments_frames(times, atoms), atoms):
                arr[lo:hi] = index[str(a.value)]
        elif spec.kind == "frame_events":
            arr = np.zeros((n_frames, max(1, len(spec.vocabulary))), dtype=np.uint8)
            for a in atoms:
                k = int(np.argmin(np.abs(times - a.time))) if n_frames else -1
                if 0 <= k < n_frames and abs(times[k] - a.time) <= frame_s:
                    arr[k, index[str(a.value)] if spec.vocabulary else 0] = 1
        elif spec.kind == "frame_pitch":
            grid = np.asarray(spec.pitch_midi)
            arr = np.zeros((n_frames, len(grid)), dtype=np.uint8)
            segments = [a for a in atoms if not isinstance(a.time, list)]
            bins = pitch_bins(midi_of([a.value for a in segments], spec.unit), grid)
            for lo, hi, b in zip(*_segments_frames(times, segments), bins):
                if b >= 0:
                    arr[lo:hi, b] = 1
            for a in atoms:
                if isinstance(a.time, list):
                    rows = midi_of(np.asarray(a.value, dtype=np.float64), spec.unit)
                    k = _nearest(times, np.asarray(a.time))
                    inside = k >= 0
                    for row in rows:
                        bins = np.full(n_frames, -1)
                        bins[inside] = pitch_bins(row[k[inside]], grid)
                        on = bins >= 0
                        arr[np.nonzero(on)[0], bins[on]] = 1
        else:  # frame_value
            arr = np.full((n_frames, len(spec.vocabulary)), np.nan, dtype=np.float32)
            segments = [a for a in atoms if not isinstance(a.time, list)]
            for lo, hi, a in zip(*_segments_frames(times, segments), segments):
                arr[lo:hi, 0] = a.value
            for a in atoms:
                if isinstance(a.time, list):
                    k = _nearest(times, np.asarray(a.time))
                    inside = k >= 0
                    arr[inside] = np.asarray(a.value, dtype=np.float32).T[k[inside]]
        out[spec.name] = arr
    return out


def _segments_frames(times: np.ndarray, atoms: list) -> tuple[np.ndarray, np.ndarray]:
    """Frames inside each segment atom, ``start <= t < start + duration``: slices ``[lo, hi)``."""
    start = np.array([a.time for a in atoms], dtype=np.float64)
    end = start + np.array([a.duration for a in atoms], dtype=np.float64)
    return np.searchsorted(times, start, side="left"), np.searchsorted(times, end, side="left")


def _nearest(times: np.ndarray, annot_times: np.ndarray) -> np.ndarray:
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


def dense_target(store: str | Path, name: str) -> np.ndarray:
    """A view's frame-level target ``name`` as the dense rows of format 3 ``(total_frames, ...)``
    in the view's order, made from the view's own pyjama by the reference code."""
    t = read_tables(store)
    feature = make_feature(t.feature)
    coll = read_pyjama(t.attrs["pyjama"], audio_root=t.attrs.get("audio_root") or None,
                       on_error="skip")  # fmt: skip
    by_entry = {e.index: e for e in coll.entries}
    spec = t.targets[name]
    rows = [frame_targets(by_entry[int(t.entry[i])], [spec], feature, int(t.n_frames[i]))[name]
            for i in range(t.n_files)]  # fmt: skip
    row, dtype = spec.row_layout()
    return np.concatenate(rows) if rows else np.zeros((0, *row), dtype)


def read_target(store: str | Path, name: str) -> np.ndarray:
    """What the view holds for target ``name``: a per-file dataset as it is, a frame-level one
    decoded from its runs into dense rows ``(total_frames, ...)``."""
    t = read_tables(store)
    spec = t.targets[name]
    if not spec.frame_level:
        with h5py.File(store) as h:
            return h[f"targets/{name}"][()]
    from common.store import read_frame_target

    parts = [read_frame_target(t, name, i) for i in range(t.n_files)]
    row, dtype = spec.row_layout()
    return np.concatenate(parts) if parts else np.zeros((0, *row), dtype)


def to_format_3(view: Path) -> None:
    """Rewrite a view as mirpatch wrote views before runs (format 3): each frame-level target a
    dense dataset of ``(total_frames, ...)`` rows."""
    t = read_tables(view)
    dense = {n: read_target(view, n) for n, s in t.targets.items() if s.frame_level}
    with h5py.File(view, "r+") as h:
        for name, rows in dense.items():
            attrs = {k: v for k, v in h[f"targets/{name}"].attrs.items() if k != "frames"}
            del h[f"targets/{name}"]
            h.create_dataset(f"targets/{name}", data=rows).attrs.update(attrs)
        h.attrs["format_version"] = 3
