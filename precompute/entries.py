"""Pyjama entries built from the annotation types MIR libraries use (JAMS namespaces, mirdata's
annotation classes): segments, markers, breakpoint tracks and global labels, with the
definitions that describe them. Shared by the JAMS and mirdata importers.

Pitches are written as MIDI numbers (converted from Hz where the source says Hz), 0 where a
voice is silent, as the pyjama format reads them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from common.pyjama import Atom, Collection, Definition, make_collection


def hz_to_midi(hz: float) -> float:
    """MIDI number of a frequency; 0 for silence (0, negative or not a number)."""
    try:
        hz = float(hz)
    except (TypeError, ValueError):
        return 0.0
    if not math.isfinite(hz) or hz <= 0:
        return 0.0
    return round(69 + 12 * math.log2(hz / 440.0), 4)


def hold_on_grid(
    times: Sequence[float], tracks: list[tuple[np.ndarray, np.ndarray]]
) -> list[list[float]]:
    """Rows of a breakpoint matrix on ``times``: each track ``(its times, its values)`` holds
    its value from one of its own times to its next (at most 1.5 of its median step), else 0."""
    grid = np.asarray(times, dtype=np.float64)
    rows = []
    for t, v in tracks:
        row = np.zeros(len(grid))
        if len(t):
            order = np.argsort(t, kind="stable")
            t, v = np.asarray(t, np.float64)[order], np.asarray(v, np.float64)[order]
            step = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
            k = np.searchsorted(t, grid + 1e-9, side="right") - 1
            ok = (k >= 0) & (grid - t[np.maximum(k, 0)] <= 1.5 * step + 1e-9)
            row[ok] = v[k[ok]]
        rows.append([float(x) for x in row])
    return rows


@dataclass
class ImportResult:
    """What an importer made: the collection, the sources left out (each "source: reason"), and
    the annotations not imported, counted by kind."""

    collection: Collection
    errors: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    noun: str = "file"

    def summary(self) -> str:
        line = f"{len(self.collection.entries)} entries"
        if self.skipped:
            kinds = ", ".join(f"{n} ({k})" for n, k in sorted(self.skipped.items()))
            line += f"; not imported: {kinds}"
        if self.errors:
            line += f"; {len(self.errors)} {self.noun}(s) left out"
        return line


@dataclass
class EntryBuilder:
    """Descriptions of one file, by name."""

    filepath: str
    descriptions: dict[str, list[Atom]] = field(default_factory=dict)

    def add(self, name: str, atoms: list[Atom]) -> None:
        self.descriptions.setdefault(name, []).extend(atoms)


class CollectionBuilder:
    """Entries and the definitions of their descriptions, kept consistent across files: a name
    is one extent and one content everywhere, else the later use is refused by name."""

    def __init__(self):
        self.entries: list[EntryBuilder] = []
        self.definitions: dict[str, Definition] = {}

    def define(self, name: str, content: str, extent: str, **extra) -> str | None:
        """Declare ``name``; the reason it conflicts with an earlier declaration, or None."""
        d = self.definitions.get(name)
        if d is None:
            self.definitions[name] = Definition(content, extent, "free", **extra)
            return None
        if (d.type_content, d.type_extent) != (content, extent):
            return (f"'{name}' is {content} {extent} here but {d.type_content} {d.type_extent} "
                    "in an earlier file")  # fmt: skip
        return None

    def collection(self, base_dir):
        items = [(e.filepath, e.descriptions) for e in self.entries]
        coll = make_collection(items, self.definitions, base_dir=base_dir)
        return coll


def segments(intervals, values) -> list[Atom]:
    return [
        Atom(value=v, time=round(float(a), 6), duration=round(float(b) - float(a), 6))
        for (a, b), v in zip(intervals, values)
    ]


def markers(times, values=None) -> list[Atom]:
    values = [None] * len(times) if values is None else values
    return [Atom(value=v, time=round(float(t), 6)) for t, v in zip(times, values)]


def breakpoints(times, rows: list[list[float]]) -> list[Atom]:
    return [Atom(value=rows, time=[round(float(t), 6) for t in times])]
