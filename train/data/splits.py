"""Which split each file is in: by a hash of its key (file, or work where there are works), by
K folds, or by a label of the pyjama naming it. A split is stable when files are added (a
file's hash never moves), and the files of one work are always on one side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from ..errors import DatasetError
from .settings import DataSettings

SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "dev": "valid",
    "test": "test",
    "testing": "test",
    "eval": "test",
}


def stable_fraction(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``key`` and ``seed`` alone (adding files never moves others)."""
    h = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign_splits(keys: Sequence[str], fractions: Sequence[float], seed: int) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) of each key, by a hash of the key."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DatasetError(
            f"split fractions must be 3 non-negative numbers adding to 1, got {list(fractions)}"
        )
    edges = np.cumsum(fractions)[:2]
    u = np.array([stable_fraction(k, seed) for k in keys])
    return np.searchsorted(edges, u, side="right").astype(np.int8)


def assign_folds(
    keys: Sequence[str], folds: int, fold: int, fractions: Sequence[float], seed: int
) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) of each key for fold ``fold`` of ``folds``.

    The distinct keys (works, or files where there are none), ordered by a hash of
    ``(seed, key)``, are dealt into ``folds`` folds in turn: every key is in exactly one fold,
    fold sizes differ by one at most, and fold ``fold`` is the test split. Of the other folds'
    keys, ``fractions[1] / (fractions[0] + fractions[1])`` (at least one key) are the
    validation split, chosen by a second hash: validation never sees the test keys.
    """
    if folds < 2 or not 0 <= fold < folds:
        raise DatasetError(f"fold must be in 0..folds-1 with folds >= 2, got {fold} of {folds}")
    keys = np.asarray(keys, dtype=object)
    uniq = np.array(sorted(set(keys.tolist())), dtype=object)
    if len(uniq) < folds:
        raise DatasetError(f"{folds} folds need at least {folds} works or files, got {len(uniq)}")
    order = sorted(range(len(uniq)), key=lambda i: stable_fraction(uniq[i], seed))
    key_fold = np.empty(len(uniq), np.int64)
    key_fold[order] = np.arange(len(uniq)) % folds
    split = np.where(key_fold == fold, 2, 0).astype(np.int8)
    rest = sorted(np.flatnonzero(key_fold != fold), key=lambda i: stable_fraction(uniq[i], ~seed))
    tv = fractions[0] + fractions[1]
    share = fractions[1] / tv if tv > 0 else 0.0
    n_valid = max(1, round(share * len(rest))) if share > 0 else 0
    split[rest[:n_valid]] = 1
    return split[np.searchsorted(uniq, keys)]


def file_splits(
    tables,
    file_targets: dict[str, np.ndarray],
    work_name: str | None,
    labelled: np.ndarray,
    settings: DataSettings,
) -> np.ndarray:
    """Split index of every file of a view (0 train, 1 valid, 2 test, -1 none), as
    ``settings`` says: from the per-file label ``split_key``, from fold ``fold`` of ``folds``
    (of the ``labelled`` files), or by hash at ``split_fractions``. By group: the files of a
    work (``work_name``) or of a group (``split_group``, a per-file label) always fall on one
    side; ``split_by``: ``auto`` (a group if one is given, else works if there are, else files),
    ``work``, ``group`` or ``file``."""
    s = settings
    if (s.folds is None) != (s.fold is None):
        raise DatasetError(f"give both folds and fold, got {s.folds} and {s.fold}")
    if s.split_key is not None and s.folds is not None:
        raise DatasetError(
            f"split key {s.split_key!r} names each file's split; folds would replace it"
        )
    if s.split_key is not None:
        if s.train_works is not None:
            raise DatasetError(f"split key {s.split_key!r} names each file's split; "
                               "train_works cuts only splits made by hash or by folds")  # fmt: skip
        return _named_splits(tables, file_targets, s.split_key)
    keys = _split_keys(tables, file_targets, work_name, s.split_group, s.split_by)
    if s.folds is not None:
        split = np.full(len(keys), -1, np.int8)
        if labelled.any():  # folds of the files the target can use
            split[labelled] = assign_folds([k for k, ok in zip(keys, labelled) if ok], s.folds,
                                           s.fold, s.split_fractions, s.split_seed)  # fmt: skip
    else:
        split = assign_splits(keys, s.split_fractions, s.split_seed)
    if s.train_works is not None:
        split = first_train_keys(split, keys, s.train_works, s.split_seed, labelled)
    return split


def first_train_keys(
    split: np.ndarray, keys: Sequence[str], n: int, seed: int, labelled: np.ndarray | None = None
) -> np.ndarray:
    """``split`` with only the first ``n`` keys (works, groups or files) of its training split
    left in it, in the order of a hash of ``(seed, key)`` of their own (the first 100 are
    among the first 200); the others, and training files without the target
    (``labelled``), in no split."""
    ok = np.ones(len(keys), bool) if labelled is None else np.asarray(labelled, bool)
    train = sorted({k for k, sp, good in zip(keys, split, ok) if sp == 0 and good},
                   key=lambda k: stable_fraction(k, seed + 7919))  # fmt: skip
    if not 0 < n <= len(train):
        raise DatasetError(f"train_works must be 1 to {len(train)} (the training split's works, "
                           f"groups or files), got {n}")  # fmt: skip
    keep = set(train[:n])
    dropped = np.array([sp == 0 and (k not in keep or not good)
                        for k, sp, good in zip(keys, split, ok)], dtype=bool)  # fmt: skip
    return np.where(dropped, -1, split).astype(np.int8)


def _split_keys(tables, file_targets, work_name, group_name, split_by) -> list[str]:
    """What is split: each file's work, group, or the file itself."""
    if split_by == "work" and work_name is None:
        raise DatasetError(f"split_by='work' but {tables.path} has no work-id target")
    if split_by == "group" and group_name is None:
        raise DatasetError("split_by='group' but no group is given (dataset.split_group)")
    keys = [f"file:{n}" for n in tables.names]
    by = (
        split_by
        if split_by != "auto"
        else "group"
        if group_name
        else "work"
        if work_name
        else "file"
    )
    name = {"work": work_name, "group": group_name}.get(by)
    if name is None:
        return keys
    if name not in file_targets or tables.targets[name].kind not in ("class", "work"):
        labels = ", ".join(n for n, s in tables.targets.items() if s.kind == "class") or "none"
        raise DatasetError(f"split group {name!r} is not a per-file label of {tables.path}; "
                           f"labels: {labels}")  # fmt: skip
    vocab = tables.targets[name].vocabulary
    return [f"{by}:{vocab[g]}" if g >= 0 else k for g, k in zip(file_targets[name], keys)]


def _named_splits(tables, file_targets: dict[str, np.ndarray], split_key: str) -> np.ndarray:
    """Splits from a per-file text label whose values are train/valid/test (or aliases)."""
    t = tables
    if split_key not in file_targets or t.targets[split_key].kind != "class":
        labels = ", ".join(n for n, s in t.targets.items() if s.kind == "class") or "none"
        raise DatasetError(
            f"split key {split_key!r} is not a per-file label of {t.path}; labels: {labels}"
        )
    vocab = t.targets[split_key].vocabulary
    unknown = [v for v in vocab if v.lower() not in _SPLIT_ALIASES]
    if unknown:
        raise DatasetError(f"split key {split_key!r}: values {unknown} are not train/valid/test")
    codes = np.array([SPLITS.index(_SPLIT_ALIASES[v.lower()]) for v in vocab], dtype=np.int8)
    labels = file_targets[split_key]
    return np.where(labels >= 0, codes[np.maximum(labels, 0)], -1).astype(np.int8)
