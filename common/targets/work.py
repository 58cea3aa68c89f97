"""``work``: which work a recording is a version of (cover-song identification): int32
``(n_files,)``, an index into the work ids (natural order), -1 for none. Files of one work are
kept in one split."""

from __future__ import annotations

from .base import Description, TargetSpec, register
from .label import Label

WORK_NAMES = {"work-id", "work_id", "workid", "work"}


def _natural(s: str):
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


@register
class Work(Label):
    name = "work"
    order = 10  # a global description named as a work id, before any other reading of it

    @classmethod
    def plan(cls, d: Description) -> TargetSpec | None:
        if d.extent != "global" or d.name.lower() not in WORK_NAMES:
            return None
        return TargetSpec(d.name, cls.name, sorted({str(v) for v in d.values}, key=_natural))
