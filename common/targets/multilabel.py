"""``multilabel``: several labels per file (tags; a global text description with several atoms
in some entry): multi-hot uint8 ``(n_files, n_labels)``."""

from __future__ import annotations

import numpy as np

from .base import Description, FileKind, TargetSpec, register


@register
class Multilabel(FileKind):
    name = "multilabel"
    order = 30

    @classmethod
    def plan(cls, d: Description) -> TargetSpec | None:
        several = max(len(x) for x in d.descs) > 1
        return (
            TargetSpec(d.name, cls.name, d.vocabulary) if d.extent == "global" and several else None
        )

    @classmethod
    def row_layout(cls, spec: TargetSpec) -> tuple[tuple[int, ...], np.dtype]:
        return (len(spec.vocabulary),), np.dtype("u1")

    @classmethod
    def encode_files(cls, spec: TargetSpec, entries: list) -> np.ndarray:
        index = {v: i for i, v in enumerate(spec.vocabulary)}
        arr = np.zeros((len(entries), len(spec.vocabulary)), dtype=np.uint8)
        for i, e in enumerate(entries):
            d = e.descriptions.get(spec.name)
            for a in d.atoms if d else ():
                arr[i, index[str(a.value)]] = 1
        return arr
