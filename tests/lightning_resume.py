"""Run by test_resume.py as a script: fit an experiment for 2 epochs under Lightning with a
checkpoint every 2 steps into OUT (or resume from CKPT), then save the weights to OUT/weights.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

from train.lightning import MirpatchDataModule, MirpatchModule

if __name__ == "__main__":
    cfg, out = sys.argv[1], Path(sys.argv[2])
    ckpt = sys.argv[3] if len(sys.argv) > 3 else None
    torch.manual_seed(0)
    data = MirpatchDataModule(cfg)
    model = MirpatchModule(data)
    every = L.pytorch.callbacks.ModelCheckpoint(dirpath=out, every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", use_distributed_sampler=False, logger=False,
        enable_progress_bar=False, callbacks=[every], num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=data, ckpt_path=ckpt)
    torch.save(model.core.state_dict(), out / "weights.pt")
