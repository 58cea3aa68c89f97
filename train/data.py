"""``StoreDataModule``: the data side of an experiment, with the names users know
(``prepare_data``, ``setup``, ``train_dataloader``, ``val_dataloader``, ``test_dataloader``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from common.features import Feature, make_feature
from common.store import read_tables

from .batches import collate_padded, collate_patches
from .dataset import StoreDataset, feature_mismatch
from .errors import DatasetError
from .find import find_store, precompute_command
from .samplers import EpochSampler, WorkBatchSampler


class StoreDataModule:
    """Datasets and DataLoaders of one experiment over one store.

    Give either ``store`` (a path) or ``dataset`` (a pyjama) + ``feature`` (+ ``stores``),
    from which the store is found by its hash. The other arguments are the experiment's
    settings under their YAML names (``train.shuffle_blocks_per_draw`` is
    ``shuffle_blocks_per_draw``; ``patch.frames`` and ``patch.hop`` are ``patch_frames`` and
    ``patch_hop``, as in a feature's YAML); :meth:`from_experiment` passes them all.
    """

    def __init__(
        self,
        store: str | os.PathLike | None = None,
        *,
        dataset: str | os.PathLike | None = None,
        feature: str | os.PathLike | dict | Feature | None = None,
        feature_file: str | os.PathLike | None = None,
        stores: str | os.PathLike = "stores",
        audio_root: str | os.PathLike | None = None,
        unit: str = "patch",
        target: str | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        split_seed: int = 0,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        split_key: str | None = None,
        folds: int | None = None,
        fold: int | None = None,
        split_group: str | None = None,
        patch_frames: int | None = None,
        patch_hop: int | None = None,
        samples_per_epoch: int | None = None,
        works_per_batch: int | None = None,
        versions_per_work: int = 2,
        seed: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int = 4,
        multiprocessing_context: str | None = None,
        rank: int = 0,
        world: int = 1,
        shuffle_block_mb: float = 0,
        shuffle_blocks_per_draw: int = 8,
    ):
        if store is None and (dataset is None or feature is None):
            raise DatasetError("give a store path, or a dataset (pyjama) and a feature")
        self.store = Path(store) if store is not None else None
        self.dataset, self.stores, self.audio_root = dataset, stores, audio_root
        self.feature_spec, self.feature_file = feature, feature_file
        self.feature = (
            None
            if feature is None
            else (feature if isinstance(feature, Feature) else make_feature(feature))
        )
        self.unit, self.target = unit, target
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers = num_workers
        self.split_kw = {
            "split_seed": split_seed,
            "split_fractions": tuple(split_fractions),
            "split_key": split_key,
            "folds": folds,
            "fold": fold,
            "split_group": split_group,
        }
        self.patch_frames, self.patch_hop = patch_frames, patch_hop
        self.samples_per_epoch = samples_per_epoch
        self.works_per_batch, self.versions_per_work = works_per_batch, versions_per_work
        self.seed = seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.rank, self.world = rank, world  # distributed training: each rank loads its share
        self.shuffle_block_mb = shuffle_block_mb
        self.shuffle_blocks_per_draw = shuffle_blocks_per_draw
        self.train_ds = self.valid_ds = self.test_ds = None
        self._samplers: list[Any] = []
        # where training is: batches done in the current epoch, and where a resumed run starts
        self.epoch, self.batch = 0, 0
        self._resume_at: tuple[int, int] | None = None

    @classmethod
    def from_experiment(cls, cfg, store=None, rank: int = 0, world: int = 1) -> StoreDataModule:
        """The data of an experiment (:class:`train.experiment.Experiment`); ``store``: its
        store, when already found; ``rank`` and ``world``: this process's share under DDP."""
        d, t = cfg.dataset, cfg.train
        return cls(
            store,
            dataset=d.pyjama,
            feature=cfg.feature,
            feature_file=cfg.feature_file,
            stores=d.stores,
            audio_root=d.audio_root,
            unit="patch",
            target=cfg.target.name,
            batch_size=t.batch_size,
            eval_batch_size=t.eval_batch_size,
            num_workers=t.num_workers,
            split_seed=d.split_seed,
            split_fractions=d.split_fractions,
            split_key=d.split_key,
            folds=d.folds,
            fold=d.fold,
            split_group=d.split_group,
            patch_frames=cfg.patch.frames,
            patch_hop=cfg.patch.hop,
            samples_per_epoch=t.samples_per_epoch,
            works_per_batch=t.works_per_batch if cfg.target.task == "work" else None,
            versions_per_work=t.versions_per_work,
            seed=t.seed,
            rank=rank,
            world=world,
            shuffle_block_mb=t.shuffle_block_mb,
            shuffle_blocks_per_draw=t.shuffle_blocks_per_draw,
        )

    def prepare_data(self) -> Path:
        """Find the store and check it matches the feature; otherwise say how to make it."""
        feature_file = (
            self.feature_spec
            if isinstance(self.feature_spec, (str, os.PathLike))
            else self.feature_file
        )
        if self.store is None:
            self.store = find_store(
                self.dataset, self.feature, self.stores, self.audio_root, feature_file
            )
        if not self.store.is_file():
            if self.feature is None:
                raise DatasetError(f"no store at {self.store}")
            cmd = precompute_command(self.dataset or "DATASET.pyjama", self.feature, self.stores,
                                     self.audio_root, feature_file)  # fmt: skip
            raise DatasetError(f"no store at {self.store}; make it with:\n  {cmd}")
        if self.feature is not None:
            diffs = feature_mismatch(read_tables(self.store).feature, self.feature.value_params())
            if diffs:
                raise DatasetError(
                    f"{self.store} was computed with other feature parameters than the experiment asks: "
                    f"{'; '.join(diffs)}"
                )
        return self.store

    def _dataset(self, split: str | None) -> StoreDataset:
        return StoreDataset(
            self.store,
            unit=self.unit,
            target=self.target,
            split=split,
            patch_frames=self.patch_frames,
            patch_hop=self.patch_hop,
            feature=self.feature,
            versions=self.versions_per_work,
            seed=self.seed,
            pin_memory=self.pin_memory,
            **self.split_kw,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.store is None or not self.store.is_file():
            self.prepare_data()
        self.train_ds, self.valid_ds, self.test_ds = (
            self._dataset(s) for s in ("train", "valid", "test")
        )

    def _nonempty(self, ds: StoreDataset | None) -> StoreDataset:
        if ds is None:
            raise DatasetError("call setup() before asking for a DataLoader")
        if len(ds) == 0:
            raise DatasetError(
                f"{self.store}: the {ds.split} split is empty ({len(ds.files)} files, unit {self.unit!r}); "
                "change split_fractions or use a larger dataset"
            )
        return ds

    def _loader(
        self, ds: StoreDataset, batch_size: int, train: bool, **kw
    ) -> torch.utils.data.DataLoader:
        workers = self.num_workers
        # the training loader seeds its workers from a generator of its own: starting an epoch
        # (or resuming one) draws nothing from torch's global RNG, whose draws (dropout) a
        # resumed run must repeat exactly
        extra = {"generator": torch.Generator().manual_seed(self.seed)} if train else {}
        if workers > 0:
            extra |= {
                "persistent_workers": self.persistent_workers,
                "prefetch_factor": self.prefetch_factor,
                "multiprocessing_context": self.multiprocessing_context,
            }
        collate = {"file": collate_padded, "patch": collate_patches}.get(ds.unit)
        cls = ResumableLoader if train else torch.utils.data.DataLoader
        loader = cls(
            ds,
            num_workers=workers,
            pin_memory=self.pin_memory,
            collate_fn=collate,
            **extra,
            **kw,
            **({"batch_size": batch_size} if "batch_sampler" not in kw else {}),
        )
        if train:
            loader.data = self
        return loader

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        ds = self._nonempty(self.train_ds)
        if self.unit == "patch" and self.works_per_batch and ds.file_work is not None:
            sampler = WorkBatchSampler(
                ds.patch_file,
                ds.file_work,
                self.works_per_batch,
                max(2, self.versions_per_work),
                batches_per_epoch=(self.samples_per_epoch or len(ds)) // self.batch_size or 1,
                seed=self.seed,
                rank=self.rank,
                world=self.world,
            )
            self._samplers = [sampler]
            return self._loader(ds, self.batch_size, True, batch_sampler=sampler)
        blocks = (
            ds.patch_blocks(self.shuffle_block_mb)
            if self.shuffle_block_mb and self.unit == "patch"
            else None
        )
        sampler = EpochSampler(
            len(ds),
            shuffle=True,
            seed=self.seed,
            num_samples=self.samples_per_epoch,
            with_epoch=self.unit == "work",
            rank=self.rank,
            world=self.world,
            global_batch=self.batch_size,
            blocks=blocks,
            blocks_per_draw=self.shuffle_blocks_per_draw,
        )
        self._samplers = [sampler]
        if self.world > 1 and blocks is not None:  # whole blocks per rank: its own batches
            return self._loader(ds, self.batch_size // self.world, True, sampler=sampler)
        if self.world > 1:  # batch_size is the global batch; every patch once per epoch, no drop
            return self._loader(
                ds, self.batch_size // self.world, True, sampler=sampler, drop_last=False
            )
        return self._loader(
            ds, self.batch_size, True, sampler=sampler, drop_last=len(ds) > self.batch_size
        )

    def eval_dataloader(self, ds: StoreDataset) -> torch.utils.data.DataLoader:
        """Any split in order, at the evaluation batch size (validation, test, or train for eval)."""
        return self._loader(self._nonempty(ds), self.eval_batch_size, False, shuffle=False)

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
        return self.batch_size // self.world if self.world > 1 else self.batch_size

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
