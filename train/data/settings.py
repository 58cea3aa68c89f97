"""Every setting of the data side as one object, read where it acts.

:class:`DataSettings` is what :class:`~train.data.StoreDataset`, :class:`~train.data.StoreDataModule`,
the samplers and the splits read; an experiment makes one (:meth:`DataSettings.from_experiment`),
and a notebook gives the fields it needs as keywords. Fields carry the experiment's YAML names
(``train.batch_size`` is ``batch_size``, ``dataset.split_seed`` is ``split_seed``, ``patch.frames``
is ``patch_frames``, ``target.name`` is ``target``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from ..errors import DatasetError

UNITS = ("patch", "file", "work")
SPLIT_BY = ("auto", "file", "work", "group")


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    """The data side of an experiment. Defaults are a notebook's: every file, 80/10/10 splits."""

    # where the data is, when the store is to be found rather than given: the pyjama, the
    # feature (a name, a YAML path, a mapping or a Feature) and the folder of stores
    dataset: str | None = None
    feature: Any = None
    feature_file: str | None = None  # the YAML the experiment's feature came from
    stores: str = "stores"  # a folder, or the URL of one on object storage (s3://bucket/prefix)
    audio_root: str | None = None
    # the local cache of a remote store's frames (train/data/remote.py): its folder (default
    # MIRPATCH_CACHE_DIR or ~/.cache/mirpatch) and its limit in GB (default 50)
    cache_dir: str | None = None
    cache_gb: float | None = None
    # what an item is: a patch, a file's patches (or whole feature), a work's versions
    unit: str = "patch"
    target: str | None = None
    patch_frames: int | None = None  # default: the store's
    patch_hop: int | None = None
    # which split each file is in (train/data/splits.py)
    split_seed: int = 0
    split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
    split_key: str | None = None
    split_by: str = "auto"
    split_group: str | None = None
    folds: int | None = None
    fold: int | None = None
    train_works: int | None = None  # the training split cut to its first this many works
    # how training batches are drawn (train/data/samplers.py)
    batch_size: int = 64
    eval_batch_size: int | None = None  # default: batch_size
    samples_per_epoch: int | None = None
    works_per_batch: int | None = None
    versions_per_work: int = 2
    seed: int = 0
    shuffle_block_mb: float = 0.0
    shuffle_blocks_per_draw: int = 8
    # how they are loaded
    num_workers: int = 0
    pin_memory: bool | None = None  # default: when a CUDA device is there
    persistent_workers: bool = True
    prefetch_factor: int = 4
    multiprocessing_context: str | None = None
    rank: int = 0  # under DDP: this process's share of every batch
    world: int = 1

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise DatasetError(f"unit must be 'patch', 'file' or 'work', got {self.unit!r}")
        if self.split_by not in SPLIT_BY:
            raise DatasetError(
                f"split_by must be 'auto', 'file', 'work' or 'group', got {self.split_by!r}"
            )
        object.__setattr__(self, "split_fractions", tuple(self.split_fractions))

    def replace(self, **changes: Any) -> DataSettings:
        """A copy with ``changes``; an unknown name is an error naming the known ones."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            from common.config import close_names

            name = sorted(unknown)[0]
            known = [f.name for f in dataclasses.fields(self)]
            raise TypeError(f"unknown data setting {name!r}; {close_names(name, known)}")
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def from_experiment(cls, cfg: Any, rank: int = 0, world: int = 1) -> DataSettings:
        """The data settings of an experiment (:class:`train.experiment.Experiment`); ``rank``
        and ``world``: this process's share under DDP."""
        d, t = cfg.dataset, cfg.train
        return cls(
            dataset=d.pyjama, feature=cfg.feature, feature_file=cfg.feature_file,
            stores=d.stores, audio_root=d.audio_root, cache_dir=d.cache_dir,
            cache_gb=d.cache_gb, unit="patch", target=cfg.target.name,
            patch_frames=cfg.patch.frames, patch_hop=cfg.patch.hop, split_seed=d.split_seed,
            split_fractions=tuple(d.split_fractions), split_key=d.split_key,
            split_group=d.split_group, folds=d.folds, fold=d.fold, train_works=d.train_works,
            batch_size=t.batch_size,
            eval_batch_size=t.eval_batch_size, samples_per_epoch=t.samples_per_epoch,
            works_per_batch=t.works_per_batch if cfg.target.task == "work" else None,
            versions_per_work=t.versions_per_work, seed=t.seed, num_workers=t.num_workers,
            shuffle_block_mb=t.shuffle_block_mb, shuffle_blocks_per_draw=t.shuffle_blocks_per_draw,
            rank=rank, world=world,
        )  # fmt: skip


def stream_block_bytes(s: DataSettings, cache_limit: int) -> int:
    """The blocks a remote store larger than its cache is streamed by: ``shuffle_block_mb``,
    else 1/128 of the cache, at most 16 MB (a block holds a file at least)."""
    if s.shuffle_block_mb:
        return max(1, int(s.shuffle_block_mb * 2**20))
    return int(min(16 << 20, max(1, cache_limit // 128)))


DEFAULT_CACHE_GB = 50.0


def cache_limit(cache_gb: float | None) -> int:
    """The cache's limit in bytes (``cache_gb``, else ``MIRPATCH_CACHE_GB``, else 50)."""
    if cache_gb is None:
        text = os.environ.get("MIRPATCH_CACHE_GB") or str(DEFAULT_CACHE_GB)
        try:
            cache_gb = float(text)
        except ValueError:
            raise DatasetError(f"MIRPATCH_CACHE_GB={text!r}: expected a number of GB") from None
    if cache_gb <= 0:
        raise DatasetError(f"cache_gb must be positive, got {cache_gb}")
    return int(cache_gb * 2**30)
