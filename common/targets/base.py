"""What a target is (:class:`TargetSpec`), and the registry of target kinds.

A kind is one class, registered by name, that says everything the project does with targets of
that kind: which pyjama descriptions it takes (:meth:`TargetKind.plan`), how they are encoded
(one row per file, or one row per feature frame), the dtype and shape of a row, the output size a
model needs, and which files count as labelled. A new kind is one module in this package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .runs import MAX_RUN


@dataclass
class TargetSpec:
    """How one pyjama description becomes a target array."""

    name: str
    kind: str
    vocabulary: list[str] = field(default_factory=list)  # labels, work ids, or row names
    pitch_midi: list[float] = field(default_factory=list)  # frame_pitch: MIDI of each bin
    unit: str = ""  # frame_pitch: "midi" or "hz"

    @property
    def kind_class(self) -> TargetKind:
        return kind_of(self.kind)

    @property
    def frame_level(self) -> bool:
        return self.kind_class.frame_level

    def row_layout(self) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of one row: a file's, or a frame's for frame-level kinds."""
        return self.kind_class.row_layout(self)

    def row_bytes(self) -> int:
        shape, dtype = self.row_layout()
        return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    @property
    def n_out(self) -> int:
        """The output size a model needs for this target (classes, labels or pitch bins)."""
        return self.kind_class.n_out(self)

    def to_attrs(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vocabulary": json.dumps(self.vocabulary),
            "pitch_midi": json.dumps(self.pitch_midi),
            "unit": self.unit,
        }

    @classmethod
    def from_attrs(cls, name: str, attrs: Any) -> TargetSpec:
        return cls(
            name,
            str(attrs["kind"]),
            json.loads(attrs["vocabulary"]),
            json.loads(attrs["pitch_midi"]),
            str(attrs["unit"]),
        )


@dataclass
class Description:
    """One pyjama description over the whole collection, as the kinds see it when planning."""

    name: str
    extent: str  # of its first occurrence
    content: str
    definition: Any  # common.pyjama.Definition
    descs: list  # the entries' common.pyjama.Description of it
    values: list  # every atom's value, of text and global descriptions
    vocabulary: list[str]  # text: the definition's labels, then the others seen, sorted
    collection: Any  # common.pyjama.Collection
    feature: Any  # common.features.Feature
    unit: str | None  # the pitch unit the user gave for it, if any


class TargetKind:
    """One kind of target. Subclasses declare their name, whether they have one row per frame,
    where they stand in the order descriptions are matched (``order``, low first), and
    implement :meth:`plan`, :meth:`row_layout` and the encoding of their family
    (:class:`FileKind` or :class:`FrameKind`)."""

    name: ClassVar[str]
    frame_level: ClassVar[bool] = False
    order: ClassVar[int] = 100

    @classmethod
    def plan(cls, d: Description) -> TargetSpec | None:
        """The target this kind makes of description ``d``, or None when ``d`` is not its."""
        raise NotImplementedError

    @classmethod
    def row_layout(cls, spec: TargetSpec) -> tuple[tuple[int, ...], np.dtype]:
        raise NotImplementedError

    @classmethod
    def n_out(cls, spec: TargetSpec) -> int:
        return len(spec.vocabulary) or 1

    @classmethod
    def item_dtype(cls, spec: TargetSpec) -> np.dtype:
        """The dtype a Dataset hands the target out in (class indices as int64, which
        ``torch.nn.functional.cross_entropy`` takes; the rest as stored)."""
        return cls.row_layout(spec)[1]

    @classmethod
    def labelled(cls, spec: TargetSpec, values: np.ndarray | None) -> np.ndarray | bool:
        """Which files carry a usable label, beyond carrying the description at all
        (``values``: the per-file targets; None for frame-level kinds)."""
        return True


class FileKind(TargetKind):
    """One row per file."""

    @classmethod
    def encode_files(cls, spec: TargetSpec, entries: list) -> np.ndarray:
        """The rows of ``entries`` (common.pyjama.Entry), in their order."""
        raise NotImplementedError


class FrameKind(TargetKind):
    """One row per feature frame, stored as runs (:mod:`common.targets.runs`): the view's size
    follows the annotations, and readers get dense rows back (:meth:`decode`)."""

    frame_level = True
    order = 200

    @classmethod
    def encode_runs(cls, spec: TargetSpec, d, times: np.ndarray, frame_s: float):
        """The :class:`~common.targets.runs.Runs` of one file (frames counted from its first)
        from its description ``d`` (a :class:`common.pyjama.Description`; None when the file
        does not carry it), on the frame times ``times`` (seconds)."""
        raise NotImplementedError

    @classmethod
    def runs_of_dense(cls, spec: TargetSpec, rows: np.ndarray):
        """The runs of dense rows ``(n_frames, ...)`` (stores of older formats)."""
        raise NotImplementedError

    @classmethod
    def value_layout(cls, spec: TargetSpec) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of one run's value: a bin or class (int32), or a row of numbers."""
        return (), np.dtype("<i4")

    @classmethod
    def decode(
        cls, spec: TargetSpec, runs, addrs, n: int, out: np.ndarray | None = None,
        longest: int = MAX_RUN,
    ):  # fmt: skip
        """Dense rows ``(len(addrs), n, *row shape)`` of the windows ``[a, a + n)`` of the
        frames, from ``runs`` (start, length, value arrays, sorted by start); into ``out``
        when given; no run is longer than ``longest`` frames."""
        raise NotImplementedError


KINDS: dict[str, type[TargetKind]] = {}


def register(cls: type[TargetKind]) -> type[TargetKind]:
    KINDS[cls.name] = cls
    return cls


def kind_of(name: str) -> type[TargetKind]:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(
            f"unknown target kind {name!r}; known: {', '.join(sorted(KINDS))}"
        ) from None
