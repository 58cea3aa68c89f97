"""``StoreDataset``: a ``torch.utils.data.Dataset`` over a precomputed store (a view over the
feature pool), read lazily.

``idx`` addresses a patch, a file or a work (``unit``). A patch is one contiguous byte range of
one segment of the pool (:meth:`StoreDataset.byte_ranges` says which); each process opens the
segments it needs once, lazily (never an h5py handle carried across fork, never pickled), so
memory does not grow with the store, the number of files or of segments. Index tables are
loaded once as numpy arrays. A batch (``__getitems__``) is read into one block of memory with
one ``pread`` per patch, its targets decoded beside it (:mod:`train.data.batches`). While a
StoreDataset lives, it holds a shared lock on its view and segments, so that ``precompute gc``
leaves them alone.
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
from common.remote import RemoteError, cache_root, is_url, view_at
from common.store import StoreError, read_file_targets, read_tables
from common.targets import TargetSpec

from ..errors import DatasetError
from .batches import BLOCKS, Items, aligned, block_array, carve
from .find import find_store
from .read import Frames
from .remote import RemoteFrames, RowCache
from .settings import DataSettings, cache_limit, stream_block_bytes
from .splits import SPLITS, file_splits
from .targets import FrameTargets


class StoreDataset(torch.utils.data.Dataset):
    """Patches, files or works of a store, with their targets.

    Parameters
    ----------
    store : path of a ``.h5`` store (a view) made by ``precompute run``
    split : ``"train"``, ``"valid"``, ``"test"`` or None (all files)
    settings : :class:`~train.data.DataSettings`; any of its fields may be given as keywords
        instead (or as well): ``StoreDataset(store, split="train", target="genre")``. Those
        read here:

        - ``unit``: ``"patch"`` (item: ``X`` (C, F, L) or (1, samples) for waveform, and
          ``y``; patch ``i`` is frame ``patch_start[i]`` of file ``patch_file[i]``),
          ``"file"`` (all patches of a file, ``X`` (n_patches, C, F, L); or the whole feature
          (C, F, T) with ``whole_file=True``), or ``"work"`` (``versions_per_work`` excerpts
          of one work, ``X`` (versions, C, F, L), plus ``work``). ``X`` is in the store's dtype
          (float32, or float16). A single item (``ds[i]``) is a window of a copy-on-write map
          of the store: writing to it changes what this process reads there later, never the
          file; ``.clone()`` an item to change it on its own;
        - ``target``: a target of the store (a pyjama description), or None. ``y``: a class or
          work index int64 (as ``cross_entropy`` takes it), multi-hot uint8 (labels,), a value
          float32, frame-level pitch or events uint8 (bins, L), frame classes int64 (L,) (-1:
          no segment). :attr:`classes` names the labels;
        - ``patch_frames``, ``patch_hop``: default the store's; others re-derive the patch
          index from the frame counts, nothing is recomputed;
        - the splits (``split_seed``, ``split_fractions``, ``split_key``, ``split_by``,
          ``split_group``, ``folds``, ``fold``: :func:`train.data.splits.file_splits`); a
          ``group`` label of the store (``precompute import folder --group-by``) keeps its
          files in one split by default;
        - ``feature``: the feature the experiment expects; a store made with other values
          fails here, naming the differences;
        - ``versions_per_work``, ``seed``: for ``unit="work"``, the versions and excerpt
          starts drawn per item (vary them per epoch with :meth:`set_epoch`);
        - ``pin_memory``: batches made in this process in pinned memory (default: when a CUDA
          device is there).
    whole_file : with ``unit="file"``, each file's whole feature instead of its patches
    """

    def __init__(
        self,
        store: str | os.PathLike,
        split: str | None = None,
        *,
        settings: DataSettings | None = None,
        whole_file: bool = False,
        **settings_kw: Any,
    ):
        s = (settings or DataSettings()).replace(**settings_kw)
        self.url, self.remote = None, None
        try:
            if is_url(store):  # a view of a remote stores folder: its tables from a local copy
                self.url = str(store)
                self.remote, rel = view_at(self.url)
                self.path = self.remote.mirror(rel, s.cache_dir)
            else:
                self.path = Path(store)
            t = read_tables(self.path, missing_ok=self.remote is not None)
        except (StoreError, RemoteError) as e:
            raise DatasetError(str(e)) from None
        self.tables = t
        if split not in (None, *SPLITS):
            raise DatasetError(f"split must be one of {', '.join(SPLITS)} or None, got {split!r}")
        self.feature = self._feature(s.feature)
        if s.split_group is None and "group" in t.targets and t.targets["group"].kind == "class":
            s = s.replace(split_group="group")  # as `precompute import folder --group-by` names it
        self.settings = s
        self.unit, self.split, self.whole_file = s.unit, split, whole_file
        self.versions, self.seed, self.epoch = s.versions_per_work, s.seed, 0
        self.target, self.spec = s.target, self._spec_of(s.target)
        self.patch_frames = int(s.patch_frames or self.feature.patch_frames)
        self.patch_hop = int(
            s.patch_hop
            or (
                self.feature.patch_hop if s.patch_frames is None else max(1, self.patch_frames // 2)
            )
        )
        pf, ps = patch_index(t.n_frames, self.patch_frames, self.patch_hop)

        # per-file targets and work ids: small, loaded once (rows of the computed files)
        file_target_names = [n for n, spec in t.targets.items() if not spec.frame_level]
        self.file_targets = {
            n: v[t.rows] for n, v in read_file_targets(self.path, file_target_names).items()
        }
        work_names = [n for n, spec in t.targets.items() if spec.kind == "work"]
        self.work_name = work_names[0] if work_names else None
        self.file_work = self.file_targets[self.work_name] if self.work_name else None

        # a file without a label for the target is in no split: it would train on "-1" or on
        # "nothing sounds" where nothing was annotated
        self.labelled = self._labelled()
        self.unlabelled = int((~self.labelled).sum())
        self.folds, self.fold, self.split_group = s.folds, s.fold, s.split_group
        self.file_split = file_splits(t, self.file_targets, self.work_name, self.labelled, s)
        in_split = (
            np.ones(t.n_files, bool) if split is None else self.file_split == SPLITS.index(split)
        )
        in_split &= self.labelled
        self.files = np.nonzero(in_split)[0]
        keep = in_split[pf]
        self.patch_file, self.patch_start = pf[keep], ps[keep]
        self.file_patch_bounds = np.searchsorted(pf, np.arange(t.n_files + 1))
        self._all_patch_start = ps
        if self.unit == "work":
            self._index_works()
        self.pin_memory = torch.cuda.is_available() if s.pin_memory is None else s.pin_memory
        self._prepare_reading()

    def _spec_of(self, target: str | None) -> TargetSpec | None:
        targets = self.tables.targets
        if target is not None and target not in targets:
            raise DatasetError(f"{self.path} has no target {target!r}; it has: "
                               f"{', '.join(sorted(targets)) or 'none'}")  # fmt: skip
        return None if target is None else targets[target]

    def _prepare_reading(self) -> None:
        """Where the frames are, found once (workers read them without h5py), the shared locks
        that keep gc away, and the per-file target as a tensor."""
        t, spec, target = self.tables, self.spec, self.target
        segments = [] if self.remote else t.segments  # a remote store's are not on this disk
        holds = [hold(self.path), *(hold(s.path) for s in segments)]
        if any(h is None for h in holds):  # removed between reading the tables and now
            raise DatasetError(f"{self.path}: the store or one of its segments was just removed; "
                               "open it again")  # fmt: skip
        self._holds = holds
        touch(self.path)
        if self.remote is not None:
            s = self.settings
            cache = RowCache(cache_root(s.cache_dir), cache_limit(s.cache_gb))
            # streamed by blocks of whole files (stream_blocks): the cache keeps room for a
            # draw of them and one more block, the rest for the rows that stay
            self.stream_block = stream_block_bytes(s, cache.limit)
            largest = int(t.n_frames.max()) * t.frame_bytes if t.n_files else 0
            reserve = (s.shuffle_blocks_per_draw + 1) * max(self.stream_block, largest)
            self.features = RemoteFrames(
                self.remote, t, self.feature.patch_layout, cache, min(reserve, cache.limit // 2)
            )
        else:
            parts = [(s.path, s.features_at, s.frames) for s in t.segments]
            self.features = Frames(parts, t.frame_shape, t.dtype, self.feature.patch_layout)
        seg_start = self.features.starts[:-1]
        if isinstance(self.features, RemoteFrames):  # a miss fetches more of this split's files
            self.features.fetch_ahead(self.features.rows_of(
                seg_start[t.segment[self.files]] + t.first[self.files]))  # fmt: skip
        # each file's first frame as an address over all segments
        self.file_frame = (
            (seg_start[t.segment] + t.first).astype(np.int64) if t.n_files else t.first
        )
        self.frame_targets: FrameTargets | None = None
        if spec is not None and spec.frame_level:
            self.frame_targets = FrameTargets(self.path, spec)
        self._file_target: torch.Tensor | None = (
            torch.from_numpy(self.file_targets[target].astype(spec.kind_class.item_dtype(spec)))
            if spec is not None and not spec.frame_level
            else None
        )

    def _feature(self, wanted: dict | Feature | None) -> Feature:
        """The store's feature; with the patch length and hop of ``wanted``, whose values must
        be the store's."""
        stored = self.tables.feature
        if wanted is None:
            return make_feature(stored)
        wanted = wanted if isinstance(wanted, Feature) else make_feature(wanted)
        asked = wanted.value_params()
        diffs = [f"{k}: store {stored.get(k)!r}, asked {asked.get(k)!r}"
                 for k in sorted(set(stored) | set(asked)) if stored.get(k) != asked.get(k)]  # fmt: skip
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
        addrs = self.file_frame[self.patch_file[idx]] + self.patch_start[idx]
        return [(Path(p), o, n) for p, o, n in self.features.byte_ranges(addrs, self.patch_frames)]

    def patch_blocks(self, block_mb: float = 64) -> np.ndarray:
        """A block id per patch: patches whose bytes lie in the same ``block_mb`` MB of the same
        segment share one (the unit of shuffling by blocks, see :class:`EpochSampler`)."""
        t = self.tables
        seg = t.segment[self.patch_file].astype(np.int64)
        frame = t.first[self.patch_file] + self.patch_start
        region = (frame * t.frame_bytes) // max(1, int(block_mb * 2**20))
        _, ids = np.unique(np.stack([seg, region]), axis=1, return_inverse=True)
        return ids.ravel()

    def stream_blocks(self) -> np.ndarray:
        """For a remote store larger than its cache: a block id per patch, -1 for the patches
        of rows the cache keeps (spread over the epoch), else blocks of whole files of about
        ``shuffle_block_mb`` MB (default: 1/128 of the cache, at most 16 MB) in the store's
        order, read ``shuffle_blocks_per_draw`` at a time (:class:`EpochSampler`): each streamed file is fetched once per epoch."""
        f = self.features
        if not isinstance(f, RemoteFrames):
            raise DatasetError(f"{self.path}: stream_blocks is for remote stores")
        rows = f.rows_of(self.file_frame[self.patch_file] + self.patch_start)
        sizes = f.row_frames * f.frame_bytes
        block = (np.cumsum(sizes) - sizes) // self.stream_block
        ids = block[rows].astype(np.int64)
        ids[f.resident[rows]] = -1
        return ids

    def __getstate__(self) -> dict[str, Any]:
        # a spawned worker holds no locks: this process holds them for as long as it lives
        return {**self.__dict__, "_holds": []}

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
        return tuple(self.feature.patch_layout(self.patch_frames)[0])

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
        experiment: Any,
        split: str | None = "test",
        overrides: Sequence[str] = (),
        whole_file: bool = False,
        **settings_kw: Any,
    ) -> StoreDataset:
        """The ``split`` of an experiment (a YAML path, or a loaded
        :class:`~train.experiment.Experiment`), exactly as ``train run`` splits it: its store
        (found in the catalogue), target, patch length and hop, split settings and folds.
        ``overrides``: ``--set`` values; ``settings_kw``: other data settings (``unit``,
        ``pin_memory``)."""
        cfg = experiment
        if isinstance(experiment, (str, os.PathLike)):  # read as `train run` reads it
            from ..experiment import load_experiment

            cfg = load_experiment(experiment, list(overrides))
        settings = DataSettings.from_experiment(cfg).replace(**settings_kw)
        feature = make_feature(settings.feature)
        store = find_store(settings.dataset, feature, settings.stores, settings.audio_root,
                           settings.feature_file)  # fmt: skip
        return cls(store, split, settings=settings.replace(feature=feature), whole_file=whole_file)

    @property
    def n_out(self) -> int | None:
        """Output size a model needs for the target: classes, labels or pitch bins."""
        return None if self.spec is None else self.spec.n_out

    # -- reading ------------------------------------------------------------------
    def batch(self, files: np.ndarray, starts: np.ndarray) -> dict[str, torch.Tensor]:
        """Patches ``(file, start)`` as one batch: ``X (B, *item_shape)`` and ``y``, each one
        time-major part of one block of memory (:mod:`train.data.batches`) seen in the model's
        layout, the features read and the targets decoded into it, as stacking the items would
        give them."""
        B, L, fr = len(files), self.patch_frames, self.features
        x_shape, x_strides = fr.layout(L)
        x_bytes = aligned(B * L * fr.frame_bytes)
        y_dtype, y_shape = None, ()
        if self.frame_targets is not None:
            tg = self.frame_targets
            y_dtype, y_shape = tg.dtype, (B, L, *tg.frame_shape)
        elif self._file_target is not None:
            y_dtype, y_shape = self._file_target.numpy().dtype, (B, *self._file_target.shape[1:])
        y_bytes = 0 if y_dtype is None else int(np.prod(y_shape)) * y_dtype.itemsize
        block = BLOCKS.take(x_bytes + y_bytes, self.pin_memory)
        fr.gather(
            self.file_frame[files] + starts,
            L,
            block_array(block, 0, fr.dtype, (B, L, *fr.frame_shape)),
        )
        out = {"X": carve(block, 0, _torch(fr.dtype), (B, *x_shape),
                          (L * fr.frame_elems, *x_strides))}  # fmt: skip
        if y_dtype is None:
            return out
        ys = block_array(block, x_bytes, y_dtype, y_shape)
        if self.frame_targets is not None:
            tg.decode(self.tables.offset[files] + starts, L, ys)
            shape, strides = tg.layout(L)
            out["y"] = carve(block, x_bytes, _torch(y_dtype), (B, *shape),
                             (L * tg.frame_elems, *strides))  # fmt: skip
        else:
            np.take(self._file_target.numpy(), files, axis=0, out=ys)
            out["y"] = carve(block, x_bytes, _torch(y_dtype), y_shape,
                             tuple(st // y_dtype.itemsize for st in ys.strides))  # fmt: skip
        return out

    def file_frames(self, name: str, files: np.ndarray) -> list[np.ndarray]:
        """Whole files' time-major frames of the ``"features"`` or of the frame-level
        ``"target"``, each read into an array of its own."""
        t = self.tables
        if name == "features":
            return [self.features.read(int(self.file_frame[f]), int(t.n_frames[f])) for f in files]
        if self.frame_targets is None or name != "target":
            raise DatasetError(f"{self.path}: no frame-level target {name!r} in this Dataset")
        return [self.frame_targets.read(int(t.offset[f]), int(t.n_frames[f])) for f in files]

    def __getitem__(self, idx: int | tuple[int, int]) -> dict[str, Any]:
        epoch = self.epoch
        if isinstance(idx, tuple):  # (index, epoch) from an EpochSampler(with_epoch=True)
            idx, epoch = idx
        if self.unit == "patch":
            return self._patch_item(int(idx))
        if self.unit == "file":
            return self._file_item(int(self.files[idx]))
        return self._work_item(idx, epoch)

    def __getitems__(self, indices: Sequence[int]) -> Sequence[dict[str, Any]]:
        """A batch of items in one call; for patches the batch read once (:meth:`batch`),
        handed to the collate function as :class:`~train.data.batches.Items`."""
        if self.unit != "patch":
            return [self[i] for i in indices]
        if indices and isinstance(indices[0], tuple):  # (index, epoch) pairs
            indices = [i[0] for i in indices]
        idx = np.asarray(indices, dtype=np.int64)
        return Items(self.batch(self.patch_file[idx], self.patch_start[idx]))

    def _patch_item(self, i: int) -> dict[str, Any]:
        """One patch: a window of the map (nothing read until touched; its bytes asked of the
        kernel now), and its target."""
        f, start, L = int(self.patch_file[i]), int(self.patch_start[i]), self.patch_frames
        addr = int(self.file_frame[f]) + start
        self.features.prefetch(addr, L)
        item = {"X": self.features.item(addr, L)}
        if self.frame_targets is not None:
            tg = self.frame_targets
            shape, strides = tg.layout(L)
            y = torch.from_numpy(tg.read(int(self.tables.offset[f]) + start, L))
            item["y"] = y.as_strided(shape, strides, 0)
        elif self._file_target is not None:
            item["y"] = self._file_target[f]
        return item

    def _file_item(self, f: int) -> dict[str, Any]:
        """A file's patches (or its whole feature), read once into memory of its own."""
        t = self.tables
        a, o, n = int(self.file_frame[f]), int(t.offset[f]), int(t.n_frames[f])
        if self.whole_file:
            item = {"X": self.features.windows(a, 1, n, n)[0], "file": f, "n_frames": n}
            if self.spec is not None:
                item["y"] = (
                    self.frame_targets.windows(o, 1, n, n)[0]
                    if self.frame_targets is not None
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
                self.frame_targets.windows(o, count, hop, L)
                if self.frame_targets is not None
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
        X = self.features.read_many(self.file_frame[chosen] + starts, length)
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


def _torch(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
