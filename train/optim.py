"""The optimiser and learning-rate schedule an experiment's ``train`` settings name."""

from __future__ import annotations

import torch


def make_optimizer(model: torch.nn.Module, t) -> torch.optim.Optimizer:
    """``train.optimizer`` (adam, adamw, sgd) with ``train.lr``, ``train.weight_decay`` and,
    for sgd, ``train.momentum``."""
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
        )
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, t):
    """``train.schedule``: cosine over ``train.epochs``, step (``train.step_size``,
    ``train.gamma``), or none. Stepped once per epoch."""
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs)
    if t.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=t.step_size, gamma=t.gamma)
    return None
