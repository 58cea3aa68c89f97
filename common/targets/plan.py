"""From a collection's descriptions to targets: which kind each becomes, and their arrays.

| description                     | target kind    | array                                  |
| ------------------------------- | -------------- | -------------------------------------- |
| global text, one atom per entry | class          | int32 (n_files,), -1 = none            |
| global text, several atoms      | multilabel     | uint8 (n_files, n_labels)              |
| global numeric named work-id    | work           | int32 (n_files,), index into work ids  |
| other global numeric            | value          | float32 (n_files,), NaN = none         |
| segment text                    | frame_class    | int32 (n_frames,), -1 = none           |
| marker                          | frame_events   | uint8 (n_frames, n_labels or 1)        |
| numeric pitch segment/breakpoint| frame_pitch    | uint8 (n_frames, n_pitch_bins)         |
| other numeric breakpoint/segment| frame_value    | float32 (n_frames, n_dims), NaN = none |

Frame-level targets are read as these dense rows, and stored in a view as runs
(:mod:`common.targets.runs`).

Each row of the table is a kind of its own module (see :mod:`common.targets.base`). Targets
are stored in the smallest dtype that holds them (uint8 for multi-hot), never float64.
"""

from __future__ import annotations

import numpy as np

from common.pyjama import BREAKPOINT_EXTENTS

from .base import KINDS, Description, TargetSpec


def plan_targets(collection, feature, units: dict[str, str] | None = None) -> list[TargetSpec]:
    """One :class:`TargetSpec` per description (the first kind, in order, that takes it),
    vocabularies from the definitions and all entries; ``units``: pitch units given by the
    user, by description name."""
    units = units or {}
    kinds = sorted(KINDS.values(), key=lambda k: k.order)
    specs = []
    for name in collection.description_names():
        definition = collection.definitions[name]
        descs = [e.descriptions[name] for e in collection.entries if name in e.descriptions]
        if not descs:
            continue
        text, glob = descs[0].content == "text", descs[0].extent == "global"
        # the values themselves are for labels and work ids; numbers go by column (pitch_unit)
        values = [v for d in descs for v in d.values() if v is not None] if text or glob else []
        vocab: list[str] = []
        if text:
            vocab = list(definition.dictionary or [])
            vocab += sorted({str(v) for v in values} - set(vocab))
        d = Description(name, descs[0].extent, descs[0].content, definition, descs, values,
                        vocab, collection, feature, units.get(name))  # fmt: skip
        spec = next((s for s in (k.plan(d) for k in kinds) if s is not None), None)
        if spec is not None:
            specs.append(spec)
    return specs


def file_targets(entries: list, specs: list[TargetSpec]) -> dict[str, np.ndarray]:
    """Per-file targets, one row per entry in the order given."""
    return {s.name: s.kind_class.encode_files(s, entries) for s in specs if not s.frame_level}


def frame_runs(entry, specs: list[TargetSpec], feature, n_frames: int) -> dict:
    """Frame-level targets of one file on the feature's frame grid, as
    :class:`~common.targets.runs.Runs` counted from the file's first frame."""
    times = feature.frame_times(n_frames)
    frame_s = feature.hop_length / feature.sr
    out = {}
    for spec in specs:
        if spec.frame_level:
            d = entry.descriptions.get(spec.name)
            out[spec.name] = spec.kind_class.encode_runs(spec, d, times, frame_s)
    return out


def annotation_points(entries: list, specs: list[TargetSpec]) -> int:
    """How many annotated points the frame-level targets of ``entries`` have (a segment or a
    marker is one, a breakpoint track one per time and row): what a view's runs are bounded by."""
    n = 0
    for spec in specs:
        if not spec.frame_level:
            continue
        for e in entries:
            d = e.descriptions.get(spec.name)
            if d is None:
                continue
            if d.extent in BREAKPOINT_EXTENTS:
                n += sum(len(a.time) * max(1, len(a.value)) for a in d.atoms)
            else:
                n += len(d)
    return n


def annotated(entries: list, specs: list[TargetSpec]) -> dict[str, np.ndarray]:
    """Per target, which entries carry its description at all (uint8 (n_files,)): an entry
    without it has no label, which is not the same as an empty one."""
    return {
        s.name: np.array([s.name in e.descriptions for e in entries], dtype=np.uint8) for s in specs
    }


def annotation_warnings(entry, specs: list[TargetSpec], feature, duration_s: float) -> list[str]:
    """Frame-level annotations that end past the audio (they are clipped), per description."""
    frame_s = feature.hop_length / feature.sr
    out = []
    for spec in specs:
        d = entry.descriptions.get(spec.name) if spec.frame_level else None
        if d is None:
            continue
        if d.extent in BREAKPOINT_EXTENTS:
            ends = np.array([max(a.time) for a in d.atoms], np.float64)
        else:
            ends = np.nan_to_num(d.column("time")) + np.nan_to_num(d.column("duration"))
        late = int((ends > duration_s + frame_s).sum())
        if late:
            out.append(
                f"'{spec.name}': {late} annotation(s) end past the audio ({duration_s:.2f} s), clipped"
            )
    return out
