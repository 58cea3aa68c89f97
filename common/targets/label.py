"""``class``: one label per file among several (genre, dance type): int32 ``(n_files,)``, -1
for a file without one."""

from __future__ import annotations

import numpy as np

from .base import Description, FileKind, TargetSpec, register


@register
class Label(FileKind):
    name = "class"
    order = 40  # a global description that no kind before took

    @classmethod
    def plan(cls, d: Description) -> TargetSpec | None:
        return TargetSpec(d.name, cls.name, d.vocabulary) if d.extent == "global" else None

    @classmethod
    def row_layout(cls, spec: TargetSpec) -> tuple[tuple[int, ...], np.dtype]:
        return (), np.dtype("<i4")

    @classmethod
    def item_dtype(cls, spec: TargetSpec) -> np.dtype:
        return np.dtype("int64")  # stored as int32; handed out as cross_entropy takes them

    @classmethod
    def labelled(cls, spec: TargetSpec, values: np.ndarray | None) -> np.ndarray | bool:
        return values >= 0

    @classmethod
    def encode_files(cls, spec: TargetSpec, entries: list) -> np.ndarray:
        index = {v: i for i, v in enumerate(spec.vocabulary)}
        arr = np.full(len(entries), -1, dtype=np.int32)
        for i, e in enumerate(entries):
            d = e.descriptions.get(spec.name)
            if d:
                arr[i] = index[str(d.atoms[0].value)]
        return arr
