"""Training an experiment under PyTorch Lightning (optional: ``pip install 'mirpatch[lightning]'``).

::

    import lightning as L
    from train.lightning import MirpatchDataModule, MirpatchModule

    data = MirpatchDataModule("configs/experiments/demo_genre.yaml", ["train.lr=0.003"])
    model = MirpatchModule(data)  # the experiment's model, task, loss, metrics, augmentation
    trainer = L.Trainer(max_epochs=10, use_distributed_sampler=False)  # mirpatch's samplers shard
    trainer.fit(model, datamodule=data)
    print(model.evaluate("test"))  # the project's own evaluation: patches and whole files

The data side delegates to :class:`train.data.StoreDataModule`; under DDP, rank and world come
from the trainer and every rank reads its own share (whole works for the cover task), so
Lightning must not wrap the samplers: ``use_distributed_sampler=False`` is required. Both
samplers are told the epoch at the start of each (Lightning alone would not reach a batch
sampler). Batches are moved as stored (float16 stores too) and made float32 on the device.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import numpy as np
import torch

from common.errors import UserError

from .augment import augment, make_augmentations
from .data import StoreDataModule
from .devices import model_input
from .evaluate import evaluate_patches, file_outputs
from .experiment import load_experiment
from .loop import datamodule, make_optimizer, make_scheduler
from .model_factory import build_model
from .tasks import task_for


class LightningSetupError(UserError, RuntimeError):
    """A Trainer set up in a way that would split or repeat the data."""


def _check_trainer(trainer) -> None:
    connector = getattr(trainer, "_accelerator_connector", None)
    if connector is not None and getattr(connector, "use_distributed_sampler", False):
        raise LightningSetupError(
            "give Trainer(use_distributed_sampler=False): mirpatch's samplers already give each "
            "rank its share (whole works for the cover task); Lightning's would split it again"
        )


class MirpatchDataModule(L.LightningDataModule):
    """The data of an experiment (a YAML path, or a config from ``load_experiment``)."""

    def __init__(self, config: str | os.PathLike | dict, overrides=(), store=None):
        super().__init__()
        self.cfg = config if isinstance(config, dict) else load_experiment(config, list(overrides))
        self.store = store
        self.data: StoreDataModule | None = None

    def prepare_data(self) -> None:
        """Find the store (once per node), or say which ``precompute run`` makes it."""
        self.store = datamodule(self.cfg, store=self.store).prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        trainer = self.trainer
        if trainer is not None:
            _check_trainer(trainer)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        self.data = datamodule(self.cfg, store=self.store, rank=rank, world=world)
        self.data.prepare_data()
        self.data.setup()

    def train_dataloader(self):
        return self.data.train_dataloader()

    def val_dataloader(self):
        return self.data.val_dataloader()

    def test_dataloader(self):
        return self.data.test_dataloader()

    def set_epoch(self, epoch: int) -> None:
        self.data.set_epoch(epoch)


class MirpatchModule(L.LightningModule):
    """The experiment's model (built from its YAML once the data is known), its task's loss and
    validation metrics, and its augmentation, on the device, in training only."""

    def __init__(self, data: MirpatchDataModule):
        super().__init__()
        self.cfg = data.cfg
        self._data = data  # not a submodule: the model is built in setup
        self.core: torch.nn.Module | None = None
        self._outs: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def setup(self, stage: str | None = None) -> None:
        if self.core is not None:
            return
        self._data.setup(stage)
        ds, t = self._data.data.train_ds, self.cfg["train"]
        self.task = task_for(self.cfg["target"]["task"], ds.spec, t, self.cfg.get("source"))
        self.core = build_model(self.cfg["model"], ds.item_shape, n_out=self.task.n_out(ds))
        self.augs = make_augmentations(t["augment"], ds.feature, self.task, self.cfg.get("source"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core(x)

    def on_train_epoch_start(self) -> None:
        self._data.set_epoch(self.current_epoch)  # both samplers, works or patches

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = model_input(batch["X"], self.device)
        y = batch["y"].to(self.device)
        x, y = augment(
            self.augs, x, y, self.cfg["train"]["seed"], self.current_epoch, self.global_step
        )
        loss = self.task.loss(self(x), y)
        self.log("train_loss", loss, batch_size=len(x), on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = model_input(batch["X"], self.device)
        y = batch["y"].to(self.device)
        out = self(x)
        loss = float(self.task.loss(out, y)) * len(x)
        self._outs.append((out.float().cpu(), batch["y"], loss))

    def on_validation_epoch_end(self) -> None:
        if not self._outs:
            return
        ds = self._data.data.valid_ds
        out, y = torch.cat([o for o, _, _ in self._outs]), torch.cat([y for _, y, _ in self._outs])
        res = {"out": out, "y": y, "file": torch.from_numpy(ds.patch_file[: len(out)]),
               "loss": self.task.split_loss(out, y, [loss for _, _, loss in self._outs])}  # fmt: skip
        self._outs = []
        metrics = {"valid_loss": res["loss"], **self.task.patch_metrics(res, ds.spec)}
        self.log_dict({k: float(v) for k, v in metrics.items() if _scalar(v)}, prog_bar=True)

    def configure_optimizers(self):
        opt = make_optimizer(self.core, self.cfg["train"])
        sched = make_scheduler(opt, self.cfg["train"])
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """The split's metrics as ``train eval`` scores them: patches, then whole files (with
        settings chosen on the validation files where the task has some), in eval mode."""
        dm = self._data.data
        ds = {"train": dm.train_ds, "valid": dm.valid_ds, "test": dm.test_ds}[split]
        device = self.device
        res = evaluate_patches(self.core, dm.eval_dataloader(ds), self.task, device)
        metrics: dict[str, Any] = {"split": split, "loss": res["loss"]}
        metrics |= self.task.test_metrics(res, ds.spec)
        settings = {}
        truth = self.task.file_truth(dm.valid_ds, dm.valid_ds.files)
        if truth is not None:
            settings = self.task.calibrate(
                file_outputs(self.core, dm.valid_ds, self.task, device), truth
            )
        outs = file_outputs(self.core, ds, self.task, device)
        return metrics | self.task.file_metrics(outs, ds, ds.files, **settings) | settings


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v)
