"""Which store an experiment reads: found in the catalogue by its pyjama and feature values,
or the ``precompute run`` command that makes it (pasted as it is, it makes exactly that store)."""

from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

from common.catalogue import Catalogue, touch
from common.features import Feature, feature_args
from common.remote import Remote, RemoteError

from ..errors import DatasetError


def find_store(
    dataset: str | os.PathLike,
    feature: Feature,
    stores: str | os.PathLike,
    audio_root: str | os.PathLike | None = None,
    feature_file: str | os.PathLike | None = None,
) -> Path:
    """The store ``precompute run`` built for this pyjama and feature, found in the catalogue.

    The pyjama is not parsed: its sha1 must be the one the store was built from, else the
    store is out of date and the error gives the command that updates it. ``feature_file``:
    where the feature's parameters came from (the command says it, with the values that
    differ as ``--set``).
    """
    dataset = Path(dataset).absolute()
    cmd = precompute_command(dataset, feature, stores, audio_root, feature_file)
    if not dataset.is_file():
        raise DatasetError(f"dataset.pyjama: {dataset} does not exist")
    root = str(Path(audio_root).absolute()) if audio_root is not None else None
    catalogue = Catalogue(stores)
    found = catalogue.find_store(dataset, feature.key(), root)
    sha1 = hashlib.sha1(dataset.read_bytes()).hexdigest()
    for rec in found:
        if rec.pyjama_sha1 == sha1:
            touch(rec.path)
            return rec.path
    if found:
        raise DatasetError(
            f"{dataset.name} has changed since its {feature.kind} store was built "
            f"({found[0].path}); update it with:\n  {cmd}"
        )
    others = [
        r for r in catalogue.views() if r.pyjama == str(dataset) and r.feature_kind == feature.kind
    ]
    hint = (
        f" ({len(others)} {feature.kind} store(s) of it exist with other feature values or library versions)"
        if others
        else ""
    )
    raise DatasetError(
        f"no {feature.kind} store of {dataset.name} in {stores}{hint}; make it with:\n  {cmd}"
    )


def find_remote_store(
    dataset: str | os.PathLike,
    feature: Feature,
    stores: str,
    cache_dir: str | os.PathLike | None = None,
    feature_file: str | os.PathLike | None = None,
) -> str:
    """The URL of the view of this pyjama (its sha1) and feature in the remote stores folder
    ``stores``, found by the same hashes as a local one (its views are listed, and copied into
    the cache to read their attributes: a view is small)."""
    dataset = Path(dataset).absolute()
    cmd = precompute_command(dataset, feature, stores, None, feature_file)
    if not dataset.is_file():
        raise DatasetError(f"dataset.pyjama: {dataset} does not exist")
    try:
        url, stale = Remote(stores).find_view(dataset, feature.key(), feature.kind, cache_dir)
    except RemoteError as e:
        raise DatasetError(str(e)) from None
    if url:
        return url
    if stale:
        raise DatasetError(
            f"{dataset.name} has changed since its {feature.kind} store was built ({stale}); "
            f"update it with:\n  {cmd}"
        )
    raise DatasetError(
        f"no {feature.kind} store of {dataset.name} in {stores}; make it with:\n  {cmd}"
    )


def precompute_command(
    dataset: str | os.PathLike,
    feature: Feature,
    stores: str | os.PathLike,
    audio_root: str | os.PathLike | None = None,
    feature_file: str | os.PathLike | None = None,
) -> str:
    """``precompute run ...`` that makes the store of this dataset with exactly these feature
    values (``--feature FILE`` or the kind, and ``--set`` for every value that differs)."""
    parts = ["precompute", "run", "--dataset", str(dataset),
             *feature_args(feature, feature_file), "--stores", str(stores)]  # fmt: skip
    if audio_root:
        parts += ["--audio-root", str(audio_root)]
    return shlex.join(parts)
