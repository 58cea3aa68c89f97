"""One training step and one scoring function, shared by the trainer (:mod:`train.loop`) and
by Lightning (:mod:`train.lightning`), so that a setting cannot work in one and vanish in the
other: augmentation, ``train.amp`` (autocast, a gradient scaler for fp16) and
``train.grad_clip`` all happen here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .augment import Augmentation, augment
from .devices import AMP_OFF, Amp
from .tasks import Task


def model_input(X: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch as the model wants it: copied to the device as it lies in memory (its batch
    block's time-major bytes, float16 or float32: one copy, ``non_blocking`` from pinned
    memory), then made float32 and contiguous there, in one operation."""
    X = X.to(device, non_blocking=True)
    if X.dtype == torch.float32:  # ``to`` would hand back the permuted block as it is
        return X.contiguous()
    return X.to(torch.float32, memory_format=torch.contiguous_format)


@dataclass
class Step:
    """What a training step needs besides the batch, made once per run.

    ``model`` computes (a DistributedDataParallel around the core, a LightningModule, or the
    core itself); ``params`` are the core's parameters, which ``grad_clip`` bounds; ``opt`` may
    be Lightning's wrapper of the optimiser, whose ``step`` counts Lightning's steps.
    """

    model: torch.nn.Module
    params: Iterable[torch.nn.Parameter]
    task: Task
    augs: list[Augmentation]
    opt: Any
    scaler: torch.amp.GradScaler
    amp: Amp
    grad_clip: float | None
    seed: int
    device: torch.device

    def __post_init__(self) -> None:
        self.params = list(self.params)

    def __call__(
        self, batch: dict, epoch: int, step: int, backward: Callable | None = None
    ) -> tuple[torch.Tensor, int]:
        """Forward, backward and update on one batch (the ``step``-th of the run); its loss,
        not read back, and its size. ``backward``: how to backpropagate (Lightning's
        ``manual_backward``); default ``loss.backward()``."""
        x = model_input(batch["X"], self.device)
        y = batch["y"].to(self.device, non_blocking=True)
        x, y = augment(self.augs, x, y, self.seed, epoch, step)
        with torch.autocast(self.device.type, dtype=self.amp.dtype, enabled=self.amp.enabled):
            loss = self.task.loss(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        scaled = self.scaler.scale(loss)
        backward(scaled) if backward is not None else scaled.backward()
        if self.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss, len(x)


@torch.no_grad()
def score_batch(model, batch: dict, task: Task, device, amp: Amp = AMP_OFF) -> tuple:
    """A batch scored in eval mode as it is: ``(outputs (float32, CPU), targets, loss x size)``."""
    x = model_input(batch["X"], device)
    y = batch["y"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=amp.dtype, enabled=amp.enabled):
        out = model(x)
    return out.float().cpu(), batch["y"], float(task.loss(out, y)) * len(x)


def patch_results(scored: list[tuple], patch_file: np.ndarray, task: Task) -> dict[str, Any]:
    """The scored batches of a split, in order: all outputs, targets, each patch's file, and the
    split's loss (:meth:`Task.split_loss`)."""
    out = torch.cat([o for o, _, _ in scored])
    y = torch.cat([t for _, t, _ in scored])
    return {
        "out": out,
        "y": y,
        "file": torch.from_numpy(np.asarray(patch_file[: len(out)])),  # patch i is of this file
        "loss": task.split_loss(out, y, [loss for _, _, loss in scored]),
    }
