"""The pyjama data model (a collection of entries, each with descriptions of atoms), and its
writer: schema 1.4, written atomically, which :mod:`.read` reads back identically."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from common.fileio import atomic_write

SCHEMA_VERSION = 1.4
EXTENTS = (
    "global",
    "marker",
    "segment",
    "breakpoint",
    "breakpoint_time",
    "breakpoint_value",
)
BREAKPOINT_EXTENTS = ("breakpoint", "breakpoint_time", "breakpoint_value")
CONTENTS = ("text", "numeric")
CONSTRAINTS = ("free", "filepath", "value_in_dictionary")
ATOM_FIELDS = ("value", "time", "duration", "confidence", "comment", "start_freq", "end_freq")
FILEPATH = "filepath"
AUDIO_EXTENSIONS = (
    ".wav", ".flac", ".mp3", ".ogg", ".opus", ".aif", ".aiff", ".m4a", ".mp4", ".aac", ".wma", ".webm",
)  # fmt: skip

# Older files spell keys and some values in camelCase.
_KEY_ALIASES = {
    "typeContent": "type_content",
    "typeExtent": "type_extent",
    "typeConstraint": "type_constraint",
    "columnName": "row_name",
    "rowName": "row_name",
    "isTable": "is_table",
    "isEditable": "is_editable",
    "isFilter": "is_filter",
}
_VALUE_ALIASES = {
    "breakpointTime": "breakpoint_time",
    "breakpointValue": "breakpoint_value",
    "filePath": "filepath",
    "valueInDictionary": "value_in_dictionary",
}
_DEFINITION_FIELDS = ("type_content", "type_extent", "type_constraint", "dictionary", "row_name")


@dataclass
class Problem:
    """One thing wrong in a pyjama file, located as precisely as known."""

    file: str
    reason: str
    entry: int | None = None
    filepath: str | None = None
    description: str | None = None
    atom: int | None = None

    def __str__(self) -> str:
        where = [self.file]
        if self.entry is not None:
            where.append(f"entry {self.entry}" + (f" ({self.filepath})" if self.filepath else ""))
        if self.description is not None:
            where.append(
                f"'{self.description}'" + (f" atom {self.atom}" if self.atom is not None else "")
            )
        return ": ".join([*where, self.reason])


class PyjamaError(UserError, ValueError):
    """A pyjama file that cannot be used; ``problems`` lists every fault found."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        lines = [str(p) for p in self.problems]
        head = f"{len(lines)} problem(s) in pyjama:\n" if len(lines) > 1 else ""
        super().__init__(head + "\n".join(lines))


@dataclass
class Definition:
    """What the atoms of one description hold (schema 1.4 names)."""

    type_content: str | None = None
    type_extent: str | None = None
    type_constraint: str | None = None
    dictionary: list | None = None
    row_name: list | None = None
    flags: dict = field(default_factory=dict)  # is_table, generator, ...: no meaning for training

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in _DEFINITION_FIELDS if getattr(self, k) is not None}
        out.update(self.flags)
        return out


@dataclass
class Atom:
    """One annotation: a label, a time span, a breakpoint track...

    For breakpoint extents ``value`` is a matrix ``[n_dims][n_times]`` and
    ``time`` a list of ``n_times`` seconds.
    """

    value: Any = None
    time: float | list | None = None
    duration: float | None = None
    confidence: float | None = None
    comment: str | None = None
    start_freq: float | None = None
    end_freq: float | None = None

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ATOM_FIELDS if getattr(self, k) is not None}


class Description:
    """One description of one entry: its extent, content and atoms.

    A reader that validated a description's atoms as plain JSON objects keeps them so
    (``raw``): :class:`Atom` objects are made only when :attr:`atoms` is read, and
    :meth:`column` gives one field of every atom as an array, which is how targets read the
    hundreds of thousands of notes of a real dataset.
    """

    def __init__(
        self,
        name: str,
        extent: str,
        content: str,
        atoms: list[Atom] | None = None,
        raw: list[dict] | None = None,
        columns: dict[str, np.ndarray] | None = None,
    ):
        self.name, self.extent, self.content = name, extent, content
        self._atoms = list(atoms) if atoms is not None else None
        self._raw = raw if atoms is None else None
        self._columns: dict[str, np.ndarray] = dict(columns or {})

    @property
    def atoms(self) -> list[Atom]:
        if self._atoms is None:
            self._atoms = [Atom(**a) for a in self._raw or ()]
            self._raw = None
        return self._atoms

    def __len__(self) -> int:
        return len(self._raw) if self._raw is not None else len(self._atoms or ())

    def values(self) -> list:
        """Every atom's ``value`` (None where it has none)."""
        if self._raw is not None:
            return [a.get("value") for a in self._raw]
        return [a.value for a in self.atoms]

    def column(self, key: str) -> np.ndarray:
        """Field ``key`` (``time``, ``duration`` or a numeric ``value``) of every atom, as
        float64 (NaN where an atom has none): for segments and markers."""
        found = self._columns.get(key)
        if found is None:
            vals = (
                [a.get(key) for a in self._raw]
                if self._raw is not None
                else [getattr(a, key) for a in self.atoms]
            )
            found = np.array([np.nan if v is None else v for v in vals] if None in vals else vals,
                             dtype=np.float64)  # fmt: skip
            self._columns[key] = found
        return found

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Description):
            return NotImplemented
        return (self.name, self.extent, self.content, self.atoms) == (
            other.name, other.extent, other.content, other.atoms)  # fmt: skip

    def __repr__(self) -> str:
        return f"Description({self.name!r}, {self.extent!r}, {self.content!r}, {len(self)} atoms)"


@dataclass
class Entry:
    """One item of the collection: one audio file and its descriptions."""

    index: int
    filepath: str
    audio_path: Path
    descriptions: dict[str, Description]

    def by_extent(self, extent: str) -> dict[str, Description]:
        if extent == "breakpoint":
            return {n: d for n, d in self.descriptions.items() if d.extent in BREAKPOINT_EXTENTS}
        return {n: d for n, d in self.descriptions.items() if d.extent == extent}


@dataclass
class Collection:
    entries: list[Entry]
    definitions: dict[str, Definition]
    source: Path | None = None
    schemaversion: float = SCHEMA_VERSION
    problems: list[Problem] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.source.stem if self.source else "collection"

    def description_names(self) -> list[str]:
        return [n for n in self.definitions if n != FILEPATH]


def resolve_audio_path(
    filepath: str, base_dir: str | os.PathLike, audio_root: str | os.PathLike | None = None
) -> Path:
    """Where the audio of ``filepath`` is.

    Absolute paths are kept; relative ones and bare keys (``"174702"``) are
    looked up under ``audio_root`` then ``base_dir`` (the pyjama's folder),
    as given and with the usual audio extensions. When nothing exists the
    first candidate is returned, so that the error names a real place.
    """
    p = Path(filepath).expanduser()
    if p.is_absolute():
        return p
    roots = [Path(audio_root)] if audio_root is not None else []
    roots.append(Path(base_dir))
    candidates = [r / p for r in roots]
    if not p.suffix:
        candidates += [r / (filepath + ext) for r in roots for ext in AUDIO_EXTENSIONS]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def collection_to_json(collection: Collection) -> dict:
    """The schema-1.4 document of ``collection`` (breakpoints as (n_dims, n_times))."""
    definitions = {n: d.to_json() for n, d in collection.definitions.items()}
    entries = []
    for e in collection.entries:
        raw = {FILEPATH: [{"value": e.filepath}]}
        for name, desc in e.descriptions.items():
            raw[name] = [a.to_json() for a in desc.atoms]
        entries.append(raw)
    return {
        "schemaversion": SCHEMA_VERSION,
        "collection": {"descriptiondefinition": definitions, "entry": entries},
    }


def write_pyjama(collection: Collection, path: str | os.PathLike) -> Path:
    """Write ``collection`` as schema 1.4, atomically (temporary name, then rename)."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(collection_to_json(collection), f, indent=1, ensure_ascii=False)
        f.write("\n")
    return path


def make_collection(
    items: Iterable[tuple[str, dict[str, list[Atom]]]],
    definitions: dict[str, Definition],
    base_dir: str | os.PathLike = ".",
) -> Collection:
    """Build a collection from ``(filepath, {name: atoms})`` pairs (for importers and tests)."""
    entries = []
    for i, (fp, descs) in enumerate(items):
        built = {}
        for name, atoms in descs.items():
            d = definitions[name]
            built[name] = Description(name, d.type_extent, d.type_content, list(atoms))
        entries.append(Entry(i, fp, resolve_audio_path(fp, base_dir), built))
    defs = dict(definitions)
    defs.setdefault(
        FILEPATH, Definition(type_content="text", type_extent="global", type_constraint="filepath")
    )
    return Collection(entries, defs)
