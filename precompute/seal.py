"""Seal: a finished segment gets its status and checksums, is flushed, renamed, and registered.

Sealing is the only step that makes rows visible, and it happens once per segment, after every
row of it is on disk: a segment under its final name is whole, and the catalogue learns of it
only then (a run killed between the rename and the registration leaves a sealed segment that
the next run's :meth:`Catalogue.sync_pool` registers).
"""

from __future__ import annotations

import shutil

import numpy as np

from common.catalogue import Catalogue
from common.holds import Hold, adopt
from common.store import STATUS_FAILED, StoreError, seal_segment

from .layout import SegmentBuild


def seal(build: SegmentBuild, catalogue: Catalogue) -> Hold | None:
    """Seal and register a segment whose rows are all done; returns a hold on it (None when
    none of its files could be computed: then nothing is kept)."""
    missing = build.todo()
    if missing:
        raise StoreError(f"{len(missing)} file(s) of {build.final.name} were not computed")
    build.flush()
    build.close()
    status = np.array([build.done[i].status for i in range(len(build.keys))], dtype=np.uint8)
    if (status == STATUS_FAILED).all():
        discard(build)
        return None
    checksums = [build.done[i].checksum for i in range(len(build.keys))]
    # held from before it has its name until the view refers to it: gc cannot take it meanwhile
    held = adopt(build.final, seal_segment(build.layout, status, checksums, build.final))
    catalogue.register_segment(build.final)
    shutil.rmtree(build.parts, ignore_errors=True)
    return held


def discard(build: SegmentBuild) -> None:
    build.close()
    build.partial.unlink(missing_ok=True)
    shutil.rmtree(build.parts, ignore_errors=True)
