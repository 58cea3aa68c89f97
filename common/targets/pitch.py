"""Pitch values of annotations: their unit, MIDI numbers, and the bins of a feature's grid.

A pitch of 0, a negative value or NaN is silence, never the lowest bin; a pitch outside the
feature's pitch grid is counted (:func:`pitches_off_grid`) and left out. Pitch values are MIDI
note numbers or Hz, as :func:`pitch_unit` decides.
"""

from __future__ import annotations

import re

import numpy as np

from common.pyjama import BREAKPOINT_EXTENTS

_PITCH = re.compile(r"pitch|f0|midi|note|melody", re.IGNORECASE)
PITCH_UNITS = ("midi", "hz")
_MIDI_TOP = 135.0  # above any MIDI note: such a value is a frequency


def is_pitch(name: str, content: str) -> bool:
    return content == "numeric" and bool(_PITCH.search(name))


def numbers_of(descs: list) -> np.ndarray:
    """Every number of the values of these descriptions (segments a column at a time)."""
    parts = [all_numbers(d.values()) if d.extent in BREAKPOINT_EXTENTS else d.column("value")
             for d in descs]  # fmt: skip
    return np.concatenate(parts) if parts else np.zeros(0)


def pitch_unit(
    name: str, collection, values: list | np.ndarray, given: str | None = None
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
    flat = values if isinstance(values, np.ndarray) else all_numbers(values)
    if flat.size and np.nanmax(np.where(flat > 0, flat, np.nan), initial=0) > _MIDI_TOP:
        return "hz", f"its values (up to {np.nanmax(flat):.0f}, above MIDI's range)"
    return "midi", "the pyjama default"


def all_numbers(values: list) -> np.ndarray:
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


def pitches_off_grid(entry, spec) -> tuple[int, int]:
    """How many of an entry's voiced pitches (segments, or breakpoint points) fall below and
    above the feature's pitch grid (by more than half a bin): they get no target bin."""
    d = entry.descriptions.get(spec.name)
    if d is None or spec.kind != "frame_pitch":
        return 0, 0
    grid = np.asarray(spec.pitch_midi)
    half = (grid[1] - grid[0]) / 2 if len(grid) > 1 else 0.5
    values = all_numbers(d.values()) if d.extent in BREAKPOINT_EXTENTS else d.column("value")
    midi = midi_of(values, spec.unit)
    voiced = midi[np.isfinite(midi)]
    return int((voiced < grid[0] - half).sum()), int((voiced > grid[-1] + half).sum())
