"""A ``torch.utils.data.Dataset`` over a precomputed store, read lazily and memory-mapped.

``idx`` addresses a patch, a file or a work (``unit``). The store's time-major
feature dataset is mapped with ``numpy.memmap`` in each process that reads it
(never an h5py handle carried across fork, never pickled), so a patch is one
contiguous byte range and memory does not grow with the store. Index tables are
loaded once as numpy arrays.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.features import Feature, make_feature
from common.store import (
    StoreError,
    TargetSpec,
    memmap_dataset,
    patch_index,
    read_file_targets,
    read_tables,
)

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


class DatasetError(ValueError):
    """A Dataset asked for something the store cannot give; the message names both."""


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
    unit : ``"patch"`` (item: ``X`` (C, F, L) or (1, samples) for waveform, ``y``, ``file``,
        ``start``), ``"file"`` (all patches of a file stacked, ``X`` (n_patches, C, F, L); or the
        whole feature (C, F, T) with ``whole_file=True``), or ``"work"`` (``versions``
        excerpts of one work, ``X`` (versions, C, F, L), plus ``work``)
    target : name of a target of the store (a pyjama description), or None
    split : ``"train"``, ``"valid"``, ``"test"`` or None (all files)
    patch_frames, hop_frames : patch length and hop; default the store's. Other values
        re-derive the patch index from the frame counts, no feature is recomputed.
    split_seed, split_fractions : the hash split (default 80/10/10)
    split_key : a per-file text target of the store naming each file's split
        (``train``/``valid``/``test``), for datasets that ship their own
    split_by : ``"auto"`` (by work when the store has a work target, else by file),
        ``"file"`` or ``"work"``
    feature : the feature parameters the experiment expects; a store made with others
        fails here, naming the differences
    versions : versions per item for ``unit="work"``
    seed : seed of the random choices of ``unit="work"`` (versions and excerpt starts);
        call :meth:`set_epoch` to vary them per epoch
    """

    def __init__(
        self,
        store: str | os.PathLike,
        unit: str = "patch",
        target: str | None = None,
        split: str | None = None,
        patch_frames: int | None = None,
        hop_frames: int | None = None,
        split_seed: int = 0,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        split_key: str | None = None,
        split_by: str = "auto",
        feature: dict | Feature | None = None,
        whole_file: bool = False,
        versions: int = 2,
        seed: int = 0,
    ):
        self.path = Path(store)
        try:
            t = read_tables(self.path)
        except StoreError as e:
            raise DatasetError(str(e)) from None
        self.tables = t
        self.feature = make_feature(t.feature)
        if unit not in ("patch", "file", "work"):
            raise DatasetError(f"unit must be 'patch', 'file' or 'work', got {unit!r}")
        if split not in (None, *SPLITS):
            raise DatasetError(f"split must be one of {', '.join(SPLITS)} or None, got {split!r}")
        if feature is not None:
            wanted = feature if isinstance(feature, Feature) else make_feature(feature)
            diffs = feature_mismatch(t.feature, wanted.value_params())
            if diffs:
                raise DatasetError(
                    f"{self.path} was computed with other feature parameters than asked: {'; '.join(diffs)}"
                )
            self.feature = make_feature(
                {**t.feature, "patch_frames": wanted.patch_frames, "patch_hop": wanted.patch_hop}
            )
        self.unit, self.split, self.whole_file, self.versions, self.seed = (
            unit,
            split,
            whole_file,
            versions,
            seed,
        )
        self.epoch = 0
        self.target = target
        self.spec: TargetSpec | None = None
        if target is not None:
            if target not in t.targets:
                raise DatasetError(
                    f"{self.path} has no target {target!r}; it has: {', '.join(sorted(t.targets)) or 'none'}"
                )
            self.spec = t.targets[target]
        default = self.feature
        self.patch_frames = int(patch_frames or default.patch_frames)
        self.hop_frames = int(
            hop_frames
            or (default.patch_hop if patch_frames is None else max(1, self.patch_frames // 2))
        )
        pf, ps = patch_index(t.n_frames, self.patch_frames, self.hop_frames)

        # per-file targets and work ids: small, loaded once (rows of the computed files)
        file_target_names = [n for n, s in t.targets.items() if not s.frame_level]
        self.file_targets = {
            n: v[t.rows] for n, v in read_file_targets(self.path, file_target_names).items()
        }
        work_names = [n for n, s in t.targets.items() if s.kind == "work"]
        self.work_name = work_names[0] if work_names else None
        self.file_work = self.file_targets[self.work_name] if self.work_name else None

        self.file_split = self._splits(split_key, split_seed, split_fractions, split_by)
        in_split = (
            np.ones(t.n_files, bool) if split is None else self.file_split == SPLITS.index(split)
        )
        self.files = np.nonzero(in_split)[0]
        keep = in_split[pf]
        self.patch_file, self.patch_start = pf[keep], ps[keep]
        self.file_patch_bounds = np.searchsorted(pf, np.arange(t.n_files + 1))
        self._all_patch_start = ps
        if unit == "work":
            if self.file_work is None:
                raise DatasetError(f"unit='work' needs a work-id target; {self.path} has none")
            works, counts = np.unique(self.file_work[self.files], return_counts=True)
            valid = works[(counts >= 2) & (works >= 0)]
            self.left_out_works = [
                t.targets[self.work_name].vocabulary[w] for w in works[(counts < 2) & (works >= 0)]
            ]
            self.works = valid
            self.work_files = {int(w): self.files[self.file_work[self.files] == w] for w in valid}
        self._windows: torch.Tensor | None = None
        self._shapes: dict[int, tuple[int, ...]] = {}  # patch length -> item shape
        self._feats: np.ndarray | None = None  # views of numpy.memmap objects, made per process
        self._frame_target: np.ndarray | None = None
        self._pid: int | None = None

    # -- splits -------------------------------------------------------------
    def _splits(self, split_key, seed, fractions, split_by) -> np.ndarray:
        t = self.tables
        if split_key is not None:
            if split_key not in self.file_targets or t.targets[split_key].kind != "class":
                raise DatasetError(
                    f"split key {split_key!r} is not a per-file label of {self.path}; "
                    f"labels: {', '.join(n for n, s in t.targets.items() if s.kind == 'class') or 'none'}"
                )
            vocab = t.targets[split_key].vocabulary
            unknown = [v for v in vocab if v.lower() not in _SPLIT_ALIASES]
            if unknown:
                raise DatasetError(
                    f"split key {split_key!r}: values {unknown} are not train/valid/test"
                )
            codes = np.array(
                [SPLITS.index(_SPLIT_ALIASES[v.lower()]) for v in vocab], dtype=np.int8
            )
            labels = self.file_targets[split_key]
            return np.where(labels >= 0, codes[np.maximum(labels, 0)], -1).astype(np.int8)
        if split_by not in ("auto", "file", "work"):
            raise DatasetError(f"split_by must be 'auto', 'file' or 'work', got {split_by!r}")
        by_work = self.file_work is not None and split_by in ("auto", "work")
        if split_by == "work" and self.file_work is None:
            raise DatasetError(f"split_by='work' but {self.path} has no work-id target")
        if by_work:
            vocab = t.targets[self.work_name].vocabulary
            keys = [
                f"work:{vocab[w]}" if w >= 0 else f"file:{n}"
                for w, n in zip(self.file_work, t.names)
            ]
        else:
            keys = [f"file:{n}" for n in t.names]
        return assign_splits(keys, fractions, seed)

    # -- lazy, per-process mapping -------------------------------------------
    def _maps(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._pid != os.getpid():
            # plain ndarray views of the maps: slicing them skips numpy.memmap's per-slice bookkeeping
            self._feats = np.asarray(memmap_dataset(self.path, "features"))
            self._windows = None
            if self.feature.patch_view_is_transpose and len(self._feats) >= self.patch_frames:
                with warnings.catch_warnings():  # read-only map; the tensor is only read
                    warnings.simplefilter("ignore", UserWarning)
                    frames = torch.from_numpy(self._feats)
                self._windows = frames.unfold(0, self.patch_frames, 1)
            self._frame_target = (
                np.asarray(memmap_dataset(self.path, f"targets/{self.target}"))
                if self.spec and self.spec.frame_level
                else None
            )
            self._pid = os.getpid()
        return self._feats, self._frame_target

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(
            _feats=None, _windows=None, _frame_target=None, _pid=None
        )  # each process maps the store itself
        return state

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
        return self._view_shape(self.patch_frames)

    @property
    def n_out(self) -> int | None:
        """Output size a model needs for the target: classes, labels or pitch bins."""
        s = self.spec
        if s is None:
            return None
        if s.kind == "frame_pitch":
            return len(s.pitch_midi)
        if s.kind == "value":
            return 1
        return len(s.vocabulary) or 1

    # -- reading ------------------------------------------------------------------
    def _patches(self, files: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
        """``(B, *item_shape)`` float32 from the mapped store, in the model's layout.

        With more than one torch thread (the main process; DataLoader workers have one) the
        batch is one ``index_select`` over windows of the map, spread over the threads;
        with one, a transposed copy per patch (faster than ``index_select`` on one thread).
        In a DataLoader worker the batch is written straight into shared memory, as
        ``default_collate`` does, so handing it to the main process copies nothing more.
        """
        feats, _ = self._maps()
        offsets = self.tables.offset[files] + starts
        out = _new_tensor((len(files), *self._view_shape(length)), torch.float32)
        if (
            self._windows is not None
            and length == self.patch_frames
            and torch.get_num_threads() > 1
        ):
            torch.index_select(self._windows, 0, torch.from_numpy(offsets), out=out)
            return out
        view = out.numpy()
        for i, o in enumerate(offsets):
            view[i] = self.feature.patch_view(feats[o : o + length])
        return out

    def _view_shape(self, length: int) -> tuple[int, ...]:
        shape = self._shapes.get(length)
        if shape is None:  # a zero-stride stand-in: the shape without allocating a block
            block = np.broadcast_to(np.float32(0), (length, *self.tables.frame_shape))
            shape = self._shapes[length] = tuple(self.feature.patch_view(block).shape)
        return shape

    def file_rows(self, name: str, files: np.ndarray) -> list[np.ndarray]:
        """Whole files' time-major rows of ``features`` or of a frame-level ``targets/<name>``."""
        rows = self._maps()[0] if name == "features" else memmap_dataset(self.path, name)
        t = self.tables
        return [np.asarray(rows[t.offset[f] : t.offset[f] + t.n_frames[f]]) for f in files]

    def __getitem__(self, idx: int | tuple[int, int]) -> dict[str, Any]:
        epoch = self.epoch
        if isinstance(idx, tuple):  # (index, epoch) from an EpochSampler(with_epoch=True)
            idx, epoch = idx
        if self.unit == "patch":
            return self.__getitems__([idx])[0]
        if self.unit == "file":
            return self._file_item(int(self.files[idx]))
        return self._work_item(idx, epoch)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A batch of items in one call (patch unit): one pass over the mapped store."""
        if self.unit != "patch":
            return [self[i] for i in indices]
        indices = [i[0] if isinstance(i, tuple) else i for i in indices]
        idx = np.asarray(indices, dtype=np.int64)
        files, starts = self.patch_file[idx], self.patch_start[idx]
        X = self._patches(files, starts, self.patch_frames)
        _, frame_target = self._maps()
        # file and start share one buffer: one shared-memory segment for both, not two
        index = _new_tensor((2, len(idx)), torch.int64)
        index.numpy()[0], index.numpy()[1] = files, starts
        batch = {"X": X, "file": index[0], "start": index[1]}
        if self.spec is not None:
            batch["y"] = self._batch_targets(files, starts, frame_target)
        return PatchBatch(batch)

    def _batch_targets(
        self,
        files: np.ndarray,
        starts: np.ndarray,
        frame_target: np.ndarray | None,
        length: int | None = None,
    ) -> torch.Tensor:
        """Targets of patches ``(file, start)``: class indices (int64), multi-hot / values
        (float32), or frame-level ``(B, bins, length)`` float32 / ``(B, length)`` int64."""
        s = self.spec
        if not s.frame_level:
            v = self.file_targets[s.name][files]
            if s.kind in ("class", "work"):
                return torch.from_numpy(v.astype(np.int64))
            return torch.from_numpy(np.asarray(v, dtype=np.float32))
        L = self.patch_frames if length is None else length
        offsets = self.tables.offset[files] + starts
        if s.kind == "frame_class":
            labels = np.empty((len(files), L), dtype=np.int64)
            for i, o in enumerate(offsets):
                labels[i] = frame_target[o : o + L]
            return torch.from_numpy(labels)
        out = np.empty((len(files), frame_target.shape[1], L), dtype=np.float32)
        for i, o in enumerate(offsets):
            out[i] = frame_target[o : o + L].T
        return torch.from_numpy(out)

    def _file_item(self, f: int) -> dict[str, Any]:
        feats, frame_target = self._maps()
        n = int(self.tables.n_frames[f])
        if self.whole_file:
            X = self._patches(np.array([f]), np.array([0]), n)[0]
            item = {"X": X, "file": f, "n_frames": n}
            if self.spec is not None:
                item["y"] = self._batch_targets(np.array([f]), np.array([0]), frame_target, n)[0]
            return item
        lo, hi = self.file_patch_bounds[f], self.file_patch_bounds[f + 1]
        starts = self._all_patch_start[lo:hi]
        X = self._patches(np.full(len(starts), f), starts, self.patch_frames)
        item = {"X": X, "file": f, "start": torch.from_numpy(starts.copy())}
        if self.spec is not None:
            if self.spec.frame_level:
                item["y"] = self._batch_targets(np.full(len(starts), f), starts, frame_target)
            else:
                item["y"] = self._batch_targets(np.array([f]), np.array([0]), frame_target)[0]
        return item

    def _work_item(self, idx: int, epoch: int) -> dict[str, Any]:
        w = int(self.works[idx])
        files = self.work_files[w]
        rng = np.random.default_rng([self.seed, epoch, idx])
        chosen = rng.choice(files, size=self.versions, replace=len(files) < self.versions)
        L = self.patch_frames
        n = self.tables.n_frames[chosen]
        starts = np.array([rng.integers(0, max(1, m - L + 1)) for m in n])
        if (
            self.split != "train"
        ):  # evaluation sees the centre of each version, not a random excerpt
            starts = np.maximum(0, (n - L) // 2)
        length = min(L, int(n.min()))
        X = self._patches(chosen, starts, length)
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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h


def keep_freed_memory(max_block: int = 1 << 30) -> bool:
    """Let glibc's malloc keep and reuse freed blocks up to ``max_block`` bytes.

    By default glibc serves every block over 32 MB (an hcqt batch of 64 patches is 35 MB)
    with a fresh ``mmap`` and returns it on ``free``, so each batch pays for page faults and
    zero-filling its memory again: half of the loading time of such batches on the
    development machine. This is the in-process form of the advice in PyTorch's CPU tuning
    guide (preload tcmalloc or jemalloc). The price: freed batches stay in the process's heap
    (100 to 370 MB for hcqt batches of 64 in ``benchmarks/bench_loader.py``), steady over a run.
    Returns whether it applied; a no-op off glibc, or when the user set
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` themselves.
    """
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    limit = min(int(max_block), 2**31 - 1)
    # some glibc versions cap M_MMAP_THRESHOLD at HEAP_MAX_SIZE / 2 (32 MiB on 64-bit) and
    # refuse more: try the asked size, then halve down to that cap
    applied = False
    while limit >= 32 << 20 and not applied:
        applied = bool(mallopt(_M_MMAP_THRESHOLD, limit))
        limit //= 2
    return applied and bool(mallopt(_M_TRIM_THRESHOLD, min(int(max_block) * 2, 2**31 - 1)))


def _new_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor; in a DataLoader worker, backed by shared memory (as default_collate does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


class PatchBatch(Sequence):
    """The items of one ``__getitems__`` call, held already stacked (``collated``).

    :func:`collate_patches` hands ``collated`` on without a second copy; a plain
    ``default_collate`` sees a sequence of per-item dicts, made only when it asks.
    """

    def __init__(self, collated: dict[str, torch.Tensor]):
        self.collated = collated

    def __len__(self) -> int:
        return len(self.collated["X"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return {k: v[i] if k in ("X", "y") else int(v[i]) for k, v in self.collated.items()}


def collate_patches(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate for patch units: the prebuilt batch when there is one, else ``default_collate``."""
    if isinstance(items, PatchBatch):
        return items.collated
    return torch.utils.data.default_collate(items)


def collate_padded(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate file or work items whose first axis differs: pad to the longest, with a mask.

    ``X`` becomes ``(B, N_max, ...)`` and ``mask`` ``(B, N_max)`` (True where real).
    """
    out: dict[str, Any] = {}
    n = [it["X"].shape[0] for it in items]
    n_max = max(n)
    mask = torch.zeros(len(items), n_max, dtype=torch.bool)
    for i, k in enumerate(n):
        mask[i, :k] = True
    for key in items[0]:
        vals = [it[key] for it in items]
        if (
            isinstance(vals[0], torch.Tensor)
            and vals[0].dim() > 0
            and key in ("X", "y", "start", "files")
        ):
            padded = vals[0].new_zeros((len(vals), n_max, *vals[0].shape[1:]))
            for i, v in enumerate(vals):
                padded[i, : v.shape[0]] = v
            out[key] = padded
        elif isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack(vals)
        else:
            out[key] = torch.tensor(vals)
    out["mask" if "mask" not in out else "item_mask"] = mask
    return out
