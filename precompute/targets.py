"""Map pyjama annotations onto targets: per file, or on the feature's own frames and pitch bins.

| description                     | target kind    | array                                  |
| ------------------------------- | -------------- | -------------------------------------- |
| global text, one atom per entry | class          | int32 (n_files,), -1 = none            |
| global text, several atoms      | multilabel     | uint8 (n_files, n_labels)              |
| global numeric named work-id    | work           | int32 (n_files,), index into work ids  |
| other global numeric            | value          | float32 (n_files,), NaN = none         |
| segment text                    | frame_class    | int32 (n_frames,), -1 = none           |
| marker                          | frame_events   | uint8 (n_frames, n_labels or 1)        |
| numeric pitch segment/breakpoint| frame_pitch    | uint8 (n_frames, n_pitch_bins)         |
| other numeric breakpoint/segment| frame_value    | float32 (n_frames, n_dims), NaN = none |

A frame at time ``t`` (librosa's centred framing) is inside a segment when
``time <= t < time + duration`` (half-open, as ``librosa.time_to_frames``); a breakpoint
track gives each frame its nearest annotation time, within the annotated span. A pitch of 0,
a negative value or NaN is silence, never the lowest bin; a pitch outside the feature's pitch
grid is counted (:func:`pitches_off_grid`) and left out. Pitch values are MIDI note numbers or
Hz, as :func:`pitch_unit` decides. Targets are stored in the smallest dtype that holds them
(uint8 for multi-hot), never float64.
"""

from __future__ import annotations

import re

import numpy as np

from common.features import Feature
from common.pyjama import BREAKPOINT_EXTENTS, Collection, Description, Entry
from common.store import TargetSpec

WORK_NAMES = {"work-id", "work_id", "workid", "work"}
_PITCH = re.compile(r"pitch|f0|midi|note|melody", re.IGNORECASE)


def is_pitch(name: str, content: str) -> bool:
    return content == "numeric" and bool(_PITCH.search(name))


PITCH_UNITS = ("midi", "hz")
_MIDI_TOP = 135.0  # above any MIDI note: such a value is a frequency


def pitch_unit(
    name: str, collection: Collection, values: list, given: str | None = None
) -> tuple[str, str]:
    """``(unit, why)`` of a pitch description's values: ``"midi"`` or ``"hz"``.

    In order: the unit given for it (``precompute run --pitch-unit NAME=hz``); its definition
    (a ``unit`` key, or text that says Hz or MIDI); its name (``..._hz``); its values (a
    voiced value above MIDI's range is a frequency); else MIDI, as the pyjama format says.
    """
    if given is not None:
        return given, "given"
    d = collection.definitions.get(name)
    said = " ".join(str(v) for v in (d.flags.values() if d else ()))
    if m := re.search(r"\b(hz|hertz|midi)\b", said, re.IGNORECASE):
        return ("midi" if m.group(1).lower() == "midi" else "hz"), "its definition"
    if re.search(r"(^|[_\W])hz($|[_\W])", name, re.IGNORECASE):
        return "hz", "its name"
    flat = _all_numbers(values)
    if flat.size and np.nanmax(np.where(flat > 0, flat, np.nan), initial=0) > _MIDI_TOP:
        return "hz", f"its values (up to {np.nanmax(flat):.0f}, above MIDI's range)"
    return "midi", "the pyjama default"


def _all_numbers(values: list) -> np.ndarray:
    """The numbers of many atoms' values, scalars converted at once, lists one by one."""
    scalars = [v for v in values if isinstance(v, (int, float))]
    lists = [_numbers(v) for v in values if not isinstance(v, (int, float))]
    return np.concatenate([np.asarray(scalars, dtype=np.float64), *lists])


def _numbers(value) -> np.ndarray:
    """Every number of an atom's value (a number, or nested lists of them) as float64, other
    values NaN: one array conversion for the rectangular lists breakpoints are."""
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged lists
        arr = np.asarray(None)
    if arr.dtype.kind in "biuf":
        return arr.astype(np.float64).ravel()
    flat = _flatten(value if isinstance(value, list) else [value])
    return np.array([v if isinstance(v, (int, float)) else np.nan for v in flat], dtype=np.float64)


def _flatten(values) -> list:
    out = []
    for v in values:
        if isinstance(v, list):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def plan_targets(
    collection: Collection, feature: Feature, units: dict[str, str] | None = None
) -> list[TargetSpec]:
    """One :class:`TargetSpec` per description, vocabularies from the definitions and all
    entries; ``units``: pitch units given by the user, by description name."""
    units = units or {}
    specs = []
    for name in collection.description_names():
        definition = collection.definitions[name]
        descs = [e.descriptions[name] for e in collection.entries if name in e.descriptions]
        if not descs:
            continue
        extent, content = descs[0].extent, descs[0].content
        values = [a.value for d in descs for a in d.atoms if a.value is not None]
        if content == "text":
            vocab = list(definition.dictionary or [])
            vocab += sorted({str(v) for v in values} - set(vocab))
        else:
            vocab = []
        if extent == "global":
            if name.lower() in WORK_NAMES:
                specs.append(
                    TargetSpec(name, "work", sorted({str(v) for v in values}, key=_natural))
                )
            elif content == "numeric":
                specs.append(TargetSpec(name, "value"))
            elif max(len(d.atoms) for d in descs) > 1:
                specs.append(TargetSpec(name, "multilabel", vocab))
            else:
                specs.append(TargetSpec(name, "class", vocab))
        elif is_pitch(name, content) and extent in ("segment", *BREAKPOINT_EXTENTS):
            unit, _ = pitch_unit(name, collection, values, units.get(name))
            specs.append(
                TargetSpec(name, "frame_pitch", pitch_midi=feature.pitch_midi().tolist(), unit=unit)
            )
        elif extent == "segment":
            if content == "text":
                specs.append(TargetSpec(name, "frame_class", vocab))
            else:
                specs.append(TargetSpec(name, "frame_value", [name]))
        elif extent == "marker":
            specs.append(TargetSpec(name, "frame_events", vocab if content == "text" else []))
        else:  # numeric breakpoint, not a pitch
            rows = definition.row_name or [
                f"{name}[{i}]" for i in range(len(descs[0].atoms[0].value))
            ]
            specs.append(TargetSpec(name, "frame_value", [str(r) for r in rows]))
    return specs


def _natural(s: str):
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def file_targets(entries: list[Entry], specs: list[TargetSpec]) -> dict[str, np.ndarray]:
    """Per-file targets, one row per entry in the order given."""
    out = {}
    n = len(entries)
    for spec in specs:
        if spec.frame_level:
            continue
        index = {v: i for i, v in enumerate(spec.vocabulary)}
        if spec.kind in ("class", "work"):
            arr = np.full(n, -1, dtype=np.int32)
            for i, e in enumerate(entries):
                d = e.descriptions.get(spec.name)
                if d:
                    arr[i] = index[str(d.atoms[0].value)]
        elif spec.kind == "multilabel":
            arr = np.zeros((n, len(spec.vocabulary)), dtype=np.uint8)
            for i, e in enumerate(entries):
                for a in e.descriptions.get(spec.name, Description("", "", "", [])).atoms:
                    arr[i, index[str(a.value)]] = 1
        else:  # value
            arr = np.full(n, np.nan, dtype=np.float32)
            for i, e in enumerate(entries):
                d = e.descriptions.get(spec.name)
                if d:
                    arr[i] = d.atoms[0].value
        out[spec.name] = arr
    return out


def pitches_off_grid(entry: Entry, spec: TargetSpec) -> tuple[int, int]:
    """How many of an entry's voiced pitches (segments, or breakpoint points) fall below and
    above the feature's pitch grid (by more than half a bin): they get no target bin."""
    d = entry.descriptions.get(spec.name)
    if d is None or spec.kind != "frame_pitch":
        return 0, 0
    grid = np.asarray(spec.pitch_midi)
    half = (grid[1] - grid[0]) / 2 if len(grid) > 1 else 0.5
    midi = midi_of(_all_numbers([a.value for a in d.atoms]), spec.unit)
    voiced = midi[np.isfinite(midi)]
    return int((voiced < grid[0] - half).sum()), int((voiced > grid[-1] + half).sum())


def annotated(entries: list[Entry], specs: list[TargetSpec]) -> dict[str, np.ndarray]:
    """Per target, which entries carry its description at all (uint8 (n_files,)): an entry
    without it has no label, which is not the same as an empty one."""
    return {
        s.name: np.array([s.name in e.descriptions for e in entries], dtype=np.uint8) for s in specs
    }


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


def annotation_warnings(
    entry: Entry, specs: list[TargetSpec], feature: Feature, duration_s: float
) -> list[str]:
    """Frame-level annotations that end past the audio (they are clipped), per description."""
    frame_s = feature.hop_length / feature.sr
    out = []
    for spec in specs:
        d = entry.descriptions.get(spec.name) if spec.frame_level else None
        if d is None:
            continue
        late = [
            a
            for a in d.atoms
            if (max(a.time) if isinstance(a.time, list) else (a.time or 0) + (a.duration or 0))
            > duration_s + frame_s
        ]
        if late:
            out.append(
                f"'{spec.name}': {len(late)} annotation(s) end past the audio ({duration_s:.2f} s), clipped"
            )
    return out


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
