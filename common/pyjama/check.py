"""Whether the atoms of a description are valid: a field at a time over all of them (the fast
way, for the hundreds of thousands of notes of a real dataset), or one by one (which names the
faulty atom and why)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .model import ATOM_FIELDS, BREAKPOINT_EXTENTS, SCHEMA_VERSION, Atom, Definition


def _kind(x: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(x), type(x).__name__
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _infer_extent(atoms: list[dict]) -> str:
    a = atoms[0]
    if isinstance(a.get("time"), list):
        return "breakpoint"
    if "time" in a and "duration" in a:
        return "segment"
    if "time" in a:
        return "marker"
    return "global"


_FIELDS = set(ATOM_FIELDS)
_NUMBERS = {int, float}


def _times(values: list, allow_none: bool = False) -> np.ndarray | None:
    """Seconds as float64 if every one is a finite number >= 0 (None allowed where said,
    as NaN), else None."""
    types = {type(v) for v in values}
    if allow_none and type(None) in types:
        types.discard(type(None))
        values = [np.nan if v is None else v for v in values]
    if not types <= _NUMBERS:
        return None
    arr = np.array(values, np.float64)
    finite = arr[~np.isnan(arr)] if allow_none else arr
    return arr if np.isfinite(finite).all() and (finite >= 0).all() else None


def _columns_valid(atoms: list, definition: Definition | None) -> tuple | None:
    """``(extent, content, columns)`` of a description of segments, markers or global values
    whose atoms are all valid, checked a field at a time over all atoms (a real dataset has
    hundreds of thousands of notes); ``columns`` are its times, durations and numeric values
    as arrays. None to check atom by atom, which names the faulty one."""
    if any(type(a) is not dict for a in atoms) or not set().union(*atoms) <= _FIELDS:
        return None
    extent = (definition.type_extent if definition else None) or _infer_extent(atoms)
    if extent not in ("segment", "marker", "global"):
        return None
    values = [a.get("value") for a in atoms]
    content = definition.type_content if definition else None
    if content is None:
        first = values[0]
        while isinstance(first, list) and first:
            first = first[0]
        content = "text" if isinstance(first, str) else "numeric"
    columns = {}
    if extent != "global":
        columns["time"] = _times([a.get("time") for a in atoms])
        if extent == "segment":
            columns["duration"] = _times([a.get("duration") for a in atoms])
        if any(c is None for c in columns.values()):
            return None
    types = {type(v) for v in values}
    if extent == "marker":
        types.discard(type(None))
    if not types <= (_NUMBERS if content == "numeric" else {str, int}):
        return None
    present = [v for v in values if v is not None] if extent == "marker" else values
    d = definition.dictionary if definition else None
    labels = d and content == "text" and definition.type_constraint != "free"
    if labels and not set(present) <= set(d):
        return None
    if content == "numeric":
        numbers = np.array(present, np.float64)
        if len(present) == len(values):  # every atom has one: a column of the description
            columns["value"] = numbers
        bounded = d and len(d) == 2 and all(_is_number(x) for x in d)
        if bounded and not ((numbers >= d[0]) & (numbers <= d[1])).all():
            return None
    return extent, content, columns


def _check_time(t: Any, what: str = "time") -> str | None:
    if not _is_number(t):
        return f"'{what}' must be a number of seconds, got {t!r}"
    if not math.isfinite(t) or t < 0:
        return f"'{what}' must be finite and >= 0, got {t!r}"
    return None


_NUMBER_OR_NONE = {int, float, type(None)}


def _all_numbers(matrix: list[list]) -> bool:
    """Every value a number or None (one array conversion when they are all numbers)."""
    try:
        if np.asarray(matrix).dtype.kind in "iuf":
            return True
    except ValueError:
        pass
    return {type(v) for row in matrix for v in row} <= _NUMBER_OR_NONE


def _check_times(times: list) -> str | None:
    """Why a breakpoint's time list is invalid, or None (vectorised; a track has many points)."""
    if {type(t) for t in times} <= {int, float}:
        arr = np.asarray(times, dtype=np.float64)
        if np.isfinite(arr).all() and (arr >= 0).all():
            return "breakpoint 'time' must not decrease" if (np.diff(arr) < 0).any() else None
    for t in times:  # the slow path finds the value to name
        if err := _check_time(t):
            return err
    return None


def _check_atom(
    atom: Atom, extent: str, content: str, definition: Definition | None, version: float
):
    """Return the reason this atom is invalid, or None; breakpoint matrices are reoriented."""
    if extent in ("segment", "marker"):
        if atom.time is None:
            return f"{extent} needs 'time'"
        if err := _check_time(atom.time):
            return err
        if extent == "segment":
            if atom.duration is None:
                return "segment needs 'duration'"
            if err := _check_time(atom.duration, "duration"):
                return err
        if atom.value is None and extent == "segment":
            return "segment needs 'value'"
    elif extent in BREAKPOINT_EXTENTS:
        if not isinstance(atom.time, list) or not atom.time:
            return "breakpoint needs 'time' as a non-empty list of seconds"
        if err := _check_times(atom.time):
            return err
        matrix = _orient_matrix(atom.value, len(atom.time), version)
        if isinstance(matrix, str):
            return matrix
        atom.value = matrix
        if content == "numeric" and not _all_numbers(matrix):
            return "breakpoint values must be numbers"
        return None
    else:  # global
        if atom.value is None:
            return "global needs 'value'"
    if atom.value is None:  # a marker may be a bare time
        return None
    if content == "numeric":
        if not _is_number(atom.value):
            return f"value must be a number ({extent}, numeric), got {atom.value!r}"
    elif not isinstance(atom.value, (str, int)):
        return f"value must be a label ({extent}, text), got {_kind(atom.value)}"
    if definition and definition.dictionary:
        d = definition.dictionary
        if content == "text" and definition.type_constraint != "free" and atom.value not in d:
            return f"label {atom.value!r} is not in the definition's dictionary ({len(d)} labels)"
        if (
            content == "numeric"
            and len(d) == 2
            and all(_is_number(x) for x in d)
            and not d[0] <= atom.value <= d[1]
        ):
            return f"value {atom.value!r} is outside the definition's range [{d[0]}, {d[1]}]"
    return None


def _orient_matrix(value: Any, n_times: int, version: float) -> list[list] | str:
    """Return ``value`` as ``(n_dims, n_times)`` rows, or the reason it cannot be."""
    if not isinstance(value, list) or not value:
        return f"breakpoint 'value' must be a matrix (list of lists), got {_kind(value)}"
    if not any(isinstance(r, list) for r in value):  # one dimension stored flat
        value = [value]
    if not all(isinstance(r, list) for r in value):
        return "breakpoint 'value' mixes rows and numbers"
    widths = {len(r) for r in value}
    if len(widths) != 1:
        return f"breakpoint 'value' rows differ in length ({sorted(widths)})"
    n_rows, n_cols = len(value), widths.pop()
    rows_are_times = n_rows == n_times
    cols_are_times = n_cols == n_times
    if rows_are_times and cols_are_times:
        rows_are_times = version < SCHEMA_VERSION
    elif not rows_are_times and not cols_are_times:
        return f"breakpoint 'value' is {n_rows}x{n_cols}, but 'time' has {n_times} points"
    if rows_are_times:
        return [list(col) for col in zip(*value)]
    return [list(r) for r in value]
