"""Training an experiment under PyTorch Lightning (optional: ``pip install 'mirpatch[lightning]'``).

::

    import lightning as L
    from train.lightning import MirpatchDataModule, MirpatchModule

    data = MirpatchDataModule("configs/experiments/demo_genre.yaml", ["train.lr=0.003"])
    model = MirpatchModule(data)  # the experiment's model, task, loss, metrics, augmentation
    trainer = L.Trainer(max_epochs=10, use_distributed_sampler=False)  # mirpatch's samplers shard
    trainer.fit(model, datamodule=data)
    print(model.evaluate("test"))  # the project's own evaluation: patches and whole files

Checkpoints in mid-epoch (``ModelCheckpoint(every_n_train_steps=N)``) resume there: the training
loader gives ``state_dict`` / ``load_state_dict`` (the batches of the epoch done), and the
module keeps torch's RNG state in the checkpoint, so a resumed fit ends on the weights of an
uninterrupted one.

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
from common.pause import pause_point

from .augment import make_augmentations
from .checkpoints import rng_state, set_rng_state
from .data import StoreDataModule
from .devices import amp_settings
from .evaluate import evaluate_split
from .experiment import Experiment, load_experiment
from .model_factory import build_model, layer_names
from .optim import make_optimizer, make_scheduler
from .step import Step, patch_results, score_batch
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
    """The data of an experiment (a YAML path, or an :class:`~train.experiment.Experiment`)."""

    def __init__(self, config: str | os.PathLike | Experiment, overrides=(), store=None):
        super().__init__()
        self.cfg = (
            config if isinstance(config, Experiment) else load_experiment(config, list(overrides))
        )
        self.store = store
        self.data: StoreDataModule | None = None

    def prepare_data(self) -> None:
        """Find the store (once per node), or say which ``precompute run`` makes it."""
        self.store = StoreDataModule.from_experiment(self.cfg, store=self.store).prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        trainer = self.trainer
        if trainer is not None:
            _check_trainer(trainer)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        self.data = StoreDataModule.from_experiment(self.cfg, self.store, rank, world)
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
    """The experiment's model (built from its YAML once the data is known), trained by the
    project's own step (:class:`train.step.Step`: augmentation, ``train.amp``,
    ``train.grad_clip``) under Lightning's manual optimisation, and scored by its own scoring
    function. Lightning's ``gradient_clip_val`` and mixed ``precision`` are not used: the
    experiment's settings are."""

    def __init__(self, data: MirpatchDataModule):
        super().__init__()
        self.cfg = data.cfg
        self._data = data  # not a submodule: the model is built in setup
        self.core: torch.nn.Module | None = None
        self.automatic_optimization = False
        self._scored: list[tuple] = []
        self._rng: dict | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.core is not None:
            return
        self._data.setup(stage)
        ds, t = self._data.data.train_ds, self.cfg.train
        self.task = task_for(self.cfg.target.task, ds.spec, t, self.cfg.source)
        self.task.check_model(layer_names(self.cfg.model), self.cfg.source)
        self.core = build_model(self.cfg.model, ds.item_shape, n_out=self.task.n_out(ds.spec))
        self.augs = make_augmentations(t.augment, ds.feature, self.task, self.cfg.source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core(x)

    @property
    def amp(self) -> tuple:
        return amp_settings(self.device, self.cfg.train.amp)

    def on_fit_start(self) -> None:
        t = self.cfg.train
        self._step = Step(self, self.core.parameters(), self.task, self.augs, self.optimizers(),
                          torch.amp.GradScaler(self.device.type, enabled=self.amp.scaler), self.amp,
                          t.grad_clip, t.seed, self.device)  # fmt: skip

    def on_train_epoch_start(self) -> None:
        self._data.set_epoch(self.current_epoch)  # both samplers, works or patches

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self._rng is not None:  # resumed: the draws (dropout) go on as they were saved
            set_rng_state(self._rng)
            self._rng = None
        loss, n = self._step(batch, self.current_epoch, self.global_step, self.manual_backward)
        self._data.data.batch_done()  # the training loader's position, for mid-epoch checkpoints
        self.log("train_loss", loss.detach(), batch_size=n, on_step=False, on_epoch=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.trainer.is_global_zero:  # after the step's checkpoint, if one was due
            pause_point("step")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mirpatch_rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # restored at the first training step: Lightning draws from the RNG in between
        self._rng = checkpoint.get("mirpatch_rng")

    def on_train_epoch_end(self) -> None:
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._scored.append(score_batch(self, batch, self.task, self.device, self.amp))

    def on_validation_epoch_end(self) -> None:
        if not self._scored:
            return
        ds = self._data.data.valid_ds
        res = patch_results(self._scored, ds.patch_file, self.task)
        self._scored = []
        metrics = {"valid_loss": res["loss"], **self.task.patch_metrics(res, ds.spec)}
        self.log_dict({k: float(v) for k, v in metrics.items() if _scalar(v)}, prog_bar=True)

    def configure_optimizers(self):
        opt = make_optimizer(self.core, self.cfg.train)
        sched = make_scheduler(opt, self.cfg.train)
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """The split's metrics as ``train eval`` scores them: patches, then whole files (with
        settings chosen on the validation files where the task has some), in eval mode."""
        ev = evaluate_split(self.core, self._data.data, self.task, split, self.device, self.amp)
        return ev.metrics


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v)
