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
import os
from pathlib import Path
from typing import Any, Literal

from .check import _check_atom, _columns_valid, _infer_extent, _kind
from .model import (
    _DEFINITION_FIELDS,
    _KEY_ALIASES,
    _VALUE_ALIASES,
    ATOM_FIELDS,
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
        doc = _loads(text)
    except json.JSONDecodeError as e:
        raise PyjamaError(
            [Problem(name, f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}")]
        ) from None
    return parse_pyjama(doc, source=path, audio_root=audio_root, on_error=on_error)


def _loads(text: str) -> Any:
    """The JSON document: by orjson (2-3x faster on the hundreds of MB of a large dataset's
    notes), or by the standard library where orjson refuses what it reads (NaN, which pyjama
    files use for silence) or is not installed; errors as the standard library says them."""
    try:
        import orjson
    except ImportError:
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


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


def _parse_description(name, atoms, definition, version, report) -> Description | None:
    if not isinstance(atoms, list):
        report(f"must be a list of atoms, got {_kind(atoms)}", name)
        return None
    if not atoms:
        report("has no atoms", name)
        return None
    fast = _columns_valid(atoms, definition)
    if fast is not None:
        extent, content, columns = fast
        return Description(name, extent, content, raw=atoms, columns=columns)
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
