"""``.pyjama`` annotation files: the data model and writer (:mod:`.model`), the reader and
validator (:mod:`.read`). The format, for users: ``docs/PYJAMA.md``."""

from __future__ import annotations

from .model import (
    ATOM_FIELDS,
    AUDIO_EXTENSIONS,
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
    collection_to_json,
    make_collection,
    resolve_audio_path,
    write_pyjama,
)
from .read import parse_pyjama, read_pyjama

__all__ = [
    "ATOM_FIELDS",
    "AUDIO_EXTENSIONS",
    "BREAKPOINT_EXTENTS",
    "CONSTRAINTS",
    "CONTENTS",
    "EXTENTS",
    "FILEPATH",
    "SCHEMA_VERSION",
    "Atom",
    "Collection",
    "Definition",
    "Description",
    "Entry",
    "Problem",
    "PyjamaError",
    "collection_to_json",
    "make_collection",
    "parse_pyjama",
    "read_pyjama",
    "resolve_audio_path",
    "write_pyjama",
]
