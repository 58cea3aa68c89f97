"""``precompute import jams``: a folder of ``.jams`` files (GuitarSet, and everything mirdata or
pumpp converted) to a ``.pyjama``.

The JAMS files are read as JSON (as mirdata reads them: no pandas, none of ``jams``' own
traps); when the ``jams`` package is installed, the annotations imported are also validated
against its namespace schemas. Each ``.jams`` is paired with its audio by stem, or by a
``file_metadata.identifiers`` value. Namespaces become descriptions:

- ``note_midi``, ``note_hz`` -> ``note_midi``: numeric segments in MIDI;
- ``pitch_contour``, ``pitch_hz``, ``pitch_midi`` -> ``f0``: one breakpoint matrix in MIDI, a
  row per ``data_source`` (or voice ``index`` of a contour), 0 where unvoiced;
- ``chord*``, ``key_mode``, ``segment_*``, ``lyrics`` -> text segments of that name;
- ``tag_*`` -> global labels of that name when they span the file, otherwise text segments;
- ``beat``, ``onset`` -> markers; ``tempo`` -> a global number;
- a work id in the file's ``sandbox`` (``work_id``, ``work-id`` or ``work``) -> ``work-id``.

Anything else is skipped, and counted in one summary line.
"""

from __future__ import annotations

import json
import os
import re
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
    hold_on_grid,
    hz_to_midi,
    markers,
    segments,
)

TEXT_SEGMENTS = re.compile(r"^(chord.*|key_mode|segment_.*|lyrics.*)$")
WORK_KEYS = ("work_id", "work-id", "work", "workid")


class JamsError(UserError, ValueError):
    """A JAMS file that cannot be imported, and why."""


def import_jams(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    audio_root: str | os.PathLike | None = None,
) -> ImportResult:
    """Every ``*.jams`` under ``folder``, each with its audio under ``audio_root`` (default:
    ``folder``); paths written relative to ``out_dir``."""
    folder, out_dir = Path(folder), Path(out_dir)
    root = Path(audio_root) if audio_root is not None else folder
    if not folder.is_dir():
        raise JamsError(f"{folder}: not a folder")
    audio = _audio_by_stem(root)
    builder, errors, skipped = CollectionBuilder(), [], Counter()
    files = sorted(folder.rglob("*.jams"))
    if not files:
        raise JamsError(f"{folder}: no .jams files")
    for path in files:
        try:
            doc = _load(path)
            wav = _pair(path, doc, audio, root)
            entry = EntryBuilder(os.path.relpath(wav.resolve(), out_dir.resolve()))
            file_skipped = _annotations(doc, entry, builder, path)
            _sandbox(doc, entry, builder)
        except JamsError as e:
            errors.append(f"{path}: {e}")
            continue
        builder.entries.append(entry)
        skipped.update(file_skipped)
    return ImportResult(builder.collection(out_dir), errors, skipped, "file")


def _audio_by_stem(root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS:
            out.setdefault(p.stem, p)
    return out


def _load(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JamsError(f"not readable JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise JamsError("not a JAMS document (no 'annotations' list)")
    _validate(path, doc)
    return doc


def _validate(path: Path, doc: dict) -> None:
    """The annotations this importer reads, against ``jams``' schemas (when installed)."""
    try:
        import jams
    except ImportError:
        return
    for k, ann in enumerate(doc["annotations"]):
        ns = ann.get("namespace") if isinstance(ann, dict) else None
        if _kind(ns) is None:
            continue
        try:
            checked = jams.Annotation(namespace=ns)
            for o in _observations(ann):
                checked.append(**{**o, "duration": o["duration"] or 0})
            checked.validate(strict=True)
        except Exception as e:  # noqa: BLE001 - jams raises its own, schema and type errors
            raise JamsError(f"annotation {k} ({ns}): {str(e).splitlines()[0][:200]}") from None


def _pair(path: Path, doc: dict, audio: dict[str, Path], root: Path) -> Path:
    if path.stem in audio:
        return audio[path.stem]
    ids = (doc.get("file_metadata") or {}).get("identifiers") or {}
    for v in ids.values() if isinstance(ids, dict) else []:
        stem = Path(str(v)).stem
        if stem in audio:
            return audio[stem]
    raise JamsError(f"no audio file named {path.stem}.* (nor after its identifiers) under {root}")


def _observations(ann: dict) -> list[dict]:
    """The observations of an annotation, sparse (a list) or dense (a dict of lists)."""
    data = ann.get("data", [])
    if isinstance(data, dict):
        keys = ("time", "duration", "value", "confidence")
        n = len(data.get("time", []))
        return [{k: data[k][i] if k in data else None for k in keys} for i in range(n)]
    if not isinstance(data, list):
        raise JamsError(f"{ann.get('namespace')}: 'data' is neither a list nor a dict of lists")
    return [{k: o.get(k) for k in ("time", "duration", "value", "confidence")} for o in data]


def _kind(ns: Any) -> str | None:
    if not isinstance(ns, str):
        return None
    if ns in ("note_midi", "note_hz"):
        return "notes"
    if ns in ("pitch_contour", "pitch_hz", "pitch_midi"):
        return "f0"
    if TEXT_SEGMENTS.match(ns):
        return "text segments"
    if ns.startswith("tag_"):
        return "tags"
    if ns in ("beat", "onset"):
        return "markers"
    if ns == "tempo":
        return "tempo"
    return None


def _annotations(doc: dict, entry: EntryBuilder, b: CollectionBuilder, path: Path) -> Counter:
    """Every annotation of one file into ``entry``; the namespaces left out, counted."""
    skipped: Counter = Counter()
    duration = float((doc.get("file_metadata") or {}).get("duration") or 0)
    f0_tracks: list[tuple[str, np.ndarray, np.ndarray]] = []
    for k, ann in enumerate(doc["annotations"]):
        ns = ann.get("namespace") if isinstance(ann, dict) else None
        kind = _kind(ns)
        if kind is None:
            skipped[str(ns)] += 1
            continue
        try:
            obs = _observations(ann)
            source = str((ann.get("annotation_metadata") or {}).get("data_source") or k)
            if kind == "f0":
                f0_tracks += _f0_tracks(ns, obs, source)
                continue
            _add(kind, ns, obs, entry, b, duration)
        except (TypeError, ValueError, KeyError) as e:
            raise JamsError(f"annotation {k} ({ns}): {e}") from None
    if f0_tracks:
        times = sorted({float(t) for _, ts, _ in f0_tracks for t in ts})
        rows = hold_on_grid(times, [(ts, vs) for _, ts, vs in f0_tracks])
        if err := b.define("f0", "numeric", "breakpoint", flags={"unit": "midi"}):
            raise JamsError(err)
        entry.add("f0", breakpoints(times, rows))
    return skipped


def _f0_tracks(ns: str, obs: list[dict], source: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """One ``(row name, times, MIDI)`` per voice: contours by their ``index``."""
    voices: dict[str, list[tuple[float, float]]] = {}
    for o in obs:
        v = o["value"]
        if ns == "pitch_contour":
            voice = f"{source}:{v.get('index', 0)}"
            midi = hz_to_midi(v["frequency"]) if v.get("voiced", True) else 0.0
        elif ns == "pitch_hz":
            voice, midi = source, hz_to_midi(v)
        else:
            voice, midi = source, float(v) if v and float(v) > 0 else 0.0
        voices.setdefault(voice, []).append((float(o["time"]), midi))
    return [(name, np.array([t for t, _ in pts]), np.array([m for _, m in pts]))
            for name, pts in sorted(voices.items())]  # fmt: skip


def _add(kind: str, ns: str, obs: list[dict], entry: EntryBuilder, b: CollectionBuilder,
         duration: float) -> None:  # fmt: skip
    spans = [(float(o["time"]), float(o["time"]) + float(o["duration"] or 0)) for o in obs]
    if kind == "notes":
        values = [hz_to_midi(o["value"]) if ns == "note_hz" else float(o["value"]) for o in obs]
        name, atoms, content, extent = "note_midi", segments(spans, values), "numeric", "segment"
    elif kind == "text segments":
        values = [_label(o["value"]) for o in obs]
        name, atoms, content, extent = ns, segments(spans, values), "text", "segment"
    elif kind == "tags":
        whole = all(a <= 0.01 and (not duration or c >= duration - 0.05) for a, c in spans)
        values = [_label(o["value"]) for o in obs]
        if whole:
            atoms, extent = [Atom(value=v) for v in dict.fromkeys(values)], "global"
        else:
            atoms, extent = segments(spans, values), "segment"
        name, content = ns, "text"
    elif kind == "markers":
        name, atoms, content, extent = ns, markers([s for s, _ in spans]), "numeric", "marker"
    else:  # tempo
        name, content, extent = "tempo", "numeric", "global"
        atoms = [Atom(value=float(obs[0]["value"]))] if obs else []
    if err := b.define(name, content, extent):
        raise JamsError(err)
    entry.add(name, atoms)


def _label(v: Any) -> str:
    if isinstance(v, dict):  # key_mode and friends store strings; some store dicts
        return json.dumps(v, sort_keys=True)
    return str(v)


def _sandbox(doc: dict, entry: EntryBuilder, b: CollectionBuilder) -> None:
    box = doc.get("sandbox") or {}
    for key in WORK_KEYS:
        if isinstance(box, dict) and box.get(key) not in (None, ""):
            if err := b.define("work-id", "text", "global"):
                raise JamsError(err)
            entry.add("work-id", [Atom(value=str(box[key]))])
            return
