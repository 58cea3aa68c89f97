"""``value``: one number per file (a global numeric description): float32 ``(n_files,)``, NaN
for a file without one."""

from __future__ import annotations

import numpy as np

from .base import Description, FileKind, TargetSpec, register


@register
class Value(FileKind):
    name = "value"
    order = 20

    @classmethod
    def plan(cls, d: Description) -> TargetSpec | None:
        ok = d.extent == "global" and d.content == "numeric"
        return TargetSpec(d.name, cls.name) if ok else None

    @classmethod
    def row_layout(cls, spec: TargetSpec) -> tuple[tuple[int, ...], np.dtype]:
        return (), np.dtype("<f4")

    @classmethod
    def n_out(cls, spec: TargetSpec) -> int:
        return 1

    @classmethod
    def encode_files(cls, spec: TargetSpec, entries: list) -> np.ndarray:
        arr = np.full(len(entries), np.nan, dtype=np.float32)
        for i, e in enumerate(entries):
            d = e.descriptions.get(spec.name)
            if d:
                arr[i] = d.atoms[0].value
        return arr
