"""Read and validate ``.pyjama`` annotation files.

A ``.pyjama`` file is one JSON document holding the annotations of a whole
dataset (the format: ``docs/PYJAMA.md``)::

    {"schemaversion": 1.4,
     "collection": {"descriptiondefinition": {NAME: DEFINITION, ...},
                    "entry": [{NAME: [ATOM, ...], ...}, ...]}}

The reader accepts both key spellings (schema 1.4 snake_case and the older
camelCase), infers what a missing or incomplete definition leaves out from the
atoms, and stores every breakpoint matrix as ``(n_dims, n_times)`` whatever its
orientation in the file. Validation collects every problem before it fails, so
a user fixes a file in one pass.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .model import (
    _DEFINITION_FIELDS,
    _KEY_ALIASES,
    _VALUE_ALIASES,
    ATOM_FIELDS,
    BREAKPOINT_EXTENTS,
    CONSTRAINTS,
    CONTENTS,
    EXTENTS,
    FILEPATH,
    SCHEMA_VERSION,
    Atom,
    Collection,
    Definition,
    Description,
    Entry,
    Problem,
    PyjamaError,
    resolve_audio_path,
)


def read_pyjama(
    path: str | os.PathLike,
    audio_root: str | os.PathLike | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> Collection:
    """Read and validate a ``.pyjama`` file.

    Parameters
    ----------
    path : the ``.pyjama`` file
    audio_root : folder against which relative and bare ``filepath`` values are
        resolved first (then the pyjama's own folder)
    on_error : ``"raise"``: any problem raises :class:`PyjamaError` listing all
        of them; ``"skip"``: entries with problems are left out, listed in
        ``Collection.skipped`` and ``Collection.problems``. Problems with the
        file as a whole always raise.
    """
    path = Path(path)
    name = path.name
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PyjamaError([Problem(name, f"file not found ({path})")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise PyjamaError([Problem(name, f"cannot read file: {e}")]) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise PyjamaError(
            [Problem(name, f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}")]
        ) from None
    return parse_pyjama(doc, source=path, audio_root=audio_root, on_error=on_error)


def parse_pyjama(
    doc: Any,
    source: str | os.PathLike | None = None,
    audio_root: str | os.PathLike | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> Collection:
    """Validate an already-decoded pyjama document (see :func:`read_pyjama`)."""
    source = Path(source) if source is not None else None
    fname = source.name if source else "<pyjama>"
    base_dir = source.parent if source else Path.cwd()
    if not isinstance(doc, dict):
        raise PyjamaError([Problem(fname, f"top level must be an object, got {_kind(doc)}")])
    version = doc.get("schemaversion", SCHEMA_VERSION)
    if not isinstance(version, (int, float)) or isinstance(version, bool):
        try:
            version = float(version)
        except (TypeError, ValueError):
            raise PyjamaError(
                [Problem(fname, f"'schemaversion' must be a number, got {version!r}")]
            ) from None
    coll = doc.get("collection")
    if not isinstance(coll, dict):
        got = "missing" if coll is None else _kind(coll)
        raise PyjamaError([Problem(fname, f"'collection' must be an object, got {got}")])
    raw_entries = coll.get("entry")
    if not isinstance(raw_entries, list):
        got = "missing" if raw_entries is None else _kind(raw_entries)
        raise PyjamaError([Problem(fname, f"'collection.entry' must be a list, got {got}")])

    file_problems: list[Problem] = []
    definitions = _parse_definitions(coll.get("descriptiondefinition"), fname, file_problems)
    if file_problems:
        raise PyjamaError(file_problems)

    problems: list[Problem] = []
    entries: list[Entry] = []
    skipped: list[int] = []
    seen_paths: dict[str, int] = {}
    inferred: dict[str, Definition] = {}
    for i, raw in enumerate(raw_entries):
        entry_problems: list[Problem] = []
        entry = _parse_entry(
            raw,
            i,
            fname,
            definitions,
            float(version),
            base_dir,
            audio_root,
            entry_problems,
            inferred,
        )
        if entry is not None and not entry_problems:
            first = seen_paths.setdefault(entry.filepath, i)
            if first != i:
                entry_problems.append(
                    Problem(
                        fname,
                        f"duplicate filepath, already used by entry {first}",
                        i,
                        entry.filepath,
                    )
                )
        if entry_problems or entry is None:
            problems.extend(entry_problems)
            skipped.append(i)
        else:
            entries.append(entry)

    if problems and on_error == "raise":
        raise PyjamaError(problems)
    for n, d in inferred.items():
        definitions.setdefault(n, d)
    definitions.setdefault(
        FILEPATH, Definition(type_content="text", type_extent="global", type_constraint="filepath")
    )
    return Collection(entries, definitions, source, float(version), problems, skipped)


def _kind(x: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(x), type(x).__name__
    )


def _parse_definitions(raw: Any, fname: str, problems: list[Problem]) -> dict[str, Definition]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(
            Problem(fname, f"'descriptiondefinition' must be an object, got {_kind(raw)}")
        )
        return {}
    out = {}
    for name, d in raw.items():
        if not isinstance(d, dict):
            problems.append(
                Problem(fname, f"definition must be an object, got {_kind(d)}", description=name)
            )
            continue
        norm = {_KEY_ALIASES.get(k, k): v for k, v in d.items()}
        for key in ("type_content", "type_extent", "type_constraint"):
            if isinstance(norm.get(key), str):
                norm[key] = _VALUE_ALIASES.get(norm[key], norm[key])
        checks = (
            ("type_content", CONTENTS),
            ("type_extent", EXTENTS),
            ("type_constraint", CONSTRAINTS),
        )
        for key, allowed in checks:
            v = norm.get(key)
            if v is not None and v not in allowed:
                problems.append(
                    Problem(
                        fname,
                        f"definition: {key} {v!r} is not one of {', '.join(allowed)}",
                        description=name,
                    )
                )
        for key in ("dictionary", "row_name"):
            if norm.get(key) is not None and not isinstance(norm[key], list):
                problems.append(
                    Problem(
                        fname,
                        f"definition: {key} must be a list, got {_kind(norm[key])}",
                        description=name,
                    )
                )
        out[name] = Definition(**{k: norm.pop(k, None) for k in _DEFINITION_FIELDS}, flags=norm)
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _parse_entry(
    raw: Any,
    index: int,
    fname: str,
    definitions: dict[str, Definition],
    version: float,
    base_dir: Path,
    audio_root: str | os.PathLike | None,
    problems: list[Problem],
    inferred: dict[str, Definition],
) -> Entry | None:
    if not isinstance(raw, dict):
        problems.append(Problem(fname, f"entry must be an object, got {_kind(raw)}", index))
        return None
    filepath = None
    fp_atoms = raw.get(FILEPATH)
    if fp_atoms is None:
        problems.append(Problem(fname, "entry has no 'filepath'", index))
    elif (
        not isinstance(fp_atoms, list)
        or len(fp_atoms) != 1
        or not isinstance(fp_atoms[0], dict)
        or not isinstance(fp_atoms[0].get("value"), (str, int))
        or str(fp_atoms[0].get("value")).strip() == ""
    ):
        problems.append(
            Problem(fname, "'filepath' must be one atom with a non-empty string 'value'", index)
        )
    else:
        filepath = str(fp_atoms[0]["value"])

    def report(reason: str, description: str | None = None, atom: int | None = None) -> None:
        problems.append(Problem(fname, reason, index, filepath, description, atom))

    descriptions = {}
    for name, atoms in raw.items():
        if name == FILEPATH:
            continue
        desc = _parse_description(name, atoms, definitions.get(name), version, report)
        if desc is not None:
            descriptions[name] = desc
            if name not in definitions and name not in inferred:
                inferred[name] = Definition(type_content=desc.content, type_extent=desc.extent)
    if filepath is None:
        return None
    audio_path = resolve_audio_path(filepath, base_dir, audio_root)
    return Entry(index, filepath, audio_path, descriptions)


def _infer_extent(atoms: list[dict]) -> str:
    a = atoms[0]
    if isinstance(a.get("time"), list):
        return "breakpoint"
    if "time" in a and "duration" in a:
        return "segment"
    if "time" in a:
        return "marker"
    return "global"


def _parse_description(name, atoms, definition, version, report) -> Description | None:
    if not isinstance(atoms, list):
        report(f"must be a list of atoms, got {_kind(atoms)}", name)
        return None
    if not atoms:
        report("has no atoms", name)
        return None
    for k, a in enumerate(atoms):
        if not isinstance(a, dict):
            report(f"atom must be an object, got {_kind(a)}", name, k)
            return None
        unknown = set(a) - set(ATOM_FIELDS)
        if unknown:
            report(
                f"unknown atom field(s) {sorted(unknown)}; allowed: {', '.join(ATOM_FIELDS)}",
                name,
                k,
            )
            return None
    extent = (definition.type_extent if definition else None) or _infer_extent(atoms)
    content = definition.type_content if definition else None
    if content is None:
        first = atoms[0].get("value")
        while isinstance(first, list) and first:
            first = first[0]
        content = "text" if isinstance(first, str) else "numeric"

    parsed: list[Atom] = []
    ok = True
    for k, a in enumerate(atoms):
        atom = Atom(**a)
        bad = _check_atom(atom, extent, content, definition, version)
        if bad:
            report(bad, name, k)
            ok = False
        parsed.append(atom)
    return Description(name, extent, content, parsed) if ok else None


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
