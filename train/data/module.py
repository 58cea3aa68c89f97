"""``StoreDataModule``: the data side of an experiment, with the names users know
(``prepare_data``, ``setup``, ``train_dataloader``, ``val_dataloader``, ``test_dataloader``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from common.features import make_feature
from common.remote import is_url

from ..errors import DatasetError
from .batches import collate, collate_padded
from .dataset import StoreDataset
from .find import find_remote_store, find_store, precompute_command
from .remote import RemoteFrames
from .samplers import EpochSampler, WorkBatchSampler
from .settings import DataSettings


class StoreDataModule:
    """Datasets and DataLoaders of one experiment over one store.

    Give either ``store`` (a path) or, in the settings, ``dataset`` (a pyjama) and ``feature``
    (and ``stores``), from which the store is found by its hash. The settings are one
    :class:`~train.data.DataSettings` (:meth:`from_experiment` makes an experiment's), or its
    fields as keywords: ``StoreDataModule(dataset="data/demo/demo.pyjama", feature="lms",
    target="genre", batch_size=32)``.
    """

    def __init__(
        self,
        store: str | os.PathLike | None = None,
        *,
        settings: DataSettings | None = None,
        **settings_kw: Any,
    ):
        s = (settings or DataSettings()).replace(**settings_kw)
        if store is None and (s.dataset is None or s.feature is None):
            raise DatasetError("give a store path, or a dataset (pyjama) and a feature")
        if isinstance(s.feature, (str, os.PathLike)) and s.feature_file is None:
            s = s.replace(feature_file=str(s.feature))  # what `precompute run --feature` takes
        if s.feature is not None:
            s = s.replace(feature=make_feature(s.feature))
        self.settings = s
        # a path, or the URL of a view on object storage
        self.store = (str(store) if is_url(store) else Path(store)) if store is not None else None
        self.train_ds = self.valid_ds = self.test_ds = None
        self._samplers: list[Any] = []
        # where training is: batches done in the current epoch, and where a resumed run starts
        self.epoch, self.batch = 0, 0
        self._resume_at: tuple[int, int] | None = None

    @classmethod
    def from_experiment(cls, cfg, store=None, rank: int = 0, world: int = 1) -> StoreDataModule:
        """The data of an experiment (:class:`train.experiment.Experiment`); ``store``: its
        store, when already found; ``rank`` and ``world``: this process's share under DDP."""
        return cls(store, settings=DataSettings.from_experiment(cfg, rank, world))

    def prepare_data(self) -> Path | str:
        """Find the store, or say how to make it (that its feature is the one asked for is
        checked where it is opened: :class:`StoreDataset`)."""
        s = self.settings
        feature_file = s.feature_file
        if self.store is None and is_url(s.stores):
            self.store = find_remote_store(
                s.dataset, s.feature, s.stores, s.cache_dir, feature_file
            )
        if self.store is None:
            self.store = find_store(s.dataset, s.feature, s.stores, s.audio_root, feature_file)
        if is_url(self.store):
            return self.store
        if not self.store.is_file():
            if s.feature is None:
                raise DatasetError(f"no store at {self.store}")
            cmd = precompute_command(s.dataset or "DATASET.pyjama", s.feature, s.stores,
                                     s.audio_root, feature_file)  # fmt: skip
            raise DatasetError(f"no store at {self.store}; make it with:\n  {cmd}")
        return self.store

    def setup(self, stage: str | None = None) -> None:
        if self.store is None or not (is_url(self.store) or self.store.is_file()):
            self.prepare_data()
        self.train_ds, self.valid_ds, self.test_ds = (
            StoreDataset(self.store, split, settings=self.settings)
            for split in ("train", "valid", "test")
        )

    def _nonempty(self, ds: StoreDataset | None) -> StoreDataset:
        if ds is None:
            raise DatasetError("call setup() before asking for a DataLoader")
        if len(ds) == 0:
            raise DatasetError(
                f"{self.store}: the {ds.split} split is empty ({len(ds.files)} files, unit "
                f"{ds.unit!r}); change split_fractions or use a larger dataset"
            )
        return ds

    def _loader(
        self, ds: StoreDataset, batch_size: int, train: bool, **kw
    ) -> torch.utils.data.DataLoader:
        s = self.settings
        # the training loader seeds its workers from a generator of its own: starting an epoch
        # (or resuming one) draws nothing from torch's global RNG, whose draws (dropout) a
        # resumed run must repeat exactly
        extra = {"generator": torch.Generator().manual_seed(s.seed)} if train else {}
        if s.num_workers > 0:
            extra |= {
                "persistent_workers": s.persistent_workers,
                "prefetch_factor": s.prefetch_factor,
                "multiprocessing_context": s.multiprocessing_context,
            }
        cls = ResumableLoader if train else torch.utils.data.DataLoader
        # batches are pinned where they are made (the Dataset's blocks), never copied again
        # by the DataLoader's pinning thread
        loader = cls(
            ds,
            num_workers=s.num_workers,
            pin_memory=False,
            collate_fn=collate_padded if ds.unit == "file" else collate,
            **extra,
            **kw,
            **({"batch_size": batch_size} if "batch_sampler" not in kw else {}),
        )
        if train:
            loader.data = self
        return loader

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        s, ds = self.settings, self._nonempty(self.train_ds)
        if s.unit == "patch" and s.works_per_batch and ds.file_work is not None:
            sampler = WorkBatchSampler(
                ds.patch_file,
                ds.file_work,
                s.works_per_batch,
                max(2, s.versions_per_work),
                batches_per_epoch=(s.samples_per_epoch or len(ds)) // s.batch_size or 1,
                seed=s.seed,
                rank=s.rank,
                world=s.world,
            )
            self._samplers = [sampler]
            return self._loader(ds, s.batch_size, True, batch_sampler=sampler)
        # a remote store larger than its cache: its resident part spread over the epoch, the
        # rest streamed a draw of blocks at a time (train/data/remote.py)
        streamed = (
            s.unit == "patch" and isinstance(ds.features, RemoteFrames) and not ds.features.fits
        )
        by_blocks = (s.shuffle_block_mb and s.unit == "patch") or streamed
        if streamed:
            blocks = ds.stream_blocks()
        else:
            blocks = ds.patch_blocks(s.shuffle_block_mb) if by_blocks else None
        sampler = EpochSampler(
            len(ds),
            shuffle=True,
            seed=s.seed,
            num_samples=s.samples_per_epoch,
            with_epoch=s.unit == "work",
            rank=s.rank,
            world=s.world,
            global_batch=s.batch_size,
            blocks=blocks,
            blocks_per_draw=s.shuffle_blocks_per_draw,
        )
        self._samplers = [sampler]
        if s.world > 1 and by_blocks:  # whole blocks per rank: its own batches
            return self._loader(ds, self._local_batch, True, sampler=sampler)
        if s.world > 1:  # batch_size is the global batch; every patch once per epoch, no drop
            return self._loader(ds, self._local_batch, True, sampler=sampler, drop_last=False)
        return self._loader(
            ds, s.batch_size, True, sampler=sampler, drop_last=len(ds) > s.batch_size
        )

    def eval_dataloader(self, ds: StoreDataset) -> torch.utils.data.DataLoader:
        """Any split in order, at the evaluation batch size (validation, test, or train for eval)."""
        size = self.settings.eval_batch_size or self.settings.batch_size
        return self._loader(self._nonempty(ds), size, False, shuffle=False)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self.eval_dataloader(self.valid_ds)

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return self.eval_dataloader(self.test_ds)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (same order in every process for the same seed and epoch).
        After :meth:`resume_at` that epoch, its training loader leaves out the batches done."""
        skip = 0
        if self._resume_at is not None and self._resume_at[0] == epoch:
            skip = self._resume_at[1]
        self._resume_at = None
        self.epoch, self.batch = epoch, skip
        self._position_samplers(epoch, skip)
        for ds in (self.train_ds, self.valid_ds, self.test_ds):
            if ds is not None:
                ds.set_epoch(epoch)

    @property
    def _local_batch(self) -> int:
        """Patches of one training batch in this process (its share of the global batch)."""
        s = self.settings
        return s.batch_size // s.world if s.world > 1 else s.batch_size

    def batch_done(self) -> None:
        """One more training batch of the epoch is done (what a checkpoint records)."""
        self.batch += 1

    def position(self) -> dict[str, int]:
        """Where training is: the epoch, and the batches of it done."""
        return {"epoch": self.epoch, "batch": self.batch}

    def resume_at(self, epoch: int, batch: int) -> None:
        """Training goes on after the first ``batch`` batches of ``epoch``: the training loader
        starts there now (Lightning draws a first batch before it says which epoch it is), and
        so does the next :meth:`set_epoch` of that epoch."""
        self._resume_at = (int(epoch), int(batch))
        self._position_samplers(*self._resume_at)

    def _position_samplers(self, epoch: int, skip_batches: int) -> None:
        for s in self._samplers:
            per_batch = 1 if isinstance(s, WorkBatchSampler) else self._local_batch
            s.set_epoch(epoch, skip_batches * per_batch)


class ResumableLoader(torch.utils.data.DataLoader):
    """A training DataLoader that says where training is in its epoch (``state_dict``) and
    starts there again (``load_state_dict``), as Lightning's mid-epoch checkpoints and
    torchdata's loaders expect: the batches done are not read again, the others come in the
    order of an uninterrupted epoch."""

    data: StoreDataModule

    def state_dict(self) -> dict[str, int]:
        return self.data.position()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.data.resume_at(state["epoch"], state["batch"])
