"""The format's constants, its errors, where its files are, and where a frame's bytes are.

Features live in the **pool** and stores are light **views** over it (see :mod:`common.store`).
This module knows names and numbers, not HDF5: the version of the format, what a row's status
means, how a stores folder is laid out, and the one formula that turns a frame of a segment
into a byte offset (:func:`byte_address`).
"""

from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from common.config import ConfigError
from common.errors import DiskFullError, MissingSegmentsError, StoreError
from common.features import feature_args

SEGMENT_FORMAT = 3  # segments of the pool: unchanged since the pool began
FORMAT_VERSION = 4  # views: 4 stores frame-level targets as runs (3 had dense rows)
STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2


class Outcome(NamedTuple):
    """What became of one file's frames in a segment being built: ``status`` (:data:`STATUS_OK`
    or :data:`STATUS_FAILED`), the error when failed, the checksum of its bytes when computed."""

    status: int
    error: str
    checksum: str


CHECKSUM_BYTES = 32  # hex of a 16-byte blake2b digest
SEGMENT_MAX_BYTES = (
    2 << 30
)  # a build starts a new segment past this (compaction, copies stay cheap)
POOL = "pool"

__all__ = [
    "CHECKSUM_BYTES",
    "FORMAT_VERSION",
    "POOL",
    "SEGMENT_FORMAT",
    "SEGMENT_MAX_BYTES",
    "STATUS_FAILED",
    "STATUS_OK",
    "Outcome",
    "STATUS_PENDING",
    "DiskFullError",
    "MissingSegmentsError",
    "SegmentRef",
    "StoreError",
    "byte_address",
    "format_error",
    "pool_dir",
    "rebuild_hint",
    "relative_to",
    "frames_checksum",
    "segment_files",
    "segment_path",
    "store_path",
    "stores_root_of",
    "view_files",
]


def byte_address(features_at, frame, frame_bytes: int):
    """Where frame ``frame`` of a segment's ``/features`` starts, in bytes of the segment file.

    ``features_at`` is the byte offset of the segment's ``/features`` (as HDF5 reports it),
    ``frame_bytes`` the size of one frame ``(C, F)``. Works on ints and on numpy arrays. Every
    reader and writer of rows finds them here: a file's rows are frames ``[first, first + n)``
    of its segment.
    """
    return features_at + frame * frame_bytes


@dataclass
class SegmentRef:
    """A segment as a view refers to it."""

    path: Path  # absolute
    features_at: int
    frames: int


def store_path(
    stores: str | os.PathLike, dataset_name: str, feature_kind: str, identity: str
) -> Path:
    """``STORES/<dataset>/<feature>-<identity>.h5`` (a view)."""
    return Path(stores) / dataset_name / f"{feature_kind}-{identity}.h5"


def pool_dir(stores: str | os.PathLike, feature_key: str) -> Path:
    """``STORES/pool/<feature key>/``: the segments of one feature's values."""
    return Path(stores) / POOL / feature_key


def segment_path(stores: str | os.PathLike, feature_key: str, segment_id: str) -> Path:
    return pool_dir(stores, feature_key) / f"seg-{segment_id}.h5"


def segment_files(stores: str | os.PathLike, feature_key: str | None = None) -> list[Path]:
    """The sealed segments of the pool (of one feature key, or all)."""
    root = Path(stores) / POOL
    pattern = f"{feature_key}/seg-*.h5" if feature_key else "*/seg-*.h5"
    return sorted(root.glob(pattern))


def view_files(stores: str | os.PathLike) -> list[Path]:
    """Every file of the stores folder that looks like a store (views, and older formats)."""
    return sorted(p for p in Path(stores).glob("*/*.h5") if p.parent.name != POOL)


def relative_to(root: str | os.PathLike, path: str | os.PathLike) -> str:
    """``path`` relative to ``root`` (as text with '/'), or absolute when it is not under it."""
    p = Path(os.path.abspath(path))
    try:
        return p.relative_to(Path(os.path.abspath(root))).as_posix()
    except ValueError:
        return str(p)


def stores_root_of(view: str | os.PathLike) -> Path:
    """The stores folder of a view: ``STORES/<dataset>/<view>.h5``."""
    return Path(os.path.abspath(view)).parent.parent


def frames_checksum(frames) -> str:
    """blake2b-128 of a file's frame bytes, as stored in segment and view tables."""
    return hashlib.blake2b(memoryview(frames).cast("B"), digest_size=16).hexdigest()


def rebuild_hint(attrs: dict[str, Any], stores: str | os.PathLike | None = None) -> str:
    """The ``precompute run`` command that builds a view again, from its attributes (its
    feature's values as ``--set`` overrides of the shipped ones)."""
    feature = attrs.get("feature") or {}
    dataset = attrs.get("pyjama") or f"{attrs.get('dataset', 'DATASET')}.pyjama"
    try:
        args = feature_args(feature)
    except (ConfigError, TypeError, AttributeError):  # not a feature this mirpatch knows
        kind = feature.get("kind", "FEATURE") if isinstance(feature, dict) else "FEATURE"
        args = ["--feature", str(kind)]
    cmd = ["precompute", "run", "--dataset", str(dataset), *args]
    if stores is not None:
        cmd += ["--stores", str(stores)]
    if attrs.get("audio_root"):
        cmd += ["--audio-root", str(attrs["audio_root"])]
    return shlex.join(cmd)


def format_error(path: Path, attrs: dict[str, Any]) -> StoreError:
    """What to do with a file that is not a view of this format."""
    version = attrs.get("format_version")
    if version == 3 and attrs.get("role") == "view":
        return StoreError(
            f"{path}: a view of format 3, whose frame-level targets are dense rows; this mirpatch "
            f"reads format {FORMAT_VERSION}. Its features are in the pool: write the view again "
            f"(nothing is recomputed) with: {rebuild_hint(attrs)}"
        )
    if version == 2:
        return StoreError(
            f"{path}: a store of format 2, which copies its features; move them into the pool "
            f"(no recomputation) with: precompute migrate {stores_root_of(path)}"
        )
    return StoreError(
        f"{path}: store format {version}, this mirpatch reads format {FORMAT_VERSION}; "
        f"delete it and rebuild with: {rebuild_hint(attrs)}"
    )
