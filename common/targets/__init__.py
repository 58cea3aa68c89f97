"""Targets: what a model learns from each pyjama description, one registered class per kind.

    specs = plan_targets(collection, feature)        # which kind each description becomes
    per_file = file_targets(entries, specs)          # class, multilabel, value, work
    per_frame = frame_runs(entry, specs, feature, n_frames)  # frame_* kinds, as runs

A kind says how it is encoded, its row's dtype and shape, the model's output size
(:attr:`TargetSpec.n_out`) and which files are labelled; the store lays its rows out in a view
(:mod:`common.store`), training reads them back (:mod:`train.data`).
"""

from __future__ import annotations

from . import (  # noqa: F401 - each registers its kind
    frame_class,
    frame_events,
    frame_pitch,
    frame_value,
    label,
    multilabel,
    value,
    work,
)
from .base import KINDS, Description, FileKind, FrameKind, TargetKind, TargetSpec, kind_of
from .pitch import PITCH_UNITS, midi_of, numbers_of, pitch_bins, pitch_unit, pitches_off_grid
from .plan import (
    annotated,
    annotation_points,
    annotation_warnings,
    file_targets,
    frame_runs,
    plan_targets,
)
from .runs import MAX_RUN, Runs

__all__ = [
    "KINDS",
    "MAX_RUN",
    "PITCH_UNITS",
    "Description",
    "FileKind",
    "FrameKind",
    "Runs",
    "TargetKind",
    "TargetSpec",
    "annotated",
    "annotation_points",
    "annotation_warnings",
    "file_targets",
    "frame_runs",
    "kind_of",
    "midi_of",
    "numbers_of",
    "pitch_bins",
    "pitch_unit",
    "pitches_off_grid",
    "plan_targets",
]
