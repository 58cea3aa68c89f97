"""Turn the dataset layouts users already have into a ``.pyjama`` file.

- a folder per class (``DIR/<label>/*.wav``, GTZAN-style) -> a global text description;
- per-file segment files (``.lab`` / ``.csv``: ``start end label`` or
  ``start duration label``) beside the audio -> a segment description.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from common.errors import UserError
from common.pyjama import AUDIO_EXTENSIONS, Atom, Collection, Definition, make_collection


class ImportError_(UserError, ValueError):
    """A file the importer cannot read, named with its line."""


def _audio_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
    )


def _rel(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


def group_of(path: Path, root: Path, group_by: str | None) -> str | None:
    """The group of an audio file: its stem (``stem``), or what a regular expression finds in
    its path relative to ``root`` (its first group, or all it matches); None without either."""
    if not group_by:
        return None
    if group_by == "stem":
        return path.stem
    found = re.search(group_by, path.relative_to(root).as_posix())
    if found is None:
        raise ImportError_(f"--group-by {group_by!r} finds nothing in {path.relative_to(root)}")
    return found.group(1) if found.groups() else found.group(0)


def import_folder(
    root: str | os.PathLike, key: str, out_dir: str | os.PathLike, group_by: str | None = None
) -> Collection:
    """``root/<label>/**/<audio>`` -> one entry per audio file with ``key: [{"value": label}]``.

    Paths are written relative to ``out_dir`` (where the pyjama will be). ``group_by``
    (``stem`` or a regular expression on the path under ``root``) adds a ``group`` label: the
    files of one group (the same prompt read in several languages, the takes of one
    performer) are kept in one split, and in one fold.
    """
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise ImportError_(f"{root}: not a folder")
    items, labels = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        files = _audio_files(sub)
        if files:
            labels.append(sub.name)
        for f in files:
            descs = {key: [Atom(value=sub.name)]}
            group = group_of(f, root, group_by)
            if group is not None:
                descs["group"] = [Atom(value=group)]
            items.append((_rel(f, out_dir), descs))
    if not items:
        raise ImportError_(
            f"{root}: no audio files in class sub-folders (expected {root}/<label>/*"
            f"{'|'.join(AUDIO_EXTENSIONS)})"
        )
    definitions = {key: Definition("text", "global", "value_in_dictionary", labels)}
    if group_by:
        definitions["group"] = Definition("text", "global", "free")
    return make_collection(items, definitions, base_dir=out_dir)


_SPLIT = re.compile(r"[,\t ;]+")


def read_segments(path: Path, columns: str = "start-end") -> list[Atom]:
    """Segments of one ``.lab``/``.csv`` file; ``columns`` is ``start-end`` or ``start-duration``."""
    atoms = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = _SPLIT.split(line, maxsplit=2)
        if len(parts) < 3:
            raise ImportError_(
                f"{path}:{lineno}: expected 'start {columns.split('-')[1]} label', got {line!r}"
            )
        try:
            start, second = float(parts[0]), float(parts[1])
        except ValueError:
            if lineno == 1:  # a csv header
                continue
            raise ImportError_(
                f"{path}:{lineno}: start and {columns.split('-')[1]} must be numbers, got {line!r}"
            ) from None
        duration = second - start if columns == "start-end" else second
        if start < 0 or duration < 0:
            raise ImportError_(f"{path}:{lineno}: negative start or duration in {line!r}")
        label = parts[2].strip().strip('"')
        try:
            value: str | float = float(label)
        except ValueError:
            value = label
        atoms.append(Atom(value=value, time=start, duration=round(duration, 9)))
    return atoms


def import_lab(
    audio_root: str | os.PathLike,
    key: str,
    out_dir: str | os.PathLike,
    labels_dir: str | os.PathLike | None = None,
    columns: str = "start-end",
) -> Collection:
    """Each audio file under ``audio_root`` with a ``<stem>.lab`` or ``<stem>.csv`` beside it
    (or in ``labels_dir``) becomes an entry with ``key`` as a segment description."""
    if columns not in ("start-end", "start-duration"):
        raise ImportError_(f"columns must be 'start-end' or 'start-duration', got {columns!r}")
    audio_root, out_dir = Path(audio_root), Path(out_dir)
    items, missing = [], []
    numeric = True
    for audio in _audio_files(audio_root):
        where = (
            Path(labels_dir) / audio.relative_to(audio_root).parent if labels_dir else audio.parent
        )
        lab = next(
            (
                where / f"{audio.stem}{ext}"
                for ext in (".lab", ".csv")
                if (where / f"{audio.stem}{ext}").is_file()
            ),
            None,
        )
        if lab is None:
            missing.append(audio)
            continue
        atoms = read_segments(lab, columns)
        numeric &= all(isinstance(a.value, float) for a in atoms)
        items.append((_rel(audio, out_dir), {key: atoms} if atoms else {}))
    if not items:
        raise ImportError_(f"{audio_root}: no audio file has a .lab or .csv beside it")
    definitions = {key: Definition("numeric" if numeric else "text", "segment", "free")}
    if not numeric:
        for _, d in items:
            for a in d.get(key, []):
                if isinstance(a.value, float):
                    a.value = f"{a.value:g}"
    coll = make_collection(items, definitions, base_dir=out_dir)
    coll.skipped = [str(m) for m in missing]
    return coll
