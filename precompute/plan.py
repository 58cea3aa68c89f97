"""Plan a store: read the pyjama, identify every audio file by its content, lay nothing out yet.

A file's feature rows are identified by its **content key**: the feature's value parameters,
the library and code versions that change values (:meth:`Feature.key`), and the hash of the
audio file's bytes. A **store** (a view over the feature pool) is identified by those keys plus the annotations:
the same request finds the same store; a changed label, an added file or an overwritten
recording makes another view, which reuses the rows the pool holds (see :mod:`.pipeline`).

Hashes are cached in the catalogue by path, size and mtime, so a rerun reads no audio unless a
file changed; a file whose content changed since it was last seen is reported.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.audio import AudioError, AudioInfo, content_hash, probe_audio
from common.catalogue import Catalogue
from common.errors import UserError
from common.features import Feature, make_feature, params_hash
from common.pyjama import Collection, Entry, read_pyjama
from common.store import FORMAT_VERSION, pool_dir, store_path
from common.targets import (
    TargetSpec,
    annotation_warnings,
    numbers_of,
    pitch_unit,
    pitches_off_grid,
    plan_targets,
)


class PlanError(UserError, RuntimeError):
    """--strict: a file that cannot be used stops the plan."""


@dataclass
class PlannedFile:
    """One audio file as planned: where it is, what it holds, how many frames it gives."""

    entry: Entry
    path: Path
    size: int
    mtime_ns: int
    content: str  # blake2b of the bytes
    info: AudioInfo
    n_frames: int
    duration_s: float
    key: str  # content key of its feature rows
    warnings: list[str] = field(default_factory=list)


@dataclass
class Plan:
    dataset: Path
    collection: Collection
    feature: Feature
    feature_key: str
    targets: list[TargetSpec]
    files: list[PlannedFile]
    failed: list[dict[str, Any]]  # files that cannot be used: entry, name, reason
    changed: list[str]  # audio paths whose content changed since the catalogue last saw them
    stores: Path
    audio_root: str | None
    store_id: str
    store_path: Path
    pyjama_sha1: str
    notes: list[str] = field(default_factory=list)  # how targets were read, for the user
    off_grid: dict[str, dict[str, int]] = field(default_factory=dict)  # pitches off the grid

    @property
    def lock_path(self) -> Path:
        return self.store_path.with_name(self.store_path.name + ".lock")

    @property
    def warnings(self) -> list[str]:
        """What a user should know of the files: annotations clipped or off the pitch grid,
        files shorter than one patch, audio whose band the feature exceeds. Printed by every
        build and kept in the view (``precompute info`` shows them)."""
        out = []
        patch = self.feature.patch_frames
        for f in self.files:
            where = f"entry {f.entry.index} ({f.entry.filepath})"
            out += [f"{where}: {w}" for w in f.warnings]
            if f.n_frames < patch:
                out.append(f"{where}: shorter than one patch ({f.n_frames} < {patch} frames): "
                           "kept, 0 patches")  # fmt: skip
        return out + nyquist_warnings(self.files, self.feature)

    @property
    def pool(self) -> Path:
        """Where the segments of this feature's values are."""
        return pool_dir(self.stores, self.feature_key)


def make_plan(
    dataset: str | os.PathLike,
    feature: str | os.PathLike | Feature,
    stores: str | os.PathLike = "stores",
    audio_root: str | os.PathLike | None = None,
    strict: bool = False,
    threads: int = 8,
    pitch_units: dict[str, str] | None = None,
) -> Plan:
    """Read and validate the pyjama, identify each audio file, and name the store.

    Raises :class:`common.pyjama.PyjamaError` for a bad pyjama (with ``strict``, for any bad
    entry) and :class:`PlanError` with ``strict`` for the first file that cannot be used.
    """
    dataset = Path(dataset).absolute()
    collection = read_pyjama(dataset, audio_root=audio_root, on_error="raise" if strict else "skip")
    feat = feature if isinstance(feature, Feature) else make_feature(feature)
    feature_key = feat.key()
    catalogue = Catalogue(stores)
    probed, failed, changed = _identify(collection.entries, catalogue, strict, threads)
    files = _planned_files(collection, probed, feat, feature_key)
    targets = plan_targets(collection, feat, pitch_units)
    notes, off_grid = _pitch_notes(collection, targets, files, feat, pitch_units or {})
    for f in files:
        f.warnings = annotation_warnings(f.entry, targets, feat, f.duration_s)
        for spec in targets:
            below, above = pitches_off_grid(f.entry, spec)
            if below or above:
                f.warnings.append(
                    f"'{spec.name}': {below} pitch(es) below and {above} above the grid of this "
                    "feature, left out of the target"
                )
    # the annotations as written (hashing the parsed entries again costs more than all the
    # rest of a plan with breakpoint tracks): a file saved with other formatting gets a new
    # view, which costs no computation
    sha1 = hashlib.sha1(dataset.read_bytes()).hexdigest()
    identity = _store_identity(feature_key, sha1, collection, files, targets)
    return Plan(
        dataset,
        collection,
        feat,
        feature_key,
        targets,
        files,
        failed,
        changed,
        Path(stores),
        str(Path(audio_root).absolute()) if audio_root is not None else None,
        identity,
        store_path(stores, collection.name, feat.kind, identity),
        sha1,
        notes,
        off_grid,
    )


def _planned_files(collection, probed: dict, feat: Feature, feature_key: str) -> list:
    """The entries whose audio was identified, with their frame counts and content keys."""
    files = []
    for e in collection.entries:
        if e.index not in probed:
            continue
        path, size, mtime, content, info = probed[e.index]
        n_samples = info.n_samples(feat.sr)
        key = params_hash([feature_key, content])[:32]
        files.append(PlannedFile(e, path, size, mtime, content, info, feat.n_frames(n_samples),
                                 n_samples / feat.sr, key))  # fmt: skip
    return files


def _store_identity(feature_key: str, sha1: str, collection, files, targets) -> str:
    """The id of a view: the feature's key, the format, the annotations and the audio."""
    by_index = {f.entry.index: f.content for f in files}
    return params_hash(
        {
            "feature": feature_key,
            "format": FORMAT_VERSION,
            "pyjama": sha1,
            "audio": [by_index.get(e.index, "missing") for e in collection.entries],
            "targets": [(t.name, t.kind, t.unit) for t in targets],
        }
    )[:16]


def nyquist_warnings(files: list[PlannedFile], feature: Feature) -> list[str]:
    """One line per sample rate whose Nyquist frequency is below the feature's top: those
    files' bins above it hold nothing (the resampler adds no content), with the ``--set`` that
    keeps the feature within their band."""
    top, out = feature.max_hz(), []
    rates = sorted({f.info.orig_sr for f in files if f.info.orig_sr / 2 < top})
    for sr in rates:
        n = sum(f.info.orig_sr == sr for f in files)
        fix = feature.narrower(sr / 2)
        choice = (f"; to keep within their band: precompute run ... "
                  f"{' '.join(f'--set {k}={v:g}' for k, v in fix.items())}" if fix else "")  # fmt: skip
        out.append(
            f"{n} of {len(files)} file(s) recorded at {sr} Hz: this {feature.kind} reaches "
            f"{top:.0f} Hz, above their Nyquist frequency ({sr / 2:.0f} Hz), so its bins there "
            f"are empty for them{choice}"
        )
    return out


def _pitch_notes(collection, targets, files, feature, given) -> tuple[list[str], dict]:
    """How each pitch description's values were read, and how many fall off the feature's
    pitch grid (reported, and stored with the store)."""
    notes, off_grid = [], {}
    for spec in targets:
        if spec.kind != "frame_pitch":
            continue
        descs = [
            e.descriptions[spec.name] for e in collection.entries if spec.name in e.descriptions
        ]
        _, why = pitch_unit(spec.name, collection, numbers_of(descs), given.get(spec.name))
        grid = np.asarray(spec.pitch_midi)
        if why != "the pyjama default":  # said only when it was not the obvious reading
            notes.append(
                f"'{spec.name}': pitches in {'Hz' if spec.unit == 'hz' else 'MIDI'} (from {why}); "
                f"this feature's grid covers MIDI {grid[0]:.1f}-{grid[-1]:.1f}"
            )
        counts = [pitches_off_grid(f.entry, spec) for f in files]
        below, above = sum(c[0] for c in counts), sum(c[1] for c in counts)
        off_grid[spec.name] = {"below": below, "above": above}
        if below or above:
            notes.append(
                f"'{spec.name}': {below} pitch(es) below and {above} above the grid of this "
                f"feature (MIDI {grid[0]:.1f}-{grid[-1]:.1f}) in "
                f"{sum(1 for c in counts if any(c))} file(s): they have no target bin"
            )
    return notes, off_grid


def _identify(
    entries: list[Entry], catalogue: Catalogue, strict: bool, threads: int
) -> tuple[dict[int, tuple], list[dict[str, Any]], list[str]]:
    """Content hash and header of each entry's audio: from the catalogue when the file's size
    and mtime are unchanged, else read (in threads: hashing and header reads are I/O)."""
    paths = {e.index: str(e.audio_path.absolute()) for e in entries}
    known = catalogue.audio(paths.values())
    probed: dict[int, tuple] = {}
    failed: list[dict[str, Any]] = []
    todo = []
    for e in entries:
        p = paths[e.index]
        try:
            st = os.stat(p)
        except OSError:
            st = None
        k = known.get(p)
        if st is not None and k and (k[0], k[1]) == (st.st_size, st.st_mtime_ns):
            probed[e.index] = (Path(p), st.st_size, st.st_mtime_ns, k[2], AudioInfo(**k[3]))
        else:
            todo.append((e, p, st))

    def read(item):
        e, p, st = item
        try:
            if st is None:
                raise AudioError(p, "file not found")
            return e, p, st, content_hash(p), probe_audio(p)
        except AudioError as err:
            return e, p, st, None, err

    remember, changed = [], []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for e, p, st, content, info in pool.map(read, todo):
            if content is None:
                failed.append(
                    {"entry": e.index, "name": e.filepath, "reason": f"{info.path}: {info.reason}"}
                )
                if strict:
                    raise PlanError(f"{info.path}: {info.reason}")
                continue
            if p in known and known[p][2] != content:
                changed.append(p)
            probed[e.index] = (Path(p), st.st_size, st.st_mtime_ns, content, info)
            remember.append((p, st.st_size, st.st_mtime_ns, content, info.to_json()))
    if remember:
        catalogue.remember_audio(remember)
    failed.sort(key=lambda f: f["entry"])
    return probed, failed, changed
