"""Register: write the view of a plan over the pool, and record it in the catalogue.

The view is the only file a label edit, a renamed or removed file, or a new split writes: the
files table (where each file's rows are in the pool), the targets, the vocabularies and the
attributes. It is written under a temporary name, flushed and renamed. When rows must be
computed, the view is drafted (all but where its rows are) while the workers start, and
finished once the new segments are sealed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.catalogue import Catalogue
from common.store import (
    STATUS_OK,
    SegmentRef,
    ViewFiles,
    draft_view,
    finish_view,
    view_target_bytes,
)
from common.targets import annotated, annotation_points, file_targets, frame_runs

from .compute import library_versions
from .layout import RowPlan
from .plan import Plan


def view_bytes(plan: Plan) -> int:
    """About what the view of ``plan`` takes on disk (its tables and targets)."""
    entries = [f.entry for f in plan.files]
    return view_target_bytes(plan.targets, len(entries), annotation_points(entries, plan.targets))


def locate(plan: Plan, rows: RowPlan) -> tuple[list[int], list[SegmentRef], dict, list[dict]]:
    """The files that have rows (plan indices), the segments they are in, each file's
    ``(segment, first, checksum)``, and the files that failed."""
    segments: dict[Path, int] = {}
    refs: list[SegmentRef] = []
    where: dict[int, tuple[int, int, str]] = {}
    failed = list(plan.failed)

    def seg_index(ref: SegmentRef) -> int:
        if ref.path not in segments:
            segments[ref.path] = len(refs)
            refs.append(ref)
        return segments[ref.path]

    for i, f in enumerate(plan.files):
        src = rows.reused.get(i)
        if src is not None:
            s = seg_index(SegmentRef(src.segment, src.features_at, src.frames))
            where[i] = (s, src.first, src.checksum)
            continue
        b, r = rows.place[i]
        build = rows.builds[b]
        status, error, checksum = build.done[r]
        if status != STATUS_OK:
            failed.append({"entry": f.entry.index, "name": f.entry.filepath, "reason": error})
            continue
        lay = build.layout
        s = seg_index(SegmentRef(build.final, lay.features_at, lay.total_frames))
        where[i] = (s, int(lay.first[r]), checksum)
    ok = [i for i in range(len(plan.files)) if i in where]
    return ok, refs, where, sorted(failed, key=lambda d: d["entry"])


def _table(plan: Plan, ok: list[int], where: dict) -> ViewFiles:
    files = [plan.files[i] for i in ok]
    return ViewFiles(
        name=[f.entry.filepath for f in files],
        entry=np.array([f.entry.index for f in files], np.int32),
        segment=np.array([where[i][0] for i in ok] if where else [0] * len(ok), np.int32),
        first=np.array([where[i][1] for i in ok] if where else [0] * len(ok), np.int64),
        n_frames=np.array([f.n_frames for f in files], np.int64),
        duration_s=np.array([f.duration_s for f in files], np.float64),
        orig_sr=np.array([f.info.orig_sr for f in files], np.int32),
        content=[f.content for f in files],
        key=[f.key for f in files],
        checksum=[where[i][2] for i in ok] if where else [""] * len(ok),
    )


def draft(plan: Plan, ok: list[int] | None = None) -> Path:
    """The view of ``plan`` but where its rows are (for every planned file, unless ``ok``):
    written while the missing rows are computed."""
    ok = list(range(len(plan.files))) if ok is None else ok
    entries = [plan.files[i].entry for i in ok]
    n_frames = [plan.files[i].n_frames for i in ok]
    feat = plan.feature
    return draft_view(
        plan.store_path,
        _table(plan, ok, {}),
        plan.targets,
        file_targets(entries, plan.targets),
        lambda k: frame_runs(entries[k], plan.targets, feat, n_frames[k]),
        view_attrs(plan, list(plan.failed)),
        annotated(entries, plan.targets),
    )


def register_view(
    plan: Plan, rows: RowPlan, catalogue: Catalogue, drafted: Path | None = None
) -> list[dict]:
    """Write the view of ``plan`` (finishing ``drafted``, when every planned file got its rows)
    and record it; returns the files that failed."""
    ok, refs, where, failed = locate(plan, rows)
    if drafted is not None and len(ok) != len(plan.files):  # a file failed: drafted without it
        drafted.unlink(missing_ok=True)
        drafted = None
    if drafted is None:
        drafted = draft(plan, ok)
    feat = plan.feature
    finish_view(drafted, plan.store_path, _table(plan, ok, where), refs, feat.frame_shape,
                np.dtype(feat.store_dtype), {"failed": failed})  # fmt: skip
    catalogue.register_view(plan.store_path)
    return failed


def view_attrs(plan: Plan, failed: list[dict]) -> dict:
    return {
        "dataset": plan.collection.name,
        "pyjama": str(plan.dataset),
        "pyjama_sha1": plan.pyjama_sha1,
        "audio_root": plan.audio_root or "",
        "feature": plan.feature.value_params(),
        "feature_key": plan.feature_key,
        "store_id": plan.store_id,
        "versions": library_versions(),
        "skipped": [str(p) for p in plan.collection.problems],
        "failed": failed,
        "warnings": plan.warnings,
        "notes": plan.notes,
        "off_grid": plan.off_grid,
    }
