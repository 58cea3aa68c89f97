"""``precompute import mirdata``: any dataset mirdata loads (63 of them) to a ``.pyjama``.

Each track becomes one entry: its audio (``audio_path``, else the mix, else the first audio
file it has) and every annotation it has, by the name mirdata gives it:

- ``NoteData`` -> numeric segments in MIDI (from Hz where mirdata says Hz);
- ``F0Data`` -> a one-row breakpoint track in MIDI, 0 where unvoiced; ``MultiF0Data`` -> a
  breakpoint matrix, a row per simultaneous pitch (lowest first), 0 where there is none;
- ``ChordData``, ``KeyData``, ``SectionData``, ``LyricData``, ``EventData`` -> text segments;
- ``BeatData`` -> markers; a single tempo -> a global number;
- ``genre``, ``instrument``, ``style``, ``mode``, ``tags``, ... -> global labels; a
  ``work_id`` (da_tacos) -> ``work-id``.

Annotations of other kinds (dicts per string, audio, multitracks) are skipped and counted.
mirdata fetches every dataset's index on first use; offline, give it with ``--index FILE``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from common.pyjama import AUDIO_EXTENSIONS, Atom

from .entries import (
    CollectionBuilder,
    EntryBuilder,
    ImportResult,
    breakpoints,
    hz_to_midi,
    markers,
    segments,
)

LABELS = ("genre", "genres", "instrument", "instruments", "style", "mode", "mood", "tags", "tag",
          "artist", "composer", "raga", "tonic")  # fmt: skip
WORK = ("work_id", "work")
INSTALL = (
    "pip install --no-deps mirdata==1.0.0 && pip install -c constraints.txt smart_open "
    "pretty_midi Deprecated openpyxl pandas chardet"
)


class MirdataError(UserError, ValueError):
    """A dataset mirdata cannot give here, and what to do."""


def open_dataset(name: str, data_home: str | os.PathLike, version: str | None, index: Any):
    try:
        import mirdata
    except ImportError:
        raise MirdataError(
            f"precompute import mirdata needs mirdata; with mirpatch's pins: {INSTALL}"
        ) from None
    try:
        ds = mirdata.initialize(name, data_home=str(data_home), version=version or "default")
    except ValueError as e:
        raise MirdataError(f"mirdata: {e}") from None
    if index is not None:
        ds.index_path = str(Path(index).absolute())
    try:
        ds.track_ids  # noqa: B018 - reads the index
    except FileNotFoundError:
        raise MirdataError(
            f"no index of {name} at {ds.index_path}: give it with --index FILE, or where there is "
            f"a network: python -c \"import mirdata; mirdata.initialize('{name}', "
            f"data_home='{data_home}').download(partial_download=['index'])\""
        ) from None
    return ds


def import_mirdata(
    name: str,
    data_home: str | os.PathLike,
    out_dir: str | os.PathLike,
    version: str | None = None,
    index: str | os.PathLike | None = None,
) -> ImportResult:
    ds = open_dataset(name, data_home, version, index)
    out_dir = Path(out_dir)
    builder, errors, skipped = CollectionBuilder(), [], Counter()
    for tid in ds.track_ids:
        try:
            track = ds.track(tid)
            audio = _audio_path(track)
            entry = EntryBuilder(os.path.relpath(Path(audio).resolve(), out_dir.resolve()))
            skipped.update(_annotations(track, entry, builder))
        except (MirdataError, OSError, ValueError, KeyError) as e:
            errors.append(f"{name} track {tid}: {e}")
            continue
        builder.entries.append(entry)
    return ImportResult(builder.collection(out_dir), errors, skipped, "track")


def _audio_path(track) -> str:
    names = [n for n in vars(track) if n.startswith("audio") and n.endswith("_path")]
    order = sorted(names, key=lambda n: (n != "audio_path", "mix" not in n, "mic" not in n, n))
    for n in order:
        p = getattr(track, n)
        if p and Path(p).is_file() and Path(p).suffix.lower() in AUDIO_EXTENSIONS:
            return p
    raise MirdataError(f"no audio file found (looked at {', '.join(order) or 'none'})")


def _values(track) -> dict[str, Any]:
    """Every public attribute and property of a track (properties load their files)."""
    out = {k: v for k, v in vars(track).items() if not k.startswith("_")}
    for k in dir(type(track)):
        if k.startswith("_") or k in out or k.startswith("audio"):
            continue
        if isinstance(getattr(type(track), k, None), property) or hasattr(
            getattr(type(track), k, None), "func"
        ):  # property or mirdata's cached_property
            try:
                out[k] = getattr(track, k)
            except (OSError, ValueError, KeyError, AttributeError, StopIteration):
                out[k] = None  # the file is not there: nothing to import
    return out


def _annotations(track, entry: EntryBuilder, b: CollectionBuilder) -> Counter:
    from mirdata import annotations as A

    skipped: Counter = Counter()
    for name, v in sorted(_values(track).items()):
        if v is None or name.endswith("_path") or name in ("track_id", "title"):
            continue
        if isinstance(v, A.NoteData):
            unit = str(v.pitch_unit).lower()
            pitches = [hz_to_midi(p) if unit == "hz" else float(p) for p in v.pitches]
            _put(b, entry, name, "numeric", "segment", segments(v.intervals, pitches))
        elif isinstance(v, A.F0Data):
            row = _midi(v.frequencies, v.frequency_unit)
            if v.voicing is not None:
                row = np.where(np.asarray(v.voicing) > 0, row, 0.0)
            _put(b, entry, name, "numeric", "breakpoint", breakpoints(v.times, [row.tolist()]))
        elif isinstance(v, A.MultiF0Data):
            _put(b, entry, name, "numeric", "breakpoint", breakpoints(v.times, _rows(v)))
        elif isinstance(v, (A.ChordData, A.SectionData, A.KeyData, A.LyricData, A.EventData)):
            labels = next(getattr(v, k) for k in ("labels", "keys", "lyrics", "events")
                          if hasattr(v, k))  # fmt: skip
            labels = [str(x) for x in labels] if labels is not None else [""] * len(v.intervals)
            _put(b, entry, name, "text", "segment", segments(v.intervals, labels))
        elif isinstance(v, A.BeatData):
            _put(b, entry, name, "numeric", "marker", markers(v.times))
        elif name in WORK and isinstance(v, (str, int)):
            _put(b, entry, "work-id", "text", "global", [Atom(value=str(v))])
        elif name in LABELS and isinstance(v, (str, list)):
            labels = [v] if isinstance(v, str) else [str(x) for x in v]
            _put(b, entry, name, "text", "global", [Atom(value=x) for x in dict.fromkeys(labels)])
        elif name == "tempo" and isinstance(v, (int, float)):
            _put(b, entry, "tempo", "numeric", "global", [Atom(value=float(v))])
        elif isinstance(v, (dict, A.Annotation)):
            skipped[name] += 1
    return skipped


def _put(b: CollectionBuilder, entry: EntryBuilder, name, content, extent, atoms) -> None:
    if err := b.define(name, content, extent):
        raise MirdataError(err)
    entry.add(name, atoms)


def _midi(values, unit) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if str(unit).lower() == "hz":
        return np.array([hz_to_midi(x) for x in v])
    return np.where(v > 0, v, 0.0)


def _rows(v) -> list[list[float]]:
    lists = [sorted(float(x) for x in fs if x and x > 0) for fs in v.frequency_list]
    width = max((len(fs) for fs in lists), default=0)
    rows = np.zeros((max(width, 1), len(lists)))
    for t, fs in enumerate(lists):
        rows[: len(fs), t] = _midi(fs, v.frequency_unit) if fs else []
    return rows.tolist()
