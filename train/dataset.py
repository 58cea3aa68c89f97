"""A ``torch.utils.data.Dataset`` over a precomputed store (a view over the feature pool),
read lazily.

``idx`` addresses a patch, a file or a work (``unit``). A patch is one contiguous byte range of
one segment of the pool (:meth:`StoreDataset.byte_ranges` says which); each process opens the
segments it needs once, lazily (never an h5py handle carried across fork, never pickled), so
memory does not grow with the store, the number of files or of segments. Index tables are
loaded once as numpy arrays. Batches are read with one ``pread`` per patch straight into the
batch block (see :mod:`train.views`). While a StoreDataset lives, it holds a shared lock on its
view and segments, so that ``precompute gc`` leaves them alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.catalogue import touch
from common.features import Feature, make_feature
from common.holds import hold
from common.patches import patch_index
from common.store import StoreError, read_file_targets, read_tables
from common.targets import TargetSpec

from .batches import PatchBatch, collate_padded, collate_patches
from .errors import DatasetError
from .experiment import Experiment, load_experiment
from .find import find_store
from .lending import Lender
from .splits import SPLITS, assign_folds, assign_splits, file_splits, stable_fraction
from .targets import FrameTargetRows
from .views import Rows

__all__ = [
    "DatasetError",
    "PatchBatch",
    "StoreDataset",
    "assign_folds",
    "assign_splits",
    "collate_padded",
    "collate_patches",
    "feature_mismatch",
    "stable_fraction",
]


def feature_mismatch(store_params: dict, wanted: dict) -> list[str]:
    keys = sorted(set(store_params) | set(wanted))
    return [
        f"{k}: store {store_params.get(k)!r}, asked {wanted.get(k)!r}"
        for k in keys
        if store_params.get(k) != wanted.get(k)
    ]


class StoreDataset(torch.utils.data.Dataset):
    """Patches, files or works of a store, with their targets.

    Parameters
    ----------
    store : path of a ``.h5`` store made by ``precompute run``
    unit : ``"patch"`` (item: ``X`` (C, F, L) or (1, samples) for waveform, and ``y``; patch
        ``i`` is frame ``patch_start[i]`` of file ``patch_file[i]``), ``"file"`` (all patches of a file, ``X`` (n_patches, C, F, L); or the
        whole feature (C, F, T) with ``whole_file=True``), or ``"work"`` (``versions``
        excerpts of one work, ``X`` (versions, C, F, L), plus ``work``). ``X`` is a view of
        the store in its dtype (float32, or float16), mapped copy-on-write: writing to an item
        changes what this process reads there later (as with any in-memory dataset that hands
        out views), never the file; ``.clone()`` an item to change it on its own
    target : name of a target of the store (a pyjama description), or None. ``y``: a class
        or work index int64 (as ``cross_entropy`` takes it), multi-hot uint8 (labels,), a value
        float32, frame-level pitch or events uint8 (bins, L), frame classes int64 (L,) (-1: no
        segment). :attr:`classes` names the labels.
    split : ``"train"``, ``"valid"``, ``"test"`` or None (all files)
    patch_frames, patch_hop : patch length and hop; default the store's. Other values
        re-derive the patch index from the frame counts, no feature is recomputed.
    split_seed, split_fractions : the hash split (default 80/10/10)
    split_key : a per-file text target of the store naming each file's split
        (``train``/``valid``/``test``), for datasets that ship their own
    split_by : ``"auto"`` (by group when there is one, else by work when the store has a work
        target, else by file), ``"file"``, ``"work"`` or ``"group"``
    split_group : a per-file label whose files are kept in one split and fold (default: the
        label ``group``, as ``precompute import folder --group-by`` writes it, if any)
    folds, fold : K-fold cross-validation (see :func:`train.splits.assign_folds`): fold
        ``fold`` of ``folds`` is the test split, validation comes from the other folds at the
        share ``split_fractions`` gives it; None: the fractional split
    feature : the feature parameters the experiment expects; a store made with others
        fails here, naming the differences
    versions : versions per item for ``unit="work"``
    seed : seed of the random choices of ``unit="work"`` (versions and excerpt starts);
        call :meth:`set_epoch` to vary them per epoch
    pin_memory : batches stacked in this process go to pinned memory (for a GPU)
    """

    def __init__(
        self,
        store: str | os.PathLike,
        unit: str = "patch",
        target: str | None = None,
        split: str | None = None,
        patch_frames: int | None = None,
        patch_hop: int | None = None,
        split_seed: int = 0,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        split_key: str | None = None,
        split_by: str = "auto",
        folds: int | None = None,
        fold: int | None = None,
        split_group: str | None = None,
        feature: dict | Feature | None = None,
        whole_file: bool = False,
        versions: int = 2,
        seed: int = 0,
        pin_memory: bool = False,
    ):
        self.path = Path(store)
        try:
            t = read_tables(self.path)
        except StoreError as e:
            raise DatasetError(str(e)) from None
        self.tables = t
        if unit not in ("patch", "file", "work"):
            raise DatasetError(f"unit must be 'patch', 'file' or 'work', got {unit!r}")
        if split not in (None, *SPLITS):
            raise DatasetError(f"split must be one of {', '.join(SPLITS)} or None, got {split!r}")
        self.feature = self._feature(feature)
        self.unit, self.split, self.whole_file = unit, split, whole_file
        self.versions, self.seed, self.epoch = versions, seed, 0
        self.target, self.spec = target, self._spec_of(target)
        default = self.feature
        self.patch_frames = int(patch_frames or default.patch_frames)
        self.patch_hop = int(
            patch_hop
            or (default.patch_hop if patch_frames is None else max(1, self.patch_frames // 2))
        )
        pf, ps = patch_index(t.n_frames, self.patch_frames, self.patch_hop)

        # per-file targets and work ids: small, loaded once (rows of the computed files)
        file_target_names = [n for n, s in t.targets.items() if not s.frame_level]
        self.file_targets = {
            n: v[t.rows] for n, v in read_file_targets(self.path, file_target_names).items()
        }
        work_names = [n for n, s in t.targets.items() if s.kind == "work"]
        self.work_name = work_names[0] if work_names else None
        self.file_work = self.file_targets[self.work_name] if self.work_name else None

        # a file without a label for the target is in no split: it would train on "-1" or on
        # "nothing sounds" where nothing was annotated
        self.labelled = self._labelled()
        self.unlabelled = int((~self.labelled).sum())
        self.folds, self.fold = folds, fold
        if split_group is None and "group" in t.targets and t.targets["group"].kind == "class":
            split_group = "group"  # as `precompute import folder --group-by` names it
        self.split_group = split_group
        self.file_split = file_splits(t, self.file_targets, self.work_name, self.labelled,
                                      split_key, split_seed, split_fractions, split_by, folds,
                                      fold, split_group)  # fmt: skip
        in_split = (
            np.ones(t.n_files, bool) if split is None else self.file_split == SPLITS.index(split)
        )
        in_split &= self.labelled
        self.files = np.nonzero(in_split)[0]
        keep = in_split[pf]
        self.patch_file, self.patch_start = pf[keep], ps[keep]
        self.file_patch_bounds = np.searchsorted(pf, np.arange(t.n_files + 1))
        self._all_patch_start = ps
        if unit == "work":
            self._index_works()
        self._prepare_reading(pin_memory)

    def _spec_of(self, target: str | None) -> TargetSpec | None:
        targets = self.tables.targets
        if target is not None and target not in targets:
            raise DatasetError(f"{self.path} has no target {target!r}; it has: "
                               f"{', '.join(sorted(targets)) or 'none'}")  # fmt: skip
        return None if target is None else targets[target]

    def _prepare_reading(self, pin_memory: bool) -> None:
        """Where the rows are, found once (workers read them without h5py), the shared locks
        that keep gc away, and the per-file target as a tensor."""
        self.pin_memory = pin_memory
        t, spec, target = self.tables, self.spec, self.target
        holds = [hold(self.path), *(hold(s.path) for s in t.segments)]
        if any(h is None for h in holds):  # removed between reading the tables and now
            raise DatasetError(f"{self.path}: the store or one of its segments was just removed; "
                               "open it again")  # fmt: skip
        self._holds = holds
        touch(self.path)
        parts = [(s.path, s.features_at, s.frames) for s in t.segments]
        self.features = Rows(parts, t.frame_shape, t.dtype, self.feature.view_layout, pin_memory)
        seg_start = self.features.starts[:-1]
        # each file's first row as an address over all segments
        self.file_row = (seg_start[t.segment] + t.first).astype(np.int64) if t.n_files else t.first
        self.target_rows: FrameTargetRows | None = None
        if spec is not None and spec.frame_level:
            self.target_rows = FrameTargetRows(self.path, spec, pin_memory)
        self._file_target: torch.Tensor | None = (
            torch.from_numpy(self.file_targets[target].astype(spec.kind_class.item_dtype(spec)))
            if spec is not None and not spec.frame_level
            else None
        )
        self._file_target_list: list[torch.Tensor] | None = None

    def _feature(self, wanted: dict | Feature | None) -> Feature:
        """The store's feature; with the patch length and hop of ``wanted``, whose values must
        be the store's."""
        stored = self.tables.feature
        if wanted is None:
            return make_feature(stored)
        wanted = wanted if isinstance(wanted, Feature) else make_feature(wanted)
        diffs = feature_mismatch(stored, wanted.value_params())
        if diffs:
            raise DatasetError(
                f"{self.path} was computed with other feature parameters than asked: {'; '.join(diffs)}"
            )
        return make_feature(
            {**stored, "patch_frames": wanted.patch_frames, "patch_hop": wanted.patch_hop}
        )

    def _index_works(self) -> None:
        """The works of the split with at least two versions, and their files."""
        if self.file_work is None:
            raise DatasetError(f"unit='work' needs a work-id target; {self.path} has none")
        works, counts = np.unique(self.file_work[self.files], return_counts=True)
        valid = works[(counts >= 2) & (works >= 0)]
        vocab = self.tables.targets[self.work_name].vocabulary
        self.left_out_works = [vocab[w] for w in works[(counts < 2) & (works >= 0)]]
        self.works = valid
        self.work_files = {int(w): self.files[self.file_work[self.files] == w] for w in valid}

    def _labelled(self) -> np.ndarray:
        """Files that carry a label for the target (all files when there is no target)."""
        t = self.tables
        if self.spec is None:
            return np.ones(t.n_files, bool)
        values = self.file_targets.get(self.target)
        return t.annotated[self.target].astype(bool) & self.spec.kind_class.labelled(
            self.spec, values
        )

    # -- where the bytes are -----------------------------------------------------------
    def byte_ranges(self, indices: Sequence[int]) -> list[tuple[Path, int, int]]:
        """``(segment path, byte offset, nbytes)`` of the features of each patch ``indices``
        (unit ``patch``): what a batch of them reads, for a prefetcher or a cache of one's own."""
        idx = np.asarray(indices, dtype=np.int64)
        addrs = self.file_row[self.patch_file[idx]] + self.patch_start[idx]
        return [(Path(p), o, n) for p, o, n in self.features.byte_ranges(addrs, self.patch_frames)]

    def patch_blocks(self, block_mb: float = 64) -> np.ndarray:
        """A block id per patch: patches whose bytes lie in the same ``block_mb`` MB of the same
        segment share one (the unit of shuffling by blocks, see :class:`EpochSampler`)."""
        t = self.tables
        seg = t.segment[self.patch_file].astype(np.int64)
        row = t.first[self.patch_file] + self.patch_start
        region = (row * t.frame_bytes) // max(1, int(block_mb * 2**20))
        _, ids = np.unique(np.stack([seg, region]), axis=1, return_inverse=True)
        return ids.ravel()

    def __getstate__(self) -> dict[str, Any]:
        # a spawned worker holds no locks: this process holds them for as long as it lives
        return {**self.__dict__, "_holds": [], "_file_target_list": None}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # -- sizes ------------------------------------------------------------------
    def __len__(self) -> int:
        if self.unit == "patch":
            return len(self.patch_file)
        if self.unit == "file":
            return len(self.files)
        return len(self.works)

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one patch's ``X``, as a model sees it."""
        return tuple(self.feature.view_layout(self.patch_frames)[0])

    @property
    def classes(self) -> list[str]:
        """What the target's indices name: its labels (classes, tags, work ids, chords), or
        the MIDI pitch of each bin of a pitch target; empty for numbers or no target."""
        s = self.spec
        if s is None:
            return []
        return list(s.vocabulary) or [f"{m:g}" for m in s.pitch_midi]

    vocabulary = classes

    @classmethod
    def from_experiment(
        cls,
        experiment: str | os.PathLike | Experiment,
        split: str | None = "test",
        unit: str = "patch",
        overrides: Sequence[str] = (),
        **kw: Any,
    ) -> StoreDataset:
        """The ``split`` of an experiment YAML (or :class:`Experiment`), exactly as ``train
        run`` splits it: its store (found in the catalogue), target, patch length and hop,
        split settings and folds. ``overrides``: ``--set`` values; ``kw``: other arguments of
        :class:`StoreDataset` (``whole_file``, ``pin_memory``)."""
        cfg = experiment if isinstance(experiment, Experiment) else load_experiment(
            experiment, list(overrides))  # fmt: skip
        d, feature = cfg.dataset, make_feature(cfg.feature)
        store = find_store(d.pyjama, feature, d.stores, d.audio_root, cfg.feature_file)
        args = {"unit": unit, "target": cfg.target.name, "split": split,
                "patch_frames": cfg.patch.frames, "patch_hop": cfg.patch.hop,
                "split_seed": d.split_seed, "split_fractions": d.split_fractions,
                "split_key": d.split_key, "folds": d.folds, "fold": d.fold,
                "split_group": d.split_group, "feature": feature,
                "versions": cfg.train.versions_per_work, "seed": cfg.train.seed}  # fmt: skip
        return cls(store, **{**args, **kw})

    @property
    def n_out(self) -> int | None:
        """Output size a model needs for the target: classes, labels or pitch bins."""
        return None if self.spec is None else self.spec.n_out

    # -- reading ------------------------------------------------------------------
    def patches(self, files: np.ndarray, starts: np.ndarray) -> list[dict[str, Any]]:
        """Patches ``(file, start)`` as items: views of the store, nothing read yet."""
        L = self.patch_frames
        X = self.features.batch_items((self.file_row[files] + starts).tolist(), L)
        if self.spec is None:
            return [{"X": x} for x in X]
        if self.target_rows is not None:
            Y = self.target_rows.batch_items((self.tables.offset[files] + starts).tolist(), L)
        else:
            per_file = self._file_target_rows()
            Y = [per_file[f] for f in files.tolist()]
        return [{"X": x, "y": y} for x, y in zip(X, Y)]

    def _file_target_rows(self) -> list[torch.Tensor]:
        """One tensor per file of its per-file target (made once per process)."""
        if self._file_target_list is None:
            self._file_target_list = list(self._file_target.unbind(0))
        return self._file_target_list

    def batch(
        self, files: np.ndarray, starts: np.ndarray, lender: Lender | None = None
    ) -> dict[str, torch.Tensor]:
        """Patches ``(file, start)`` stacked: ``X (B, *item_shape)`` and ``y``, each one
        time-major block seen in the model's layout, as stacking their items would give; in
        blocks of ``lender`` (a DataLoader worker's) when it has one free."""
        L = self.patch_frames
        out = {"X": _lent(self.features, self.file_row[files] + starts, L, lender)}
        if self.spec is not None:
            out["y"] = (
                _lent(self.target_rows, self.tables.offset[files] + starts, L, lender)
                if self.target_rows is not None
                else self._file_target[torch.from_numpy(np.asarray(files, np.int64))]
            )
        return out

    def file_rows(self, name: str, files: np.ndarray) -> list[np.ndarray]:
        """Whole files' time-major rows of the ``"features"`` or of the frame-level
        ``"target"``, each read into an array of its own."""
        t = self.tables
        if name == "features":
            return [self.features.read(int(self.file_row[f]), int(t.n_frames[f])) for f in files]
        if self.target_rows is None or name != "target":
            raise DatasetError(f"{self.path}: no frame-level target {name!r} in this Dataset")
        return [self.target_rows.read(int(t.offset[f]), int(t.n_frames[f])) for f in files]

    def __getitem__(self, idx: int | tuple[int, int]) -> dict[str, Any]:
        epoch = self.epoch
        if isinstance(idx, tuple):  # (index, epoch) from an EpochSampler(with_epoch=True)
            idx, epoch = idx
        if self.unit == "patch":
            f, s = self.patch_file[[idx]], self.patch_start[[idx]]
            self.features.prefetch(int(self.file_row[f[0]] + s[0]), self.patch_frames)
            return self.patches(f, s)[0]
        if self.unit == "file":
            return self._file_item(int(self.files[idx]))
        return self._work_item(idx, epoch)

    def __getitems__(self, indices: Sequence[int]) -> Sequence[dict[str, Any]]:
        """A batch of items in one call; for patches a :class:`PatchBatch`, whose items are
        made only if a collate function asks for them."""
        if self.unit != "patch":
            return [self[i] for i in indices]
        if indices and isinstance(indices[0], tuple):  # (index, epoch) pairs
            indices = [i[0] for i in indices]
        idx = np.asarray(indices, dtype=np.int64)
        return PatchBatch(self, self.patch_file[idx], self.patch_start[idx])

    def _file_item(self, f: int) -> dict[str, Any]:
        """A file's patches (or its whole feature), read once into memory of its own."""
        t = self.tables
        a, o, n = int(self.file_row[f]), int(t.offset[f]), int(t.n_frames[f])
        if self.whole_file:
            item = {"X": self.features.windows(a, 1, n, n)[0], "file": f, "n_frames": n}
            if self.spec is not None:
                item["y"] = (
                    self.target_rows.windows(o, 1, n, n)[0]
                    if self.target_rows is not None
                    else self._file_target[f]
                )
            return item
        lo, hi = self.file_patch_bounds[f], self.file_patch_bounds[f + 1]
        starts = self._all_patch_start[lo:hi]
        count, L, hop = len(starts), self.patch_frames, self.patch_hop
        item = {
            "X": self.features.windows(a, count, hop, L),
            "file": f,
            "start": torch.from_numpy(starts.copy()),
        }
        if self.spec is not None:
            item["y"] = (
                self.target_rows.windows(o, count, hop, L)
                if self.target_rows is not None
                else self._file_target[f]
            )
        return item

    def _work_item(self, idx: int, epoch: int) -> dict[str, Any]:
        w = int(self.works[idx])
        files = self.work_files[w]
        rng = np.random.default_rng([self.seed, epoch, idx])
        chosen = rng.choice(files, size=self.versions, replace=len(files) < self.versions)
        L = self.patch_frames
        n = self.tables.n_frames[chosen]
        starts = np.array([rng.integers(0, max(1, m - L + 1)) for m in n])
        if self.split != "train":  # evaluation sees the centre of each version
            starts = np.maximum(0, (n - L) // 2)
        length = min(L, int(n.min()))
        X = self.features.batch(self.file_row[chosen] + starts, length, pooled=False)
        if length < L:  # a version shorter than one excerpt: zero-padded, masked
            X = torch.nn.functional.pad(X, (0, L - length))
        mask = torch.zeros(self.versions, L, dtype=torch.bool)
        mask[:, :length] = True
        return {
            "X": X,
            "work": w,
            "files": torch.from_numpy(chosen.astype(np.int64)),
            "starts": torch.from_numpy(starts.astype(np.int64)),
            "mask": mask,
        }


def _lent(rows: Rows | FrameTargetRows, addrs, length: int, lender: Lender | None) -> torch.Tensor:
    """A batch of ``rows``, in a block of ``lender``'s when it has one free."""
    taken = lender.take(len(addrs) * length * rows.row_elems, rows.dtype) if lender else None
    if taken is None:
        return rows.batch(addrs, length)
    block, slot = taken
    return lender.lend(rows.batch(addrs, length, out=block), slot)
